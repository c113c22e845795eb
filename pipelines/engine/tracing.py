"""The trace events the engine emits (DESIGN.md section 4): BEGIN when a step starts, END when it ends, one
PUBLISHED per product it published. The trace writer validates them against the versioned contract."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pipelines.engine.runs import RunRow
from pipelines.traces import TraceEvent, TraceWriter

Status = Literal["OK", "NOK", "TIMEOUT"]
STATUS_OF_OUTCOME: dict[str, Status] = {
    "succeeded": "OK",
    "failed": "NOK",
    "timed-out": "TIMEOUT",
    "cancelled": "NOK",
    "lost": "NOK",
}
"""Every execution that had a BEGIN gets an END, so the KPI engine never sees a step that started and never
ended; a cancelled or lost execution did not produce its outputs: NOK."""


def _base(run: RunRow, step: str) -> dict[str, Any]:
    return {
        "chain": run.chain_id,
        "chain_version": run.chain_version,
        "run_id": run.id,
        "step": step,
        "mission": run.mission,
        "inputs": list(run.inputs),
        "t0": run.t0,
        "reprocessing": run.reprocessing,
    }


def begin(traces: TraceWriter, run: RunRow, step: str) -> None:
    traces.emit(TraceEvent(**_base(run, step), event="BEGIN"))


def end(
    traces: TraceWriter,
    run: RunRow,
    step: str,
    *,
    status: Status,
    duration_s: float,
    outputs: list[str],
    missing_outputs: dict[str, int],
) -> None:
    traces.emit(
        TraceEvent(
            **_base(run, step),
            event="END",
            status=status,
            duration_s=duration_s,
            outputs=outputs,
            missing_outputs=missing_outputs,
        )
    )


def published(
    traces: TraceWriter,
    run: RunRow,
    step: str,
    *,
    product_name: str,
    product_type: str,
    timeliness_class: str | None,
    t0: datetime | None,
    published_at: datetime,
) -> None:
    fields = {**_base(run, step), "t0": t0 or run.t0}
    traces.emit(
        TraceEvent(
            **fields,
            event="PUBLISHED",
            status="OK",
            outputs=[product_name],
            product_type=product_type,
            timeliness_class=timeliness_class,
            published_at=published_at,
        )
    )
