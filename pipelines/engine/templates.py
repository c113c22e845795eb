"""Filling in a step's arguments and environment from the run: ``{param}`` (request parameters over the chain's
defaults), ``{inputs}``, ``{input_dir}``, ``{output_dir}``, ``{run_id}``.

An argument that is exactly ``{inputs}`` becomes one argument per input path; inside a longer argument the
paths are joined with commas. ``{input_dir}`` and ``{output_dir}`` are the execution's ``in`` and ``out``
directories, relative to its working directory (the executors run a step there). A placeholder nobody set is
an error naming the step, the argument and the parameter.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.spec import ChainSpec, StepSpec


class TemplateError(ValueError):
    """A step's argument or environment names a parameter the run does not have."""


def effective_parameters(chain: ChainSpec, requested: Mapping[str, Any]) -> dict[str, Any]:
    """The request's parameters over the chain's defaults."""
    return {**chain.parameters, **requested}


def render_step(
    step: StepSpec, *, parameters: Mapping[str, Any], run_id: str, input_paths: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The step's arguments and environment with every placeholder filled in (``TemplateError`` otherwise)."""
    values: dict[str, Any] = {
        **{name: _text(value) for name, value in parameters.items()},
        "inputs": ",".join(input_paths),
        "input_dir": "in",
        "output_dir": "out",
        "run_id": run_id,
    }
    args: list[str] = []
    for index, arg in enumerate(step.args):
        if arg == "{inputs}":
            args.extend(input_paths)
            continue
        args.append(_fill(arg, values, f"step {step.name!r}: argument {index + 1} {arg!r}"))
    env = {name: _fill(value, values, f"step {step.name!r}: env {name}") for name, value in step.env.items()}
    return args, env


def check_chain(chain: ChainSpec, parameters: Mapping[str, Any]) -> None:
    """Raise ``TemplateError`` for the first placeholder of any step that ``parameters`` leave unset."""
    for step in chain.steps:
        render_step(step, parameters=parameters, run_id="check", input_paths=[])


def _fill(template: str, values: Mapping[str, Any], where: str) -> str:
    try:
        fields = [
            field for _text, field, _spec, _conv in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        raise TemplateError(f"{where}: cannot be filled in: {exc}") from None
    for field in fields:
        if field not in values:
            raise TemplateError(
                f"{where}: parameter {field!r} is not set (neither in the request nor in the chain's defaults)"
            )
    try:
        return template.format_map(values)
    except (ValueError, IndexError, AttributeError, KeyError) as exc:
        raise TemplateError(f"{where}: cannot be filled in: {exc}") from None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
