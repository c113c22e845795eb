"""The one interface every executor implements: start a step execution, find it again after a restart, report
how it ended, cancel it.

The engine owns every run's state (in the database); an executor only runs a step. An execution is named by
``(run_id, step, attempt)``, so starting the same execution twice (a crash between the start and the saving of
its reference) finds the first instead of running it again, and a restarted control plane can ask "is this
execution still known to you?" and adopt it or requeue it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from control_plane.core.config import ProcessorSettings
from pipelines.spec import Resources

Outcome = Literal["succeeded", "failed", "timed-out", "cancelled", "lost"]
"""How an execution ended. ``lost``: the executor no longer knows it (its process or Job vanished)."""


@dataclass(frozen=True)
class StepLaunch:
    """Everything an executor needs to run one attempt of one step."""

    run_id: str
    step: str
    attempt: int
    chain_id: str
    chain_version: str
    lane: str
    priority_class: str | None
    processor: ProcessorSettings
    args: list[str]
    """Templated arguments, appended to the processor's command."""
    env: dict[str, str]
    resources: Resources
    timeout_s: int
    input_paths: list[str] = field(default_factory=list)
    """Local paths of the input products (the local executor links them into the work directory)."""

    @property
    def execution_id(self) -> str:
        return f"{self.run_id}/{self.step}/{self.attempt}"


@dataclass(frozen=True)
class StepResult:
    """How one execution ended, as the executor saw it."""

    run_id: str
    step: str
    attempt: int
    outcome: Outcome
    exit_code: int | None
    reason: str
    output_dir: Path | None = None
    """Where the step's output files are, when the executor can hand them over (local: the work directory)."""


LogSink = Callable[[str, str, int, str, str], None]
"""``(run_id, step, attempt, stream, line)``: one line of a step's stdout or stderr, as it is written."""


class Executor(ABC):
    """Runs step executions; see the module docstring for the contract."""

    name: str

    @abstractmethod
    def start(self, launch: StepLaunch) -> str:
        """Start the execution and return its reference; idempotent for the same ``execution_id``."""

    @abstractmethod
    def adopt(self, launch: StepLaunch, ref: str | None) -> bool:
        """After a restart: True when the execution is known (running, or ended with a result ``poll`` will
        return), False when it is lost and may be started again. A known execution is watched from now on."""

    @abstractmethod
    def poll(self) -> list[StepResult]:
        """Results of the executions that ended since the last call (each one exactly once per process)."""

    @abstractmethod
    def cancel(self, run_id: str, step: str, attempt: int) -> None:
        """Stop the execution (the whole process group, or delete the Job); its result comes as ``cancelled``."""

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Stop watching; running executions keep running (a restarted control plane adopts them)."""
