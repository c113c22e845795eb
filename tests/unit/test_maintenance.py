"""Server upkeep: a final checkpoint at shutdown, and bus retention at the lowest committed offset."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from control_plane.core.audit.checkpoints import latest_checkpoint
from control_plane.core.audit.trail import Actor
from control_plane.core.bus import SqlBus, topics
from control_plane.core.bus.tables import batches
from control_plane.core.maintenance import Maintenance
from control_plane.core.services import open_services
from tests.apps import make_settings, prepare_database, running_app


def test_stopping_writes_a_checkpoint_of_the_head(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (_client, services):
        maintenance = Maintenance(services)
        maintenance.start()
        services.audit.append(actor=Actor(subject="ops"), action="run.submit", outcome="success")
        maintenance.stop()
        checkpoint = latest_checkpoint(
            services.audit.checkpoint_file, services.audit.keys.signing_key.public_key()
        )
        assert checkpoint is not None and (checkpoint.seq, checkpoint.hash) == services.audit.head()


def test_compaction_drops_what_every_group_committed(tmp_path: Path) -> None:
    # The kernel's services alone: a running app would add its own groups (the systematic trigger reads
    # product.available), and this test is about the groups it makes itself.
    settings = make_settings(tmp_path)
    prepare_database(settings)
    services = open_services(settings)
    try:
        bus = services.bus
        assert isinstance(bus, SqlBus)
        for number in range(3):
            bus.publish(topics.PRODUCT_AVAILABLE, "S2A", [{"n": number}])
        with bus.consumer(topics.PRODUCT_AVAILABLE, "catalog") as consumer:
            first = consumer.poll(max_records=2, timeout_s=5)
            consumer.commit(first)
        Maintenance(services).compact_bus()
        with bus.engine.connect() as connection:
            kept = connection.execute(sa.select(batches.c.base_offset)).scalars().all()
        assert kept == [2]
    finally:
        services.close()
