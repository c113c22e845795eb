"""The bundled rules (security/rules) on events refsys itself produces.

Each rule is tested on raw inputs as the sensors and the control plane write them (Keycloak events, Falco alerts,
Suricata EVE lines, Kubernetes audit events, auditd records, syslog lines, Wazuh alerts, the control plane's
audit records and access-log entries, its source-health events), normalised by refsys's own adapters and stamped
as the intake stamps them, then evaluated by ``evaluate``, the two stages the server runs. Every positive stream
must raise the rule's alert (for a correlation: with its group) and a near-miss stream, one step short of it, must
not. Times are fixed so that windows are deterministic.

The last tests run the rules over the demo generator's traffic: its attack scenarios raise the matching alerts
and its benign background raises none.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import yaml
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from prometheus_client import CollectorRegistry
from sigma.rule import SigmaRule

from control_plane.core import clock
from control_plane.core.audit.trail import AuditFilter
from control_plane.core.auth.roles import Role
from control_plane.core.bus import Bus
from control_plane.core.config import Settings
from security.alerts.model import Alert
from security.demo.traffic import DemoTraffic
from security.detection.evaluation import evaluate
from security.detection.ruleset import BUNDLED_DIR, RuleSet, load
from security.intake.access_shipper import AccessLogShipper
from security.intake.framing import FramedLine, frame
from security.intake.health import SilenceChange
from security.intake.identity import derived_event_id
from security.intake.stamping import Stamp, stamp
from security.sigma.routing import RuleClass, classify
from security.sources.base import Parsed
from security.sources.control_plane import access_entry_to_ecs, audit_record_to_ecs
from security.sources.registry import adapter_for
from security.telemetry import silence_event
from tests.apps import bearer, make_settings, running_app
from tests.shared_data import shared_file

TECHNIQUE = re.compile(r"t\d{4}(?:\.\d{3})?")
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
ATTACKER = "203.0.113.66"
POD_IP = "10.42.1.17"

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return load(bundled=True, placeholders=Settings().detection.placeholders)


# --- raw inputs through refsys's own adapters ----------------------------------------------------------------


def ingest(source: str, lines: Iterable[bytes | str | dict[str, Any]]) -> list[Doc]:
    """Frame, normalise and stamp lines as ``POST /api/v1/ingest/{source}`` does; every line must be accepted."""
    raw = [line if isinstance(line, bytes) else _bytes(line) for line in lines]
    docs, rejected = ingest_body(source, b"\n".join(raw) + b"\n")
    assert rejected == [], f"{source} rejected a test line: {rejected}"
    return docs


def ingest_body(source: str, body: bytes) -> tuple[list[Doc], list[str]]:
    """A request body's documents, stamped as the intake stamps them (times kept), and its rejections."""
    adapter = adapter_for(source)
    framed = list(frame(body, adapter.framing))
    rejected = [item.reason for item in framed if not isinstance(item, FramedLine)]
    ingested = T0 + timedelta(days=1)
    stamping = Stamp(source, adapter.dataset, f"test:{source}", ingested, timedelta(days=3650), None)
    docs = []
    lines = [item.line for item in framed if isinstance(item, FramedLine)]
    for index, outcome in enumerate(adapter.parse(lines)):
        if not isinstance(outcome, Parsed):
            rejected.append(outcome.reason)
            continue
        stamp(outcome.doc, stamping, fallback_id=derived_event_id(source, f"test#{index}", 0))
        docs.append(outcome.doc)
    return docs, rejected


def _bytes(line: str | dict[str, Any]) -> bytes:
    return line.encode() if isinstance(line, str) else orjson.dumps(line)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rfc(seconds: float) -> str:
    return clock.rfc3339(at(seconds))


def millis(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def audit(seconds: float, action: str, outcome: str, **fields: Any) -> Doc:
    """An audit record as ``AuditTrail.append`` writes it, shipped as the audit shipper ships it."""
    record = {
        "seq": int(seconds * 1000), "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{action}{seconds}{fields}")),
        "time": at(seconds), "actor": "alice", "roles": ["operator"], "jti": None, "client": ATTACKER,
        "user_agent": "python-httpx/0.27", "request_id": None, "action": action, "target": None,
        "outcome": outcome, "details": {}, "prev_hash": "0" * 64, "hash": "1" * 64,
    }  # fmt: skip
    record.update(fields)
    return audit_record_to_ecs(record)


def access(
    seconds: float, *, jti: str | None, client: str, route: str = "/api/v1/products", status: int = 200
) -> Doc:
    """An access-log entry as the request middleware logs it, shipped as the access-log shipper ships it."""
    entry = {
        "time": rfc(seconds), "request_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{seconds}{client}{route}")),
        "client_request_id": None, "method": "GET", "route": route, "status": status, "latency_ms": 4.2,
        "sub": "alice", "jti": jti, "client": client,
    }  # fmt: skip
    return access_entry_to_ecs(entry)


def keycloak_login(seconds: float, *, ok: bool, ip: str = ATTACKER, user: str = "alice") -> dict[str, Any]:
    """A user event as Keycloak's admin API (``EventRepresentation``) returns it."""
    event: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"kc{seconds}{ip}{ok}")), "time": millis(seconds),
        "type": "LOGIN" if ok else "LOGIN_ERROR", "realmId": "eo-gs", "clientId": "refsys-console",
        "ipAddress": ip, "details": {"auth_method": "openid-connect", "username": user},
    }  # fmt: skip
    if ok:
        event |= {"userId": "0b7c", "sessionId": "5f1e"}
    else:
        event["error"] = "invalid_user_credentials"
    return event


def keycloak_log_line(seconds: float, message: str) -> str:
    """The ``jboss-logging`` listener's line, Keycloak's default format (UTC, no zone)."""
    moment = at(seconds)
    return f"{moment:%Y-%m-%d %H:%M:%S},000 DEBUG [org.keycloak.events] (executor-thread-3) {message}"


def keycloak_grant(resource: str, path: str, roles: list[str], *, error: str | None = None) -> str:
    representation = orjson.dumps([{"id": f"id-{r}", "name": r, "composite": False} for r in roles]).decode()
    escaped = representation.replace('"', '\\"')
    message = (
        f'operationType="CREATE", realmId="eo-gs", realmName="eo-gs", clientId="security-admin-console", '
        f'userId="9d1a", ipAddress="10.8.0.12", resourceType="{resource}", resourcePath="{path}", '
        f'representation="{escaped}"'
    )
    if error:
        message += f', error="{error}"'
    return keycloak_log_line(60, message)


def falco(seconds: float, rule: str, priority: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A Falco JSON alert (``json_output``) from a processing node."""
    return {
        "hostname": "proc-node-2", "output": f"{rule} (test)", "priority": priority, "rule": rule,
        "source": "syscall", "tags": ["container", "shell", "mitre_execution"],
        "time": f"{at(seconds):%Y-%m-%dT%H:%M:%S}.000000000Z",
        "output_fields": {
            "evt.time": millis(seconds) * 1_000_000, "proc.name": "bash", "proc.cmdline": "bash",
            "user.name": "root", "container.id": "4f2a9c1b7d3e", "container.name": "l1-calibrate",
            "container.ip": POD_IP, "k8s.pod.name": "run-5b0f-l1-calibrate-x2x7c", "k8s.ns.name": "eo-processing",
            **fields,
        },
    }  # fmt: skip


def eve(seconds: float, event_type: str, src: str, dest: str, dest_port: int, **body: Any) -> dict[str, Any]:
    moment = at(seconds)
    return {
        "timestamp": f"{moment:%Y-%m-%dT%H:%M:%S.%f}+0000", "flow_id": 1_000_000 + int(seconds * 100) + dest_port,
        "in_iface": "eth0", "event_type": event_type, "src_ip": src, "src_port": 51_000, "dest_ip": dest,
        "dest_port": dest_port, "proto": "TCP", **body,
    }  # fmt: skip


def eve_alert(seconds: float, src: str, dest: str, dest_port: int = 80) -> dict[str, Any]:
    alert = {
        "action": "allowed", "gid": 1, "signature_id": 2013028, "rev": 6,
        "signature": "ET POLICY curl User-Agent Outbound", "category": "Attempted Information Leak", "severity": 2,
    }  # fmt: skip
    return eve(seconds, "alert", src, dest, dest_port, alert=alert, app_proto="http")


def eve_flow(seconds: float, src: str, dest: str, dest_port: int) -> dict[str, Any]:
    flow = {
        "pkts_toserver": 1, "pkts_toclient": 1, "bytes_toserver": 58, "bytes_toclient": 54,
        "start": f"{at(seconds - 1):%Y-%m-%dT%H:%M:%S.%f}+0000", "end": f"{at(seconds - 1):%Y-%m-%dT%H:%M:%S.%f}+0000",
        "age": 0, "state": "closed", "reason": "timeout", "alerted": False,
    }  # fmt: skip
    return eve(
        seconds, "flow", src, dest, dest_port, flow=flow, tcp={"tcp_flags": "16", "syn": True, "rst": True}
    )


def k8s(
    seconds: float,
    verb: str,
    user: str,
    *,
    resource: str,
    namespace: str | None = "eo-processing",
    name: str | None = None,
    subresource: str | None = None,
    api_group: str = "",
    request_object: dict[str, Any] | None = None,
    code: int = 200,
) -> dict[str, Any]:
    """A Kubernetes audit event (audit.k8s.io/v1) as the API server's log backend writes it."""
    ref = {"resource": resource, "namespace": namespace, "name": name, "subresource": subresource,
           "apiGroup": api_group or None, "apiVersion": "v1"}  # fmt: skip
    path = f"/apis/{api_group}/v1" if api_group else "/api/v1"
    uri = f"{path}/namespaces/{namespace}/{resource}" if namespace else f"{path}/{resource}"
    event: dict[str, Any] = {
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request" if request_object else "Metadata",
        "auditID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"k8s{seconds}{verb}{user}{resource}{name}")),
        "stage": "ResponseComplete", "requestURI": uri + (f"/{name}" if name else ""), "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": ["10.8.0.12"],
        "userAgent": "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46",
        "objectRef": {key: value for key, value in ref.items() if value is not None},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": f"{at(seconds):%Y-%m-%dT%H:%M:%S.%f}Z",
        "stageTimestamp": f"{at(seconds + 0.01):%Y-%m-%dT%H:%M:%S.%f}Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""},
    }  # fmt: skip
    if request_object is not None:
        event["requestObject"] = request_object
    return event


def job(image: str, *, privileged: bool = False) -> dict[str, Any]:
    """A Job body as refsys's Kubernetes executor submits it (reduced to what matters here)."""
    context = {
        "privileged": privileged,
        "allowPrivilegeEscalation": privileged,
        "runAsNonRoot": not privileged,
    }
    container = {"name": "step", "image": image, "securityContext": context}
    return {
        "kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": "run-5b0f-l1-calibrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }  # fmt: skip


REFSYS_SA = "system:serviceaccount:refsys:refsys"


def auditd_write(seconds: float, serial: int, path: str, nametype: str) -> list[str]:
    """The records of one audited rename onto ``path`` (``useradd``, ``vipw``, ``sed -i``)."""
    stamp_ = f"audit({at(seconds).timestamp():.3f}:{serial})"
    return [
        f"node=proc-01 type=SYSCALL msg={stamp_}: arch=c000003e syscall=82 success=yes exit=0 a0=7ffd1 a1=7ffd2 "
        f"a2=0 a3=0 items=4 ppid=2201 pid=2202 auid=1001 uid=0 gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 "
        f'tty=pts1 ses=7 comm="useradd" exe="/usr/sbin/useradd" key="identity"',
        f'node=proc-01 type=PATH msg={stamp_}: item=0 name="/etc/" inode=131073 dev=08:01 mode=040755 ouid=0 '
        f"ogid=0 rdev=00:00 nametype=PARENT",
        f'node=proc-01 type=PATH msg={stamp_}: item=1 name="{path}" inode=131999 dev=08:01 mode=0100640 ouid=0 '
        f"ogid=42 rdev=00:00 nametype={nametype}",
        f"node=proc-01 type=EOE msg={stamp_}: ",
    ]


def sudo_line(seconds: float, user: str, target: str = "root") -> str:
    """sudo's log line, as rsyslog forwards it in RFC 5424."""
    message = f"{user} : TTY=pts/3 ; PWD=/home/{user} ; USER={target} ; COMMAND=/usr/bin/id"
    return f"<85>1 {rfc(seconds)} bastion sudo 4242 - - {message}"


def wazuh(seconds: float, level: int, rule_id: str, description: str, **extra: Any) -> dict[str, Any]:
    """An alert as Wazuh's manager writes it to alerts.json."""
    return {
        "timestamp": f"{at(seconds):%Y-%m-%dT%H:%M:%S}.000+0000",
        "rule": {"level": level, "description": description, "id": rule_id, "firedtimes": 1, "mail": level >= 12,
                 "groups": extra.pop("groups", ["syslog"])},
        "agent": {"id": "003", "name": "proc-01", "ip": "10.20.0.11"}, "manager": {"name": "wazuh-manager"},
        "id": f"{int(at(seconds).timestamp())}.{level}{rule_id}", "decoder": {"name": extra.pop("decoder", "syslog")},
        "location": extra.pop("location", "/var/log/syslog"), **extra,
    }  # fmt: skip


def syscheck(seconds: float, path: str, event: str) -> dict[str, Any]:
    rule = {"modified": "550", "added": "554", "deleted": "553"}[event]
    return wazuh(
        seconds, 7, rule, f"Integrity checksum changed: {path}", groups=["ossec", "syscheck", "syscheck_file"],
        decoder="syscheck_integrity_changed", location="syscheck",
        syscheck={"path": path, "event": event, "mode": "realtime", "size_after": "1290", "uname_after": "root"},
        full_log=f"File '{path}' {event}",
    )  # fmt: skip


def silence(source: str) -> Doc:
    change = SilenceChange(source, f"collector:{source}", True, at(0), 300)
    return silence_event(change)


# --- the cases -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A rule, a stream that must raise its alert (with ``group`` for a correlation) and one that must not."""

    name: str
    rule: str
    positive: Callable[[], list[Doc]]
    near_miss: Callable[[], list[Doc]]
    group: dict[str, Any] | None = None


def _refusals(count: int, spread_s: float) -> list[Doc]:
    details = {"status": 401, "reason": "token signature does not verify"}
    return [
        audit(i * spread_s / max(count - 1, 1), "request.refused", "refused", actor="anonymous", roles=[],
              target="GET /api/v1/runs", details=details)
        for i in range(count)
    ]  # fmt: skip


def _keycloak_burst(failures: int, *, success_first: bool = False) -> list[Doc]:
    lines: list[Any] = [
        keycloak_log_line(
            10 + i * 12,
            f'type="LOGIN_ERROR", realmId="eo-gs", realmName="eo-gs", clientId="refsys-console", userId="null", '
            f'ipAddress="{ATTACKER}", error="invalid_user_credentials", auth_method="openid-connect", '
            f'username="{("admin", "alice", "ops")[i % 3]}"',
        )
        for i in range(failures)
    ]
    success = keycloak_login(0 if success_first else 10 + failures * 12 + 5, ok=True)
    lines = [success, *lines] if success_first else [*lines, success]
    # A normal user's mistyped password from elsewhere, at the same time: it must not join the group.
    return ingest("keycloak", [*lines, keycloak_login(30, ok=False, ip="10.8.0.31", user="bob")])


def _admin_grant(roles: list[str], error: str | None = None) -> list[Doc]:
    path = "users/6c1e0d5a-3b1f-4a8e-9d61-0f3c5a8b2e11/role-mappings/clients/2f4b9c1e-refsys"
    return ingest("keycloak", [keycloak_grant("CLIENT_ROLE_MAPPING", path, roles, error=error)])


def _token_use(addresses: int, *, route: str = "/api/v1/products") -> list[Doc]:
    jti = "4d0c1c7e-9e2a-4c55-b1e3-5f0f6f7f8a90"
    clients = ["10.8.0.12", "198.51.100.23", "203.0.113.40", "192.0.2.77"][:addresses]
    return [access(60 * i, jti=jti, client=client, route=route) for i, client in enumerate(clients)] + [
        access(30, jti=None, client="10.8.0.99", route="/healthz")
    ]


def _downloads(products: int) -> list[Doc]:
    # Each product once in full and once resumed with a range request: distinct products are counted.
    docs = []
    for i in range(products):
        for part in range(2):
            details = {
                "product_id": f"p{i}",
                "bytes": 1_000_000,
                "bytes_requested": 1_000_000,
                "complete": True,
            }
            docs.append(audit(i * 10 + part, "product.download", "success", actor="carol", target=f"p{i}",
                              details=details))  # fmt: skip
    return docs


def _run_submit(non_allowlisted: list[str]) -> list[Doc]:
    details = {
        "chain": "s2-l1@1.0", "lane": "NRT", "images": {"l1-calibrate": "ghcr.io/refsys/processor-l1:1.0"},
        "parameters": {"tile": "31TCJ", **dict.fromkeys(non_allowlisted, "x")}, "non_allowlisted": non_allowlisted,
        "trigger": "manual", "inputs": [], "idempotency_key": None, "resubmitted_from": None,
    }  # fmt: skip
    return [audit(0, "run.submit", "success", target="0193a0c4-run", details=details)]


def _job(image: str, *, privileged: bool = False, user: str = REFSYS_SA) -> list[Doc]:
    body = job(image, privileged=privileged)
    return ingest(
        "k8s_audit", [k8s(0, "create", user, resource="jobs", api_group="batch", request_object=body)]
    )


def _shell_then_egress(order: str) -> list[Doc]:
    shell = ingest("falco", [falco(0, "Terminal shell in container", "Notice", {"proc.tty": 34816})])
    alert = ingest("suricata", [eve_alert(8 if order == "shell-first" else -8, POD_IP, "198.51.100.20")])
    inbound = ingest("suricata", [eve_alert(9, "198.51.100.20", POD_IP)])  # not outbound: never joins
    docs = shell + alert if order == "shell-first" else alert + shell
    return sorted(docs + inbound, key=lambda d: d["@timestamp"])


def _scan(ports: int) -> list[Doc]:
    lines = [eve_flow(1 + i * 0.2, ATTACKER, "10.20.0.5", 1000 + i) for i in range(ports)]
    # The same ports again: distinct ports are what counts.
    lines += [eve_flow(30 + i * 0.2, ATTACKER, "10.20.0.5", 1000 + i) for i in range(ports)]
    return ingest("suricata", lines)


def _secret_read(user: str, verb: str = "get") -> list[Doc]:
    name = "catalog-db-credentials" if verb == "get" else None
    return ingest("k8s_audit", [k8s(0, verb, user, resource="secrets", namespace="catalog", name=name)])


def _binding(role: str, resource: str = "clusterrolebindings") -> list[Doc]:
    body = {
        "kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": "debug-access"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "eo-processing"}],
    }  # fmt: skip
    event = k8s(0, "create", "alice@eo-gs.example", resource=resource, namespace=None,
                api_group="rbac.authorization.k8s.io", request_object=body)  # fmt: skip
    return ingest("k8s_audit", [event])


CASES = [
    Case("refused requests", "d08ab365-75cb-4025-a9e4-b1d743281c7a",
         lambda: _refusals(20, 290), lambda: _refusals(19, 290), {"source.ip": ATTACKER}),
    Case("refused requests spread beyond the window", "d08ab365-75cb-4025-a9e4-b1d743281c7a",
         lambda: _refusals(20, 300), lambda: _refusals(20, 301), {"source.ip": ATTACKER}),
    Case("refusals beyond the audited rate", "3a4b6367-178b-4e79-b5b5-bf9197a37948",
         lambda: [audit(0, "request.refused.aggregate", "refused", actor="refsys", target=ATTACKER,
                        details={"count": 412, "window_s": 60.0, "reasons": {"token expired": 412}})],
         lambda: _refusals(3, 10)),
    Case("keycloak brute force", "db61ede3-7107-4580-9bf6-415fbeacd0be",
         lambda: _keycloak_burst(20), lambda: _keycloak_burst(19), {"source.ip": ATTACKER}),
    Case("keycloak success before the failures", "db61ede3-7107-4580-9bf6-415fbeacd0be",
         lambda: _keycloak_burst(25), lambda: _keycloak_burst(25, success_first=True), {"source.ip": ATTACKER}),
    Case("keycloak admin grant", "cc4e1acf-9721-42fe-85b2-406b00058ecc",
         lambda: _admin_grant(["admin"]), lambda: _admin_grant(["operator", "ops-manager"])),
    Case("keycloak admin grant that failed", "cc4e1acf-9721-42fe-85b2-406b00058ecc",
         lambda: _admin_grant(["realm-admin"]), lambda: _admin_grant(["realm-admin"], error="forbidden")),
    Case("token from many addresses", "bff66580-27c1-4afc-9857-1f3605780bcd",
         lambda: _token_use(3), lambda: _token_use(2), {"jti": "4d0c1c7e-9e2a-4c55-b1e3-5f0f6f7f8a90"}),
    Case("machine key from many sensors", "bff66580-27c1-4afc-9857-1f3605780bcd",
         lambda: _token_use(4), lambda: _token_use(4, route="/api/v1/ingest/{source}"),
         {"jti": "4d0c1c7e-9e2a-4c55-b1e3-5f0f6f7f8a90"}),
    Case("mass download", "39397bbf-890c-4c19-8d74-36b2ffa68fb3",
         lambda: _downloads(50), lambda: _downloads(49), {"user.name": "carol"}),
    Case("non-allowlisted run parameters", "c7620bd2-f28c-4a03-be2f-ed55c702c74b",
         lambda: _run_submit(["command_override"]), lambda: _run_submit([])),
    Case("production job with a foreign image", "5e75fff7-072a-4546-b28b-3b4f34889ec8",
         lambda: _job("docker.io/evil/miner:latest"), lambda: _job("ghcr.io/refsys/processor-l1:1.0")),
    Case("privileged production job", "5e75fff7-072a-4546-b28b-3b4f34889ec8",
         lambda: _job("ghcr.io/refsys/processor-l1:1.0", privileged=True),
         lambda: _job("docker.io/library/busybox:1.36", user="system:serviceaccount:ci:builder")),
    Case("falco critical", "a1cf9b4b-5460-4db5-a057-b800e235c475",
         lambda: ingest("falco", [falco(0, "Drop and execute new binary in container", "Critical", {})]),
         lambda: ingest("falco", [falco(0, "Terminal shell in container", "Notice", {}),
                                  falco(1, "Falco internal: syscall event drop", "Critical", {})])),
    Case("shell then outbound alert", "4c99c630-9561-4138-b4c1-b01fd2c60bef",
         lambda: _shell_then_egress("shell-first"), lambda: _shell_then_egress("alert-first"), {"host_ip": POD_IP}),
    Case("port scan", "19180857-51ac-4704-b6d2-15ed1487266e",
         lambda: _scan(25), lambda: _scan(24), {"src_ip": ATTACKER}),
    Case("wazuh level 12", "9cfbf88c-5b6a-4039-a953-9595a0eaf1c1",
         lambda: ingest("wazuh", [wazuh(0, 12, "40111", "Multiple authentication failures followed by a success.")]),
         lambda: ingest("wazuh", [wazuh(0, 11, "100201", "Local rule: repeated denied connections.")])),
    Case("wazuh integrity change", "caaba555-b229-44b2-bdf8-9c00c1ba1ce8",
         lambda: ingest("wazuh", [syscheck(0, "/etc/sudoers.d/90-backdoor", "added")]),
         lambda: ingest("wazuh", [syscheck(0, "/etc/motd", "modified")])),
    Case("auditd integrity change", "08094398-0d12-4c0f-8723-b2a76137d395",
         lambda: ingest("auditd", auditd_write(0, 812, "/etc/shadow", "CREATE")),
         lambda: ingest("auditd", auditd_write(0, 813, "/etc/hostname", "CREATE"))),
    Case("kubectl exec", "906203cc-9cb3-407c-a7eb-6f9d357dbd4e",
         lambda: ingest("k8s_audit", [k8s(0, "create", "alice@eo-gs.example", resource="pods", name="catalog-api-0",
                                          subresource="exec", code=101)]),
         lambda: ingest("k8s_audit", [k8s(0, "get", "alice@eo-gs.example", resource="pods", name="catalog-api-0",
                                          subresource="log")])),
    Case("secret read by a service account", "a7c46938-b822-4c7f-8a2f-f0026d4eb3a3",
         lambda: _secret_read("system:serviceaccount:eo-processing:default", "list"),
         lambda: _secret_read("system:serviceaccount:kube-system:generic-garbage-collector", "list")
         + _secret_read("system:node:proc-node-2")),
    Case("cluster-admin binding", "411e2bee-e7b0-49b5-9a1d-19f1f0ff7f97",
         lambda: _binding("cluster-admin"), lambda: _binding("view")),
    Case("sudo to root by a non-admin", "f7fd4a34-6769-4802-ae76-99a9818c2a38",
         lambda: ingest("syslog", [sudo_line(0, "mallory")]),
         lambda: ingest("syslog", [sudo_line(0, "root"), sudo_line(1, "mallory", target="postgres")])),
    Case("sensor silent", "dd176be5-22be-4585-8c6c-7ae309ccf73c",
         lambda: [silence("falco")],
         lambda: [{**silence("falco"), "event": {**silence("falco")["event"], "action": "source-resumed"}}]),
]  # fmt: skip


def alerts_of(alerts: list[Alert], rule: str) -> list[Alert]:
    return [a for a in alerts if a.rule.id == rule]


def test_every_bundled_rule_loads_routed_fully_mapped_and_tagged(ruleset: RuleSet) -> None:
    assert ruleset.problems == []
    assert ruleset.rules, "no bundled rules"
    for rule in ruleset.collection:
        assert rule.level is not None, rule.title
        attack = [t.name for t in rule.tags if t.namespace == "attack"]
        assert any(TECHNIQUE.fullmatch(name) for name in attack), f"{rule.title}: no ATT&CK technique"
        assert any(not TECHNIQUE.fullmatch(name) for name in attack), f"{rule.title}: no ATT&CK tactic"
        assert rule.author == "refsys" and rule.description and rule.falsepositives is not None, rule.title
        assert isinstance(rule.id, uuid.UUID), rule.title
    plain = [rule for rule in ruleset.collection if isinstance(rule, SigmaRule)]
    for rule in plain:
        routing = classify(rule)
        assert routing.rule_class is RuleClass.MAPPED, f"{rule.title}: {routing.reason}"
    assert len(ruleset.rules) == len(plain)


def test_every_bundled_document_follows_the_sigma_specification_schemas() -> None:
    schemas = "sigma-specification/json-schema"
    rule_schema = orjson.loads(shared_file(f"{schemas}/sigma-detection-rule-schema.json").read_bytes())
    correlation_schema = orjson.loads(
        shared_file(f"{schemas}/sigma-correlation-rules-schema.json").read_bytes()
    )
    documents = [
        (path.name, document)
        for path in sorted(BUNDLED_DIR.glob("*.yml"))
        for document in yaml.safe_load_all(path.read_text())
    ]
    assert documents
    for name, document in documents:
        schema = correlation_schema if "correlation" in document else rule_schema
        # YAML reads the dates as dates; the schemas read the JSON text of a rule.
        errors = Draft202012Validator(schema).iter_errors(orjson.loads(orjson.dumps(document)))
        assert [error.message for error in errors] == [], f"{name}: {document['title']}"


def test_every_rule_the_cases_name_is_bundled_and_every_reporting_rule_has_a_case(ruleset: RuleSet) -> None:
    reporting = {
        str(r.id)
        for r in ruleset.collection
        if r._output  # rules feeding a correlation only report through it
    }
    assert {case.rule for case in CASES} == reporting


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rule_fires_on_refsys_events_and_not_on_the_near_miss(ruleset: RuleSet, case: Case) -> None:
    fired = alerts_of(evaluate(ruleset, case.positive()), case.rule)
    assert fired, f"{case.name}: no alert"
    if case.group is not None:
        assert {a.kind for a in fired} == {"correlation"}
        assert {orjson.dumps(a.group) for a in fired} == {orjson.dumps(case.group)}
    else:
        assert {a.kind for a in fired} == {"rule"}
    assert alerts_of(evaluate(ruleset, case.near_miss()), case.rule) == [], f"{case.name}: near miss alerted"


# --- real samples of other projects ---------------------------------------------------------------------------

K8S_TRACES = "falco-legacy-tests/test/trace_files/k8s_audit"
K8S_TRACE_ALERTS = {
    "attach_cluster_admin_role.json": {"411e2bee-e7b0-49b5-9a1d-19f1f0ff7f97"},
    "attach_pod.json": {"906203cc-9cb3-407c-a7eb-6f9d357dbd4e"},
    "exec_pod.json": {"906203cc-9cb3-407c-a7eb-6f9d357dbd4e"},
}
"""Falco's Kubernetes audit regression traces the bundled rules alert on; the other 44 must raise nothing (among
them privileged pods created by a person, not by refsys, and secrets created or deleted, not read)."""


def test_real_kubernetes_audit_traces_raise_only_the_expected_alerts(ruleset: RuleSet) -> None:
    traces = sorted(shared_file(K8S_TRACES).glob("*.json"))
    assert len(traces) > 40
    raised: dict[str, set[str]] = {}
    for trace in traces:
        docs, _rejected = ingest_body("k8s_audit", trace.read_bytes())  # one trace is a malformed fuzz case
        alerts = evaluate(ruleset, docs)
        if alerts:
            raised[trace.name] = {a.rule.id for a in alerts}
    assert raised == K8S_TRACE_ALERTS


def test_real_falco_alerts_raise_the_critical_rule_exactly_on_critical_ones(ruleset: RuleSet) -> None:
    examples = shared_file("falco-website-examples/EXTRACTED_falco_json_alerts_from_docs.jsonl")
    alerts = [orjson.loads(line)["event"] for line in examples.read_text().splitlines()]
    docs, rejected = ingest_body("falco", b"\n".join(orjson.dumps(alert) for alert in alerts))
    assert len(docs) + len(rejected) == len(alerts)
    critical = [
        d for d in docs if d["falco"]["priority"] in ("Critical", "Alert", "Emergency")
        and not d["falco"]["rule"].startswith("Falco internal:")
    ]  # fmt: skip
    fired = alerts_of(evaluate(ruleset, docs), "a1cf9b4b-5460-4db5-a057-b800e235c475")
    assert critical and sorted(a.events[0].id for a in fired) == sorted(d["event"]["id"] for d in critical)


# --- the demo's traffic ----------------------------------------------------------------------------------------

DEMO_S = 330
DEMO_EXPECTED = {
    "ssh-brute-force": {"f7fd4a34-6769-4802-ae76-99a9818c2a38"},  # the intruder's sudo
    "container-shell-egress": {
        "906203cc-9cb3-407c-a7eb-6f9d357dbd4e",
        "a1cf9b4b-5460-4db5-a057-b800e235c475",
    },
    "port-scan": {"19180857-51ac-4704-b6d2-15ed1487266e"},
    "secret-read-then-exec": {"906203cc-9cb3-407c-a7eb-6f9d357dbd4e"},
}
"""What each demo attack raises. The demo's secret reader is a person's kubeconfig, not a service account; its
Falco alerts carry no ``container.ip`` (so the shell-then-egress correlation has no address to join on), and its
brute force is against sshd, not Keycloak: those bundled rules are covered by the cases above only."""


class _Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def demo_docs(*, attack_every_s: float, seconds: int = DEMO_S) -> list[Doc]:
    """``seconds`` of demo traffic through the adapters, in event-time order (as windows with lateness see it)."""
    fake = _Clock()
    traffic = DemoTraffic(events_per_s=20.0, attack_every_s=attack_every_s, seed=20261125, clock=fake)
    docs: list[Doc] = []
    for _ in range(seconds):
        fake.now += timedelta(seconds=1)
        for batch in traffic.batches(1.0):
            docs += ingest(batch.source, batch.body.splitlines())
    return sorted(docs, key=lambda doc: doc["@timestamp"])


def test_demo_attacks_raise_the_bundled_alerts(ruleset: RuleSet) -> None:
    # An attack every 60 s: the four scenarios once each, the last one followed by a minute of flow records.
    alerts = evaluate(ruleset, demo_docs(attack_every_s=60))
    raised = {a.rule.id for a in alerts}
    for scenario, expected in DEMO_EXPECTED.items():
        assert expected <= raised, f"{scenario}: missing {expected - raised}"
    scan = alerts_of(alerts, "19180857-51ac-4704-b6d2-15ed1487266e")
    assert scan and all(a.metric is not None and a.metric >= 25 for a in scan)
    assert raised <= set().union(*DEMO_EXPECTED.values()), "an alert no demo attack explains"


def test_demo_background_raises_no_bundled_alert(ruleset: RuleSet) -> None:
    alerts = evaluate(ruleset, demo_docs(attack_every_s=10_000))
    assert [(a.rule.title, a.events[0].fields if a.events else a.group) for a in alerts] == []


# --- through the running control plane -------------------------------------------------------------------------


class _Recorder:
    """Stands in for the bus the access-log shipper publishes to: keeps the documents."""

    def __init__(self) -> None:
        self.docs: list[Doc] = []

    def publish(self, topic: str, key: str | None, records: Iterable[Doc]) -> None:
        self.docs += records


def test_the_running_control_plane_raises_the_refusal_and_token_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ruleset: RuleSet
) -> None:
    """Refused requests and token reuse as the app records them: its audit trail (refusals pass the per-address
    limiter) and its access log (the token id of every authenticated request), read as the shippers read them."""
    now = [clock.utcnow().replace(microsecond=0)]
    monkeypatch.setattr(clock, "utcnow", lambda: now[0])
    recorder = _Recorder()
    shipper = AccessLogShipper(cast(Bus, recorder), CollectorRegistry())
    with running_app(make_settings(tmp_path)) as (client, services):
        services.refusals._now = lambda: now[0].timestamp()  # the limiter's windows follow the same clock
        token = bearer(services, Role.ADMIN, subject="alice")
        shipper.attach()
        try:
            for address in ("10.8.0.12", "198.51.100.23", "203.0.113.40"):
                now[0] += timedelta(seconds=60)
                caller = TestClient(client.app, client=(address, 40_000))
                assert caller.get("/api/v1/pipelines", headers=token).status_code == 200
            attacker = TestClient(client.app, client=(ATTACKER, 40_001))
            for _ in range(20):  # four a minute: each one audited on its own
                now[0] += timedelta(seconds=15)
                refused = attacker.get("/api/v1/pipelines", headers={"Authorization": "Bearer not-a-token"})
                assert refused.status_code == 401
        finally:
            shipper.detach()
        shipper.ship()
        records = services.audit.list(AuditFilter(action="request.refused"), limit=1000, newest_first=False)
    docs = [audit_record_to_ecs(record) for record in records] + recorder.docs
    assert len(records) == 20
    alerts = evaluate(ruleset, sorted(docs, key=lambda doc: doc["@timestamp"]))
    burst = alerts_of(alerts, "d08ab365-75cb-4025-a9e4-b1d743281c7a")
    assert [a.group for a in burst] == [{"source.ip": ATTACKER}]
    reuse = alerts_of(alerts, "bff66580-27c1-4afc-9857-1f3605780bcd")
    assert len(reuse) == 1 and reuse[0].metric == 3 and set(reuse[0].group) == {"jti"}
