"""The chain spec: what a production chain is, as a typed, validated YAML document.

A chain names its inputs (product types and how long to wait for missing ones), a DAG of steps (each runs a
processor, by name and version, resolved through the processor table in configuration), its outputs and its
triggers. The model checks what a file alone can tell (shapes, ranges, the DAG); ``check_against`` adds what
needs the configuration (processors, lanes). Both report one precise message per problem, naming the item.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""Chain ids, step names and parameter names: lower-case, safe in a path, a label and a Job name."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class WaitPolicy(_Spec):
    timeout_s: int = Field(3600, ge=0)
    """How long a run waits for missing inputs before ``on_timeout`` applies."""
    on_timeout: Literal["run", "fail"] = "fail"
    """``run``: start with what is there (missing inputs are reported); ``fail``: the run fails."""


class InputSpec(_Spec):
    product_type: str = Field(min_length=1, max_length=64)
    """Product type consumed (e.g. ``S2MSI1C``)."""
    count: int = Field(1, ge=1)
    """Products of this type one run needs."""
    selection: dict[str, str] = {}
    """Equality filters on product attributes (``mission``, ``baseline`` ...) a product must pass."""
    wait: WaitPolicy = WaitPolicy()


class ProcessorRef(_Spec):
    name: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=32)


class Resources(_Spec):
    cpu: float = Field(0.5, gt=0)
    """CPU cores requested (and the limit)."""
    memory_mib: int = Field(256, gt=0)
    """Memory requested (and the limit), MiB."""
    ephemeral_mib: int = Field(1024, gt=0)
    """Scratch space for the work directory, MiB."""


class RetryPolicy(_Spec):
    max_attempts: int = Field(3, ge=1, le=100)
    """Attempts in all (1: no retry)."""
    backoff_s: float = Field(5.0, ge=0)
    """Wait before the second attempt; doubles at each further one (``factor``)."""
    factor: float = Field(2.0, ge=1)
    max_backoff_s: float = Field(600.0, ge=0)

    def delay(self, failed_attempts: int) -> timedelta:
        """Wait before the attempt that follows ``failed_attempts`` failures."""
        seconds = self.backoff_s * self.factor ** max(0, failed_attempts - 1)
        return timedelta(seconds=min(seconds, self.max_backoff_s))


class StepSpec(_Spec):
    name: str = Field(pattern=NAME)
    processor: ProcessorRef
    args: list[str] = []
    """Arguments; ``{param}``, ``{inputs}``, ``{input_dir}``, ``{output_dir}``, ``{run_id}`` are filled in."""
    env: dict[str, str] = {}
    resources: Resources = Resources()
    timeout_s: int = Field(3600, gt=0)
    """Wall-clock limit of one attempt; past it the whole process group (or Job) is killed."""
    retries: RetryPolicy = RetryPolicy()
    needs: list[str] = []
    """Steps that must have succeeded before this one starts."""


class OutputSpec(_Spec):
    product_type: str = Field(min_length=1, max_length=64)
    step: str
    """Step whose work directory holds the output."""
    pattern: str = Field(min_length=1)
    """Glob of the output files in the step's output directory."""
    timeliness: str = Field(min_length=1, max_length=32)
    """Timeliness class (``NRT``, ``PT``, ``FAST24``, ``NTC``) its KPIs are computed in."""


class TriggerSpec(_Spec):
    product_types: list[str] = []
    """A ``product.available`` of one of these types starts (or feeds) a run."""
    cron: list[str] = []
    """Crontab expressions (UTC) that start a run."""
    manual: bool = True
    """Whether ``POST /api/v1/runs`` and ``refsys run`` may start it."""

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, expressions: list[str]) -> list[str]:
        for expression in expressions:
            try:
                CronTrigger.from_crontab(expression, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"cron {expression!r}: {exc}") from None
        return expressions


class ChainSpec(_Spec):
    id: str = Field(pattern=NAME)
    version: str = Field(min_length=1, max_length=32)
    mission: str = Field(min_length=1, max_length=32)
    description: str = ""
    lane: str = "NRT"
    """Default lane of its runs (a request may name another)."""
    max_concurrent_runs: int = Field(10, ge=1)
    """Runs of this chain in flight at once; more wait as ``queued``."""
    parameters: dict[str, Annotated[Any, Field()]] = {}
    """Default parameter values; a request's parameters override them."""
    inputs: list[InputSpec] = []
    steps: list[StepSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(min_length=1)
    triggers: TriggerSpec = TriggerSpec()

    @model_validator(mode="after")
    def _dag(self) -> ChainSpec:
        names = [step.name for step in self.steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"step {duplicates[0]!r} is defined twice")
        known = set(names)
        for step in self.steps:
            for need in step.needs:
                if need not in known:
                    raise ValueError(f"step {step.name!r} needs unknown step {need!r}")
        cycle = find_cycle({step.name: step.needs for step in self.steps})
        if cycle:
            raise ValueError("steps form a cycle: " + " -> ".join(cycle))
        for output in self.outputs:
            if output.step not in known:
                raise ValueError(f"output {output.product_type!r} comes from unknown step {output.step!r}")
        return self

    def step(self, name: str) -> StepSpec:
        return next(step for step in self.steps if step.name == name)

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of ``graph`` (node -> nodes it depends on) as a closed path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if state.get(nxt) is None and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None and (found := visit(node)):
            return found
    return None
