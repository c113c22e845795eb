"""What a trigger asks the engine for, and the errors the engine answers requests and actions with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Trigger = Literal["manual", "systematic", "cron", "reprocessing", "resubmit"]


@dataclass(frozen=True)
class RunRequest:
    """A request for one run of one chain version (the latest when ``chain_version`` is None)."""

    chain_id: str
    chain_version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    """Catalog ids of the input products it starts with (a systematic trigger may add more later)."""
    lane: str | None = None
    """None: the chain's lane."""
    trigger: Trigger = "manual"
    idempotency_key: str | None = None
    """The same key always gives the same run."""
    campaign_id: str | None = None
    baseline: str | None = None
    resubmitted_from: str | None = None
    t0: datetime | None = None
    """When its last input became available; None: the latest publication time of its inputs, or now."""


class RunError(Exception):
    """Root of the engine's answers to a request or an action it cannot carry out."""


class BadRunRequest(RunError, ValueError):
    """The request names an unknown chain, version, lane or input, or a chain that refuses it (422)."""


class RunNotFound(RunError, KeyError):
    """No run has that id (404)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class ActionNotAllowed(RunError):
    """The run's state does not allow the action (409)."""
