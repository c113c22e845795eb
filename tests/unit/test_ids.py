"""UUIDv7 ids: version and variant bits right, time prefix right, and minting order kept within a millisecond."""

from __future__ import annotations

import time
import uuid

from control_plane.core.ids import new_id, uuid7


def test_uuid7_layout_and_time_prefix() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid7()
    after_ms = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before_ms <= value.int >> 80 <= after_ms


def test_ids_minted_in_a_burst_sort_in_minting_order() -> None:
    minted = [new_id() for _ in range(20_000)]
    assert minted == sorted(minted)
    assert len(set(minted)) == len(minted)
