"""The local executor with real subprocesses: outcomes and exit codes, the work directory, the process-group kill
on timeout and cancel, rlimits, line-by-line logs, and idempotent starts."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_plane.core.config import ProcessorSettings, Settings
from pipelines.executors.base import StepLaunch, StepResult
from pipelines.executors.local import LocalExecutor
from pipelines.spec import Resources

DEADLINE_S = 60.0


class Sink:
    """Collects what the executor forwards, as the engine's log sink would."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, int, str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, run_id: str, step: str, attempt: int, stream: str, line: str) -> None:
        with self._lock:
            self.lines.append((run_id, step, attempt, stream, line))

    def stream(self, name: str) -> list[str]:
        with self._lock:
            return [line[4] for line in self.lines if line[3] == name]


def make_launch(
    script: str,
    *,
    step: str = "step",
    attempt: int = 1,
    timeout_s: int = 60,
    env: dict[str, str] | None = None,
    inputs: list[str] | None = None,
    memory_mib: int = 256,
    command: list[str] | None = None,
) -> StepLaunch:
    processor = ProcessorSettings(
        name="test", version="1", command=command if command is not None else ["{python}", "-c", script]
    )
    return StepLaunch(
        run_id="0190c000-0000-7000-8000-000000000001",
        step=step,
        attempt=attempt,
        chain_id="test-chain",
        chain_version="1",
        lane="NRT",
        priority_class=None,
        processor=processor,
        args=[],
        env=env or {},
        resources=Resources(memory_mib=memory_mib),
        timeout_s=timeout_s,
        input_paths=inputs or [],
    )


def make_settings(tmp_path: Path, **local: object) -> Settings:
    return Settings(data_dir=tmp_path, production={"local": local})


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {DEADLINE_S} s")
        time.sleep(0.01)


def wait_result(executor: LocalExecutor, launch: StepLaunch) -> StepResult:
    found: list[StepResult] = []

    def ended() -> bool:
        found.extend(r for r in executor.poll() if (r.run_id, r.step, r.attempt) == _key(launch))
        return bool(found)

    wait_for(ended, f"the result of {launch.execution_id}")
    assert len(found) == 1
    return found[0]


def _key(launch: StepLaunch) -> tuple[str, str, int]:
    return launch.run_id, launch.step, launch.attempt


def exec_dir(settings: Settings, launch: StepLaunch) -> Path:
    return settings.work_dir / launch.run_id / launch.step / str(launch.attempt)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, max_open_files=64, cpu_seconds=600)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def executor(settings: Settings, sink: Sink) -> Iterator[LocalExecutor]:
    executor = LocalExecutor(settings, sink, kill_grace_s=2.0, log_poll_s=0.02)
    yield executor
    executor.close()


# -- outcomes


def test_a_step_runs_in_its_own_directory_with_its_inputs_and_leaves_its_outputs(
    executor: LocalExecutor, settings: Settings, sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFSYS_TEST_SECRET", "not for steps")
    product = tmp_path / "S2A_MSIL1C_20261125T101000_N0511_R022_T32TQM.zip"
    product.write_text("l1c bytes")
    script = (
        "import os, pathlib; "
        "inp = pathlib.Path(os.environ['REFSYS_INPUT_DIR']); out = pathlib.Path(os.environ['REFSYS_OUTPUT_DIR']); "
        "data = (inp / 'S2A_MSIL1C_20261125T101000_N0511_R022_T32TQM.zip').read_text(); "
        "(out / 'S2A_MSIL2A.zip').write_text(data.upper()); "
        "print('cwd', os.getcwd()); "
        "print('ids', os.environ['REFSYS_RUN_ID'], os.environ['REFSYS_STEP'], os.environ['REFSYS_ATTEMPT']); "
        "print('chain env', os.environ['MISSION']); "
        "print('secret', os.environ.get('REFSYS_TEST_SECRET'))"
    )
    launch = make_launch(script, env={"MISSION": "S2"}, inputs=[str(product)])

    assert executor.start(launch) == launch.execution_id
    result = wait_result(executor, launch)

    work = exec_dir(settings, launch)
    assert (result.outcome, result.exit_code, result.reason) == ("succeeded", 0, "exit code 0")
    assert result.output_dir == work / "out"
    assert (work / "out" / "S2A_MSIL2A.zip").read_text() == "L1C BYTES"
    assert sink.stream("stdout") == [
        f"cwd {work}",
        f"ids {launch.run_id} step 1",
        "chain env S2",
        "secret None",
    ]
    assert sink.lines[0][:3] == _key(launch)


@pytest.mark.parametrize(
    ("script", "exit_code", "reason"),
    [
        ("raise SystemExit(3)", 3, "exit code 3"),
        ("raise SystemExit(75)", 75, "exit code 75 (EX_TEMPFAIL): transient failure, a retry may succeed"),
        (
            "import os, signal; os.kill(os.getpid(), signal.SIGUSR1)",
            128 + signal.SIGUSR1,
            "killed by SIGUSR1",
        ),
    ],
)
def test_a_failing_step_reports_its_exit_code_and_why(
    executor: LocalExecutor, script: str, exit_code: int, reason: str
) -> None:
    launch = make_launch(script)
    executor.start(launch)
    result = wait_result(executor, launch)
    assert (result.outcome, result.exit_code, result.reason) == ("failed", exit_code, reason)


def test_a_command_that_cannot_start_fails_with_the_cause(executor: LocalExecutor) -> None:
    launch = make_launch("", command=["/nonexistent/processor"])
    executor.start(launch)
    result = wait_result(executor, launch)
    assert (result.outcome, result.exit_code) == ("failed", None)
    assert result.reason.startswith("cannot start /nonexistent/processor: ")


def test_a_missing_input_fails_the_step_naming_it(executor: LocalExecutor, tmp_path: Path) -> None:
    launch = make_launch("print('never')", inputs=[str(tmp_path / "gone.zip")])
    executor.start(launch)
    result = wait_result(executor, launch)
    assert (result.outcome, result.reason) == ("failed", f"input {tmp_path / 'gone.zip'}: no such file")


def test_a_limit_above_the_hard_limit_fails_the_step_saying_which(tmp_path: Path, sink: Sink) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("RLIMIT_NOFILE has no hard limit here")
    settings = make_settings(tmp_path, max_open_files=hard + 1)
    executor = LocalExecutor(settings, sink)
    try:
        launch = make_launch("print('never')")
        executor.start(launch)
        result = wait_result(executor, launch)
    finally:
        executor.close()
    assert (result.outcome, result.reason) == (
        "failed",
        f"RLIMIT_NOFILE {hard + 1} is above the hard limit {hard} refsys runs under",
    )


def test_bad_names_and_a_processor_without_command_are_refused(executor: LocalExecutor) -> None:
    with pytest.raises(ValueError, match=r"step '\.\./x': not usable as a directory name"):
        executor.start(make_launch("pass", step="../x"))
    with pytest.raises(ValueError, match="processor test 1: no command for the local executor"):
        executor.start(make_launch("", command=[]))


# -- killing the whole process group

GRANDCHILD_STEP = """
import os, pathlib, signal, subprocess, sys, time
if {ignore_term}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
out = pathlib.Path(os.environ['REFSYS_OUTPUT_DIR'])
grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
(out / 'pgid.tmp').write_text(str(os.getpgrp()))
os.rename(out / 'pgid.tmp', out / 'pgid')
time.sleep(600)
"""


@pytest.mark.parametrize(("ignore_term", "last_signal"), [(False, "SIGTERM"), (True, "SIGKILL")])
def test_a_timeout_kills_the_whole_process_group(
    executor: LocalExecutor, settings: Settings, ignore_term: bool, last_signal: str
) -> None:
    launch = make_launch(GRANDCHILD_STEP.format(ignore_term=ignore_term), timeout_s=1)
    executor.start(launch)
    result = wait_result(executor, launch)

    pgid = int((exec_dir(settings, launch) / "out" / "pgid").read_text())
    assert result.outcome == "timed-out"
    assert result.reason == f"timed out after 1 s; process group killed with {last_signal}"
    assert result.exit_code == 128 + getattr(signal, last_signal)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_cancel_kills_the_whole_process_group(executor: LocalExecutor, settings: Settings) -> None:
    launch = make_launch(GRANDCHILD_STEP.format(ignore_term=False))
    executor.start(launch)
    pgid_file = exec_dir(settings, launch) / "out" / "pgid"
    wait_for(pgid_file.exists, "the step to start its grandchild")

    executor.cancel(launch.run_id, launch.step, launch.attempt)
    result = wait_result(executor, launch)

    assert (result.outcome, result.reason) == (
        "cancelled",
        "cancelled (SIGTERM to the supervisor); process group killed with SIGTERM",
    )
    assert group_gone(int(pgid_file.read_text()))


def test_cancel_right_after_start_cancels_whether_or_not_the_step_began(executor: LocalExecutor) -> None:
    launch = make_launch("import time; time.sleep(600)")
    executor.start(launch)
    executor.cancel(launch.run_id, launch.step, launch.attempt)
    assert wait_result(executor, launch).outcome == "cancelled"


def test_processes_left_behind_by_a_step_that_ended_are_killed(
    executor: LocalExecutor, settings: Settings
) -> None:
    script = (
        "import os, pathlib, subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "(pathlib.Path(os.environ['REFSYS_OUTPUT_DIR']) / 'pgid').write_text(str(os.getpgrp()))"
    )
    launch = make_launch(script)
    executor.start(launch)
    result = wait_result(executor, launch)
    assert (result.outcome, result.reason) == (
        "succeeded",
        "exit code 0; leftover processes of the step killed with SIGTERM",
    )
    assert group_gone(int((exec_dir(settings, launch) / "out" / "pgid").read_text()))


# -- limits


def test_rlimits_apply_to_the_step(executor: LocalExecutor, sink: Sink) -> None:
    script = (
        "import resource; "
        "print('nofile', *resource.getrlimit(resource.RLIMIT_NOFILE)); "
        "print('as', *resource.getrlimit(resource.RLIMIT_AS)); "
        "print('cpu', resource.getrlimit(resource.RLIMIT_CPU)[0]); "
        "print('core', *resource.getrlimit(resource.RLIMIT_CORE))"
    )
    launch = make_launch(script, memory_mib=300)
    executor.start(launch)
    assert wait_result(executor, launch).outcome == "succeeded"
    as_bytes = 300 * 2 * 1024 * 1024  # memory_mib_factor 2.0
    assert sink.stream("stdout") == ["nofile 64 64", f"as {as_bytes} {as_bytes}", "cpu 600", "core 0 0"]


def test_a_step_over_its_cpu_seconds_is_killed_and_says_so(tmp_path: Path, sink: Sink) -> None:
    executor = LocalExecutor(make_settings(tmp_path, cpu_seconds=1), sink)
    try:
        launch = make_launch("while True: pass")
        executor.start(launch)
        result = wait_result(executor, launch)
    finally:
        executor.close()
    assert (result.outcome, result.exit_code, result.reason) == (
        "failed",
        128 + signal.SIGXCPU,
        "killed by SIGXCPU (CPU time limit)",
    )


# -- logs


def test_logs_are_forwarded_line_by_line_in_order_while_the_step_runs(
    executor: LocalExecutor, sink: Sink, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "print('first')\n"
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        "for i in range(300): print(f'out {i}')\n"
        "for i in range(50): print(f'err {i}', file=sys.stderr)\n"
        "print('caf\\u00e9 \\u2014 ok')\n"
        "sys.stdout.write('partial last line')\n"
    )
    launch = make_launch(script)
    executor.start(launch)
    wait_for(lambda: sink.stream("stdout") == ["first"], "the first line while the step runs")
    go.touch()
    assert wait_result(executor, launch).outcome == "succeeded"

    # Every line is forwarded by the time the result is returned.
    assert sink.stream("stdout") == [
        "first",
        *[f"out {i}" for i in range(300)],
        "café — ok",
        "partial last line",
    ]
    assert sink.stream("stderr") == [f"err {i}" for i in range(50)]


def test_a_partial_line_is_held_until_it_is_complete(
    executor: LocalExecutor, sink: Sink, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    script = (
        "import pathlib, sys, time\n"
        "sys.stdout.write('whole\\npar')\n"  # one write: the tailer reads both pieces at once
        f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        "print('tial')\n"
    )
    launch = make_launch(script)
    executor.start(launch)
    wait_for(lambda: sink.stream("stdout") != [], "the first line")
    assert sink.stream("stdout") == ["whole"]
    go.touch()
    assert wait_result(executor, launch).outcome == "succeeded"
    assert sink.stream("stdout") == ["whole", "partial"]


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_restarted_executor_forwards_again_from_the_last_checkpoint(
    executor: LocalExecutor, settings: Settings, sink: Sink, checkpointed: bool
) -> None:
    launch = make_launch("for i in range(20): print(i)")
    executor.start(launch)
    wait_result(executor, launch)
    assert sink.stream("stdout") == [str(i) for i in range(20)]
    if checkpointed:
        executor.logs_checkpoint()()  # what the engine does once its sink has stored the lines

    later = Sink()
    again = LocalExecutor(settings, later)
    try:
        assert again.adopt(launch, launch.execution_id)
        assert wait_result(again, launch).outcome == "succeeded"
    finally:
        again.close()
    # Stored lines are not sent again; lines never confirmed stored are (at least once).
    assert later.stream("stdout") == ([] if checkpointed else [str(i) for i in range(20)])


# -- idempotence


def test_starting_an_execution_twice_runs_it_once(
    executor: LocalExecutor, settings: Settings, sink: Sink, tmp_path: Path
) -> None:
    side_log = tmp_path / "side.log"
    script = f"import os; fd = os.open({str(side_log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND); os.write(fd, b'ran\\n')"
    launch = make_launch(script)
    other = LocalExecutor(settings, Sink())  # a second control plane racing for the same execution
    try:
        refs = {executor.start(launch), other.start(launch), executor.start(launch)}
        assert refs == {launch.execution_id}
        assert wait_result(executor, launch).outcome == "succeeded"
        assert wait_result(other, launch).outcome == "succeeded"
    finally:
        other.close()
    assert side_log.read_text() == "ran\n"
    assert executor.poll() == []


def test_each_result_is_returned_once(executor: LocalExecutor) -> None:
    launches = [make_launch("pass", step=f"s{i}") for i in range(3)]
    for launch in launches:
        executor.start(launch)
    seen: list[str] = []

    def three() -> bool:
        seen.extend(result.step for result in executor.poll())
        return len(seen) >= 3

    wait_for(three, "three results")
    assert sorted(seen) == ["s0", "s1", "s2"]
    assert executor.poll() == []


def test_an_execution_whose_directory_was_removed_by_hand_is_reported_lost(
    executor: LocalExecutor, settings: Settings, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    launch = make_launch(
        f"import pathlib, time\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)"
    )
    executor.start(launch)
    work = exec_dir(settings, launch)
    wait_for((work / "step.json").exists, "the step to start")
    shutil.rmtree(work)
    go.touch()
    result = wait_result(executor, launch)
    assert (result.outcome, result.exit_code) == ("lost", None)
    assert result.reason.startswith("execution state unreadable: ")


def test_adopt_knows_nothing_of_an_execution_never_started(executor: LocalExecutor) -> None:
    assert executor.adopt(make_launch("pass"), None) is False


# -- the fork server


def _forkserver_pids() -> set[int]:
    """Fork servers this process started (its forked supervisors share the command line, not the parent)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                if ppid == os.getpid() and b"local_forkserver" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def test_supervisors_are_forked_by_one_fork_server_that_leaves_with_the_executor(
    settings: Settings, sink: Sink
) -> None:
    before = _forkserver_pids()
    executor = LocalExecutor(settings, sink)
    try:
        launches = [make_launch("print('hello')", step=f"s{index}") for index in range(3)]
        for launch in launches:
            executor.start(launch)
        servers = _forkserver_pids() - before
        assert len(servers) == 1  # one warm server for every execution
        results: dict[str, StepResult] = {}

        def all_ended() -> bool:
            results.update((result.step, result) for result in executor.poll())
            return len(results) == len(launches)

        wait_for(all_ended, "three results")
        assert {result.outcome for result in results.values()} == {"succeeded"}
        for launch in launches:
            supervisor = (exec_dir(settings, launch) / "supervisor.json").read_text()
            assert '"pid"' in supervisor  # the forked supervisor claimed its execution as a spawned one does
    finally:
        executor.close()
    wait_for(lambda: not (_forkserver_pids() - before), "the fork server to exit with its executor")


def test_without_a_fork_server_supervisors_are_spawned_directly(settings: Settings, sink: Sink) -> None:
    executor = LocalExecutor(settings, sink, use_forkserver=False)
    try:
        launch = make_launch("print('direct')")
        before = _forkserver_pids()
        executor.start(launch)
        assert _forkserver_pids() == before
        assert wait_result(executor, launch).outcome == "succeeded"
    finally:
        executor.close()
