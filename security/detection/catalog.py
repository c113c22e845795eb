"""The rule set in force: the file base plus the database overlay, rebuilt only when something changed.

Why a catalog object: the matching and correlation stages, the rules API and ``refsys ingest`` each need the
current rule set, and building one (parse, resolve, map, compile) costs far more than learning that nothing
changed. The files are read once (they are a read-only base); the overlay's revision counter and the earliest
filter expiry say when a rebuild is due, so a stage can ask ``changed_since(ruleset.version)`` on every batch.

Use from a serving stage::

    catalog = RuleCatalog(engine, settings.detection)
    ruleset = catalog.current()
    ...
    if catalog.changed_since(ruleset.version):
        ruleset = catalog.current()  # and rebuild the Detector / hand the Correlator the new rule set

``version`` (the ``RuleSource`` protocol of ``security.detection.stages``) is cheap enough to read per record:
it looks at the database at most once per ``CHECK_INTERVAL_S``, so a change is in force within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.engine import Engine

from control_plane.core import clock
from control_plane.core.config import DetectionSettings
from security.detection import rule_store
from security.detection.rule_store import Overlay
from security.detection.ruleset import RuleSet, RuleText, build, configured_texts

CHECK_INTERVAL_S = 1.0
"""Longest a change made through the API (or a filter expiry) takes to reach a stage reading ``version``."""
UPLOAD_PATH = "api:{ref}"
FILTER_PATH = "api:filters/{id}"


def upload_text(row: dict[str, object]) -> RuleText:
    return RuleText(str(row["yaml"]), "api", UPLOAD_PATH.format(ref=row["ref"]))


def filter_text(row: dict[str, object]) -> RuleText:
    return RuleText(str(row["yaml"]), "api", FILTER_PATH.format(id=row["id"]))


class RuleCatalog:
    """The current ``RuleSet`` of the configured files and the database overlay (thread-safe)."""

    def __init__(self, engine: Engine, settings: DetectionSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.base: list[RuleText] = configured_texts(settings.bundled_rules, settings.rule_dirs)
        self._lock = threading.Lock()
        self._ruleset: RuleSet | None = None
        self._overlay: Overlay | None = None
        self._revision = -1
        self._expires: datetime | None = None
        self._builds = 0
        self._checked = float("-inf")

    def current(self) -> RuleSet:
        """The rule set in force now, rebuilt when the overlay changed or a filter expired since the last build."""
        with self._lock:
            if self._ruleset is None or self._stale():
                self._rebuild()
            assert self._ruleset is not None
            return self._ruleset

    @property
    def version(self) -> int:
        """The version ``current()`` gives; changes when the rule set does (checked once per interval)."""
        if time.monotonic() - self._checked >= CHECK_INTERVAL_S:
            self.current()
        assert self._ruleset is not None
        return self._ruleset.version

    def overlay(self) -> Overlay:
        """The overlay the current rule set was built from."""
        self.current()
        assert self._overlay is not None
        return self._overlay

    def changed_since(self, version: int) -> bool:
        """Whether ``current()`` would now give another rule set than the one of ``version`` (one DB read)."""
        with self._lock:
            return self._ruleset is None or version != self._ruleset.version or self._stale()

    def preview(
        self,
        *,
        uploads: Iterable[RuleText] = (),
        filters: Iterable[RuleText] = (),
        without: Iterable[str] = (),
    ) -> RuleSet:
        """The rule set as it would be with more uploads or filters, or without some uploads: what the API
        validates a change against before storing it."""
        overlay = rule_store.read_overlay(self.engine)
        gone = set(without)
        texts = [upload_text(row) for row in overlay.uploads if row["ref"] not in gone]
        return self._build(overlay, [*texts, *uploads], [*self._filter_texts(overlay), *filters])

    def _stale(self) -> bool:
        self._checked = time.monotonic()
        if self._expires is not None and clock.utcnow() >= self._expires:
            return True
        return rule_store.revision(self.engine) != self._revision

    def _rebuild(self) -> None:
        overlay = rule_store.read_overlay(self.engine)
        ruleset = self._build(
            overlay, [upload_text(row) for row in overlay.uploads], self._filter_texts(overlay)
        )
        self._builds += 1
        ruleset.version = self._builds
        self._ruleset, self._overlay = ruleset, overlay
        self._revision = overlay.revision
        self._checked = time.monotonic()
        self._expires = overlay.next_expiry(clock.utcnow())

    def _filter_texts(self, overlay: Overlay) -> list[RuleText]:
        return [filter_text(row) for row in overlay.active_filters(clock.utcnow())]

    def _build(self, overlay: Overlay, uploads: list[RuleText], filters: list[RuleText]) -> RuleSet:
        return build(
            [*self.base, *uploads],
            dict(self.settings.placeholders),
            disabled=overlay.disabled,
            filters=filters,
        )
