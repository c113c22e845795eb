"""The Falco adapter on real Falco JSON alerts (Falco's own regression outputs, the Falco docs) and edge cases."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from security.ecs import get
from security.sources.base import Rejected
from security.sources.falco import FalcoAdapter
from security.sources.registry import adapter_for
from tests.shared_data import shared_file
from tests.source_samples import json_line, run_sample

CAT_WRITE = "falco-legacy-tests/test/output_files/single_rule_with_cat_write.json"
DOCS_EXAMPLES = "falco-website-examples/EXTRACTED_falco_json_alerts_from_docs.jsonl"


@pytest.mark.parametrize(
    ("sample", "unwrap", "accepted", "rejected"),
    [
        (CAT_WRITE, None, 8, 0),
        (DOCS_EXAMPLES, "event", 19, 1),  # one docs excerpt is cut down to rule and output_fields: no time
    ],
)
def test_every_sample_line_is_accepted_or_rejected_with_a_reason(
    sample: str, unwrap: str | None, accepted: int, rejected: int
) -> None:
    run = run_sample(FalcoAdapter(), shared_file(sample), unwrap=unwrap)
    assert run.counts == (accepted, rejected)
    for doc in run.docs:
        assert doc["@timestamp"].endswith("Z")
        assert get(doc, "rule.name") == get(doc, "falco.rule")
        assert orjson.loads(get(doc, "event.original")) == get(doc, "falco")


def test_the_rejection_says_why() -> None:
    run = run_sample(FalcoAdapter(), shared_file(DOCS_EXAMPLES), unwrap="event")
    assert [r.reason for r in run.rejections] == [
        "Falco alert of rule 'Falco internal: metrics snapshot' without a time"
    ]


def test_a_syscall_alert_maps_rule_priority_and_process() -> None:
    alert = run_sample(FalcoAdapter(), shared_file(CAT_WRITE)).docs[0]
    assert alert["@timestamp"] == "2016-08-04T16:17:57.881781Z"  # Falco's nanoseconds, cut to microseconds
    assert get(alert, "event.kind") == "alert"
    assert get(alert, "event.category") == ["intrusion_detection", "file", "process"]  # from the rule's tags
    assert get(alert, "rule.name") == "open_from_cat"
    assert get(alert, "event.severity") == 4  # Warning
    assert get(alert, "process.command_line") == "cat /dev/null"
    assert get(alert, "host.name") == "test-falco-hostname"
    assert get(alert, "message").endswith("An open was seen (command=cat /dev/null)")
    assert get(alert, "event.id") is None  # Falco has no id of its own: the intake derives one
    # Native fields, output_fields with Falco's own dotted keys.
    assert get(alert, "falco.priority") == "Warning"
    assert get(alert, "falco.output_fields") == {
        "evt.time.iso8601": 1470327477881781397,
        "proc.cmdline": "cat /dev/null",
    }


def _docs_example(rule: str, **fields: Any) -> dict[str, Any]:
    docs = run_sample(FalcoAdapter(), shared_file(DOCS_EXAMPLES), unwrap="event").docs
    return next(
        doc
        for doc in docs
        if get(doc, "rule.name") == rule
        and all(get(doc, "falco.output_fields", {}).get(key) == value for key, value in fields.items())
    )


def test_a_container_alert_maps_process_user_container_and_pod() -> None:
    alert = _docs_example("Terminal shell in container", **{"container.id": "ee97d9c4186f"})
    assert get(alert, "event.severity") == 2  # Critical
    assert get(alert, "process.name") == "sh"
    assert get(alert, "process.command_line") == "sh -c clear; (bash || ash || sh)"
    assert get(alert, "process.parent.name") == "runc"
    assert get(alert, "user.name") == "root"
    assert get(alert, "container.id") == "ee97d9c4186f"
    assert get(alert, "container.image.name") == "docker.io/library/alpine"
    assert get(alert, "orchestrator.namespace") == "default"
    assert get(alert, "orchestrator.resource.name") == "kubecon"
    assert get(alert, "orchestrator.resource.type") == "pod"
    assert get(alert, "falco.output_fields")["k8s.pod.name"] == "kubecon"


def test_a_connection_in_fd_name_maps_source_and_destination() -> None:
    alert = _docs_example("Contact K8S API Server From Container", **{"container.id": "12fc4de5ccc3"})
    assert (get(alert, "source.ip"), get(alert, "source.port")) == ("172.17.0.9", 43812)
    assert (get(alert, "destination.ip"), get(alert, "destination.port")) == ("10.96.0.1", 443)


def test_a_k8s_audit_alert_maps_user_verb_target_and_response() -> None:
    alert = _docs_example("Disallowed K8s User", **{"ka.user.name": "yacht", "ka.verb": "patch"})
    assert get(alert, "event.category") == ["intrusion_detection", "api"]
    assert get(alert, "user.name") == "yacht"
    assert get(alert, "event.action") == "patch"
    assert get(alert, "orchestrator.resource.type") == "events"
    assert get(alert, "http.response.status_code") == 403  # Falco prints it as the string "403"
    assert get(alert, "url.original") == "/api/v1/namespaces/default/events/my-pool-1.18051c0a88716868"


def test_metrics_snapshots_are_metrics_not_alerts() -> None:
    docs = run_sample(FalcoAdapter(), shared_file(DOCS_EXAMPLES), unwrap="event").docs
    snapshots = [doc for doc in docs if get(doc, "rule.name") == "Falco internal: metrics snapshot"]
    assert len(snapshots) == 5
    assert {get(doc, "event.kind") for doc in snapshots} == {"metric"}


def _falcosidekick(**changes: Any) -> dict[str, Any]:
    """A payload as Falcosidekick's webhook output posts it (``types.FalcoPayload``)."""
    payload = {
        "uuid": "0b0c9b3e-4c5a-4f7a-9a53-7c9f3f9c2a11",
        "output": "16:31:56.746609046: Error File below a known binary directory opened for writing",
        "priority": "Error",
        "rule": "Write below binary dir",
        "time": "2024-02-03T16:31:56.746609046Z",
        "output_fields": {
            "evt.type": "openat",
            "fd.name": "/bin/evil",
            "proc.name": "touch",
            "proc.pid": 4242,
            "user.name": "root",
            "user.uid": 0,
            "container.id": "host",
            "container.image.repository": "<NA>",
        },
        "source": "syscall",
        "tags": ["filesystem", "mitre_persistence"],
        "hostname": "node-1",
    }
    payload.update(changes)
    return {key: value for key, value in payload.items() if value is not None}


def test_a_falcosidekick_payload_keeps_its_uuid_as_the_event_id() -> None:
    line = json_line(_falcosidekick())
    (doc,) = FalcoAdapter().normalise(line)
    assert get(doc, "event.id") == "0b0c9b3e-4c5a-4f7a-9a53-7c9f3f9c2a11"
    assert FalcoAdapter().normalise(line)[0]["event"]["id"] == get(doc, "event.id")
    assert get(doc, "event.severity") == 3
    assert get(doc, "event.action") == "openat"
    assert get(doc, "file.path") == "/bin/evil"
    assert get(doc, "process.pid") == 4242
    assert get(doc, "user.id") == "0"
    assert get(doc, "container.image.name") is None  # "<NA>" is Falco's "could not resolve"
    assert get(doc, "@timestamp") == "2024-02-03T16:31:56.746609Z"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("an alert", "a Falco alert is a JSON object, not a JSON str"),
        (_falcosidekick(rule=None), "Falco alert without a rule"),
        (_falcosidekick(time=None), "Falco alert of rule 'Write below binary dir' without a time"),
        (
            _falcosidekick(time="16:31:56.746609046"),
            "Falco time '16:31:56.746609046' is not an RFC 3339 time",
        ),
        (
            _falcosidekick(priority=None),
            "Falco alert of rule 'Write below binary dir' with an unknown priority None",
        ),
        (_falcosidekick(priority="Urgent"), "with an unknown priority 'Urgent'"),
    ],
)
def test_what_is_not_a_falco_alert_is_rejected_with_a_reason(value: Any, reason: str) -> None:
    with pytest.raises(Rejected, match=re.escape(reason)):
        FalcoAdapter().normalise(json_line(value))


def test_the_registry_knows_the_falco_adapter() -> None:
    adapter = adapter_for("falco")
    assert isinstance(adapter, FalcoAdapter)
    assert adapter.dataset == "falco.alerts"
