"""The Kubernetes audit adapter on real audit events (Falco's k8s_audit traces, Panther's rule tests), on
webhook ``EventList`` bodies and on what is not an audit Event."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from security.ecs import get
from security.sources.base import Parsed, Rejected, Rejection
from security.sources.k8s_audit import KubernetesAuditAdapter
from security.sources.registry import adapter_for
from tests.shared_data import shared_file
from tests.source_samples import json_line, run_sample

TRACES = "falco-legacy-tests/test/trace_files/k8s_audit"
PANTHER = "panther-analysis/EXTRACTED_k8s_audit_test_events_with_expected_results.jsonl"
NO_TIME = (
    "Kubernetes audit Event without a time (none of stageTimestamp, requestReceivedTimestamp, timestamp)"
)


def _trace(name: str) -> list[dict[str, Any]]:
    return run_sample(KubernetesAuditAdapter(), shared_file(f"{TRACES}/{name}")).docs


def test_every_falco_trace_file_is_accepted_or_rejected_with_a_reason() -> None:
    """47 files, 52 events: one Event per file, but six NDJSON lines in one file and one fuzz case."""
    runs = {
        path.name: run_sample(KubernetesAuditAdapter(), path) for path in shared_file(TRACES).glob("*.json")
    }
    assert len(runs) == 47
    counts = {name: run.counts for name, run in runs.items()}
    assert {name: count for name, count in counts.items() if count != (1, 0)} == {
        "create_configmap_sensitive_values.json": (6, 0),
        "fal_01_003.json": (0, 1),
    }
    assert sum(accepted for accepted, _ in counts.values()) == 51
    assert [r.reason for r in runs["fal_01_003.json"].rejections] == ["not a Kubernetes audit Event: kind 0"]
    api_versions = {get(doc, "kubernetes.audit.apiVersion") for run in runs.values() for doc in run.docs}
    assert api_versions == {"audit.k8s.io/v1", "audit.k8s.io/v1beta1", None}  # some traces have no apiVersion


def test_panther_events_are_accepted_when_they_carry_a_time() -> None:
    """Panther's rule tests hold hand-trimmed events: most have no time at all, which no API server writes."""
    run = run_sample(KubernetesAuditAdapter(), shared_file(PANTHER), unwrap="log")
    assert run.counts == (17, 52)
    assert {r.reason for r in run.rejections} == {NO_TIME}
    first = run.docs[0]
    assert get(first, "kubernetes.audit.requestReceivedTimestamp") == "2022-11-29 00:09:04.38"
    assert first["@timestamp"] == "2022-11-29T00:09:04.380000Z"  # Panther drops the Z, keeps UTC
    assert get(first, "user.name") == "system:anonymous"
    assert get(first, "source.ip") == "8.8.8.8"


def test_an_audit_event_maps_user_verb_resource_source_and_response() -> None:
    event = _trace("create_configmap_sensitive_values.json")[0]
    assert event["@timestamp"] == "2018-10-26T09:51:20.717013Z"  # stageTimestamp
    assert get(event, "event.id") == "9a2bb12c-b9f7-4d34-809c-671e8c7e1e06:ResponseComplete"
    assert get(event, "event.kind") == "event"
    assert get(event, "event.category") == ["api"]
    assert get(event, "event.type") == ["creation", "allowed"]
    assert get(event, "event.action") == "create"
    assert get(event, "event.outcome") == "success"
    assert get(event, "user.name") == "minikube-user"
    assert get(event, "user.group.name") == ["system:masters", "system:authenticated"]
    assert get(event, "source.ip") == "192.168.99.1"
    assert get(event, "related.ip") == ["192.168.99.1"]
    assert get(event, "orchestrator.resource.type") == "configmaps"
    assert get(event, "orchestrator.resource.name") == "my-config"
    assert get(event, "orchestrator.namespace") == "default"
    assert get(event, "orchestrator.api_version") == "v1"
    assert get(event, "http.response.status_code") == 201
    assert get(event, "url.original") == "/api/v1/namespaces/default/configmaps"
    # Native fields, for rules written against the API server's names.
    assert get(event, "kubernetes.audit.objectRef.resource") == "configmaps"
    assert get(event, "kubernetes.audit.requestObject.data")["ui.properties"].startswith("color.good=purple")
    assert orjson.loads(get(event, "event.original")) == get(event, "kubernetes.audit")


def test_a_denied_request_and_an_api_group() -> None:
    (exec_pod,) = _trace("exec_pod.json")
    assert get(exec_pod, "event.id").endswith(":ResponseStarted")
    assert get(exec_pod, "http.response.status_code") == 101
    assert get(exec_pod, "kubernetes.audit.objectRef.subresource") == "exec"
    assert get(exec_pod, "url.query").startswith("command=bash")
    (role,) = _trace("create_cluster_role_wildcard_verbs.json")
    assert get(role, "orchestrator.api_version") == "rbac.authorization.k8s.io/v1"
    assert get(role, "orchestrator.namespace") is None  # cluster-scoped

    run = run_sample(KubernetesAuditAdapter(), shared_file(PANTHER), unwrap="log")
    forbidden = [doc for doc in run.docs if get(doc, "http.response.status_code") == 403]
    assert forbidden
    assert {get(doc, "event.outcome") for doc in forbidden} == {"failure"}


def test_the_stages_of_one_request_get_distinct_ids_and_a_line_keeps_its_id() -> None:
    line = shared_file(f"{TRACES}/create_configmap_sensitive_values.json").read_bytes().splitlines()[0]
    event = orjson.loads(line)
    received = event | {"stage": "RequestReceived", "stageTimestamp": event["requestReceivedTimestamp"]}
    ids = [
        get(KubernetesAuditAdapter().normalise(json_line(value))[0], "event.id")
        for value in (event, event, received)
    ]
    assert ids == [
        "9a2bb12c-b9f7-4d34-809c-671e8c7e1e06:ResponseComplete",
        "9a2bb12c-b9f7-4d34-809c-671e8c7e1e06:ResponseComplete",
        "9a2bb12c-b9f7-4d34-809c-671e8c7e1e06:RequestReceived",
    ]
    without_stage = {key: value for key, value in event.items() if key != "stage"}
    assert (
        get(KubernetesAuditAdapter().normalise(json_line(without_stage))[0], "event.id") == event["auditID"]
    )
    without_id = {key: value for key, value in event.items() if key != "auditID"}
    assert get(KubernetesAuditAdapter().normalise(json_line(without_id))[0], "event.id") is None


def _items(*names: str) -> list[dict[str, Any]]:
    """Real events as a webhook EventList carries them: without their own kind and apiVersion."""
    events = [orjson.loads(shared_file(f"{TRACES}/{name}").read_bytes()) for name in names]
    return [
        {key: value for key, value in event.items() if key not in ("kind", "apiVersion")} for event in events
    ]


def test_an_event_list_gives_one_document_per_item() -> None:
    items = _items("create_secret.json", "delete_secret.json", "exec_pod.json")
    body = {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}
    docs = KubernetesAuditAdapter().normalise(json_line(body))
    assert [get(doc, "event.action") for doc in docs] == ["create", "delete", "create"]
    assert [get(doc, "event.id") for doc in docs] == [f"{item['auditID']}:{item['stage']}" for item in items]
    for doc, item in zip(docs, items, strict=True):
        assert orjson.loads(get(doc, "event.original")) == item  # the item, not the whole list again
        assert get(doc, "kubernetes.audit.kind") == "Event"
        assert get(doc, "kubernetes.audit.apiVersion") == "audit.k8s.io/v1"


def test_a_bad_item_in_an_event_list_does_not_cost_the_others() -> None:
    items = _items("create_secret.json", "delete_secret.json")
    body = {
        "kind": "EventList",
        "apiVersion": "audit.k8s.io/v1",
        "items": [items[0], {"kind": 0}, items[1], 7],
    }
    outcomes = list(KubernetesAuditAdapter().parse([json_line(body)]))
    assert [type(outcome) for outcome in outcomes] == [Parsed, Rejection, Parsed, Rejection]
    assert [outcome.reason for outcome in outcomes if isinstance(outcome, Rejection)] == [
        "EventList item 1: not a Kubernetes audit Event: kind 0",
        "EventList item 3: a JSON int, not an Event object",
    ]
    with pytest.raises(Rejected, match="EventList item 1: not a Kubernetes audit Event: kind 0"):
        KubernetesAuditAdapter().normalise(json_line(body))


def test_an_object_without_kind_is_an_event_when_it_has_audit_id_and_verb() -> None:
    (event,) = _items("delete_secret.json")
    (doc,) = KubernetesAuditAdapter().normalise(json_line(event))
    assert get(doc, "event.action") == "delete"
    assert get(doc, "event.type") == ["deletion", "allowed"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"kind": 0}, "not a Kubernetes audit Event: kind 0"),
        (["Event"], "a Kubernetes audit Event is a JSON object, not a JSON list"),
        ({"kind": "Pod", "apiVersion": "v1"}, "not a Kubernetes audit Event: kind 'Pod'"),
        # A core Event (what `kubectl get events` lists) is not an audit event.
        ({"kind": "Event", "apiVersion": "v1", "reason": "Pulled"}, "unsupported apiVersion 'v1'"),
        (
            {"verb": "get", "requestURI": "/api"},
            "not a Kubernetes audit Event: no kind, and no auditID and verb",
        ),
        ({"kind": "EventList", "apiVersion": "v1", "items": []}, "unsupported EventList apiVersion 'v1'"),
        ({"kind": "EventList", "apiVersion": "audit.k8s.io/v1"}, "EventList without an items list"),
        ({"kind": "Event", "auditID": "a", "verb": "get"}, NO_TIME),
        ({"kind": "Event", "stageTimestamp": "noon"}, "stageTimestamp 'noon' is not an RFC 3339 time"),
    ],
)
def test_what_is_not_an_audit_event_is_rejected_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(Rejected, match=re.escape(reason)):
        KubernetesAuditAdapter().normalise(json_line(value))


def test_the_registry_knows_the_kubernetes_audit_adapter() -> None:
    adapter = adapter_for("k8s_audit")
    assert isinstance(adapter, KubernetesAuditAdapter)
    assert adapter.dataset == "kubernetes.audit"
