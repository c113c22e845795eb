"""The chain spec: what a production chain is, as a typed, validated YAML document.

A chain names its inputs (product types and how long to wait for missing ones), a DAG of steps (each runs a
processor, by name and version, resolved through the processor table in configuration), its outputs and its
triggers. The model checks what a file alone can tell (shapes, ranges, the DAG); ``check_against`` adds what
needs the configuration (processors, lanes). Both report one precise message per problem, naming the item by
its location (``("steps", 1, "needs")``); ``pipelines.registry`` turns them into ``FILE:LINE: ITEM: message``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any, Literal

from apscheduler.triggers.cron import CronTrigger
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from control_plane.core.config import ProductionSettings

NAME = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""Chain ids, step names and parameter names: lower-case, safe in a path, a label and a Job name."""
GRAPH_ERROR = "chain_graph"
"""Pydantic error type of the chain's cross-field problems; ``ctx["problems"]`` holds every one of them."""

Location = tuple[str | int, ...]
"""Where an item is in the chain document: ``("steps", 1, "resources", "cpu")``."""
Problem = tuple[Location, str]


def _check_cron(expression: str) -> str:
    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"not a valid crontab expression: {exc}") from None
    return expression


CronExpression = Annotated[str, AfterValidator(_check_cron)]
"""Five crontab fields (minute hour day month weekday), evaluated in UTC."""


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

    def accepts(self, product: Mapping[str, Any]) -> bool:
        """Whether ``product`` (a catalog row or a ``product.available`` message) is an input of this kind."""
        if product.get("product_type") != self.product_type:
            return False
        return all(str(product.get(name)) == value for name, value in self.selection.items())


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
    cron: list[CronExpression] = []
    """Crontab expressions (UTC) that start a run."""
    manual: bool = True
    """Whether ``POST /api/v1/runs`` and ``refsys run`` may start it."""


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
    def _graph(self) -> ChainSpec:
        problems = graph_problems(self)
        if problems:
            location, message = problems[0]
            raise PydanticCustomError(
                GRAPH_ERROR,
                "{first}",
                {"first": ".".join(map(str, location)) + ": " + message, "problems": problems},
            )
        return self

    def step(self, name: str) -> StepSpec:
        return next(step for step in self.steps if step.name == name)

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"


def graph_problems(chain: ChainSpec) -> list[Problem]:
    """What no single field shows: duplicate steps, ``needs`` naming unknown steps, cycles, outputs of
    unknown steps, trigger product types the chain does not take as input."""
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    for index, step in enumerate(chain.steps):
        if step.name in first_index:
            problems.append(
                (
                    ("steps", index, "name"),
                    f"step {step.name!r} is defined twice (also steps[{first_index[step.name]}])",
                )
            )
        first_index.setdefault(step.name, index)
    known = ", ".join(first_index)
    for index, step in enumerate(chain.steps):
        for need in step.needs:
            if need not in first_index:
                problems.append((("steps", index, "needs"), f"unknown step {need!r} (steps: {known})"))
    graph = {step.name: [need for need in step.needs if need in first_index] for step in chain.steps}
    cycle = find_cycle(graph)
    if cycle:
        problems.append(
            (("steps", first_index[cycle[0]], "needs"), "steps form a cycle: " + " -> ".join(cycle))
        )
    for index, output in enumerate(chain.outputs):
        if output.step not in first_index:
            problems.append((("outputs", index, "step"), f"unknown step {output.step!r} (steps: {known})"))
    consumed = {spec.product_type for spec in chain.inputs}
    for index, product_type in enumerate(chain.triggers.product_types):
        if product_type not in consumed:
            problems.append(
                (
                    ("triggers", "product_types", index),
                    f"{product_type!r} is not one of the chain's inputs ({', '.join(sorted(consumed)) or 'none'})",
                )
            )
    return problems


def check_against(chain: ChainSpec, production: ProductionSettings) -> list[Problem]:
    """What needs the configuration: every step's processor is in the processor table, the lane exists."""
    problems: list[Problem] = []
    table = {(processor.name, processor.version) for processor in production.processors}
    for index, step in enumerate(chain.steps):
        ref = step.processor
        if (ref.name, ref.version) in table:
            continue
        versions = sorted(version for name, version in table if name == ref.name)
        known = f"has {ref.name} {', '.join(versions)}" if versions else f"has no processor named {ref.name}"
        problems.append(
            (
                ("steps", index, "processor"),
                f"unknown processor {ref.name} {ref.version} (production.processors {known})",
            )
        )
    if chain.lane not in production.lanes:
        problems.append(
            (("lane",), f"unknown lane {chain.lane!r} (production.lanes: {', '.join(production.lanes)})")
        )
    return problems


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a chain file (``pipelines/chain.schema.json``), for editors and other tools."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **ChainSpec.model_json_schema(),
    }


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
