"""The stdout and stderr of one local step execution, forwarded line by line to the executor's log sink.

The step writes ``stdout.log`` and ``stderr.log`` in its execution directory (straight, not through the
supervisor, so nothing is lost when either process dies). ``ExecutionLogs`` reads what was appended since the
last call and hands each complete line to the sink; a partial last line is held until its newline comes or the
execution has ended. How far the lines went is saved to ``log-offsets.json`` only when the executor is told the
sink has stored them (``LocalExecutor.logs_checkpoint``), so a restarted executor forwards again from there:
at least once, never lost.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from pipelines.executors import local_supervisor as files
from pipelines.executors.base import LogSink

log = logging.getLogger(__name__)

OFFSETS = "log-offsets.json"
STREAMS = {"stdout": files.STDOUT, "stderr": files.STDERR}
MAX_LINE_BYTES = 64 * 1024
"""A longer line is forwarded in pieces of this size rather than held in memory without end."""
READ_CHUNK_BYTES = 1024 * 1024

Offsets = dict[str, int]


@dataclass
class _Stream:
    """How far one log file was forwarded (``offset``: the end of the last forwarded line) and what was read
    beyond it but not forwarded yet (a partial last line)."""

    path: Path
    offset: int = 0
    pending: bytes = b""


class ExecutionLogs:
    """The two log files of one execution, and how far each was forwarded."""

    def __init__(self, exec_dir: Path, key: tuple[str, str, int], on_log: LogSink) -> None:
        self.exec_dir = exec_dir
        self.key = key
        self._on_log = on_log
        self._streams = {name: _Stream(exec_dir / file) for name, file in STREAMS.items()}
        self._lock = threading.Lock()
        self._saved: Offsets = {}

    def resume(self) -> None:
        """Start from the saved offsets (a restarted executor), or from the start of each file."""
        saved = files.read_json(self.exec_dir / OFFSETS) or {}
        with self._lock:
            for name, stream in self._streams.items():
                stream.offset, stream.pending = int(saved.get(name, 0)), b""
            self._saved = self._offsets()

    def forward(self, *, final: bool) -> None:
        """Forward the complete lines written since the last call; all of them, a partial last one included,
        when ``final`` (the execution has ended)."""
        with self._lock:
            for name, stream in self._streams.items():
                try:
                    self._forward_stream(name, stream, final=final)
                except Exception:  # a failing sink must not stop the tailing; the lines are re-read next time
                    log.exception("forwarding %s of %s failed", name, self.exec_dir)
                    stream.pending = b""

    def offsets(self) -> Offsets:
        """How far the lines were forwarded: every line before these offsets has reached the sink."""
        with self._lock:
            return self._offsets()

    def save(self, offsets: Offsets) -> None:
        """Record ``offsets`` (taken by ``offsets()`` before the sink stored its lines) for a restart."""
        if offsets == self._saved:
            return
        try:
            files.write_replace(self.exec_dir / OFFSETS, offsets)
        except OSError:  # its directory removed by hand: nothing to resume there
            log.exception("saving the log offsets of %s failed", self.exec_dir)
            return
        self._saved = offsets

    def _offsets(self) -> Offsets:
        return {name: stream.offset for name, stream in self._streams.items()}

    def _forward_stream(self, name: str, stream: _Stream, *, final: bool) -> None:
        run_id, step, attempt = self.key
        try:
            handle = stream.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            handle.seek(stream.offset + len(stream.pending))
            while True:
                chunk = handle.read(READ_CHUNK_BYTES)
                if chunk:
                    *lines, stream.pending = (stream.pending + chunk).split(b"\n")
                    pieces = [(line, len(line) + 1) for line in lines]  # (text, bytes it takes in the file)
                    if len(stream.pending) > MAX_LINE_BYTES:
                        pieces.append((stream.pending, len(stream.pending)))
                        stream.pending = b""
                elif final and stream.pending:
                    pieces = [(stream.pending, len(stream.pending))]
                    stream.pending = b""
                else:
                    return
                for line, size in pieces:
                    self._on_log(run_id, step, attempt, name, line.decode("utf-8", "replace").rstrip("\r"))
                    stream.offset += size
