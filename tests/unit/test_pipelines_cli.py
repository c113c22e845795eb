"""``refsys pipelines validate|list``: exit codes, one line per problem naming file, line and item."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from control_plane.cli import main
from pipelines.registry import BUNDLED_DIR
from tests.apps import run_refsys

FIXTURES = Path(__file__).parent / "fixtures" / "chains"
BAD = [
    "cycle.yaml",
    "unknown-need.yaml",
    "no-outputs.yaml",
    "bad-cron.yaml",
    "negative-resources.yaml",
    "unknown-processor.yaml",
    "unknown-lane.yaml",
]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("REFSYS_")]:
        monkeypatch.delenv(name)
    (tmp_path / "refsys.yaml").write_text(f"data_dir: {tmp_path / 'var'}\n")
    return tmp_path


def refsys(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_good_files_are_listed_ok_and_exit_0(workdir: Path) -> None:
    files = sorted(str(path) for path in BUNDLED_DIR.glob("*.yaml"))
    code, out, err = refsys("pipelines", "validate", "--config", "refsys.yaml", *files)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"ok {BUNDLED_DIR / 's1.yaml'} (s1@1.0)",
        f"ok {BUNDLED_DIR / 's2-l1c.yaml'} (s2-l1c@1.0)",
        f"ok {BUNDLED_DIR / 's2-l2a.yaml'} (s2-l2a@1.0)",
        f"ok {BUNDLED_DIR / 's3-nrt.yaml'} (s3-nrt@1.0)",
    ]


@pytest.mark.parametrize("fixture", BAD)
def test_each_bad_spec_exits_1_with_one_precise_line(workdir: Path, fixture: str) -> None:
    shutil.copy(FIXTURES / fixture, workdir / fixture)
    code, out, err = refsys("pipelines", "validate", "--config", "refsys.yaml", fixture)
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    file_and_line, item, message = line.split(": ", 2)
    assert file_and_line.startswith(f"{fixture}:") and file_and_line.split(":")[1].isdigit()
    assert item in {"steps.a.needs", "steps.l2a.needs", "outputs", "triggers.cron[1]", "steps.b.resources.cpu",
                    "steps.l2a.processor", "lane"}  # fmt: skip
    assert message


def test_good_and_bad_files_together_report_both(workdir: Path) -> None:
    shutil.copy(FIXTURES / "good.yaml", workdir / "good.yaml")
    shutil.copy(FIXTURES / "unknown-lane.yaml", workdir / "lane.yaml")
    shutil.copy(FIXTURES / "good.yaml", workdir / "again.yaml")
    code, out, err = refsys(
        "pipelines", "validate", "--config", "refsys.yaml", "good.yaml", "lane.yaml", "again.yaml"
    )
    assert code == 1
    assert out == "ok good.yaml (demo@1.0)\n"
    assert err.splitlines() == [
        "lane.yaml:4: lane: unknown lane 'FAST48' (production.lanes: PT, NRT, FAST24, NTC, REPROCESSING)",
        "again.yaml: id: chain demo@1.0 is already defined in good.yaml",
    ]


def test_lanes_and_processors_come_from_the_configuration(workdir: Path) -> None:
    shutil.copy(FIXTURES / "unknown-lane.yaml", workdir / "lane.yaml")
    (workdir / "refsys.yaml").write_text(
        "production:\n  lanes:\n    FAST48: {priority: 10, concurrency: 2}\n"
        "  processors:\n    - {name: noop, version: '1.0', command: ['true']}\n"
    )
    code, out, _err = refsys("pipelines", "validate", "--config", "refsys.yaml", "lane.yaml")
    assert (code, out) == (0, "ok lane.yaml (unknown-lane@1.0)\n")


def test_usage_and_configuration_errors_exit_2(workdir: Path) -> None:
    code, _out, err = refsys("pipelines", "validate", "--config", "refsys.yaml", "missing.yaml")
    assert code == 2 and "missing.yaml" in err
    assert refsys("pipelines", "validate", "--config", "refsys.yaml")[0] == 2
    (workdir / "broken.yaml").write_text("production:\n  lanez: {}\n")
    code, _out, err = refsys("pipelines", "validate", "--config", "broken.yaml", str(FIXTURES / "good.yaml"))
    assert (
        code == 2 and err.strip() == "refsys: config error: unknown setting production.lanez (in broken.yaml)"
    )


def test_list_shows_every_chain_with_its_triggers_and_origin(workdir: Path) -> None:
    extra = workdir / "chains"
    extra.mkdir()
    shutil.copy(FIXTURES / "good.yaml", extra / "demo.yaml")
    (workdir / "refsys.yaml").write_text(f"production:\n  chain_dirs: [{extra}]\n")
    code, out, err = refsys("pipelines", "list", "--config", "refsys.yaml")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "VERSION", "MISSION", "LANE", "TRIGGERS", "ORIGIN"]
    assert [line.split()[0] for line in lines[1:]] == ["demo", "s1", "s2-l1c", "s2-l2a", "s3-nrt"]
    assert "product S2MSI1C; manual" in lines[4] and lines[4].endswith(str(BUNDLED_DIR / "s2-l2a.yaml"))
    assert lines[1].endswith(str(extra / "demo.yaml"))

    code, out, _err = refsys("pipelines", "list", "--config", "refsys.yaml", "--json")
    chains = {chain["id"]: chain for chain in json.loads(out)}
    assert chains["s1"]["triggers"] == {"product_types": ["S1_RAW"], "cron": ["*/15 * * * *"], "manual": True}
    assert chains["s1"]["steps"] == ["l0", "l1", "l2"]
    assert (chains["s2-l1c"]["lane"], chains["s2-l1c"]["mission"]) == ("FAST24", "S2")
    assert chains["demo"]["origin"] == str(extra / "demo.yaml")


def test_list_refuses_a_configured_chain_that_does_not_validate(workdir: Path) -> None:
    extra = workdir / "chains"
    extra.mkdir()
    shutil.copy(FIXTURES / "cycle.yaml", extra / "cycle.yaml")
    (workdir / "refsys.yaml").write_text(f"production:\n  chain_dirs: [{extra}]\n  bundled_chains: false\n")
    code, out, err = refsys("pipelines", "list", "--config", "refsys.yaml")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"{extra / 'cycle.yaml'}:8: steps.a.needs: steps form a cycle: a -> c -> b -> a"
    ]


def test_the_installed_command_validates(workdir: Path) -> None:
    shutil.copy(FIXTURES / "negative-resources.yaml", workdir / "neg.yaml")
    result = run_refsys("pipelines", "validate", "neg.yaml", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr == "neg.yaml:11: steps.b.resources.cpu: should be greater than 0 (got -1)\n"
