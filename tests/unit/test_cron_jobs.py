"""Which chains cron schedules: the newest version of each chain with cron triggers, and the bundled reference
chains only when asked (``refsys serve --demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from control_plane.core.config import Settings
from pipelines.engine import Engine
from pipelines.registry import ChainRegistry
from pipelines.triggers.cron import CronTriggers

OWN_CHAIN = """
id: own
version: "{version}"
mission: S2
steps: [{{name: only, processor: {{name: noop, version: "1.0"}}}}]
outputs: [{{product_type: T, step: only, pattern: "*", timeliness: NTC}}]
triggers: {{cron: ["{cron}"]}}
"""


def _jobs(tmp_path: Path, *, include_bundled: bool) -> list[tuple[str, str, str]]:
    chains = tmp_path / "chains"
    chains.mkdir(exist_ok=True)
    (chains / "own-1.yaml").write_text(OWN_CHAIN.format(version="1.0", cron="0 * * * *"))
    (chains / "own-2.yaml").write_text(OWN_CHAIN.format(version="2.0", cron="30 * * * *"))
    settings = Settings(data_dir=tmp_path, production={"chain_dirs": [str(chains)]})
    cron = CronTriggers(
        registry=ChainRegistry.load(settings),
        engine=cast(Engine, cast(Any, None)),  # jobs() never submits
        include_bundled=include_bundled,
    )
    return sorted((chain.id, chain.version, expression) for chain, expression in cron.jobs())


def test_only_the_newest_version_of_an_operators_chain_is_scheduled(tmp_path: Path) -> None:
    assert _jobs(tmp_path, include_bundled=False) == [("own", "2.0", "30 * * * *")]


def test_bundled_chains_are_scheduled_only_in_the_demo(tmp_path: Path) -> None:
    scheduled = {chain_id for chain_id, _version, _cron in _jobs(tmp_path, include_bundled=True)}
    assert {"own", "s1", "s2-l1c", "s3-nrt"} <= scheduled
