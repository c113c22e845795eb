"""Duplicates are not notified again: the alert sink folds them into a count, and receivers should see the alert
once, not once per repeat of a noisy rule.

Same rule as the sink (``security.alerts.grouping``): same rule and group key, first event time within the
rule's suppression window of the series' first alert. The memory is this process's, bounded, and lost at a
restart, so at worst a series is notified once more; never less, because an alert is only ever suppressed as
the repeat of one this process has seen (and the series' own first alert, replayed, is not a duplicate).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timedelta

from control_plane.core import clock
from security.alerts import grouping
from security.alerts.model import Alert

MAX_SERIES = 100_000
"""Series remembered at most (least recently seen forgotten first): a few tens of MB at worst."""


class DuplicateFilter:
    def __init__(self, *, default_window_s: float, max_series: int = MAX_SERIES) -> None:
        self.default_window_s = default_window_s
        self.max_series = max_series
        self._series: OrderedDict[tuple[str, str], tuple[datetime, str]] = OrderedDict()
        self._lock = threading.Lock()

    def is_duplicate(self, alert: Alert) -> bool:
        """Whether ``alert`` repeats a series already notified; otherwise it starts (or is) that series."""
        key = (alert.rule.id, grouping.group_key(alert))
        try:
            at = clock.parse_rfc3339(alert.first)
        except ValueError:
            return False  # no time to compare: notify rather than risk silence
        window = timedelta(seconds=grouping.suppression_window_s(alert, self.default_window_s))
        with self._lock:
            series = self._series.get(key)
            if series is not None:
                start, first_id = series
                self._series.move_to_end(key)
                if alert.id == first_id:
                    return False
                if start <= at <= start + window:
                    return True
            self._series[key] = (at, alert.id)
            self._series.move_to_end(key)
            while len(self._series) > self.max_series:
                self._series.popitem(last=False)
        return False
