"""The supervisor of one local step execution: a small process that outlives the control plane.

``LocalExecutor.start`` writes ``launch.json`` into the execution directory and starts this module in a new
session (``posix_spawn(..., setsid=True)``), so a SIGKILLed control plane takes nothing with it. The supervisor:

1. blocks SIGTERM, SIGINT and SIGCHLD (it reads them with ``sigtimedwait``, so no signal is lost in a race) and
   becomes a child subreaper, so the step's orphaned grandchildren are reparented to it and reaped by it;
2. claims the execution by creating ``supervisor.json`` (its pid and the start time the kernel gives it in
   ``/proc/<pid>/stat``, which defeats pid reuse) with an exclusive link: when two supervisors race for one
   execution (a control plane that died between ``launch.json`` and the spawn, then a restarted one), exactly
   one runs it and the other exits;
3. links the inputs into ``in/``, starts the step command in a process group of its own with the rlimits of
   ``launch.json``; the group is in ``step.json`` before any of its processes runs the step (so a leftover
   group can be found and killed even if this supervisor is SIGKILLed); the step's stdout and stderr go
   straight to ``stdout.log`` and ``stderr.log`` (the step keeps writing them even if this process dies; the
   executor tails them);
4. on timeout or on SIGTERM (cancel) kills the whole group: SIGTERM, a grace period, SIGKILL; when the step's
   main process ends by itself, leftover processes of its group are killed the same way. It waits until no
   process of the group remains, then writes ``result.json`` (exclusive, so the first verdict stands).

A supervisor per step must start in a few milliseconds: it is started with ``python -S -E`` and a ``sys.path``
pointing at this directory, and imports only cheap standard modules (no site-packages, no refsys import, no
``subprocess``/``pathlib``/``typing``/``datetime``: those would double its CPU time, which a step of the
dispatch benchmark pays twice over). ``python -m pipelines.executors.local_supervisor EXEC_DIR`` runs it the
same way by hand.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    StrPath = str | os.PathLike[str]

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
MAX_FD = 1 << 20
"""Descriptors from 3 up to this one are closed at start (``close_range``: one system call)."""
STRAGGLER_WAIT_S = 0.1
"""How long processes left in the step's group after its main process ended may take to go by themselves."""
WATCHED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_CHILD_SUBREAPER = 36


def utc_now() -> str:
    """Now as RFC 3339 UTC with microseconds (the same shape as ``control_plane.core.clock.rfc3339``)."""
    now = time.time()
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now % 1 * 1_000_000):06d}Z"


def process_start_time(pid: int) -> int | None:
    """The start time of a live (not zombie) process, in clock ticks since boot; None when there is none.

    A pid can be reused; a pid with the start time recorded when it was ours cannot.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name, which is in parentheses and may itself hold spaces or parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _aside(path: StrPath) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{os.getpid()}.{time.monotonic_ns()}")


def _write(path: str, document: dict[str, Any]) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        json.dump(document, handle)


def write_exclusive(path: StrPath, document: dict[str, Any]) -> bool:
    """Create ``path`` holding ``document`` atomically, unless it exists; True when this call created it.

    Written aside and hard-linked into place: readers never see a partial file, and of two writers exactly
    one wins (``link`` fails with EEXIST where ``rename`` would replace).
    """
    tmp = _aside(path)
    _write(tmp, document)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def write_replace(path: StrPath, document: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``document`` (readers see the old or the new file, never a mix)."""
    tmp = _aside(path)
    _write(tmp, document)
    os.replace(tmp, path)


def read_json(path: StrPath) -> dict[str, Any] | None:
    """A JSON file written by ``write_exclusive`` or ``write_replace``; None when it is not there."""
    try:
        with open(path) as handle:
            document: dict[str, Any] = json.load(handle)
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

    def __init__(self, exec_dir: str) -> None:
        self.exec_dir = exec_dir
        self.launch: dict[str, Any] = {}
        self.pgid = 0
        self.main_status: int | None = None
        self.started_at = utc_now()

    def path(self, name: str) -> str:
        return os.path.join(self.exec_dir, name)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED_SIGNALS)
        os.closerange(3, MAX_FD)  # whatever the control plane let through must not reach the step
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        launch = read_json(self.path(LAUNCH))
        if launch is None:
            print(f"{self.exec_dir}: no {LAUNCH}", file=sys.stderr)
            return 2
        self.launch = launch
        me = os.getpid()
        if not write_exclusive(self.path(SUPERVISOR), {"pid": me, "start_time": process_start_time(me)}):
            print(f"{self.exec_dir}: already claimed by another supervisor", file=sys.stderr)
            return 0
        # A cancel that came before the claim finds no supervisor to signal: it leaves this mark instead.
        if os.path.exists(self.path(CANCEL)):
            return self.finish("cancelled", None, "cancelled before the step started")
        problem = self.check_limits() or self.link_inputs()
        if problem:
            return self.finish("failed", None, problem)
        main_pid, problem = self.spawn()
        if problem:
            return self.finish("failed", None, f"cannot start {launch['command'][0]}: {problem}")
        self.pgid = main_pid
        return self.finish(*self.supervise(main_pid))

    def link_inputs(self) -> str | None:
        """Hard-link each input into ``in/`` (a symlink across filesystems or for a directory); a problem or None."""
        for name in (OUTPUT_DIR, TMP_DIR, INPUT_DIR):
            os.makedirs(self.path(name), exist_ok=True)
        for source in self.launch["inputs"]:
            target = os.path.join(self.path(INPUT_DIR), os.path.basename(source))
            if not os.path.exists(source):
                return f"input {source}: no such file"
            if os.path.lexists(target):
                return f"input {source}: another input is already named {os.path.basename(source)}"
            try:
                os.link(source, target)
            except OSError:
                os.symlink(os.path.abspath(source), target)
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

    def spawn(self) -> tuple[int, str | None]:
        """Fork and exec the step in a process group of its own; its pid, and why it could not start (or None).

        A plain fork/exec rather than ``subprocess`` (see the module docstring); an exec failure comes back
        through a close-on-exec pipe, which simply closes when the exec succeeds.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        stdout = os.open(self.path(STDOUT), flags, 0o600)
        stderr = os.open(self.path(STDERR), flags, 0o600)
        stdin = os.open(os.devnull, os.O_RDONLY)
        errors_read, errors_write = os.pipe()  # close-on-exec, as every descriptor Python opens
        pid = os.fork()
        if pid == 0:
            try:
                self.become_step(stdin, stdout, stderr)
            except BaseException as error:
                os.write(errors_write, str(error).encode())
            finally:
                os._exit(127)
        for fd in (stdout, stderr, stdin, errors_write):
            os.close(fd)
        with open(errors_read, "rb") as errors:
            problem = errors.read().decode(errors="replace")
        if problem:
            os.waitpid(pid, 0)
            return pid, problem
        return pid, None

    def become_step(self, stdin: int, stdout: int, stderr: int) -> None:
        """In the forked child: own process group, limits, standard streams, unblocked signals, then exec.

        The child records its group itself, before the exec: whenever a process of the group exists,
        ``step.json`` names the group, even if the supervisor was SIGKILLed right after the fork.
        """
        os.setpgid(0, 0)
        me = os.getpid()
        write_replace(self.path(STEP), {"pid": me, "pgid": me, "start_time": process_start_time(me)})
        limits = self.launch["rlimits"]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits["nofile"], limits["nofile"]))
        resource.setrlimit(resource.RLIMIT_AS, (limits["as_bytes"], limits["as_bytes"]))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits["cpu_s"] is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 1))
        os.chdir(self.exec_dir)
        for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(source, target)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for ignored_by_python in (signal.SIGPIPE, signal.SIGXFSZ):  # a step gets the defaults a shell gives
            signal.signal(ignored_by_python, signal.SIG_DFL)
        command = self.launch["command"]
        os.execvpe(command[0], command, self.launch["env"])  # noqa: S606 - the processor table's command, no shell

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
        # Orphans of the step may be on their way to this subreaper as zombies: give them a moment to be reaped.
        if not self._wait_group_gone(STRAGGLER_WAIT_S, main_pid):
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
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return

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
            self.path(RESULT),
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
    return Supervisor(args[0]).run()


if __name__ == "__main__":
    sys.exit(main())
