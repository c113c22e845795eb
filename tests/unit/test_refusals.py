"""Refused requests are audited one by one up to a rate per client address, then aggregated with a count."""

from __future__ import annotations

from pathlib import Path

from control_plane.core.audit.refusals import MAX_TRACKED_CLIENTS, OVERFLOW_CLIENT, RefusalLimiter
from control_plane.core.audit.trail import AuditFilter
from control_plane.core.maintenance import Maintenance
from tests.apps import make_settings, running_app


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_first_refusals_of_a_window_are_admitted_the_rest_counted() -> None:
    clock = FakeClock()
    limiter = RefusalLimiter(3, now=clock)
    decisions = [limiter.admit("10.0.0.1", "bad signature") for _ in range(5)]
    assert decisions == [True, True, True, False, False]
    assert limiter.admit("10.0.0.2", "bad signature"), "another client has its own budget"
    assert limiter.drain() == [], "the window is still open"
    clock.now += 61
    (closed,) = limiter.drain()
    assert (closed.client, closed.count, closed.reasons) == ("10.0.0.1", 2, {"bad signature": 2})


def test_a_new_window_after_suppression_keeps_the_old_aggregate() -> None:
    clock = FakeClock()
    limiter = RefusalLimiter(1, now=clock)
    assert [limiter.admit("a", "x") for _ in range(3)] == [True, False, False]
    clock.now += 60
    assert limiter.admit("a", "y")
    assert not limiter.admit("a", "y")
    closed = limiter.drain(everything=True)
    assert sorted((item.client, item.count) for item in closed) == [("a", 1), ("a", 2)]


def test_memory_stays_bounded_under_a_spray_of_addresses() -> None:
    limiter = RefusalLimiter(1, now=FakeClock())
    for number in range(MAX_TRACKED_CLIENTS + 500):
        limiter.admit(f"10.{number // 65536}.{number // 256 % 256}.{number % 256}", "spray")
    (overflow,) = limiter.drain(everything=True)
    assert overflow.client == OVERFLOW_CLIENT and overflow.count == 499


def test_a_flood_of_refusals_becomes_ten_records_and_one_aggregate(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (client, services):
        for _ in range(25):
            assert client.get("/api/v1/audit", headers={"Authorization": "Bearer junk"}).status_code == 401
        Maintenance(services).flush_refusals(everything=True)
        individual = services.audit.list(AuditFilter(action="request.refused"))
        (aggregate,) = services.audit.list(AuditFilter(action="request.refused.aggregate"))
    assert len(individual) == 10
    assert aggregate["details"]["count"] == 15
    assert aggregate["details"]["reasons"] == {"malformed token": 15}
    assert aggregate["target"] == "testclient"
