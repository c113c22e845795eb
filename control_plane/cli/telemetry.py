"""Telemetry commands: ``refsys ingest`` (files, in-process or to a server) and ``refsys collect`` (follow)."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path
from typing import Any

import click
from prometheus_client import CollectorRegistry

from control_plane.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    config_option,
    fail,
    open_state,
    open_trail,
    settings_from,
)
from control_plane.core.audit.trail import Actor
from control_plane.core.bus import create_bus
from control_plane.core.logs import configure_logging
from security.alerts.manager import IncidentManager
from security.alerts.model import Alert
from security.detection.catalog import RuleCatalog
from security.detection.evaluation import InlineDetection
from security.hooks.notifier import Notifier
from security.intake.client import IngestClient, IngestRefused
from security.intake.collector import Collector, Position
from security.intake.files import DEFAULT_BATCH_BYTES, Batch, file_batches
from security.intake.service import SpoolFull
from security.sources.registry import ADAPTERS, adapter_for
from security.telemetry import Telemetry

URL_HELP = (
    "A running refsys server (token in REFSYS_TOKEN); without it, work in-process on the configured stores."
)
INGEST_ATTEMPTS = 12


def register(main: click.Group) -> None:
    main.add_command(ingest)
    main.add_command(collect)


def _token() -> str:
    token = os.environ.get("REFSYS_TOKEN", "").strip()
    if not token:
        fail("--url needs a bearer token in REFSYS_TOKEN (an ingest machine key or a token)", EXIT_USAGE)
    return token


@contextmanager
def _progress(total_bytes: int) -> Iterator[Any]:
    """A progress bar on a terminal, nothing otherwise (logs and pipes stay clean)."""
    if sys.stderr.isatty():
        with click.progressbar(length=total_bytes, label="ingesting", file=sys.stderr) as bar:
            yield bar
    else:
        yield None


@click.command()
@config_option
@click.option("--source", required=True, type=click.Choice(sorted(ADAPTERS)), help="Source adapter.")
@click.option("--url", envvar="REFSYS_URL", default=None, help=URL_HELP)
@click.option("--batch-bytes", type=click.IntRange(1024), default=DEFAULT_BATCH_BYTES, show_default=True,
              help="Largest batch sent at once (keep it under the server's body limit).")  # fmt: skip
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def ingest(
    config_file: Path | None, source: str, url: str | None, batch_bytes: int, files: tuple[Path, ...]
) -> None:
    """Normalise, store and detect FILES; print a JSON summary. Rejected lines go to the dead-letter store."""
    adapter = type(adapter_for(source))
    totals: Counter[str] = Counter()
    per_file: dict[str, dict[str, int]] = {}
    with _progress(sum(path.stat().st_size for path in files)) as bar:
        send: _LocalSender | _RemoteSender = (
            _RemoteSender(url, source) if url else _LocalSender(config_file, source)
        )
        try:
            for path in files:
                counts: Counter[str] = Counter()
                for batch in file_batches(path, adapter, max_bytes=batch_bytes):
                    summary = send(batch)
                    for name in ("lines", "accepted", "rejected", "clamped"):
                        counts[name] += int(summary.get(name, 0))
                    if bar is not None:
                        bar.update(len(batch.data))
                per_file[str(path)] = dict(counts)
                totals.update(counts)
        finally:
            stored = send.close()
    result = {
        "source": source,
        **{name: totals[name] for name in ("lines", "accepted", "rejected", "clamped")},
    }
    result |= {"files": per_file, "sources": {source: dict(totals)}}
    if isinstance(send, _LocalSender):
        result["stored"] = stored
        result["alerts"] = len(send.alerts)
        result["alerts_by_rule"] = dict(Counter(alert.rule.title for alert in send.alerts).most_common())
    click.echo(json.dumps(result))


class _LocalSender:
    """In-process: the same intake the server runs, writing accepted events straight into the store (see
    ``Intake.deliver_to_store``); the bus is drained too, for what else was published on it."""

    def __init__(self, config_file: Path | None, source: str) -> None:
        settings = settings_from(config_file)
        self.alerts: list[Alert] = []
        self.engine = open_state(settings)
        self.telemetry = Telemetry(
            settings=settings, engine=self.engine, bus=create_bus(settings), registry=CollectorRegistry()
        )
        # Alerts go where the server's stages send them: the incidents and the hooks.
        sink_args: dict[str, Any] = {
            "settings": settings, "engine": self.engine, "bus": self.telemetry.bus,
            "audit": open_trail(settings, self.engine), "registry": CollectorRegistry(),
        }  # fmt: skip
        self.notifier = Notifier(**sink_args)
        self.detection = InlineDetection(
            RuleCatalog(self.engine, settings.detection).current(),
            lateness=settings.detection.lateness_s,
            sinks=[self.alerts.extend, IncidentManager(**sink_args).handle, self.notifier.notify],
        )
        self.telemetry.intake.deliver_to_store(self.telemetry.store, then=self.detection)
        self.source = source
        self.observer = Actor.local_cli().subject
        # What is loaded by now lives as long as the command: keep it out of the collector's full passes,
        # which otherwise walk it again and again while batches allocate (a fifth of the work, measured).
        gc.freeze()

    def __call__(self, batch: Batch) -> dict[str, Any]:
        try:
            result = self.telemetry.intake.ingest(
                self.source, batch.data, observer=self.observer, origin=batch.origin
            )
        except SpoolFull:
            self.telemetry.indexer.drain()
            return self(batch)
        self.telemetry.indexer.drain()
        return result.as_dict()

    def close(self) -> int:
        """Finish storing and detecting; returns how many events this run added to the store (0 for a file
        seen before)."""
        self.detection.close()
        self.notifier.stop()
        self.telemetry.stop()
        self.telemetry.bus.close()
        self.engine.dispose()
        return self.telemetry.intake.stored_total + self.telemetry.indexer.stored_total


class _RemoteSender:
    def __init__(self, url: str, source: str) -> None:
        self.client = IngestClient(url, _token(), max_attempts=INGEST_ATTEMPTS)
        self.source = source

    def __call__(self, batch: Batch) -> dict[str, Any]:
        try:
            return self.client.send(self.source, batch.data, batch.origin)
        except IngestRefused as exc:
            fail(f"server refused a batch of {batch.origin.header()}: {exc}", EXIT_CHECK_FAILED)

    def close(self) -> None:
        self.client.close()


def _show_progress(path: Path, position: Position, events: int) -> None:
    """One status line on a terminal, rewritten after each acknowledged batch."""
    click.echo(f"\rshipped {events} events; {path.name} at byte {position.offset}", nl=False, err=True)


@click.command()
@config_option
@click.option("--source", required=True, type=click.Choice(sorted(ADAPTERS)), help="Source adapter.")
@click.option(
    "--follow", "path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to follow."
)
@click.option("--url", envvar="REFSYS_URL", required=True, help="The refsys server (token in REFSYS_TOKEN).")
@click.option("--state", "state_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the position is saved (default: DATA_DIR/collect/<file>.json).")  # fmt: skip
@click.option("--heartbeat", type=click.IntRange(1), default=None, help="Expected seconds between batches.")
def collect(
    config_file: Path | None,
    source: str,
    path: Path,
    url: str,
    state_file: Path | None,
    heartbeat: int | None,
) -> None:
    """Follow PATH across rotation and ship it to URL, resuming from the saved position after a restart."""
    settings = settings_from(config_file)
    configure_logging(settings.logging.level)
    absolute = path.absolute()
    state = (
        state_file
        or settings.data_dir / "collect" / f"{sha256(str(absolute).encode()).hexdigest()[:16]}.json"
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    client = IngestClient(url, _token())
    collector = Collector(
        absolute, source=source, batch_end=type(adapter_for(source)).batch_end, client=client, state_file=state,
        heartbeat_s=heartbeat, stop=stop, on_sent=_show_progress if sys.stderr.isatty() else None,
    )  # fmt: skip
    try:
        collector.run()
    except IngestRefused as exc:
        fail(f"server refused a batch: {exc}", EXIT_CHECK_FAILED)
    finally:
        client.close()
    click.echo(json.dumps({"source": source, "file": str(absolute), "sent_events": collector.sent_events}))
