"""The bus's pure parts (partitioning, assignment, names) and choosing a backend from the settings."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from control_plane.core.bus import SqlBus, create_bus, partition_for, topics
from control_plane.core.bus.sql_consumer import deal
from control_plane.core.config import Settings


@pytest.mark.parametrize(
    "key, partitions",
    [
        ("host-a", 4),  # a typical key
        ("", 4),  # the empty key is a key like any other
        ("état/été", 7),  # non-ASCII keys hash their UTF-8 bytes
        ("anything", 1),  # one partition takes everything
    ],
)
def test_a_key_always_maps_to_the_same_partition(key: str, partitions: int) -> None:
    assert partition_for(key, partitions) == zlib.crc32(key.encode("utf-8")) % partitions


def test_keyless_batches_spread_over_every_partition() -> None:
    seen = {partition_for(None, 4) for _ in range(400)}
    assert seen == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        partition_for("k", 0)


@pytest.mark.parametrize(
    "members, member, owned",
    [
        (["b", "a"], "a", {0, 2}),  # sorted ids: "a" deals first
        (["b", "a"], "b", {1, 3}),
        (["a", "b", "c"], "c", {2}),  # more members than a fair share: some get fewer
        (["a"], "a", {0, 1, 2, 3}),  # alone: everything
        (["a", "b"], "z", set()),  # not (or no longer) a member: nothing
        ([f"m{i}" for i in range(6)], "m5", set()),  # more members than partitions: the last ones idle
    ],
)
def test_partitions_are_dealt_round_robin_over_sorted_members(
    members: list[str], member: str, owned: set[int]
) -> None:
    assert deal(range(4), members, member) == owned


def test_every_partition_has_exactly_one_owner() -> None:
    members = ["x", "y", "z"]
    shares = [deal(range(10), members, member) for member in members]
    assert sorted(p for share in shares for p in share) == list(range(10))


def test_topic_names_are_unique_and_valid_on_kafka() -> None:
    assert len(set(topics.ALL_TOPICS)) == len(topics.ALL_TOPICS) == 7
    assert topics.PRODUCT_AVAILABLE == "product.available" and topics.PARKING_LOT == "parking-lot"


def test_create_bus_keeps_the_embedded_bus_in_a_file_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith(("REFSYS_DATABASE__", "REFSYS_BUS__"))]:
        monkeypatch.delenv(name)  # the embedded defaults, whatever the environment configures
    with create_bus(Settings(data_dir=tmp_path / "data")) as bus:
        assert isinstance(bus, SqlBus)
        bus.check()  # it created its own tables
        bus.publish(topics.AUDIT, "k", [{"ok": True}])
    assert (tmp_path / "data" / "bus.db").exists()
