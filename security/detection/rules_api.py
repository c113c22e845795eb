"""``/api/v1/rules``: the rule catalog, uploads, enable/disable, Sigma filters, tests, backtests and coverage.

Rule files are a read-only base (DESIGN.md section 5); everything changed here is an overlay in the state
database that the list shows with its origin (``bundled``, ``directory``, ``api``). An upload is checked as
strictly as detection needs it before it is stored: it must parse, every rule must route to a dataset with
every field mapped and compile, and correlations must resolve; the 422 problem lists every reason. Every
change is audited. Role ``security-officer`` (``admin`` implied).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import AwareDatetime, BaseModel, Field, model_validator
from sigma.filters import SigmaFilter

from control_plane.core import clock, ids
from control_plane.core.auth.roles import Role
from control_plane.core.auth.tokens import Principal
from control_plane.core.deps import Authorize as _Authorize
from control_plane.core.deps import ServicesDep, request_actor
from control_plane.core.problems import problem_response
from control_plane.core.responses import json_response
from control_plane.core.services import Services
from security.detection import rule_store, rule_testing
from security.detection.catalog import FILTER_PATH, UPLOAD_PATH, RuleCatalog
from security.detection.rule_store import Overlay
from security.detection.ruleset import RuleInfo, RuleSet, RuleText, build, describe, parse_documents, rule_ref
from security.intake.identity import RequestKey
from security.sources.control_plane import AUDIT_DATASET

router = APIRouter(prefix="/api/v1/rules", tags=["rules"])
Reader = Annotated[Principal, Depends(_Authorize("rules:read"))]
Writer = Annotated[Principal, Depends(_Authorize("rules:write"))]
RefPath = Annotated[str, Path(max_length=256, description="a rule's id, else its name, else its title")]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no rule of that reference"}}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"description": "the rules do not parse, route, map or compile; `errors` lists every reason"}
}
MAX_TEST_EVENTS = 100_000


class RuleSummary(BaseModel):
    ref: str
    title: str
    level: str
    tags: list[str]
    techniques: list[str]
    kind: str
    """``rule``, ``correlation`` or ``filter``."""
    origin: str
    """``bundled``, ``directory`` or ``api``."""
    path: str
    line: int
    enabled: bool
    class_: str = Field(alias="class")
    """``mapped``, ``unmapped``, ``unroutable`` or ``invalid``."""
    reason: str
    unmapped_fields: list[str]
    filters: list[str]
    """Filters applied to this rule (for a filter: the rules it applies to)."""
    version: int | None = None
    """Upload version (``api`` origin only)."""
    uploaded_by: str | None = None
    uploaded_at: datetime | None = None
    changed_by: str | None = None
    """Who last enabled or disabled it, when, and why."""
    changed_at: datetime | None = None
    change_reason: str | None = None


class FileProblem(BaseModel):
    rule: str
    path: str
    line: int | None
    reason: str


class RuleList(BaseModel):
    items: list[RuleSummary]
    problems: list[FileProblem]
    """Documents that did not even parse (rules that parsed but do not run are items with their class)."""


class RuleDetail(RuleSummary):
    yaml: str


class UploadRequest(BaseModel):
    yaml: str = Field(min_length=1, max_length=1_000_000)
    """One or more YAML documents (rules and correlation rules); each is stored by its reference."""


class UploadResult(BaseModel):
    items: list[RuleSummary]


class ReasonRequest(BaseModel):
    reason: str = Field(min_length=1, max_length=1024)


class FilterRequest(BaseModel):
    yaml: str = Field(min_length=1, max_length=100_000)
    """One Sigma filter document (sigma-filters-specification); its condition must exclude (``not ...``)."""
    owner: str = Field(min_length=1, max_length=256)
    reason: str = Field(min_length=1, max_length=1024)
    expires_at: AwareDatetime


class FilterItem(BaseModel):
    id: str
    title: str
    rules: list[str]
    owner: str
    reason: str
    expires_at: datetime
    active: bool
    created_by: str
    created_at: datetime
    applied_to: list[str]
    yaml: str


class FilterList(BaseModel):
    items: list[FilterItem]


class TestRequest(BaseModel):
    rules: list[str] | None = Field(None, max_length=100)
    """YAML texts to test; when omitted, the rules in force."""
    events: list[dict[str, Any]] | None = Field(None, max_length=MAX_TEST_EVENTS)
    """Normalised ECS documents."""
    lines: list[str] | None = Field(None, max_length=MAX_TEST_EVENTS)
    """Raw lines of ``source``, normalised by its intake adapter."""
    source: str | None = None
    from_: AwareDatetime | None = Field(None, alias="from")
    """With ``to``: backtest over the stored events with ``from <= @timestamp < to``."""
    to: AwareDatetime | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TestRequest:
        given = [
            self.events is not None,
            self.lines is not None,
            self.from_ is not None or self.to is not None,
        ]
        if sum(given) != 1:
            raise ValueError("give exactly one of events, lines (with source) or from and to")
        if self.lines is not None and not self.source:
            raise ValueError("lines need the source that wrote them")
        if given[2] and (self.from_ is None or self.to is None or self.to <= self.from_):
            raise ValueError("a backtest needs from < to")
        return self


class TestResult(BaseModel):
    events: int
    """Events evaluated."""
    matches: list[dict[str, Any]]
    """``{rule_id, rule_title, level, event_index, event_id}`` per rule match."""
    correlations: list[dict[str, Any]]
    """``{correlation_id, title, group, event_indexes, event_ids, first, last}`` per correlation alert."""
    rejected: list[dict[str, Any]]
    """Raw lines the adapter refused: ``{line, reason}``."""
    truncated: bool = False
    """A backtest stopped after its first MAX_TEST_EVENTS events of the range: narrow the range for the rest."""


class TechniqueCoverage(BaseModel):
    technique: str
    rules: list[dict[str, str]]


class TacticCoverage(BaseModel):
    tactic: str
    rules: int


class Coverage(BaseModel):
    techniques: list[TechniqueCoverage]
    tactics: list[TacticCoverage]
    rules: int
    """Enabled, runnable rules and correlations."""
    without_technique: list[str]
    """References of enabled rules that name no ATT&CK technique."""


def rule_catalog(request: Request) -> RuleCatalog:
    """The app's catalog: the one the serving stages read, so a change here reaches them."""
    catalog: RuleCatalog = request.app.state.rule_catalog
    return catalog


CatalogDep = Annotated[RuleCatalog, Depends(rule_catalog)]


def _invalid(request: Request, detail: str, errors: list[tuple[str, str]]) -> Response:
    """A 422 problem listing every reason, as ``errors: [{location, message}]`` like request validation's."""
    listed = [{"location": location, "message": message} for location, message in errors]
    return problem_response(422, detail, instance=request.url.path, extensions={"errors": listed})


def summary(info: RuleInfo, overlay: Overlay) -> dict[str, Any]:
    described = describe(info.rule)
    upload = next((row for row in overlay.uploads if row["ref"] == info.ref), None)
    flag = overlay.flags.get(info.ref)
    return {
        "ref": info.ref,
        "title": described.title,
        "level": described.level if info.kind != "filter" else "",
        "tags": list(described.tags),
        "techniques": list(described.techniques),
        "kind": info.kind,
        "origin": info.text.origin,
        "path": info.text.path,
        "line": info.line,
        "enabled": info.enabled,
        "class": info.rule_class,
        "reason": info.reason,
        "unmapped_fields": list(info.unmapped),
        "filters": list(info.filters),
        "version": upload["version"] if upload and info.text.origin == "api" else None,
        "uploaded_by": upload["uploaded_by"] if upload and info.text.origin == "api" else None,
        "uploaded_at": upload["uploaded_at"] if upload and info.text.origin == "api" else None,
        "changed_by": flag["changed_by"] if flag else None,
        "changed_at": flag["changed_at"] if flag else None,
        "change_reason": flag["reason"] if flag else None,
    }


def _find(ruleset: RuleSet, ref: str) -> RuleInfo:
    info = ruleset.infos.get(ref)
    if info is None:
        raise HTTPException(404, f"no rule {ref!r}")
    return info


def _audit(
    services: Services,
    request: Request,
    principal: Principal,
    action: str,
    target: str,
    details: dict[str, Any],
) -> None:
    services.audit.append(
        actor=request_actor(request, principal),
        action=action,
        outcome="success",
        target=target,
        details=details,
    )


@router.get("", response_model=RuleList)
def list_rules(catalog: CatalogDep, _who: Reader) -> Response:
    """Every rule, correlation and filter: origin, file and line, enabled, class (and why it does not run)."""
    ruleset, overlay = catalog.current(), catalog.overlay()
    items = [summary(info, overlay) for info in ruleset.infos.values()]
    parse_problems = [
        {"rule": p.rule, "path": p.path, "line": p.line, "reason": p.reason}
        for p in ruleset.problems
        if p.rule not in ruleset.infos
    ]
    return json_response({"items": sorted(items, key=lambda i: i["ref"]), "problems": parse_problems})


@router.get("/coverage", response_model=Coverage)
def coverage(catalog: CatalogDep, _who: Reader) -> Response:
    """MITRE ATT&CK techniques of the enabled rules that run, each with its rules; rules per tactic."""
    ruleset = catalog.current()
    by_technique: dict[str, list[dict[str, str]]] = defaultdict(list)
    tactics: Counter[str] = Counter()
    without: list[str] = []
    running = [i for i in ruleset.infos.values() if i.kind != "filter" and i.runs]
    for info in sorted(running, key=lambda i: i.ref):
        described = describe(info.rule)
        for technique in described.techniques:
            by_technique[technique].append(
                {"ref": info.ref, "title": described.title, "level": described.level}
            )
        if not described.techniques:
            without.append(info.ref)
        for tag in described.tags:
            name = tag.lower().removeprefix("attack.")
            if tag.lower().startswith("attack.") and not (name[:1] in "tgs" and name[1:2].isdigit()):
                tactics[name] += 1
    return json_response(
        {
            "techniques": [{"technique": t, "rules": by_technique[t]} for t in sorted(by_technique)],
            "tactics": [{"tactic": t, "rules": n} for t, n in sorted(tactics.items())],
            "rules": len(running),
            "without_technique": without,
        }
    )


@router.get("/filters", response_model=FilterList)
def list_filters(catalog: CatalogDep, _who: Reader) -> Response:
    """Every filter stored through the API, expired ones too (``active: false``), with the rules it applies to."""
    ruleset, overlay = catalog.current(), catalog.overlay()
    return json_response({"items": [_filter_item(row, ruleset) for row in overlay.filters]})


def _filter_item(row: dict[str, Any], ruleset: RuleSet) -> dict[str, Any]:
    path = FILTER_PATH.format(id=row["id"])
    applied = next(
        (i.filters for i in ruleset.infos.values() if i.kind == "filter" and i.text.path == path), []
    )
    return {
        **{key: row[key] for key in ("id", "title", "rules", "owner", "reason", "expires_at", "yaml")},
        **{key: row[key] for key in ("created_by", "created_at")},
        "active": row["expires_at"] > clock.utcnow(),
        "applied_to": list(applied),
    }


@router.post("/filters", status_code=201, response_model=FilterItem, responses=INVALID)
def create_filter(
    body: FilterRequest, request: Request, services: ServicesDep, catalog: CatalogDep, who: Writer
) -> Response:
    """Store a Sigma filter that excludes known-good events from the rules it names, until it expires."""
    filter_id = ids.new_id()
    text = RuleText(body.yaml, "api", FILTER_PATH.format(id=filter_id))
    parsed, problems = parse_documents(text)
    errors = [("yaml", f"line {p.line}: {p.reason}" if p.line else p.reason) for p in problems]
    if body.expires_at <= clock.utcnow():
        errors.append(("expires_at", "the expiry is in the past"))
    filters = [rule for rule, _doc in parsed if isinstance(rule, SigmaFilter)]
    if not problems and (len(parsed) != 1 or len(filters) != 1):
        errors.append(("yaml", "give exactly one Sigma filter document (rules go to POST /api/v1/rules)"))
    if errors:
        return _invalid(request, "the filter is invalid", errors)
    sigma_filter = filters[0]
    errors += [("yaml", reason) for reason in _filter_errors(sigma_filter, catalog.current())]
    if not errors:
        preview = catalog.preview(filters=[text])
        applied = preview.infos[rule_ref(sigma_filter)].filters
        if not applied:
            errors.append(("yaml", "the filter applies to no rule (check its rules and its logsource)"))
        for ref in applied:
            info = preview.infos[ref]
            if info.rule_class != "mapped":
                errors.append((ref, f"the rule would not run with the filter: {info.reason}"))
    if errors:
        return _invalid(request, "the filter is invalid", errors)
    assert isinstance(sigma_filter.filter.rules, list)
    rules = [reference.reference for reference in sigma_filter.filter.rules]
    row = {
        "id": filter_id,
        "title": sigma_filter.title,
        "yaml": body.yaml,
        "rules": rules,
        "owner": body.owner,
        "reason": body.reason,
        "expires_at": body.expires_at,
        "created_by": who.subject,
        "created_at": clock.utcnow(),
    }
    rule_store.add_filter(services.engine, row)
    _audit(
        services, request, who, "rule.filter.create", filter_id,
        {"title": row["title"], "rules": rules, "owner": body.owner, "reason": body.reason,
         "expires_at": clock.rfc3339(body.expires_at)},
    )  # fmt: skip
    return json_response(_filter_item(row, catalog.current()), status_code=201)


def _filter_errors(sigma_filter: SigmaFilter, ruleset: RuleSet) -> list[str]:
    """A filter must exclude (its condition negates) and name rules that exist."""
    errors: list[str] = []
    condition = sigma_filter.filter.condition[0] if sigma_filter.filter.condition else ""
    if "not" not in condition.lower().split():
        errors.append(
            "the filter's condition is AND-ed onto the rules it names, so it must exclude: write `not selection`"
        )
    if not isinstance(sigma_filter.filter.rules, list):
        errors.append("name the rules the filter applies to (`rules: any` is not accepted through the API)")
        return errors
    for reference in sigma_filter.filter.rules:
        if not any(
            reference.reference in {i.ref, i.rule.name or "", i.rule.title}
            for i in ruleset.infos.values()
            if i.kind == "rule"
        ):
            errors.append(f"no rule {reference.reference!r}")
    return errors


@router.delete("/filters/{filter_id}", status_code=204, responses={404: {"description": "no such filter"}})
def delete_filter(
    filter_id: Annotated[str, Path(max_length=36)], request: Request, services: ServicesDep, who: Writer
) -> Response:
    """Remove a filter: the rules it named match the events it excluded again."""
    row = rule_store.delete_filter(services.engine, filter_id)
    if row is None:
        raise HTTPException(404, f"no filter {filter_id!r}")
    _audit(
        services,
        request,
        who,
        "rule.filter.delete",
        filter_id,
        {"title": row["title"], "rules": row["rules"]},
    )
    return Response(status_code=204)


@router.post("/test", response_model=TestResult, responses=INVALID)
async def test_rules(body: TestRequest, request: Request, catalog: CatalogDep, who: Reader) -> Response:
    """Run rules (given, else those in force) over events, raw lines of a source, or the stored events of a
    time range (a backtest): every match and correlation alert, as ``refsys rules test`` prints them."""
    return await run_in_threadpool(_test, body, request, catalog, who)


def _test(body: TestRequest, request: Request, catalog: CatalogDep, who: Principal) -> Response:
    if body.rules is not None:
        texts = [RuleText(text, "api", f"request:rules[{n}]") for n, text in enumerate(body.rules)]
        ruleset = build(texts, dict(catalog.settings.placeholders))
        if ruleset.problems:
            listed = [(p.rule, f"{p.where()}: {p.reason}") for p in ruleset.problems]
            return _invalid(request, "the rules do not run", listed)
    else:
        ruleset = catalog.current()
    rejected: list[dict[str, Any]] = []
    truncated = False
    if body.events is not None:
        docs, _ = rule_testing.normalise(
            b"\n".join(rule_testing.dumps(e).encode() for e in body.events), source=None, origin=None
        )
        lines, count = rule_testing.run(ruleset, docs)
    elif body.lines is not None:
        assert body.source is not None
        try:
            docs, rejections = rule_testing.normalise(
                "\n".join(body.lines).encode(), source=body.source, origin=RequestKey(ids.new_id())
            )
        except KeyError as exc:
            return _invalid(request, "unknown source", [("source", str(exc.args[0]))])
        rejected = [{"line": r.line.number, "reason": r.reason} for r in rejections]
        lines, count = rule_testing.run(ruleset, docs)
    else:
        assert body.from_ is not None and body.to is not None
        excluded = [] if {Role.ADMIN, Role.AUDITOR} & who.roles else [AUDIT_DATASET]
        store = request.app.state.telemetry.store
        stored = rule_testing.stored_events(store, body.from_, body.to, exclude_datasets=excluded)
        # Bounded: a long range must not hold the server's memory (positions and alerts grow with it).
        lines, count = rule_testing.run(ruleset, itertools.islice(stored, MAX_TEST_EVENTS))
        truncated = count == MAX_TEST_EVENTS and next(stored, None) is not None
    return json_response(
        {
            "events": count,
            "matches": [line for line in lines if "rule_id" in line],
            "correlations": [line for line in lines if "correlation_id" in line],
            "rejected": rejected,
            "truncated": truncated,
        }
    )


@router.get("/{ref}", response_model=RuleDetail, responses=NOT_FOUND)
def get_rule(ref: RefPath, catalog: CatalogDep, _who: Reader) -> Response:
    """One rule with its YAML document, origin and class."""
    ruleset, overlay = catalog.current(), catalog.overlay()
    info = _find(ruleset, ref)
    return json_response({**summary(info, overlay), "yaml": info.document})


@router.post("", status_code=201, response_model=UploadResult, responses=INVALID)
def upload_rules(
    body: UploadRequest, request: Request, services: ServicesDep, catalog: CatalogDep, who: Writer
) -> Response:
    """Upload rules and correlation rules; each document is stored by its reference and replaces a base rule
    (or an earlier upload) of the same reference. Nothing is stored unless every document would run."""
    parsed, problems = parse_documents(RuleText(body.yaml, "api", "upload"))
    errors = [(p.rule, f"line {p.line}: {p.reason}" if p.line else p.reason) for p in problems]
    if not problems and not parsed:
        errors.append(("yaml", "no rule in the upload"))
    for rule, document in parsed:
        if isinstance(rule, SigmaFilter):
            errors.append((rule_ref(rule), f"line {document.line}: filters go to POST /api/v1/rules/filters"))
    refs = [rule_ref(rule) for rule, _doc in parsed]
    if len(set(refs)) != len(refs):
        errors.append(("yaml", "two documents have the same reference"))
    if errors:
        return _invalid(request, "the upload is invalid", errors)
    documents = [(ref, doc.text) for ref, (_rule, doc) in zip(refs, parsed, strict=True)]
    preview = catalog.preview(
        uploads=[RuleText(text, "api", UPLOAD_PATH.format(ref=ref)) for ref, text in documents]
    )
    for ref in refs:
        info = preview.infos[ref]
        if info.rule_class != "mapped":
            errors.append((ref, f"{info.rule_class}: {info.reason}"))
    if errors:
        return _invalid(request, "the upload is invalid", errors)
    before = catalog.current().infos
    versions = rule_store.put_uploads(services.engine, documents, by=who.subject)
    for ref in refs:
        replaced = before.get(ref)
        _audit(
            services, request, who, "rule.upload", ref,
            {"version": versions[ref], "kind": preview.infos[ref].kind,
             "replaces": replaced.text.path if replaced is not None else None},
        )  # fmt: skip
    ruleset, overlay = catalog.current(), catalog.overlay()
    return json_response({"items": [summary(ruleset.infos[ref], overlay) for ref in refs]}, status_code=201)


@router.delete(
    "/{ref}",
    status_code=204,
    responses={**NOT_FOUND, 409: {"description": "a rule from the files: disable it instead"}},
)
def delete_rule(
    ref: RefPath, request: Request, services: ServicesDep, catalog: CatalogDep, who: Writer
) -> Response:
    """Remove an uploaded rule; a base rule of the same reference (if any) is in force again."""
    if not rule_store.delete_upload(services.engine, ref):
        if ref in catalog.current().infos:
            raise HTTPException(409, f"rule {ref!r} comes from the rule files: disable it instead")
        raise HTTPException(404, f"no rule {ref!r}")
    _audit(services, request, who, "rule.delete", ref, {})
    return Response(status_code=204)


def _set_enabled(
    ref: str, enabled: bool, body: ReasonRequest, request: Request, services: Services, catalog: RuleCatalog,
    who: Principal,
) -> Response:  # fmt: skip
    _find(catalog.current(), ref)
    rule_store.set_enabled(services.engine, ref, enabled=enabled, by=who.subject, reason=body.reason)
    _audit(services, request, who, "rule.enable" if enabled else "rule.disable", ref, {"reason": body.reason})
    ruleset, overlay = catalog.current(), catalog.overlay()
    return json_response(summary(ruleset.infos[ref], overlay))


@router.post("/{ref}/enable", response_model=RuleSummary, responses=NOT_FOUND)
def enable_rule(
    ref: RefPath,
    body: ReasonRequest,
    request: Request,
    services: ServicesDep,
    catalog: CatalogDep,
    who: Writer,
) -> Response:
    """Turn a disabled rule back on."""
    return _set_enabled(ref, True, body, request, services, catalog, who)


@router.post("/{ref}/disable", response_model=RuleSummary, responses=NOT_FOUND)
def disable_rule(
    ref: RefPath,
    body: ReasonRequest,
    request: Request,
    services: ServicesDep,
    catalog: CatalogDep,
    who: Writer,
) -> Response:
    """Stop a rule (or correlation, or filter) from running, with why; its file stays as it is."""
    return _set_enabled(ref, False, body, request, services, catalog, who)
