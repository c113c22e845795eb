"""The rule set detection runs: bundled rules, configured directories and API uploads, compiled and routed.

Why one loader: the serving stages, ``refsys ingest``, ``refsys rules test`` and the benchmark must evaluate
exactly the same rules the same way. Rules are read from YAML texts (one file may hold several documents:
rules, correlation rules, filters), parsed together so correlations resolve the rules they name, and each
plain rule is mapped to refsys's fields and compiled. A rule that cannot run is reported with its reason and
skipped: one bad file never stops the others.

The database overlay (``security.detection.rule_store``) enters here as more texts: uploads come after the
files, so an upload replaces the base rule of the same reference; disabled references are kept out of the
evaluation (a disabled rule stays in the collection so correlations naming it still resolve, but it never
matches); Sigma filters (from files or the API) are applied to a copy of each rule they name before it is
mapped, so the filter's fields are mapped and compiled exactly like the rule's own.

Filters follow pySigma's semantics: the filter's condition is AND-ed onto the rule's, so a filter excludes
events with ``condition: not selection`` (the API refuses a filter whose condition has no ``not``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping
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
from security.sigma.routing import RoutedRule, RuleClass, classify, compile_routed
from security.sigma.values import Placeholders

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "rules"
"""security/rules: the rules refsys ships."""
RULE_SUFFIXES = (".yml", ".yaml")
Parsed = SigmaRule | SigmaCorrelationRule | SigmaFilter
"""What one YAML document of a rule file parses into."""
CLASS_NAMES = {
    RuleClass.MAPPED: "mapped",
    RuleClass.UNMAPPED: "unmapped",
    RuleClass.UNROUTABLE: "unroutable",
}
INVALID = "invalid"


@dataclass(frozen=True)
class RuleText:
    """One rule file's text and where it came from (``bundled``, ``directory``, ``api``)."""

    text: str
    origin: str
    path: str


@dataclass(frozen=True)
class RuleProblem:
    """A rule (or file) that does not run, and why; ``line`` is where its YAML document starts, when known."""

    rule: str
    path: str
    reason: str
    line: int | None = None

    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True)
class Document:
    """One YAML document of a rule text: its parsed content, its own text and the line it starts on."""

    data: object
    text: str
    line: int


@dataclass
class RuleInfo:
    """What the rule list shows of one rule, correlation or filter: where it came from and whether it runs."""

    ref: str
    kind: str
    """``rule``, ``correlation`` or ``filter``."""
    rule: Parsed
    text: RuleText
    line: int
    document: str
    """The YAML document's own text (one document of a multi-document file)."""
    enabled: bool = True
    rule_class: str = "mapped"
    """``mapped``, ``unmapped``, ``unroutable`` or ``invalid``."""
    reason: str = ""
    unmapped: tuple[str, ...] = ()
    filters: list[str] = field(default_factory=list)
    """References of the filters applied to it (for a filter: the rules it applied to)."""

    @property
    def runs(self) -> bool:
        return self.enabled and self.rule_class == "mapped"


@dataclass
class RuleSet:
    """Compiled plain rules, the collection correlations resolve against, and what could not run."""

    rules: list[RoutedRule] = field(default_factory=list)
    collection: SigmaCollection = field(default_factory=lambda: SigmaCollection([]))
    problems: list[RuleProblem] = field(default_factory=list)
    origins: dict[str, RuleText] = field(default_factory=dict)
    """Rule reference (id, else name or title) -> the file it came from."""
    infos: dict[str, RuleInfo] = field(default_factory=dict)
    """Every rule, correlation and filter by reference, enabled or not, runnable or not."""
    version: int = 0
    """Set by ``RuleCatalog``: pass it to ``changed_since`` to learn whether to rebuild."""

    @property
    def correlations(self) -> list[SigmaCorrelationRule]:
        return [r for r in self.collection if isinstance(r, SigmaCorrelationRule)]

    _described: dict[str, AlertRule] = field(default_factory=dict, repr=False, compare=False)

    def describe(self, ref: str) -> AlertRule:
        """The alert-facing description of a rule or correlation, by id, name or title (every alert asks: the
        table is built once, on the first call after the collection is final)."""
        if not self._described:
            for rule in reversed(list(self.collection)):  # the first rule of a name wins, as a scan would
                described = describe(rule)
                for name in (str(rule.id) if rule.id else "", rule.name or "", rule.title):
                    if name:
                        self._described[name] = described
        return self._described.get(ref) or AlertRule(id=ref, title=ref)


def rule_ref(rule: SigmaRuleBase) -> str:
    """How stages name a rule on the bus: its id, else its name, else its title."""
    return str(rule.id) if rule.id else (rule.name or rule.title)


def kind_of(rule: Parsed) -> str:
    if isinstance(rule, SigmaCorrelationRule):
        return "correlation"
    if isinstance(rule, SigmaFilter):
        return "filter"
    return "rule"


def describe(rule: SigmaRuleBase) -> AlertRule:
    """An AlertRule from a parsed rule: level, tags (``attack.t1059``...), description, suppression."""
    level = rule.level.name.lower() if rule.level is not None else "medium"
    tags = tuple(f"{t.namespace}.{t.name}" for t in rule.tags)
    suppression = rule.custom_attributes.get("suppression")
    return AlertRule(
        id=rule_ref(rule),
        title=rule.title,
        level=level,
        tags=tags,
        description=rule.description or "",
        suppression=dict(suppression) if isinstance(suppression, Mapping) else {},
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


def documents(text: str) -> Iterator[Document]:
    """The YAML documents of a text with their own text and first line; raises ``yaml.YAMLError``."""
    loader = yaml.SafeLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            data = loader.construct_document(node)
            if data is not None:
                start, end = node.start_mark, node.end_mark
                yield Document(data, text[start.index : end.index], start.line + 1)
    finally:
        loader.dispose()


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """One line (the line number goes with the problem): PyYAML's message spans several with a caret."""
    if isinstance(exc, yaml.MarkedYAMLError):
        return ", ".join(part for part in (exc.context, exc.problem) if part)
    return " ".join(str(exc).split())


def _yaml_line(exc: yaml.YAMLError) -> int | None:
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else None


def parse_documents(text: RuleText) -> tuple[list[tuple[Parsed, Document]], list[RuleProblem]]:
    """Parse one file's documents, each with its document; a bad document is a problem, the rest are kept."""
    rules: list[tuple[Parsed, Document]] = []
    problems: list[RuleProblem] = []
    try:
        docs = list(documents(text.text))
    except yaml.YAMLError as exc:
        return [], [RuleProblem(text.path, text.path, f"invalid YAML: {_yaml_reason(exc)}", _yaml_line(exc))]
    for document in docs:
        if not isinstance(document.data, dict):
            problems.append(RuleProblem(text.path, text.path, "a document is not a mapping", document.line))
            continue
        try:
            collection = SigmaCollection.from_dicts(
                [document.data], collect_errors=False, resolve_references=False, collect_filters=True
            )
        except SigmaError as exc:
            name = str(document.data.get("id") or document.data.get("title") or text.path)
            problems.append(RuleProblem(name, text.path, f"invalid Sigma rule: {exc}", document.line))
            continue
        rules.extend((rule, document) for rule in [*collection.rules, *collection.filters])
    return rules, problems


def _resolved(rules: list[Parsed], infos: dict[str, RuleInfo]) -> SigmaCollection:
    """The collection correlations resolve against: plain rules and the enabled correlations that resolve (one
    naming an unknown or disabled rule is marked invalid, then so is one naming that one, and so on).

    A disabled correlation is left out, but the rules it uses without ``generate`` stay quiet as while it ran:
    disabling a brute-force correlation must not turn every failed login into an alert."""
    everything = SigmaCollection(rules, resolve_references=False)
    kept: list[Parsed] = []
    for rule in rules:
        if isinstance(rule, SigmaCorrelationRule) and not infos[rule_ref(rule)].enabled:
            with contextlib.suppress(SigmaError):
                rule.resolve_rule_references(everything)  # marks the rules it uses as silent
        else:
            kept.append(rule)
    while True:
        candidates = SigmaCollection(kept, resolve_references=False)
        bad: list[Parsed] = []
        for rule in kept:
            if isinstance(rule, SigmaCorrelationRule):
                try:
                    rule.resolve_rule_references(candidates)
                except SigmaError as exc:
                    info = infos[rule_ref(rule)]
                    info.rule_class, info.reason = INVALID, f"unresolved reference: {exc}"
                    bad.append(rule)
        if not bad:
            break
        kept = [rule for rule in kept if not any(rule is b for b in bad)]
    collection = SigmaCollection(kept, resolve_references=False)
    collection.resolve_rule_references()
    return collection


def build(
    texts: Iterable[RuleText],
    placeholders: Placeholders | None = None,
    *,
    disabled: Iterable[str] = (),
    filters: Iterable[RuleText] = (),
) -> RuleSet:
    """Parse, resolve, filter, map and compile; a later text with the same rule reference replaces an earlier
    one. ``disabled`` references never run; ``filters`` (filter texts, e.g. the active API filters) apply
    besides the filters found in ``texts``."""
    off = set(disabled)
    by_ref: dict[str, RuleInfo] = {}
    ruleset = RuleSet()
    for text in [*texts, *filters]:
        parsed, problems = parse_documents(text)
        ruleset.problems += problems
        for rule, document in parsed:
            ref = rule_ref(rule)
            by_ref[ref] = RuleInfo(
                ref, kind_of(rule), rule, text, document.line, document.text, enabled=ref not in off
            )
    ruleset.infos = by_ref
    ruleset.origins = {ref: info.text for ref, info in by_ref.items()}
    active_filters = [i for i in by_ref.values() if i.kind == "filter" and i.enabled]
    evaluated: list[Parsed] = [i.rule for i in by_ref.values() if not isinstance(i.rule, SigmaFilter)]
    ruleset.collection = _resolved(evaluated, by_ref)
    for info in by_ref.values():
        if isinstance(info.rule, SigmaRule):
            _compile(info, active_filters, ruleset, placeholders)
        elif info.rule_class == INVALID:
            ruleset.problems.append(RuleProblem(info.ref, info.text.path, info.reason, info.line))
    return ruleset


def _compile(
    info: RuleInfo, active_filters: list[RuleInfo], ruleset: RuleSet, placeholders: Placeholders | None
) -> None:
    """Class and (when enabled and routable) compile one plain rule with the filters that apply to it."""
    assert isinstance(info.rule, SigmaRule)
    rule: SigmaRule = info.rule
    for filter_info in active_filters:
        assert isinstance(filter_info.rule, SigmaFilter)
        if filter_info.rule._should_apply_on_rule(rule):
            if rule is info.rule:
                rule = copy.deepcopy(info.rule)  # apply_on_rule edits the rule it is given
            filtered = filter_info.rule.apply_on_rule(rule)
            assert isinstance(filtered, SigmaRule)
            rule = filtered
            info.filters.append(filter_info.ref)
            filter_info.filters.append(info.ref)
    try:
        routing = classify(rule)
    except Exception as exc:  # a rule whose detection cannot even be walked
        info.rule_class, info.reason = INVALID, f"cannot be routed: {exc}"
        ruleset.problems.append(RuleProblem(info.ref, info.text.path, info.reason, info.line))
        return
    info.rule_class, info.reason, info.unmapped = (
        CLASS_NAMES[routing.rule_class],
        routing.reason,
        routing.unmapped,
    )
    if routing.rule_class is not RuleClass.MAPPED:
        ruleset.problems.append(RuleProblem(info.ref, info.text.path, routing.reason, info.line))
        return
    try:
        routed = compile_routed(rule, placeholders)
    except SigmaCompileError as exc:
        info.rule_class, info.reason = INVALID, exc.reason
        ruleset.problems.append(RuleProblem(info.ref, info.text.path, exc.reason, info.line))
        return
    if info.enabled:
        ruleset.rules.append(routed)


def load(
    *,
    bundled: bool = True,
    rule_dirs: Iterable[Path] = (),
    extra: Iterable[RuleText] = (),
    placeholders: Mapping[str, list[str]] | None = None,
    overlay: Iterable[RuleText] = (),
    disabled: Iterable[str] = (),
    filters: Iterable[RuleText] = (),
) -> RuleSet:
    """The configured base, then ``overlay`` (API uploads, replacing base rules by reference), then ``extra``
    (the files given to ``refsys rules test``); ``disabled`` references and ``filters`` as in ``build``."""
    texts = configured_texts(bundled, rule_dirs) + list(overlay) + list(extra)
    return build(texts, dict(placeholders or {}), disabled=disabled, filters=filters)
