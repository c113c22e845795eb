"""Which ready steps may start now: lanes by priority, within each lane's concurrency, its reserved slots and
the global ``max_parallel_steps``.

A pure function of counts, so the policy is tested as a table. Slots are of two kinds: each lane's reserved
ones (only it may use them) and the shared rest. A lane's running steps count against its reservation first.
A ``throttled`` lane (reprocessing) takes only shared slots that every other lane left, after all of them
took what they could: it never takes a slot another lane could use right now.
"""

from __future__ import annotations

from collections.abc import Mapping

from control_plane.core.config import LaneSettings


def allocate(
    *,
    lanes: Mapping[str, LaneSettings],
    running: Mapping[str, int],
    ready: Mapping[str, int],
    max_parallel: int,
) -> dict[str, int]:
    """How many of each lane's ready steps to start now (lanes with none to start are left out)."""
    shared_capacity = max_parallel - sum(lane.reserved for lane in lanes.values())
    shared_used = sum(max(0, running.get(name, 0) - lane.reserved) for name, lane in lanes.items())
    shared_free = max(0, shared_capacity - shared_used)
    # Never more than the global limit, whatever the arithmetic of reservations says.
    total_free = max(0, max_parallel - sum(running.values()))
    order = sorted(lanes, key=lambda name: (lanes[name].throttled, -lanes[name].priority, name))
    starts: dict[str, int] = {}
    for name in order:
        lane = lanes[name]
        wanted = min(ready.get(name, 0), lane.concurrency - running.get(name, 0), total_free)
        if wanted <= 0:
            continue
        own = max(0, lane.reserved - running.get(name, 0))
        from_own = min(wanted, own)
        from_shared = min(wanted - from_own, shared_free)
        count = from_own + from_shared
        if count:
            starts[name] = count
            shared_free -= from_shared
            total_free -= count
    return starts
