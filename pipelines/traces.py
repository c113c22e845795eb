"""Production trace events: the versioned contract the KPI engine reads (DESIGN.md section 4).

The engine emits BEGIN and END for every step execution and PUBLISHED for every product it registers. Each
event is validated when it is emitted (a bad one raises ``ValueError`` naming the field, and nothing is
written), then stored in ``trace_events`` (the lineage table), published on the ``traces`` topic, and, as an
ECS document of dataset ``refsys.production``, on the ``telemetry`` topic so that it is searchable and
detectable like everything else.

Delivery is at-least-once: an event keeps its id, so emitting it again after a failure stores it once in the
table and once in the event store (both are idempotent by that id).
"""

from __future__ import annotations

from typing import Any, Final, Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy.engine import Engine

from control_plane.core import clock, ids
from control_plane.core.bus import Bus, topics
from control_plane.core.db import dialect_insert
from pipelines import tables

TRACE_VERSION: Final = "1.0"
"""Version of the trace event contract: a change a reader must know about changes the major number."""
DATASET = "refsys.production"
BUS_KEY_TELEMETRY = "refsys:production"
_ACTIONS = {"BEGIN": "step-begin", "END": "step-end", "PUBLISHED": "product-published"}
_OUTCOMES = {"OK": "success", "NOK": "failure", "TIMEOUT": "failure"}


class TraceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal["1.0"] = TRACE_VERSION
    """``trace.version`` of the contract this event follows."""


class TraceEvent(BaseModel):
    """One trace event. ``inputs``: catalog ids of the run's input products; ``outputs``: names of the
    products a step made (END) or the one published (PUBLISHED)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    trace: TraceInfo = TraceInfo()
    id: str = Field(default_factory=ids.new_id, min_length=1, max_length=36)
    """The event's own id (UUIDv7): what makes a repeated emission harmless."""
    event: Literal["BEGIN", "END", "PUBLISHED"]
    chain: str = Field(min_length=1, max_length=64)
    chain_version: str = Field(min_length=1, max_length=32)
    run_id: str = Field(min_length=1, max_length=36)
    step: str | None = Field(None, min_length=1, max_length=64)
    """The step (required for BEGIN and END; the step that made the product for PUBLISHED)."""
    status: Literal["OK", "NOK", "TIMEOUT"] | None = None
    """How the step ended (END, required; PUBLISHED: OK); never set on BEGIN."""
    duration_s: float | None = Field(None, ge=0)
    """Wall-clock duration of the step execution (END, required)."""
    inputs: list[str] = []
    outputs: list[str] = []
    mission: str = Field(min_length=1, max_length=32)
    product_type: str | None = Field(None, min_length=1, max_length=64)
    """Type of the published product (PUBLISHED, required)."""
    timeliness_class: str | None = Field(None, min_length=1, max_length=32)
    """Timeliness class the product's KPIs are computed in (NRT, PT, FAST24, NTC)."""
    t0: AwareDatetime | None = None
    """The timeliness reference: for NRT/PT when the last input became available at the ground segment."""
    published_at: AwareDatetime | None = None
    """When the product was published (PUBLISHED, required)."""
    missing_outputs: dict[str, int] = {}
    """Product types a failed step did not make, with their estimated counts."""
    reprocessing: bool = False
    """Event of a reprocessing run: kept out of timeliness KPIs."""
    emitted_at: AwareDatetime = Field(default_factory=clock.utcnow)

    @model_validator(mode="after")
    def _fields_of_the_event(self) -> TraceEvent:
        required = {
            "BEGIN": ("step",),
            "END": ("step", "status", "duration_s"),
            "PUBLISHED": ("product_type", "published_at"),
        }[self.event]
        for name in required:
            if getattr(self, name) is None:
                raise _field_error(name, f"is required on {self.event} events")
        if self.event == "BEGIN" and self.status is not None:
            raise _field_error("status", "is not set on BEGIN events (the step has not ended)")
        if self.event == "PUBLISHED" and self.status not in (None, "OK"):
            raise _field_error("status", "a PUBLISHED event can only be OK")
        if self.event == "PUBLISHED" and len(self.outputs) != 1:
            raise _field_error("outputs", "a PUBLISHED event names exactly the one product it publishes")
        for product_type, count in self.missing_outputs.items():
            if count < 1:
                raise _field_error(
                    f"missing_outputs.{product_type}", f"estimated count must be >= 1 (got {count})"
                )
        return self

    def document(self) -> dict[str, Any]:
        """The event as JSON (RFC 3339 times), as stored and published."""
        return self.model_dump(mode="json")


def _field_error(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("trace_field", "{field}: {message}", {"field": field, "message": message})


def validated(event: TraceEvent) -> TraceEvent:
    """``event`` checked against the contract again (it may have been built with ``model_construct`` or
    copied with changes, which skip validation); ``ValueError`` names the first bad field."""
    try:
        return TraceEvent.model_validate(dict(event))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(map(str, error["loc"])) or str(error.get("ctx", {}).get("field", "event"))
        message = error["msg"] if error["loc"] else str(error.get("ctx", {}).get("message", error["msg"]))
        raise ValueError(f"trace event field {field}: {message}") from None


class TraceWriter:
    """Validates and writes trace events: the lineage table, the ``traces`` topic, telemetry."""

    def __init__(self, engine: Engine, bus: Bus) -> None:
        self.engine = engine
        self.bus = bus

    def emit(self, event: TraceEvent) -> None:
        event = validated(event)
        document = event.document()
        row = {
            "id": event.id,
            "run_id": event.run_id,
            "step": event.step,
            "event": event.event,
            "status": event.status,
            "chain": event.chain,
            "mission": event.mission,
            "product_type": event.product_type,
            "timeliness_class": event.timeliness_class,
            "emitted_at": event.emitted_at,
            "body": document,
        }
        with self.engine.begin() as connection:
            insert = dialect_insert(connection)(tables.trace_events).values(**row)
            connection.execute(insert.on_conflict_do_nothing(index_elements=["id"]))
        self.bus.publish(topics.TRACES, event.run_id, [document])
        self.bus.publish(topics.TELEMETRY, BUS_KEY_TELEMETRY, [ecs_document(event)])

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The trace events of a run, in the order they were emitted (their bodies, as validated)."""
        query = (
            sa.select(tables.trace_events.c.body)
            .where(tables.trace_events.c.run_id == run_id)
            .order_by(tables.trace_events.c.emitted_at, tables.trace_events.c.id)
        )
        with self.engine.connect() as connection:
            return [dict(body) for body in connection.execute(query).scalars()]


def ecs_document(event: TraceEvent) -> dict[str, Any]:
    """The event as an ECS document of dataset ``refsys.production``: ``labels`` and ``refsys.run`` carry the
    run and step so that a search or a rule finds every line of one run; the whole trace is under
    ``refsys.trace``."""
    event_fields: dict[str, Any] = {
        "id": event.id,
        "kind": "event",
        "module": "refsys",
        "dataset": DATASET,
        "action": _ACTIONS[event.event],
        "category": ["process"] if event.event != "PUBLISHED" else ["file"],
        "type": {"BEGIN": ["start"], "END": ["end"], "PUBLISHED": ["creation"]}[event.event],
    }
    if event.status is not None:
        event_fields["outcome"] = _OUTCOMES[event.status]
    if event.duration_s is not None:
        event_fields["duration"] = round(event.duration_s * 1e9)
    labels = {"chain": event.chain, "chain_version": event.chain_version, "run_id": event.run_id}
    if event.step is not None:
        labels["step"] = event.step
    return {
        "@timestamp": clock.rfc3339(event.emitted_at),
        "event": event_fields,
        "message": _message(event),
        "labels": labels,
        "refsys": {
            "run": {"id": event.run_id, "chain": event.chain, "step": event.step},
            "trace": event.document(),
        },
    }


def _message(event: TraceEvent) -> str:
    where = f"{event.chain}@{event.chain_version} run {event.run_id}"
    if event.event == "BEGIN":
        return f"{where}: step {event.step} started"
    if event.event == "END":
        return f"{where}: step {event.step} ended {event.status} after {event.duration_s:.1f} s"
    return f"{where}: published {event.outputs[0]} ({event.product_type})"
