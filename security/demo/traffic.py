"""The demo's traffic: benign background at a configured rate, an attack scenario at a configured interval,
and the schedule that turns both into per-sensor batches of native bytes.

Time is simulated: ``DemoTraffic.batches(elapsed_s)`` advances the demo by ``elapsed_s`` and returns what
became due, stamped with wall-clock times ending at ``clock()``. Nothing sleeps and all randomness comes from
one seeded source, so a seed and a fake clock give the same bytes every run (the tests drive ten minutes in a
moment). Events that a sensor writes later than the moment they describe (Suricata's flow records after the
flow's timeout, an SSH session's end, the second half of an attack) stay on the schedule until they are due.

Background mix, by events: about 44 % Suricata (DNS lookups, TLS sessions to the product hubs and mirrors, APT
over HTTP, flows to the object store and the database), 29 % Kubernetes audit (kubelet and leader-election
leases, refsys creating and deleting processing Jobs, kubelets reading their pods' secrets, operators reading
pods and logs), 11 % auditd on the processing hosts (processor runs and cron sessions), 8 % Keycloak (logins,
token refreshes, client-credential logins of the collectors, the odd mistyped password), 6 % sshd on the
bastion (operators' key logins and sessions, internet noise) and 2 % Falco (a known false positive).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from control_plane.core import clock as wall_clock
from security.demo import scenarios
from security.demo.background import UNITS
from security.demo.site import Emission, Site

log = logging.getLogger(__name__)
_UNITS = [unit for unit, _ in UNITS]
_WEIGHTS = [weight for _, weight in UNITS]


@dataclass(frozen=True)
class Batch:
    """What one sensor sends in one interval: a body for ``POST /api/v1/ingest/{source}``."""

    source: str
    sensor: str
    body: bytes

    @property
    def observer(self) -> str:
        return f"demo:{self.sensor}"


class DemoTraffic:
    """Deterministic demo telemetry: same seed, same clock readings, same batches."""

    def __init__(
        self,
        *,
        events_per_s: float,
        attack_every_s: float,
        seed: int | None,
        clock: Callable[[], datetime] = wall_clock.utcnow,
    ) -> None:
        if events_per_s <= 0 or attack_every_s <= 0:
            raise ValueError("events_per_s and attack_every_s must be positive")
        self.events_per_s = events_per_s
        self.attack_every_s = attack_every_s
        self.site = Site(random.Random(seed))  # noqa: S311 - made-up demo data, reproducible on purpose
        self._clock = clock
        self._now_s = 0.0
        self._budget = 0.0
        self._schedule: list[tuple[float, int, Emission]] = []
        self._order = itertools.count()  # ties on time keep the order events were scheduled in
        self._next_attack_s = attack_every_s  # a quiet baseline first, so the attack stands out
        self._attacks = itertools.cycle(scenarios.SCENARIOS)

    def batches(self, elapsed_s: float) -> list[Batch]:
        """Advance the demo by ``elapsed_s`` seconds; the events that fell due, one batch per source and
        sensor, each in time order, timestamped so that the end of the interval is now."""
        if elapsed_s <= 0:
            return []
        start, end = self._now_s, self._now_s + elapsed_s
        self._now_s = end
        while self._next_attack_s < end:
            scenario = next(self._attacks)
            log.info("demo attack scenario %s starts", scenario.name)
            self._add(scenario.build(self.site, self._next_attack_s))
            self._next_attack_s += self.attack_every_s
        self._budget += self.events_per_s * elapsed_s
        while self._budget >= 1:  # a unit of several events overdraws; the next interval pays it back
            unit = self.site.rng.choices(_UNITS, _WEIGHTS)[0]
            emissions = unit(self.site, self.site.rng.uniform(start, end))
            self._budget -= len(emissions)
            self._add(emissions)
        now = self._clock()
        bodies: dict[tuple[str, str], list[bytes]] = {}
        while self._schedule and self._schedule[0][0] < end:
            at_s, _, emission = heapq.heappop(self._schedule)
            moment = now - timedelta(seconds=end - at_s)
            bodies.setdefault((emission.source, emission.sensor), []).append(emission.render(moment))
        return [
            Batch(source, sensor, b"\n".join(lines) + b"\n") for (source, sensor), lines in bodies.items()
        ]

    def _add(self, emissions: list[Emission]) -> None:
        for emission in emissions:
            heapq.heappush(self._schedule, (emission.at_s, next(self._order), emission))
