"""Sigma rule compiler: pySigma parses, this module turns each rule into an in-process predicate.

Why in-process predicates rather than a query backend: detection runs on every event as it streams in, so a
rule must be a cheap Python call over a flat ``field -> value`` dict, not a query against a store. Field
names are used as the rule writes them; mapping them onto normalised events is the job of the routing layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from security.sigma.conditions import Event, Predicate, compile_condition
from security.sigma.errors import SigmaCompileError, UnsupportedValue
from security.sigma.modifiers import register_spec_aliases
from security.sigma.values import Placeholders

register_spec_aliases()


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to evaluate: ``matches(event)`` is the whole detection, conditions OR-ed as Sigma says."""

    rule: SigmaRule
    predicate: Predicate = field(repr=False)

    @property
    def id(self) -> str:
        return str(self.rule.id) if self.rule.id else ""

    @property
    def title(self) -> str:
        return self.rule.title

    def matches(self, event: Event) -> bool:
        return self.predicate(event)


def rule_name(rule: SigmaRule) -> str:
    """How errors name a rule: its id, else its title, so a report points at the right file."""
    if rule.id:
        return f"{rule.id} ({rule.title})"
    return repr(rule.title)


def compile_rule(rule: SigmaRule, placeholders: Placeholders | None = None) -> CompiledRule:
    """Compile one parsed rule; any reason it cannot run becomes a SigmaCompileError naming the rule."""
    name = rule_name(rule)
    if rule.errors:
        raise SigmaCompileError(name, "; ".join(str(e) for e in rule.errors))
    try:
        conditions = [
            compile_condition(condition.parsed, placeholders or {})
            for condition in rule.detection.parsed_condition
        ]
    except UnsupportedValue as exc:
        raise SigmaCompileError(name, str(exc)) from exc
    except SigmaError as exc:
        raise SigmaCompileError(name, str(exc)) from exc
    except Exception as exc:  # a pySigma defect on an odd rule must not take the caller down with it
        raise SigmaCompileError(name, f"unexpected {type(exc).__name__} while compiling: {exc}") from exc
    if not conditions:
        raise SigmaCompileError(name, "rule has no condition")
    if len(conditions) == 1:
        return CompiledRule(rule, conditions[0])
    return CompiledRule(rule, lambda event: any(c(event) for c in conditions))


def compile_collection(
    rules: SigmaCollection | Iterable[SigmaRule], placeholders: Placeholders | None = None
) -> tuple[list[CompiledRule], list[SigmaCompileError]]:
    """Compile every detection rule; the bad ones come back as errors so one rule cannot stop the others."""
    compiled: list[CompiledRule] = []
    errors: list[SigmaCompileError] = []
    collection = rules.rules if isinstance(rules, SigmaCollection) else rules
    for rule in collection:
        if not isinstance(rule, SigmaRule):
            continue  # correlation rules and filters are compiled elsewhere
        try:
            compiled.append(compile_rule(rule, placeholders))
        except SigmaCompileError as exc:
            errors.append(exc)
    return compiled, errors


def compile_yaml(text: str, placeholders: Placeholders | None = None) -> CompiledRule:
    """Parse and compile a single-rule YAML document; parse errors are reported like compile errors."""
    try:
        rule = SigmaRule.from_yaml(text, collect_errors=False)
    except (SigmaError, yaml.YAMLError) as exc:
        raise SigmaCompileError(_yaml_title(text), f"invalid Sigma rule: {exc}") from exc
    return compile_rule(rule, placeholders)


def compile_file(path: Path, placeholders: Placeholders | None = None) -> CompiledRule:
    """Compile a rule file; errors name the file when the rule itself could not be read."""
    try:
        return compile_yaml(path.read_text(encoding="utf-8"), placeholders)
    except SigmaCompileError as exc:
        if exc.rule.startswith("<"):
            raise SigmaCompileError(str(path), exc.reason) from exc
        raise


def _yaml_title(text: str) -> str:
    """Best-effort name of an unparsable rule, from its ``id:``/``title:`` lines, for the error message."""
    for key in ("id:", "title:"):
        for line in text.splitlines():
            if line.startswith(key):
                return line[len(key) :].strip()
    return "<unnamed rule>"


__all__ = [
    "CompiledRule",
    "SigmaCompileError",
    "compile_collection",
    "compile_file",
    "compile_rule",
    "compile_yaml",
]
