"""The local executor (embedded default): each step execution is a subprocess in a work directory of its own,
run by a supervisor process that outlives the control plane.

Layout: ``WORK_DIR/<run_id>/<step>/<attempt>/`` holds ``launch.json`` (what to run, written once by ``start``),
``supervisor.json`` (the supervisor's pid and start time: the claim on the execution), ``step.json`` (the step's
process group), ``in/`` (the inputs, hard-linked or symlinked), ``out/`` (``REFSYS_OUTPUT_DIR``), ``tmp/``,
``stdout.log``, ``stderr.log``, ``log-offsets.json`` (how far the lines were forwarded and stored, see
``local_logs``) and, at the end, ``result.json``. The files are the whole state: a control plane SIGKILLed
at any moment loses nothing, and a restarted one adopts running executions (``adopt``) without ever running one
twice (``local_supervisor`` explains the claim).

The step runs with the execution directory as cwd, a process group of its own, and an environment made only of
PATH/LANG/LC_*/TZ, ``HOME`` (the execution directory), ``TMPDIR`` (its ``tmp/``), ``PYTHONUNBUFFERED=1`` (live
logs from Python steps), the chain's ``env`` (which overrides those), then ``REFSYS_OUTPUT_DIR``,
``REFSYS_INPUT_DIR``, ``REFSYS_RUN_ID``, ``REFSYS_STEP`` and ``REFSYS_ATTEMPT``; nothing else of the control
plane's environment (its database URL or tokens) reaches it. Limits: RLIMIT_AS (memory request times
``memory_mib_factor``), RLIMIT_NOFILE, RLIMIT_CPU when ``cpu_seconds`` is set, no core files.

Exit codes
----------
How the step's end becomes a ``StepResult`` (``exit_code``, ``outcome``, ``reason``):

- ``0``: ``succeeded``.
- any other code: ``failed``; the engine retries up to the step's ``max_attempts``, then parks the run.
- ``75`` (EX_TEMPFAIL, sysexits.h): ``failed``, with "transient" in the reason: the step says a retry may
  well succeed (an input not readable yet, a service busy).
- killed by a signal it did not get from refsys (a crash, the OOM killer, RLIMIT_CPU's SIGXCPU): ``failed``,
  exit code 128 + the signal number (as shells and Kubernetes report it), the signal named in the reason.
- still running at the step's timeout: ``timed-out``; the whole process group gets SIGTERM, then SIGKILL after
  the grace period.
- cancelled (``cancel``): ``cancelled``; the whole process group is killed the same way.
- the main process ended but left processes in its group: those are killed; the outcome follows the exit code.
- the supervisor vanished without a result (SIGKILLed, the machine rebooted): ``lost``, exit code None; any
  leftover process of the group is killed first, so a new attempt never overlaps it.
- the command cannot be started, an input is missing, or a limit is above what refsys may set: ``failed``,
  exit code None, the cause in the reason.

A step that moves itself out of its process group (``setsid``) escapes the group kill; only a cgroup (the
Kubernetes executor) contains such a step.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast, get_args

import pipelines
from control_plane.core.config import Settings
from pipelines.executors import local_supervisor as files
from pipelines.executors.base import Executor, LogSink, Outcome, StepLaunch, StepResult
from pipelines.executors.local_logs import ExecutionLogs

log = logging.getLogger(__name__)

SUPERVISOR_LOG = "supervisor.log"
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
"""The only variables of the control plane's environment a step inherits."""
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
GROUP_GONE_TIMEOUT_S = 30.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PACKAGE_ROOT = Path(pipelines.__file__).resolve().parent.parent
_HERE = str(Path(files.__file__).resolve().parent)
_SUPERVISOR_BOOT = (
    f"import sys; sys.path.insert(0, {_HERE!r}); from local_supervisor import main; sys.exit(main())"
)
"""Runs the supervisor by path under ``python -S -E`` (see ``local_supervisor``: it must start fast)."""
_FORKSERVER_BOOT = (
    f"import sys; sys.path.insert(0, {_HERE!r}); from local_forkserver import serve; sys.exit(serve())"
)
"""Runs the fork server the same way (see ``local_forkserver``)."""

Key = tuple[str, str, int]


@dataclass
class _Execution:
    key: Key
    dir: Path
    logs: ExecutionLogs
    child: int | None = None
    """The supervisor's pid when this process started it (to reap it, and to know it is still booting)."""
    forked: tuple[int, int] | None = None
    """The supervisor's pid and start time when the fork server started it (to know it is still booting)."""

    @property
    def output_dir(self) -> Path:
        return self.dir / files.OUTPUT_DIR


class LocalExecutor(Executor):
    """Runs each step execution under a ``local_supervisor`` process; see the module docstring.

    ``on_log`` is called from the executor's log thread, and from ``poll`` for an execution's last lines (so
    that every line is forwarded before its result is returned); it must be thread-safe. A line may be
    forwarded twice across a crash (at least once), never lost (see ``logs_checkpoint``).
    """

    name = "local"

    def __init__(
        self,
        settings: Settings,
        on_log: LogSink,
        *,
        kill_grace_s: float = 5.0,
        log_poll_s: float = 0.2,
        use_forkserver: bool = True,
    ) -> None:
        self._root = settings.work_dir
        self._limits = settings.production.local
        self._on_log = on_log
        self._kill_grace_s = kill_grace_s
        self._log_poll_s = log_poll_s
        self._lock = threading.Lock()
        self._watched: dict[Key, _Execution] = {}
        self._stop = threading.Event()
        self._tailer: threading.Thread | None = None
        self._exiting: list[int] = []
        """Supervisors whose result was delivered before they exited: reaped by later polls."""
        self._ended_since_checkpoint: list[_Execution] = []
        self._use_forkserver = use_forkserver
        self._forkserver = _ForkServer(self._supervisor_env())

    # -- the Executor interface

    def start(self, launch: StepLaunch) -> str:
        key = (launch.run_id, launch.step, launch.attempt)
        with self._lock:
            if key in self._watched:
                return launch.execution_id
        execution = self._execution(key)
        execution.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        claimed = files.write_exclusive(
            execution.dir / files.LAUNCH, self._launch_document(launch, execution)
        )
        # Started before (by this process before a crash, or by one that died): a supervisor may be booting
        # still, or never have been spawned. Spawning one more is safe: of two, only one claims the execution.
        if claimed or not (execution.dir / files.SUPERVISOR).exists():
            forked = self._forkserver.fork(execution.dir) if self._use_forkserver else None
            if forked is not None:
                execution.forked = forked
            else:
                execution.child = self._spawn_supervisor(execution.dir)
        self._watch(execution)
        return launch.execution_id

    def adopt(self, launch: StepLaunch, ref: str | None) -> bool:
        key = (launch.run_id, launch.step, launch.attempt)
        with self._lock:
            if key in self._watched:
                return True
        execution = self._execution(key)
        if not (execution.dir / files.LAUNCH).exists():
            return False  # never started: no supervisor can be running it
        if (
            (execution.dir / files.RESULT).exists()
            or self._supervisor_alive(execution)
            or not self._close_lost(execution)
        ):
            self._watch(execution)
            return True
        return False

    def poll(self) -> list[StepResult]:
        with self._lock:
            executions = list(self._watched.values())
        results = []
        for execution in executions:
            try:
                result = self._result(execution)
            except (OSError, ValueError, KeyError) as error:
                # Its directory removed or damaged by hand: reporting it lost beats polling it for ever.
                log.exception("execution %s: state unreadable", execution.dir)
                run_id, step, attempt = execution.key
                result = StepResult(
                    run_id, step, attempt, "lost", None, f"execution state unreadable: {error}"
                )
            if result is None:
                continue
            try:
                execution.logs.forward(final=True)
            except OSError:
                log.exception("forwarding the last lines of %s failed", execution.dir)
            with self._lock:
                delivered = self._watched.pop(execution.key, None) is not None
            if delivered:
                results.append(result)
                self._ended_since_checkpoint.append(execution)
                if execution.child is not None:
                    self._exiting.append(execution.child)
        self._exiting = [pid for pid in self._exiting if _running_child(pid)]
        return results

    def cancel(self, run_id: str, step: str, attempt: int) -> None:
        execution = self._execution((run_id, step, attempt))
        if not (execution.dir / files.LAUNCH).exists():
            return
        # The mark covers a supervisor not yet claiming (nothing to signal): it reads the mark after its claim.
        (execution.dir / files.CANCEL).touch()
        supervisor = files.read_json(execution.dir / files.SUPERVISOR)
        if supervisor and supervisor["pid"] is not None:
            _signal_process(supervisor["pid"], supervisor["start_time"], signal.SIGTERM)

    def logs_checkpoint(self) -> Callable[[], None]:
        """How far the lines of every execution have been forwarded, as a function that saves it.

        The engine's log sink buffers lines and stores them in batches. Saving the offsets as lines are
        forwarded would let a crash lose the buffered ones; instead the engine takes a checkpoint, stores what
        its sink holds, then calls the checkpoint. The saved offsets never run ahead of stored lines: after a
        crash a restarted executor forwards again from the last checkpoint (at least once), and without any
        checkpoint from the start of each log.
        """
        with self._lock:
            executions = [*self._watched.values(), *self._ended_since_checkpoint]
            self._ended_since_checkpoint = []
        snapshot = [(execution.logs, execution.logs.offsets()) for execution in executions]

        def save() -> None:
            for logs, offsets in snapshot:
                logs.save(offsets)

        return save

    def close(self) -> None:
        self._forkserver.close()
        self._stop.set()
        if self._tailer is not None:
            self._tailer.join()
            self._tailer = None

    # -- executions and their files

    def _execution(self, key: Key) -> _Execution:
        run_id, step, attempt = key
        for item, value in (("run id", run_id), ("step", step)):
            if not _NAME.fullmatch(value) or value in (".", ".."):
                raise ValueError(f"{item} {value!r}: not usable as a directory name")
        if attempt < 0:
            raise ValueError(f"attempt {attempt}: must not be negative")
        exec_dir = self._root / run_id / step / str(attempt)
        return _Execution(key=key, dir=exec_dir, logs=ExecutionLogs(exec_dir, key, self._on_log))

    def _launch_document(self, launch: StepLaunch, execution: _Execution) -> dict[str, Any]:
        processor = launch.processor
        if not processor.command:
            raise ValueError(
                f"processor {processor.name} {processor.version}: no command for the local executor"
            )
        command = [part.replace("{python}", sys.executable) for part in processor.command] + launch.args
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        env.update(
            HOME=str(execution.dir),
            TMPDIR=str(execution.dir / files.TMP_DIR),
            PYTHONUNBUFFERED="1",
            # The processors are refsys modules run by refsys's interpreter, whether installed or from a checkout.
            PYTHONPATH=str(_PACKAGE_ROOT),
        )
        env.update(launch.env)
        env.update(
            REFSYS_OUTPUT_DIR=str(execution.output_dir),
            REFSYS_INPUT_DIR=str(execution.dir / files.INPUT_DIR),
            REFSYS_RUN_ID=launch.run_id,
            REFSYS_STEP=launch.step,
            REFSYS_ATTEMPT=str(launch.attempt),
        )
        return {
            "execution": launch.execution_id,
            "command": command,
            "env": env,
            "inputs": list(launch.input_paths),
            "timeout_s": launch.timeout_s,
            "kill_grace_s": self._kill_grace_s,
            "rlimits": {
                "as_bytes": int(launch.resources.memory_mib * self._limits.memory_mib_factor * 1024 * 1024),
                "nofile": self._limits.max_open_files,
                "cpu_s": self._limits.cpu_seconds,
            },
        }

    def _spawn_supervisor(self, exec_dir: Path) -> int:
        """Start a supervisor for the execution in ``exec_dir``; its pid.

        ``posix_spawn`` in a new session (the control plane's death spares it); the supervisor closes every
        descriptor it inherits beyond stdin/stdout/stderr itself.
        """
        append = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        return os.posix_spawn(
            sys.executable,
            [sys.executable, "-S", "-E", "-c", _SUPERVISOR_BOOT, str(exec_dir)],
            self._supervisor_env(),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(exec_dir / SUPERVISOR_LOG), append, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )

    @staticmethod
    def _supervisor_env() -> dict[str, str]:
        return {name: os.environ[name] for name in PASSED_ENV if name in os.environ}

    def _watch(self, execution: _Execution) -> None:
        execution.logs.resume()
        with self._lock:
            self._watched.setdefault(execution.key, execution)
            if self._tailer is None:
                self._tailer = threading.Thread(
                    target=self._tail_loop, name="local-executor-logs", daemon=True
                )
                self._tailer.start()

    def _supervisor_alive(self, execution: _Execution) -> bool:
        if execution.forked is not None:
            pid, start_time = execution.forked
            if files.process_start_time(pid) == start_time:
                return True  # forked for us and running, maybe not claimed yet
            execution.forked = None
        if execution.child is not None:
            if _running_child(execution.child):
                return True  # ours and running, maybe not claimed yet
            execution.child = None
        supervisor = files.read_json(execution.dir / files.SUPERVISOR)
        if supervisor is None or supervisor["pid"] is None:
            return False
        return files.process_start_time(supervisor["pid"]) == supervisor["start_time"]

    def _result(self, execution: _Execution) -> StepResult | None:
        """The execution's result once it has ended; one that ended without a result is closed as lost."""
        result_file = execution.dir / files.RESULT
        if not result_file.exists():
            if self._supervisor_alive(execution):
                return None
            if not result_file.exists() and not self._close_lost(execution):
                return None
        return self._read_result(execution)

    def _close_lost(self, execution: _Execution) -> bool:
        """Make sure an execution whose supervisor is gone can never run again, kill what is left of its step,
        and record a result: ``lost`` (or ``cancelled``, when a cancel was asked). False when a supervisor
        turns out to hold the execution after all (it claimed it meanwhile)."""
        # A tombstone claim, so that a supervisor still booting (spawned just before a crash) gives up.
        files.write_exclusive(execution.dir / files.SUPERVISOR, {"pid": None, "start_time": None})
        supervisor = files.read_json(execution.dir / files.SUPERVISOR)
        if supervisor and supervisor["pid"] is not None and self._supervisor_alive(execution):
            return False
        killed = _kill_leftover_group(execution.dir)
        cancelled = (execution.dir / files.CANCEL).exists()
        reason = "cancelled" if cancelled else "the supervisor ended without a result"
        if killed:
            reason += "; leftover processes of the step killed with SIGKILL"
        files.write_exclusive(
            execution.dir / files.RESULT,
            {
                "outcome": "cancelled" if cancelled else "lost",
                "exit_code": None,
                "reason": reason,
                "started_at": None,
                "ended_at": files.utc_now(),
                "pgid": None,
            },
        )
        return True

    def _read_result(self, execution: _Execution) -> StepResult | None:
        document = files.read_json(execution.dir / files.RESULT)
        if document is None:
            return None
        outcome = document["outcome"]
        if outcome not in get_args(Outcome):
            raise ValueError(f"{execution.dir / files.RESULT}: unknown outcome {outcome!r}")
        run_id, step, attempt = execution.key
        return StepResult(
            run_id=run_id,
            step=step,
            attempt=attempt,
            outcome=cast(Outcome, outcome),
            exit_code=document["exit_code"],
            reason=document["reason"],
            output_dir=execution.output_dir,
        )

    # -- logs

    def _tail_loop(self) -> None:
        while not self._stop.wait(self._log_poll_s):
            with self._lock:
                executions = list(self._watched.values())
            for execution in executions:
                try:
                    execution.logs.forward(final=False)
                except OSError:  # e.g. its directory removed by hand; poll() reports it
                    log.exception("tailing the logs of %s failed", execution.dir)


class _ForkServer:
    """The executor's end of ``local_forkserver``: started on first use, restarted when it died; ``fork``
    answers None whenever it cannot be used, and the executor spawns the supervisor itself instead."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def fork(self, exec_dir: Path) -> tuple[int, int] | None:
        with self._lock:
            try:
                process = self._running()
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(f"{exec_dir}\n".encode())
                process.stdin.flush()
                answer = process.stdout.readline().split()
                pid, start_time = int(answer[0]), int(answer[1])
            except (OSError, ValueError, IndexError) as error:
                log.warning("fork server unusable (%s): spawning supervisors directly", error)
                self._shut()
                return None
            return pid, start_time

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-S", "-E", "-c", _FORKSERVER_BOOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self._env,
                start_new_session=True,  # outlives a SIGKILLed control plane just long enough to see EOF
                close_fds=True,
            )
        return self._process

    def _shut(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def close(self) -> None:
        with self._lock:
            if self._process is not None:
                assert self._process.stdin is not None
                self._process.stdin.close()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._shut()
                self._process = None


def _running_child(pid: int) -> bool:
    """Whether a process this one started still runs; reaps it once it has ended."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return reaped == 0


def _signal_process(pid: int, start_time: int | None, signum: signal.Signals) -> None:
    """Signal ``pid`` only if it is still the process that started at ``start_time`` (a pidfd pins it first)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if files.process_start_time(pid) == start_time:
            signal.pidfd_send_signal(pidfd, signum)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def _kill_leftover_group(exec_dir: Path) -> bool:
    """SIGKILL what remains of a step's process group whose supervisor is gone; True when something was left.

    The group's leader may be gone while members remain; its pid cannot be reused while the group exists, so
    the group is ours unless its leader's pid now names a process that started at another time.
    """
    step = files.read_json(exec_dir / files.STEP)
    if step is None:
        return False
    pgid = step["pgid"]
    leader_start = files.process_start_time(pgid)
    if leader_start is not None and leader_start != step["start_time"]:
        return False
    if not _group_members(pgid):
        return False
    deadline = time.monotonic() + GROUP_GONE_TIMEOUT_S
    while _group_members(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    return True


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group: zombies hold no resource and run nothing."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


__all__ = ["LocalExecutor"]
