"""The local executor across crashes, with real processes: a control plane SIGKILLed while its step runs (a new
one adopts the execution, resumes its logs and gets its result), a control plane SIGKILLed between writing the
launch and spawning the supervisor (the execution is refused, and no late supervisor can ever run it), and a
supervisor SIGKILLed mid-run (``lost`` through ``poll``, or refused by ``adopt`` after a restart; either way the
step's leftover processes are killed first)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from control_plane.core.config import ProcessorSettings, Settings
from pipelines.executors import local
from pipelines.executors.base import StepLaunch, StepResult
from pipelines.executors.local import LocalExecutor
from pipelines.spec import Resources

DEADLINE_S = 60.0
REPO = Path(__file__).resolve().parents[2]

STEP = """
import os, pathlib, sys, time
data = pathlib.Path(sys.argv[1])
for i in range(5):
    print(f"line {i}")
while not (data / "go").exists():
    time.sleep(0.01)
for i in range(5, 10):
    print(f"line {i}")
fd = os.open(data / "side.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
os.write(fd, f"ran {os.getpid()}\\n".encode())
"""


def make_launch(data_dir: Path) -> StepLaunch:
    return StepLaunch(
        run_id="0190c000-0000-7000-8000-0000000000aa",
        step="l2a",
        attempt=1,
        chain_id="test-chain",
        chain_version="1",
        lane="NRT",
        priority_class=None,
        processor=ProcessorSettings(name="test", version="1", command=["{python}", "-c", STEP]),
        args=[str(data_dir)],
        env={},
        resources=Resources(),
        timeout_s=600,
    )


def control_plane(data_dir: str, mode: str) -> None:
    """A control plane in a child process: starts the execution, says so on stdout, then waits to be killed.

    ``crash-before-spawn`` dies (SIGKILL) at the worst moment instead: the launch written, no supervisor yet.
    """
    data = Path(data_dir)
    forwarded = data / "forwarded-before-crash.log"

    def on_log(run_id: str, step: str, attempt: int, stream: str, line: str) -> None:
        with forwarded.open("a") as handle:
            handle.write(f"{line}\n")

    if mode == "crash-before-spawn":
        LocalExecutor._spawn_supervisor = lambda self, exec_dir: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign,assignment,return-value]
        local._ForkServer.fork = lambda self, exec_dir: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign,assignment,return-value]
    executor = LocalExecutor(Settings(data_dir=data), on_log, log_poll_s=0.02)
    launch = make_launch(data)
    executor.start(launch)
    wait_for(lambda: forwarded.exists() and len(forwarded.read_text().splitlines()) == 5, "five lines")
    executor.logs_checkpoint()()  # as the engine does once it has stored the lines
    offsets = data / "work" / launch.execution_id / "log-offsets.json"
    assert json.loads(offsets.read_text()) == {"stdout": 35, "stderr": 0}
    print("started", flush=True)
    time.sleep(600)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {DEADLINE_S} s")
        time.sleep(0.01)


def run_control_plane(data_dir: Path, mode: str) -> subprocess.Popen[str]:
    code = "import sys; from tests.integration.test_local_executor_restart import control_plane; control_plane(*sys.argv[1:])"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir), mode], cwd=REPO, stdout=subprocess.PIPE, text=True
    )


def wait_result(executor: LocalExecutor) -> StepResult:
    found: list[StepResult] = []

    def ended() -> bool:
        found.extend(executor.poll())
        return bool(found)

    wait_for(ended, "the execution's result")
    assert len(found) == 1
    return found[0]


def live_group_members(pgid: int) -> list[int]:
    """Processes of a group that still run. Zombies are left out: this machine's init does not reap orphans,
    so a SIGKILLed step whose supervisor died first stays a zombie (it runs nothing, holds nothing)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat_file.parent.name))
    return members


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, run_id: str, step: str, attempt: int, stream: str, line: str) -> None:
        self.lines.append(line)


def test_a_restarted_control_plane_adopts_a_running_execution_and_resumes_its_logs(tmp_path: Path) -> None:
    with run_control_plane(tmp_path, "run") as first:
        assert first.stdout is not None
        assert first.stdout.readline() == "started\n"
        first.kill()  # SIGKILL, while the step waits for "go"

    lines = Lines()
    executor = LocalExecutor(Settings(data_dir=tmp_path), lines, log_poll_s=0.02)
    try:
        launch = make_launch(tmp_path)
        assert executor.adopt(launch, launch.execution_id) is True
        (tmp_path / "go").touch()
        result = wait_result(executor)
        assert executor.poll() == []
    finally:
        executor.close()

    assert (result.outcome, result.exit_code) == ("succeeded", 0)
    assert (tmp_path / "forwarded-before-crash.log").read_text().splitlines() == [
        f"line {i}" for i in range(5)
    ]
    assert lines.lines == [f"line {i}" for i in range(5, 10)]  # resumed where the first one stopped
    assert len((tmp_path / "side.log").read_text().splitlines()) == 1


def test_an_execution_whose_supervisor_was_never_spawned_is_refused_and_can_never_run(tmp_path: Path) -> None:
    with run_control_plane(tmp_path, "crash-before-spawn") as crashed:
        assert crashed.wait() == -signal.SIGKILL
    launch = make_launch(tmp_path)
    exec_dir = tmp_path / "work" / launch.execution_id
    assert (exec_dir / "launch.json").exists()

    executor = LocalExecutor(Settings(data_dir=tmp_path), Lines())
    try:
        assert executor.adopt(launch, None) is False
    finally:
        executor.close()
    result = json.loads((exec_dir / "result.json").read_text())
    assert (result["outcome"], result["reason"]) == ("lost", "the supervisor ended without a result")

    # A supervisor spawned just before the crash, arriving late, finds the execution closed and runs nothing.
    (tmp_path / "go").touch()
    late = subprocess.run(
        [sys.executable, "-m", "pipelines.executors.local_supervisor", str(exec_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "already claimed" in late.stderr
    assert not (tmp_path / "side.log").exists()
    assert json.loads((exec_dir / "result.json").read_text()) == result


def test_a_supervisor_killed_mid_run_is_lost_and_its_step_killed(tmp_path: Path) -> None:
    executor = LocalExecutor(Settings(data_dir=tmp_path), Lines(), log_poll_s=0.02)
    try:
        launch = make_launch(tmp_path)
        executor.start(launch)
        exec_dir = tmp_path / "work" / launch.execution_id
        stdout = exec_dir / "stdout.log"
        wait_for(lambda: stdout.exists() and stdout.read_text().count("\n") == 5, "the step to run")
        supervisor = json.loads((exec_dir / "supervisor.json").read_text())
        pgid = json.loads((exec_dir / "step.json").read_text())["pgid"]
        os.kill(supervisor["pid"], signal.SIGKILL)

        result = wait_result(executor)
    finally:
        executor.close()

    assert (result.outcome, result.exit_code, result.reason) == (
        "lost",
        None,
        "the supervisor ended without a result; leftover processes of the step killed with SIGKILL",
    )
    assert live_group_members(pgid) == []


def test_adopt_refuses_an_execution_whose_supervisor_died_and_kills_its_step_first(tmp_path: Path) -> None:
    first = LocalExecutor(Settings(data_dir=tmp_path), Lines())
    launch = make_launch(tmp_path)
    try:
        first.start(launch)
        exec_dir = tmp_path / "work" / launch.execution_id
        stdout = exec_dir / "stdout.log"
        wait_for(lambda: stdout.exists() and stdout.read_text().count("\n") == 5, "the step to run")
        supervisor = json.loads((exec_dir / "supervisor.json").read_text())
        pgid = json.loads((exec_dir / "step.json").read_text())["pgid"]
        os.kill(supervisor["pid"], signal.SIGKILL)
    finally:
        first.close()  # the control plane that started it is gone too

    restarted = LocalExecutor(Settings(data_dir=tmp_path), Lines())
    try:
        assert live_group_members(pgid) != []  # the step outlived its supervisor...
        assert restarted.adopt(launch, launch.execution_id) is False
        assert (
            live_group_members(pgid) == []
        )  # ...until the execution was refused, so a new attempt cannot overlap it
    finally:
        restarted.close()
    assert json.loads((exec_dir / "result.json").read_text())["outcome"] == "lost"
