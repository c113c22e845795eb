"""The rule set detection runs: bundled rules, configured directories and API uploads, compiled and routed.

Why one loader: the serving stages, ``refsys ingest``, ``refsys rules test`` and the benchmark must evaluate
exactly the same rules the same way. Rules are read from YAML texts (one file may hold several documents:
rules, correlation rules, filters), parsed together so correlations resolve the rules they name, and each
plain rule is mapped to refsys's fields and compiled. A rule that cannot run is reported with its reason and
skipped: one bad file never stops the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sigma.collection import SigmaCollection
from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaError
from sigma.filters import SigmaFilter
from sigma.rule import SigmaRule, SigmaRuleBase

from security.alerts.model import AlertRule
from security.sigma.errors import SigmaCompileError
from security.sigma.routing import RoutedRule, compile_routed
from security.sigma.values import Placeholders

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "rules"
"""security/rules: the rules refsys ships."""
RULE_SUFFIXES = (".yml", ".yaml")
Parsed = SigmaRule | SigmaCorrelationRule | SigmaFilter
"""What one YAML document of a rule file parses into."""


@dataclass(frozen=True)
class RuleText:
    """One rule file's text and where it came from (``bundled``, ``directory``, ``api``)."""

    text: str
    origin: str
    path: str


@dataclass(frozen=True)
class RuleProblem:
    """A rule (or file) that does not run, and why."""

    rule: str
    path: str
    reason: str


@dataclass
class RuleSet:
    """Compiled plain rules, the collection correlations resolve against, and what could not run."""

    rules: list[RoutedRule] = field(default_factory=list)
    collection: SigmaCollection = field(default_factory=lambda: SigmaCollection([]))
    problems: list[RuleProblem] = field(default_factory=list)
    origins: dict[str, RuleText] = field(default_factory=dict)
    """Rule reference (id, else name or title) -> the file it came from."""

    @property
    def correlations(self) -> list[SigmaCorrelationRule]:
        return [r for r in self.collection if isinstance(r, SigmaCorrelationRule)]

    def describe(self, ref: str) -> AlertRule:
        """The alert-facing description of a rule or correlation, by reference."""
        for rule in self.collection:
            if ref in {str(rule.id) if rule.id else "", rule.name or "", rule.title}:
                return describe(rule)
        return AlertRule(id=ref, title=ref)


def rule_ref(rule: SigmaRuleBase) -> str:
    """How stages name a rule on the bus: its id, else its name, else its title."""
    return str(rule.id) if rule.id else (rule.name or rule.title)


def describe(rule: SigmaRuleBase) -> AlertRule:
    """An AlertRule from a parsed rule: level, tags (``attack.t1059``...), description."""
    level = rule.level.name.lower() if rule.level is not None else "medium"
    tags = tuple(f"{t.namespace}.{t.name}" for t in rule.tags)
    return AlertRule(
        id=rule_ref(rule), title=rule.title, level=level, tags=tags, description=rule.description or ""
    )


def read_dir(directory: Path, origin: str) -> list[RuleText]:
    """Every rule file under a directory, recursively, in path order."""
    files = sorted(p for p in directory.rglob("*") if p.suffix in RULE_SUFFIXES and p.is_file())
    return [RuleText(p.read_text(encoding="utf-8"), origin, str(p)) for p in files]


def configured_texts(bundled: bool, rule_dirs: Iterable[Path]) -> list[RuleText]:
    """The read-only base: bundled rules (unless turned off), then each configured directory."""
    texts = read_dir(BUNDLED_DIR, "bundled") if bundled and BUNDLED_DIR.is_dir() else []
    for directory in rule_dirs:
        texts += read_dir(directory, "directory")
    return texts


def parse_text(text: RuleText) -> tuple[list[Parsed], list[RuleProblem]]:
    """Parse one file's documents; a document that does not parse is a problem, the others are kept."""
    rules: list[Parsed] = []
    problems: list[RuleProblem] = []
    try:
        documents = [d for d in yaml.safe_load_all(text.text) if d is not None]
    except yaml.YAMLError as exc:
        return [], [RuleProblem(text.path, text.path, f"invalid YAML: {exc}")]
    for document in documents:
        if not isinstance(document, dict):
            problems.append(RuleProblem(text.path, text.path, "a document is not a mapping"))
            continue
        try:
            collection = SigmaCollection.from_dicts(
                [document], collect_errors=False, resolve_references=False
            )
        except SigmaError as exc:
            name = str(document.get("id") or document.get("title") or text.path)
            problems.append(RuleProblem(name, text.path, f"invalid Sigma rule: {exc}"))
            continue
        rules.extend(collection.rules)
    return rules, problems


def build(texts: Iterable[RuleText], placeholders: Placeholders | None = None) -> RuleSet:
    """Parse, resolve, map and compile; a later text with the same rule reference replaces an earlier one."""
    by_ref: dict[str, tuple[Parsed, RuleText]] = {}
    ruleset = RuleSet()
    for text in texts:
        rules, problems = parse_text(text)
        ruleset.problems += problems
        for rule in rules:
            by_ref[rule_ref(rule)] = (rule, text)
    ruleset.origins = {ref: text for ref, (_rule, text) in by_ref.items()}
    ruleset.collection = SigmaCollection([rule for rule, _text in by_ref.values()])
    try:
        ruleset.collection.resolve_rule_references()
    except SigmaError as exc:
        ruleset.problems.append(RuleProblem("<correlations>", "", f"unresolved reference: {exc}"))
        ruleset.collection = SigmaCollection(
            [r for r, _t in by_ref.values() if not isinstance(r, SigmaCorrelationRule)]
        )
    for ref, (rule, text) in by_ref.items():
        if not isinstance(rule, SigmaRule):
            continue
        try:
            ruleset.rules.append(compile_routed(rule, placeholders))
        except SigmaCompileError as exc:
            ruleset.problems.append(RuleProblem(ref, text.path, exc.reason))
    return ruleset


def load(
    *,
    bundled: bool = True,
    rule_dirs: Iterable[Path] = (),
    extra: Iterable[RuleText] = (),
    placeholders: Mapping[str, list[str]] | None = None,
) -> RuleSet:
    """The configured base plus ``extra`` (API uploads, or the files given to ``refsys rules test``)."""
    texts = configured_texts(bundled, rule_dirs) + list(extra)
    return build(texts, dict(placeholders or {}))
