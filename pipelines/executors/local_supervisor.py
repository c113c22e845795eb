"""The supervisor of one local step execution: a small process that outlives the control plane.

``LocalExecutor.start`` writes ``launch.json`` into the execution directory and starts this module in a new
session (``start_new_session=True``), so a SIGKILLed control plane takes nothing with it. The supervisor:

1. blocks SIGTERM, SIGINT and SIGCHLD (it reads them with ``sigtimedwait``, so no signal is lost in a race) and
   becomes a child subreaper, so the step's orphaned grandchildren are reparented to it and reaped by it;
2. claims the execution by creating ``supervisor.json`` (its pid and the start time the kernel gives it in
   ``/proc/<pid>/stat``, which defeats pid reuse) with an exclusive link: when two supervisors race for one
   execution (a control plane that died between ``launch.json`` and the spawn, then a restarted one), exactly
   one runs it and the other exits;
3. links the inputs into ``in/``, starts the step command in a process group of its own with the rlimits of
   ``launch.json``, and writes the group to ``step.json`` (so a leftover group can be found and killed even
   if this supervisor is SIGKILLed); the step's stdout and stderr go straight to ``stdout.log`` and
   ``stderr.log`` (the step keeps writing them even if this process dies; the executor tails them);
4. on timeout or on SIGTERM (cancel) kills the whole group: SIGTERM, a grace period, SIGKILL; when the step's
   main process ends by itself, leftover processes of its group are killed the same way. It waits until no
   process of the group remains, then writes ``result.json`` (exclusive, so the first verdict stands).

It imports only the standard library and is started with ``python -S -E`` and a ``sys.path`` pointing at this
directory: a supervisor per step must start in a few milliseconds (site-packages and refsys's own imports would
double that). ``python -m pipelines.executors.local_supervisor EXEC_DIR`` runs it the same way by hand.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LAUNCH = "launch.json"
SUPERVISOR = "supervisor.json"
STEP = "step.json"
RESULT = "result.json"
CANCEL = "cancel"
STDOUT = "stdout.log"
STDERR = "stderr.log"
INPUT_DIR = "in"
OUTPUT_DIR = "out"
TMP_DIR = "tmp"

EX_TEMPFAIL = 75
"""sysexits.h: a temporary failure; the step failed but says a retry may well succeed."""
GROUP_GONE_TIMEOUT_S = 30.0
"""Longest wait for a SIGKILLed group to vanish (a process in uninterruptible sleep) before giving up on it."""
WATCHED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_CHILD_SUBREAPER = 36


def utc_now() -> str:
    """Now as RFC 3339 UTC with microseconds (the same shape as ``control_plane.core.clock.rfc3339``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def process_start_time(pid: int) -> int | None:
    """The start time of a live (not zombie) process, in clock ticks since boot; None when there is none.

    A pid can be reused; a pid with the start time recorded when it was ours cannot.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name, which is in parentheses and may itself hold spaces or parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def write_exclusive(path: Path, document: dict[str, Any]) -> bool:
    """Create ``path`` holding ``document`` atomically, unless it exists; True when this call created it.

    Written aside and hard-linked into place: readers never see a partial file, and of two writers exactly
    one wins (``link`` fails with EEXIST where ``rename`` would replace).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(document))
    tmp.chmod(0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def write_replace(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``document`` (readers see the old or the new file, never a mix)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file written by ``write_exclusive`` or ``write_replace``; None when it is not there."""
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return document


def exit_code_of(status: int) -> int:
    """A ``waitpid`` status as an exit code; 128 + the signal number for a process killed by a signal, as shells
    and Kubernetes report it."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def describe_exit(status: int) -> tuple[str, int, str]:
    """Outcome, exit code and reason of a step's main process that ended by itself, from its ``waitpid`` status."""
    code = exit_code_of(status)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        detail = " (CPU time limit)" if number == signal.SIGXCPU else ""
        return "failed", code, f"killed by {name}{detail}"
    if code == 0:
        return "succeeded", 0, "exit code 0"
    if code == EX_TEMPFAIL:
        return "failed", code, f"exit code {code} (EX_TEMPFAIL): transient failure, a retry may succeed"
    return "failed", code, f"exit code {code}"


class Supervisor:
    """Runs one execution described by ``EXEC_DIR/launch.json``; see the module docstring."""

    def __init__(self, exec_dir: Path) -> None:
        self.exec_dir = exec_dir
        self.launch: dict[str, Any] = {}
        self.pgid = 0
        self.main_status: int | None = None
        self.started_at = utc_now()

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED_SIGNALS)
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        launch = read_json(self.exec_dir / LAUNCH)
        if launch is None:
            print(f"{self.exec_dir}: no {LAUNCH}", file=sys.stderr)
            return 2
        self.launch = launch
        me = os.getpid()
        if not write_exclusive(self.exec_dir / SUPERVISOR, {"pid": me, "start_time": process_start_time(me)}):
            print(f"{self.exec_dir}: already claimed by another supervisor", file=sys.stderr)
            return 0
        # A cancel that came before the claim finds no supervisor to signal: it leaves this mark instead.
        if (self.exec_dir / CANCEL).exists():
            return self.finish("cancelled", None, "cancelled before the step started")
        problem = self.check_limits() or self.link_inputs()
        if problem:
            return self.finish("failed", None, problem)
        try:
            child = self.spawn()
        except OSError as error:
            return self.finish("failed", None, f"cannot start {launch['command'][0]}: {error}")
        self.pgid = child.pid
        write_replace(
            self.exec_dir / STEP,
            {"pid": child.pid, "pgid": child.pid, "start_time": process_start_time(child.pid)},
        )
        outcome, exit_code, reason = self.supervise(child.pid)
        child.returncode = exit_code  # reaped here, not by Popen; keeps Popen from reaping a reused pid
        return self.finish(outcome, exit_code, reason)

    def link_inputs(self) -> str | None:
        """Hard-link each input into ``in/`` (a symlink across filesystems or for a directory); a problem or None."""
        (self.exec_dir / OUTPUT_DIR).mkdir(exist_ok=True)
        (self.exec_dir / TMP_DIR).mkdir(exist_ok=True)
        inputs = self.exec_dir / INPUT_DIR
        inputs.mkdir(exist_ok=True)
        for source in map(Path, self.launch["inputs"]):
            target = inputs / source.name
            if not source.exists():
                return f"input {source}: no such file"
            if target.exists():
                return f"input {source}: another input is already named {source.name}"
            try:
                os.link(source, target)
            except OSError:
                target.symlink_to(source.absolute())
        return None

    def check_limits(self) -> str | None:
        """A limit above the supervisor's own hard limit cannot be set (only lowered): say so, or None."""
        limits = self.launch["rlimits"]
        for name, kind, value in (
            ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, limits["nofile"]),
            ("RLIMIT_AS", resource.RLIMIT_AS, limits["as_bytes"]),
            ("RLIMIT_CPU", resource.RLIMIT_CPU, limits["cpu_s"]),
        ):
            hard = resource.getrlimit(kind)[1]
            if value is not None and hard != resource.RLIM_INFINITY and value > hard:
                return f"{name} {value} is above the hard limit {hard} refsys runs under"
        return None

    def spawn(self) -> subprocess.Popen[bytes]:
        limits = self.launch["rlimits"]

        def in_child() -> None:
            # Runs between fork and exec: own process group, limits, and the signals this process blocked.
            os.setpgid(0, 0)
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
            resource.setrlimit(resource.RLIMIT_AS, (limits["as_bytes"], limits["as_bytes"]))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if limits["cpu_s"] is not None:
                resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED_SIGNALS)

        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        stdout = os.open(self.exec_dir / STDOUT, flags, 0o600)
        stderr = os.open(self.exec_dir / STDERR, flags, 0o600)
        try:
            return subprocess.Popen(
                self.launch["command"],
                cwd=self.exec_dir,
                env=self.launch["env"],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                preexec_fn=in_child,  # safe: this process is single-threaded
            )
        finally:
            os.close(stdout)
            os.close(stderr)

    def supervise(self, main_pid: int) -> tuple[str, int | None, str]:
        """Wait for the step's main process, its timeout or a cancel; return outcome, exit code, reason."""
        deadline = time.monotonic() + self.launch["timeout_s"]
        verdict: tuple[str, str] | None = None  # set by a timeout or a cancel: (outcome, reason)
        while self.main_status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                verdict = ("timed-out", f"timed out after {self.launch['timeout_s']} s")
                break
            info = signal.sigtimedwait(WATCHED_SIGNALS, remaining)
            if info is not None and info.si_signo != signal.SIGCHLD:
                verdict = ("cancelled", f"cancelled ({signal.Signals(info.si_signo).name} to the supervisor)")
                break
            self.reap(main_pid)
        if verdict is not None:
            killed_with = self.kill_group()
            outcome, reason = verdict
            exit_code = exit_code_of(self.main_status) if self.main_status is not None else None
            return outcome, exit_code, f"{reason}; process group killed with {killed_with}"
        assert self.main_status is not None
        outcome, exit_code, reason = describe_exit(self.main_status)
        if self.group_alive():
            reason = f"{reason}; leftover processes of the step killed with {self.kill_group()}"
        return outcome, exit_code, reason

    def reap(self, main_pid: int) -> None:
        """Collect every ended child (the step and orphans reparented here), noting the main process's status."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == main_pid:
                self.main_status = status

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill_group(self) -> str:
        """SIGTERM the step's group, SIGKILL what is left after the grace period; the last signal sent."""
        main_pid = self.pgid
        sent = "SIGTERM"
        self._signal_group(signal.SIGTERM)
        if self._wait_group_gone(self.launch["kill_grace_s"], main_pid):
            return sent
        sent = "SIGKILL"
        self._signal_group(signal.SIGKILL)
        if not self._wait_group_gone(GROUP_GONE_TIMEOUT_S, main_pid):
            print(f"process group {self.pgid} still present after SIGKILL", file=sys.stderr)
        return sent

    def _signal_group(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signum)

    def _wait_group_gone(self, timeout_s: float, main_pid: int) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            self.reap(main_pid)
            if not self.group_alive():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # Grandchildren are not all ours to be told about (their parent may be in the group): look often.
            signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.02))

    def finish(self, outcome: str, exit_code: int | None, reason: str) -> int:
        write_exclusive(
            self.exec_dir / RESULT,
            {
                "outcome": outcome,
                "exit_code": exit_code,
                "reason": reason,
                "started_at": self.started_at,
                "ended_at": utc_now(),
                "pgid": self.pgid or None,
            },
        )
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: local_supervisor EXEC_DIR", file=sys.stderr)
        return 2
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
