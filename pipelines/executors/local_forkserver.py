"""A fork server for local supervisors: one warm process that forks a supervisor per step execution.

Starting a supervisor as a fresh interpreter costs ~20 ms of CPU (most of a no-op step's cost); forking it from
a process that has already imported ``local_supervisor`` costs about a millisecond. The server is started by
``LocalExecutor`` in a session of its own, under ``python -S -E`` like a supervisor, and speaks a line protocol
on its standard streams: the executor writes an execution directory, the server forks, answers
``PID START_TIME`` (the start time read while the child cannot have been reaped, so the pair names that
process for good) and goes on.

Each forked supervisor makes its own session and is then exactly what a spawned one is (same code, same files),
so the crash-safety argument of ``local_supervisor`` holds unchanged. The server exits when the executor closes
its pipe or dies (end of file on stdin); supervisors it forked keep running, and are reparented. It reaps its
exited children at every request and every second, so none lingers as a zombie.
"""

from __future__ import annotations

import os
import select
import sys

import local_supervisor  # imported by path (see LocalExecutor): no package import under python -S

REAP_EVERY_S = 1.0
SUPERVISOR_LOG = "supervisor.log"


def _reap() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supervise(exec_dir: str) -> None:
    """In the forked child: a session of its own, the standard streams a spawned supervisor gets, then run."""
    code = 70  # EX_SOFTWARE, should the supervisor itself fail
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(os.path.join(exec_dir, SUPERVISOR_LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = local_supervisor.main([exec_dir])
    finally:
        os._exit(code)


def serve() -> int:
    pending = b""
    while True:
        if b"\n" not in pending:
            ready, _, _ = select.select([0], [], [], REAP_EVERY_S)
            _reap()
            if not ready:
                continue
            chunk = os.read(0, 65536)
            if not chunk:
                return 0  # the executor is gone
            pending += chunk
            continue
        line, pending = pending.split(b"\n", 1)
        pid = os.fork()
        if pid == 0:
            _supervise(line.decode())
        start_time = local_supervisor.process_start_time(pid)  # None: it already ended (a zombie)
        os.write(1, f"{pid} {start_time if start_time is not None else -1}\n".encode())
        _reap()


if __name__ == "__main__":
    sys.exit(serve())
