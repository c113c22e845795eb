"""The reference processors, run as the executor runs them: the processor table's command with ``{python}``
replaced by this interpreter, inputs in ``REFSYS_INPUT_DIR``, outputs and manifest in ``REFSYS_OUTPUT_DIR``."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from control_plane.core import clock
from control_plane.core.config import DEFAULT_PROCESSORS

S2_L1C = re.compile(r"^S2[ABC]_MSIL1C_\d{8}T\d{6}_N0511_R\d{3}_T\d{2}[A-Z]{3}_\d{8}T\d{6}\.SAFE\.zip$")
S1 = r"S1[AC]_IW_{kind}_(\d{{8}}T\d{{6}}_\d{{8}}T\d{{6}}_\d{{6}}_[0-9A-F]{{6}})_[0-9A-F]{{4}}\.SAFE\.zip"
S3 = re.compile(
    r"^S3[AB]_(OL_1_EFR___|SL_1_RBT___)_(\d{8}T\d{6}_){3}\d{4}_\d{3}_\d{3}_\d{4}_PS[12]_O_NR_004\.SEN3\.zip$"
)


def run_processor(
    name: str, work: Path, *args: str, inputs: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    [entry] = [p for p in DEFAULT_PROCESSORS if p.name == name]
    command = [sys.executable if part == "{python}" else part for part in entry.command]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("REFSYS_", "PROC_"))}
    environ |= {"REFSYS_OUTPUT_DIR": str(work / "out"), **(env or {})}
    if inputs is not None:
        environ["REFSYS_INPUT_DIR"] = str(inputs)
    return subprocess.run(
        [*command, "--duration-s", "0.05", *args],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def manifest(out: Path) -> list[dict[str, Any]]:
    products: list[dict[str, Any]] = json.loads((out / "manifest.json").read_text())["products"]
    return products


def outputs(out: Path) -> list[str]:
    return sorted(path.name for path in out.iterdir() if path.name != "manifest.json")


def test_s2_l1c_makes_a_named_zipped_product_with_its_manifest(tmp_path: Path) -> None:
    result = run_processor("s2-l1c", tmp_path, "--products", "2")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    names = outputs(out)
    assert len(names) == 2 and all(S2_L1C.match(name) for name in names), names
    entries = manifest(out)
    assert sorted(entry["file"] for entry in entries) == names
    for entry in entries:
        assert clock.parse_rfc3339(entry["sensing_start"]) < clock.parse_rfc3339(entry["sensing_stop"])
    with zipfile.ZipFile(out / names[0]) as archive:
        product_dir = names[0].removesuffix(".zip")
        assert f"{product_dir}/manifest.safe" in archive.namelist()
        assert b'type="S2MSI1C"' in archive.read(f"{product_dir}/MTD_MSIL1C.xml")
    progress = [line for line in result.stdout.splitlines() if line.startswith("[s2-l1c] ")]
    assert progress[0] == "[s2-l1c] start: 0 input product(s)" and "100%" in progress[-2]
    assert progress[-1].startswith("[s2-l1c] done: 2 product(s)")


def test_s2_l2a_keeps_the_datatake_orbit_and_tile_of_its_l1c(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    l1c = "S2A_MSIL1C_20261125T101031_N0511_R022_T32TQM_20261125T120000.SAFE"
    (inputs / f"{l1c}.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (inputs / "manifest.json").write_text("{}")  # an upstream step's manifest is not an input product
    result = run_processor("s2-l2a", tmp_path, inputs=inputs)
    assert result.returncode == 0, result.stderr
    [name] = outputs(tmp_path / "out")
    assert re.match(r"^S2A_MSIL2A_20261125T101031_N0511_R022_T32TQM_\d{8}T\d{6}\.SAFE\.zip$", name)
    [entry] = manifest(tmp_path / "out")
    assert (entry["sensing_start"], entry["sensing_stop"]) == (
        "2026-11-25T10:10:31.000000Z",
        "2026-11-25T10:10:36.000000Z",
    )
    assert f"start: 1 input product(s): {l1c}" in result.stdout


def test_a_processor_without_its_input_fails_before_working(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (
        inputs
        / "S3A_OL_1_EFR____20261125T101031_20261125T101331_20261125T120000_0179_112_022_2160_PS1_O_NR_004.SEN3"
    ).mkdir()
    result = run_processor("s2-l2a", tmp_path, "--duration-s", "300", inputs=inputs)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "[s2-l2a] error: no S2MSI1C input product in REFSYS_INPUT_DIR (1 other input(s))"
    )
    assert "%" not in result.stdout  # no work was done
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_sentinel1_chain_runs_from_raw_chunks_to_level_2(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for index, moment in enumerate(("20261125054530012345", "20261125054533012345"), start=1):
        (raw / f"DCS_01_S1A_{moment}_ch1_DSDB_{index:05d}.raw").write_bytes(os.urandom(2048))
    stages = [("s1-l0", raw, "RAW__0SDV"), ("s1-l1", None, "GRDH_1SDV"), ("s1-l2", None, "OCN__2SDV")]
    previous = raw
    acquisitions = set()
    for processor, inputs, kind in stages:
        work = tmp_path / processor
        work.mkdir()
        result = run_processor(processor, work, inputs=inputs or previous)
        assert result.returncode == 0, result.stderr
        [name] = outputs(work / "out")
        match = re.match(S1.format(kind=kind), name)
        assert match, name
        acquisitions.add(match.group(1))
        previous = work / "out"
    # One pass, from the first chunk's time, kept through every level.
    [acquisition] = acquisitions
    assert acquisition.startswith("20261125T054530_20261125T054603_")


def test_s3_nrt_makes_olci_and_slstr_products_per_frame(tmp_path: Path) -> None:
    result = run_processor("s3-nrt", tmp_path, "--products", "2")
    assert result.returncode == 0, result.stderr
    names = outputs(tmp_path / "out")
    assert len(names) == 4 and all(S3.match(name) for name in names), names
    assert {S3.match(name).group(1) for name in names} == {"OL_1_EFR___", "SL_1_RBT___"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "env", "code", "error"),
    [
        (["--fail-rate", "1"], {}, 1, "[s2-l1c] error: injected permanent failure"),
        (["--transient-rate", "1"], {}, 75, "[s2-l1c] error: injected transient failure"),
        ([], {"PROC_FAIL_RATE": "1"}, 1, "[s2-l1c] error: injected permanent failure"),
        (["--fail-rate", "0"], {"PROC_FAIL_RATE": "1"}, 0, ""),  # the option wins over the environment
        (
            ["--aux", "/nonexistent/S2__OPER_AUX_ECMWFD.nc"],
            {},
            1,
            "auxiliary file /nonexistent/S2__OPER_AUX_ECMWFD.nc not found",
        ),
        (["--jitter", "2"], {}, 2, "[s2-l1c] error: --jitter must be within [0, 1]"),
        (["--fail-rate", "0.6", "--transient-rate", "0.6"], {}, 2, "must not exceed 1"),
        (["--frobnicate"], {}, 2, "unrecognized arguments: --frobnicate"),
        ([], {"PROC_DURATION_S": "soon"}, 2, "PROC_DURATION_S='soon' is not a number"),
        ([], {"REFSYS_OUTPUT_DIR": ""}, 2, "REFSYS_OUTPUT_DIR is not set"),
    ],
)
def test_exit_codes_follow_the_documented_contract(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, error: str
) -> None:
    result = run_processor("s2-l1c", tmp_path, *args, env=env)
    assert result.returncode == code, result.stderr
    assert error in result.stderr
    if code:
        assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_auxiliary_file_once_present_lets_the_processor_succeed(tmp_path: Path) -> None:
    aux = tmp_path / "S2__OPER_AUX_ECMWFD.nc"
    assert run_processor("s2-l1c", tmp_path, "--aux", str(aux)).returncode == 1
    aux.write_bytes(b"forecast")  # the operator fixes the cause
    assert run_processor("s2-l1c", tmp_path, "--aux", str(aux)).returncode == 0


def test_the_seed_makes_failure_draws_reproducible(tmp_path: Path) -> None:
    codes = {
        run_processor("s2-l1c", tmp_path, "--fail-rate", "0.5", "--seed", str(seed)).returncode
        for seed in range(12)
    }
    assert codes == {0, 1}  # some seeds fail, some succeed ...
    again = [
        run_processor("s2-l1c", tmp_path, "--fail-rate", "0.5", "--seed", "3").returncode for _ in range(3)
    ]
    assert len(set(again)) == 1  # ... and one seed always draws the same


def test_the_work_is_real_cpu_time(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert run_processor("s3-nrt", tmp_path, "--duration-s", "0.4", "--jitter", "0").returncode == 0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) >= 0.4


def test_noop_writes_nothing_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = run_processor("noop", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert list((tmp_path / "out").iterdir()) == []
