"""Kubernetes API server audit events (``audit.k8s.io/v1`` and ``v1beta1``), as the log backend writes them (one
``Event`` per line) and as the webhook backend posts them (an ``EventList`` per request, many events per line).

The whole Event is kept under ``kubernetes.audit`` so that rules written against the API server's own field
names (``kubernetes.audit.objectRef.resource``, ``kubernetes.audit.user.username``) keep working; the ECS fields
are filled from it. ``requestObject``/``responseObject`` are kept as the audit policy let the API server record
them: rules about sensitive ConfigMaps or privileged pods need them.

Identity: one request yields one event per stage (``RequestReceived``, ``ResponseStarted``, ``ResponseComplete``,
``Panic``), all with the request's ``auditID``, so ``event.id`` is ``<auditID>:<stage>`` (the bare auditID when an
event has no stage): re-ingesting a stage is idempotent, and the stages of one request stay distinct.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from control_plane.core import clock
from control_plane.core.clock import rfc3339
from security.ecs import ip as ecs_ip
from security.ecs import put
from security.sources.base import Adapter, Line, Outcome, Parsed, Rejected, Rejection

API_VERSIONS = ("audit.k8s.io/v1", "audit.k8s.io/v1beta1")

TIME_FIELDS = ("stageTimestamp", "requestReceivedTimestamp", "timestamp")
"""Where ``@timestamp`` comes from, first present wins: the time of this stage (each stage is an event of its
own: the ``ResponseComplete`` of a long watch comes minutes after its ``RequestReceived``), else the time the
request came in, else the ``timestamp`` of ``v1beta1`` events."""

_VERB_TYPES = {
    "create": "creation",
    "delete": "deletion",
    "deletecollection": "deletion",
    "update": "change",
    "patch": "change",
    "get": "access",
    "list": "access",
    "watch": "access",
}
_DECISION_TYPES = {"allow": "allowed", "forbid": "denied"}


class KubernetesAuditAdapter(Adapter):
    """Audit ``Event`` objects and webhook ``EventList`` bodies. An ``EventList`` is one line and many events:
    each valid item becomes a document, and each invalid item a rejection of that line naming the item, so one
    bad item does not cost the rest of the batch."""

    name: ClassVar[str] = "k8s_audit"
    dataset: ClassVar[str] = "kubernetes.audit"

    def parse(self, lines: Iterable[Line]) -> Iterator[Outcome]:
        for line in lines:
            value = line.value
            if isinstance(value, dict) and value.get("kind") == "EventList":
                yield from _event_list(line, value)
                continue
            try:
                _check_event(value)
                yield Parsed(line, _normalise_event(value, original=line.text))
            except Rejected as exc:
                yield Rejection(line, str(exc))

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        """All documents of one line, or its first rejection (``parse`` keeps the good items of a list)."""
        docs = []
        for outcome in self.parse([line]):
            if isinstance(outcome, Rejection):
                raise Rejected(outcome.reason)
            docs.append(outcome.doc)
        return docs


def _event_list(line: Line, event_list: dict[str, Any]) -> Iterator[Outcome]:
    """Items of a list carry no ``kind``/``apiVersion`` of their own (the list's apply): they get them back in
    ``kubernetes.audit``, so an event reads the same whichever backend sent it. Each item's ``event.original`` is
    the item alone, not the whole list repeated in every document."""
    api_version = event_list.get("apiVersion")
    if api_version is not None and api_version not in API_VERSIONS:
        yield Rejection(line, f"unsupported EventList apiVersion {api_version!r} (expected {_expected()})")
        return
    items = event_list.get("items")
    if not isinstance(items, list):
        yield Rejection(line, "EventList without an items list")
        return
    type_meta = {"kind": "Event"} | ({"apiVersion": api_version} if api_version else {})
    for index, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise Rejected(f"a JSON {type(item).__name__}, not an Event object")
            event = type_meta | item
            _check_event(event)
            yield Parsed(line, _normalise_event(event, original=orjson.dumps(item).decode()))
        except Rejected as exc:
            yield Rejection(line, f"EventList item {index}: {exc}")


def _check_event(value: Any) -> None:
    """Reject what is not an audit Event. Without ``kind`` an object is taken for an Event when it has the
    ``auditID`` and ``verb`` every API server event has; a core ``v1`` Event (cluster events, not audit) is
    refused by its apiVersion."""
    if not isinstance(value, dict):
        raise Rejected(f"a Kubernetes audit Event is a JSON object, not a JSON {type(value).__name__}")
    kind = value.get("kind")
    if kind is None:
        if "auditID" not in value or "verb" not in value:
            raise Rejected("not a Kubernetes audit Event: no kind, and no auditID and verb")
    elif kind != "Event":
        raise Rejected(f"not a Kubernetes audit Event: kind {kind!r}")
    api_version = value.get("apiVersion")
    if api_version is not None and api_version not in API_VERSIONS:
        raise Rejected(f"unsupported apiVersion {api_version!r} (expected {_expected()})")


def _expected() -> str:
    return " or ".join(API_VERSIONS)


def _normalise_event(event: dict[str, Any], *, original: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"@timestamp": _timestamp(event)}
    verb = _text(event.get("verb"))
    status = event.get("responseStatus")
    code = status.get("code") if isinstance(status, dict) else None
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    annotations = event.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    decision = _DECISION_TYPES.get(_text(annotations.get("authorization.k8s.io/decision")) or "")

    # What ``put`` would write, without its per-call checks (every value here is a non-empty string or None).
    fields = {
        "kind": "event",
        "category": ["api"],
        "type": [_VERB_TYPES.get(verb or "", "info")] + ([decision] if decision else []),
        "action": verb,
        "outcome": None if code is None else "success" if code < 400 else "failure",
        "module": "kubernetes",
        "id": _event_id(event),
        "original": original or None,
        "reason": _text(annotations.get("authorization.k8s.io/reason")),
    }
    doc["event"] = {name: value for name, value in fields.items() if value is not None}
    put(doc, "http.response.status_code", code)
    _map_users(doc, event)
    _map_source(doc, event.get("sourceIPs"))
    put(doc, "user_agent.original", _text(event.get("userAgent")))
    uri = _text(event.get("requestURI"))
    put(doc, "url.original", uri)
    if uri:
        parts = urlsplit(uri)
        put(doc, "url.path", parts.path)
        put(doc, "url.query", parts.query)
    _map_object(doc, event.get("objectRef"))
    put(doc, "kubernetes.audit", event)
    return doc


def _timestamp(event: dict[str, Any]) -> str:
    """The first of ``TIME_FIELDS`` present, as RFC 3339 UTC. A time without a zone is read as UTC: the API
    server writes UTC only, and tools that re-render its times (Panther's ``2022-11-29 00:09:04.38``) keep UTC
    but drop the ``Z``."""
    for field in TIME_FIELDS:
        text = event.get(field)
        if text is None:
            continue
        if isinstance(text, str) and clock.is_canonical(text):  # how the API server writes times
            if clock.canonical_moment(text) is None:
                raise Rejected(f"{field} {text!r} is not an RFC 3339 time")
            return text
        try:
            moment = datetime.fromisoformat(text)
        except (TypeError, ValueError):
            raise Rejected(f"{field} {text!r} is not an RFC 3339 time") from None
        return rfc3339(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    raise Rejected(f"Kubernetes audit Event without a time (none of {', '.join(TIME_FIELDS)})")


def _event_id(event: dict[str, Any]) -> str | None:
    audit_id, stage = _text(event.get("auditID")), _text(event.get("stage"))
    if audit_id is None:
        return None  # no identity of its own: the intake derives one from where the line came from
    return f"{audit_id}:{stage}" if stage else audit_id


def _map_users(doc: dict[str, Any], event: dict[str, Any]) -> None:
    """The authenticated user, and the one it impersonated as ``user.effective``."""
    for prefix, key in (("user", "user"), ("user.effective", "impersonatedUser")):
        user = event.get(key)
        if isinstance(user, dict):
            put(doc, f"{prefix}.name", _text(user.get("username")))
            put(doc, f"{prefix}.id", _text(user.get("uid")))
            groups = user.get("groups")
            if isinstance(groups, list):
                put(doc, f"{prefix}.group.name", [group for group in groups if isinstance(group, str)])


def _map_source(doc: dict[str, Any], source_ips: Any) -> None:
    """``source.ip`` is the first address (the client, the rest are proxies on the way); all go to
    ``related.ip``, and stay in ``kubernetes.audit.sourceIPs`` as written."""
    if not isinstance(source_ips, list):
        return
    addresses = [address for address in map(ecs_ip, source_ips) if address is not None]
    if addresses:
        put(doc, "source.ip", addresses[0])
    put(doc, "related.ip", addresses)


def _map_object(doc: dict[str, Any], ref: Any) -> None:
    put(doc, "orchestrator.type", "kubernetes")
    if not isinstance(ref, dict):
        return
    put(doc, "orchestrator.resource.type", _text(ref.get("resource")))
    put(doc, "orchestrator.resource.name", _text(ref.get("name")))
    put(doc, "orchestrator.resource.id", _text(ref.get("uid")))
    put(doc, "orchestrator.namespace", _text(ref.get("namespace")))
    group, version = _text(ref.get("apiGroup")), _text(ref.get("apiVersion"))
    put(doc, "orchestrator.api_version", f"{group}/{version}" if group and version else version)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
