"""Chain specs: one precise ``FILE:LINE: ITEM: message`` per problem, the registry, the exported JSON Schema.

After an intended change of the chain model, regenerate the schema with
``REFSYS_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q tests/unit/test_chain_spec.py`` and commit it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from control_plane.core.config import Settings
from pipelines.registry import (
    BUNDLED_DIR,
    ChainRegistry,
    ChainSpecError,
    check_chain_files,
    load_chain_file,
    resolve_processor,
    version_key,
)
from pipelines.spec import ChainSpec, ProcessorRef, RetryPolicy, json_schema

FIXTURES = Path(__file__).parent / "fixtures" / "chains"
SCHEMA_FILE = BUNDLED_DIR.parent / "chain.schema.json"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, production={"bundled_chains": False})


@pytest.mark.parametrize(
    ("fixture", "line", "item", "message"),
    [
        ("cycle.yaml", 8, "steps.a.needs", "steps form a cycle: a -> c -> b -> a"),
        ("unknown-need.yaml", 10, "steps.l2a.needs", "unknown step 'l1b' (steps: l1c, l2a)"),
        ("no-outputs.yaml", 8, "outputs", "must not be empty: at least one entry is required"),
        (
            "bad-cron.yaml",
            13,
            "triggers.cron[1]",
            "not a valid crontab expression: Error validating expression '61': the last value (61) is higher "
            "than the maximum value (59) (got '61 * * * *')",
        ),
        ("negative-resources.yaml", 11, "steps.b.resources.cpu", "should be greater than 0 (got -1)"),
        (
            "unknown-processor.yaml",
            7,
            "steps.l2a.processor",
            "unknown processor s2-l2a 9.9 (production.processors has s2-l2a 1.0)",
        ),
        (
            "unknown-lane.yaml",
            4,
            "lane",
            "unknown lane 'FAST48' (production.lanes: PT, NRT, FAST24, NTC, REPROCESSING)",
        ),
        ("yaml-syntax.yaml", 7, "syntax", "not valid YAML: expected ',' or '}', but got '<scalar>'"),
        ("unknown-key.yaml", 8, "steps.a.retry", "unknown key (did you mean 'retries'?)"),
        ("duplicate-key.yaml", 5, "lane", "duplicate key (first at line 4; YAML would keep only the last)"),
    ],
)
def test_a_bad_chain_gets_one_line_naming_file_line_and_item(
    settings: Settings, fixture: str, line: int, item: str, message: str
) -> None:
    path = FIXTURES / fixture
    with pytest.raises(ChainSpecError) as caught:
        load_chain_file(path, settings)
    assert caught.value.problems == [f"{path}:{line}: {item}: {message}"]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        "id: Many\nversion: '1'\nmission: S2\nsteps:\n"
        "  - {name: a, processor: {name: noop, version: '1.0'}, timeout_s: 0, resources: {memory_mib: -5}}\n"
        "outputs: [{product_type: X, step: a, pattern: '*', timeliness: NRT}]\n"
    )
    with pytest.raises(ChainSpecError) as caught:
        load_chain_file(path, settings)
    items = [problem.split(": ")[1] for problem in caught.value.problems]
    assert items == ["id", "steps.a.resources.memory_mib", "steps.a.timeout_s"]


def test_graph_problems_are_each_named(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "graph.yaml"
    path.write_text(
        "id: graph\nversion: '1'\nmission: S2\nsteps:\n"
        "  - {name: a, processor: {name: noop, version: '1.0'}, needs: [zz]}\n"
        "  - {name: a, processor: {name: noop, version: '1.0'}}\n"
        "outputs: [{product_type: X, step: b, pattern: '*', timeliness: NRT}]\n"
        "triggers: {product_types: [S2MSI1C]}\n"
    )
    with pytest.raises(ChainSpecError) as caught:
        load_chain_file(path, settings)
    assert caught.value.problems == [
        f"{path}:6: steps[1].name: step 'a' is defined twice (also steps[0])",
        f"{path}:5: steps[0].needs: unknown step 'zz' (steps: a)",
        f"{path}:7: outputs[0].step: unknown step 'b' (steps: a)",
        f"{path}:8: triggers.product_types[0]: 'S2MSI1C' is not one of the chain's inputs (none)",
    ]


def test_a_file_that_is_not_a_mapping_or_not_readable_is_refused(tmp_path: Path, settings: Settings) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- id: a\n")
    missing = tmp_path / "missing.yaml"
    checks = check_chain_files([listing, missing], settings)
    assert [check.problems for check in checks] == [
        [f"{listing}:1: chain: the document must be a mapping (id, version, steps ...)"],
        [f"{missing}: file: cannot read it: No such file or directory"],
    ]


def test_the_same_chain_version_in_two_files_names_both(tmp_path: Path, settings: Settings) -> None:
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    shutil.copy(FIXTURES / "good.yaml", first)
    shutil.copy(FIXTURES / "good.yaml", second)
    with pytest.raises(ChainSpecError) as caught:
        ChainRegistry.from_files([first, second], settings)
    assert caught.value.problems == [f"{second}: id: chain demo@1.0 is already defined in {first}"]


def test_the_registry_serves_versions_origins_and_consumers(tmp_path: Path) -> None:
    chains = tmp_path / "chains"
    chains.mkdir()
    base = yaml.safe_load((BUNDLED_DIR / "s2-l2a.yaml").read_text())
    for version in ("1.9", "1.10"):
        (chains / f"l2a-{version}.yml").write_text(yaml.safe_dump({**base, "version": version}))
    (chains / "notes.txt").write_text("not a chain")
    settings = Settings(data_dir=tmp_path, production={"chain_dirs": [chains]})
    registry = ChainRegistry.load(settings)
    assert registry.get("s2-l2a").version == "1.10"  # numeric order, not text order
    assert registry.get("s2-l2a", "1.0").version == "1.0"
    assert registry.versions("s2-l2a") == ["1.0", "1.9", "1.10"]
    assert registry.origin("s2-l2a", "1.9") == str(chains / "l2a-1.9.yml")
    assert registry.origin("s2-l1c", "1.0") == str(BUNDLED_DIR / "s2-l1c.yaml")
    assert [(c.id, c.version) for c in registry.consumers_of("S2MSI1C")] == [("s2-l2a", "1.10")]
    assert registry.consumers_of("S1_RAW")[0].id == "s1"
    assert registry.consumers_of("NOTHING") == []
    with pytest.raises(KeyError):
        registry.get("s9")
    with pytest.raises(KeyError):
        registry.get("s2-l2a", "0.1")


def test_a_missing_chain_directory_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, production={"chain_dirs": [tmp_path / "nope"]})
    with pytest.raises(ChainSpecError) as caught:
        ChainRegistry.load(settings)
    assert caught.value.problems == [f"{tmp_path / 'nope'}: chain directory: does not exist"]


def test_the_bundled_chains_load_with_the_default_configuration(tmp_path: Path) -> None:
    registry = ChainRegistry.load(Settings(data_dir=tmp_path))
    assert [spec.key for spec in registry.all()] == ["s1@1.0", "s2-l1c@1.0", "s2-l2a@1.0", "s3-nrt@1.0"]
    l1c, l2a = registry.get("s2-l1c"), registry.get("s2-l2a")
    assert (l1c.lane, l1c.inputs, [o.product_type for o in l1c.outputs]) == ("FAST24", [], ["S2MSI1C"])
    assert l1c.triggers.cron and l1c.triggers.manual
    assert ([i.product_type for i in l2a.inputs], l2a.triggers.product_types) == (["S2MSI1C"], ["S2MSI1C"])
    assert [o.product_type for o in l2a.outputs] == ["S2MSI2A"]
    s1 = registry.get("s1")
    assert [(step.name, step.needs) for step in s1.steps] == [("l0", []), ("l1", ["l0"]), ("l2", ["l1"])]
    assert s1.triggers.product_types == ["S1_RAW"] and s1.triggers.cron
    assert registry.get("s3-nrt").lane == "NRT"


def test_resolve_processor_finds_the_table_entry() -> None:
    settings = Settings()
    processor = resolve_processor(settings, ProcessorRef(name="s2-l2a", version="1.0"))
    assert processor.command == ["{python}", "-m", "pipelines.processors.s2_l2a"]
    with pytest.raises(KeyError):
        resolve_processor(settings, ProcessorRef(name="s2-l2a", version="2.0"))


def test_version_order_is_numeric_per_part() -> None:
    assert sorted(["1.10", "1.9", "1.9.1", "2.0-rc1", "2.0"], key=version_key) == [
        "1.9",
        "1.9.1",
        "1.10",
        "2.0",
        "2.0-rc1",
    ]


def test_retry_backoff_doubles_up_to_its_ceiling() -> None:
    policy = RetryPolicy(backoff_s=5, factor=2, max_backoff_s=15)
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3)] == [5, 10, 15]


def test_the_exported_json_schema_is_current() -> None:
    rendered = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("REFSYS_UPDATE_SNAPSHOTS") == "1":
        SCHEMA_FILE.write_text(rendered)
    assert SCHEMA_FILE.exists(), "no schema yet: run with REFSYS_UPDATE_SNAPSHOTS=1"
    assert rendered == SCHEMA_FILE.read_text(), "the chain model changed: regenerate (see module docstring)"


def test_the_bundled_chains_match_the_exported_schema() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    for path in sorted(BUNDLED_DIR.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load((FIXTURES / "unknown-key.yaml").read_text()), schema)


def test_chains_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match=r"steps\.0\.needs: unknown step 'x'"):
        ChainSpec.model_validate(
            {
                "id": "c",
                "version": "1",
                "mission": "S2",
                "steps": [{"name": "a", "processor": {"name": "noop", "version": "1.0"}, "needs": ["x"]}],
                "outputs": [{"product_type": "X", "step": "a", "pattern": "*", "timeliness": "NRT"}],
            }
        )


def test_a_self_referencing_alias_is_refused_without_looping(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text("id: alias\nversion: '1'\nmission: S2\nsteps: &loop [*loop]\noutputs: []\n")
    with pytest.raises(ChainSpecError) as caught:
        load_chain_file(path, settings)
    assert caught.value.problems[0].startswith(f"{path}:4: steps[0]: ")
