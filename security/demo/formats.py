"""The native formats of the demo's sensors: each renderer takes the event's wall-clock time first and returns
the bytes the sensor writes for it, so a schedule binds everything else in advance (``functools.partial``) and
fixes the time only when the event is due.

Shapes follow the real samples in ``../shared/data`` and the adapters' docstrings: Falco's JSON alerts (the
rule's ``output`` format plus the container fields Falco appends through ``append_output`` suggested fields),
Suricata EVE, ``audit.k8s.io/v1`` Events from the log backend, raw auditd records (hex-encoded where the
kernel would), RFC 3164 syslog as rsyslog forwards it, and Keycloak's ``org.keycloak.events`` records in
Quarkus' JSON log layout (what Keycloak itself writes with ``--log-console-output=json``; the adapter also
reads the admin API's event JSON, which no sensor streams).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import math
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from control_plane.core.clock import rfc3339

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --- Falco -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FalcoRule:
    """A rule of falcosecurity/rules as it reports: name, priority, ``output`` format (verbatim) and tags."""

    name: str
    priority: str
    output: str
    tags: tuple[str, ...]


PROCESS_FIELDS = (
    "evt_type=%evt.type user=%user.name user_uid=%user.uid user_loginuid=%user.loginuid process=%proc.name "
    "proc_exepath=%proc.exepath parent=%proc.pname command=%proc.cmdline terminal=%proc.tty"
)
CONNECTION_FIELDS = (
    "connection=%fd.name lport=%fd.lport rport=%fd.rport fd_type=%fd.type fd_proto=%fd.l4proto"
)
"""The output fields most of Falco's default rules end with, and the connection fields of network rules."""
_APPENDED = (
    "container_id=%container.id container_name=%container.name "
    "container_image_repository=%container.image.repository container_image_tag=%container.image.tag "
    "k8s_pod_name=%k8s.pod.name k8s_ns_name=%k8s.ns.name"
)
"""What Falco appends to syscall alerts when the container plugin suggests fields (``append_output``)."""
_FIELD = re.compile(r"%([\w.]+(?:\[\d+\])?)")


def falco_alert(moment: datetime, *, rule: FalcoRule, hostname: str, fields: dict[str, Any]) -> bytes:
    """A Falco JSON alert: ``output`` rendered from the rule's format, ``output_fields`` with the same values.
    Falco prints ``<NA>`` and writes null for a field it could not resolve. A ``timedelta`` value stands for a
    time that long before the event (a file's ctime, a container's start), given in epoch nanoseconds."""
    nanos = _nanos(moment)
    values = {"evt.time": nanos, **fields}
    for name, value in values.items():
        if isinstance(value, timedelta):
            values[name] = _nanos(moment - value)
    template = f"{rule.output} {_APPENDED}"

    def show(field: re.Match[str]) -> str:
        value = values.get(field[1])
        return "<NA>" if value is None else str(value)

    alert = {
        "hostname": hostname,
        "output": f"{moment:%H:%M:%S}.{nanos % 1_000_000_000:09d}: {rule.priority} {_FIELD.sub(show, template)}",
        "output_fields": {name: values.get(name) for name in sorted({"evt.time", *_FIELD.findall(template)})},
        "priority": rule.priority,
        "rule": rule.name,
        "source": "syscall",
        "tags": sorted(rule.tags),
        "time": f"{moment:%Y-%m-%dT%H:%M:%S}.{nanos % 1_000_000_000:09d}Z",
    }
    return orjson.dumps(alert)


def _nanos(moment: datetime) -> int:
    """Nanoseconds since the epoch; the digits below the microsecond are made up (a datetime has none)."""
    micros = int(moment.timestamp()) * 1_000_000 + moment.microsecond
    return micros * 1000 + (moment.microsecond * 7) % 1000


# --- Suricata ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """A Suricata flow: the 5-tuple and the id every EVE record of the flow carries."""

    flow_id: int
    src_ip: str
    src_port: int
    dest_ip: str
    dest_port: int
    proto: str
    app_proto: str | None = None


_TCP_FLAGS = {"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08, "ack": 0x10}


def eve(
    moment: datetime, *, flow: Flow, event_type: str, body: dict[str, Any], reverse: bool = False
) -> bytes:
    """An EVE record of ``flow``; ``reverse`` for records logged server to client (``fileinfo``)."""
    client, server = (flow.src_ip, flow.src_port), (flow.dest_ip, flow.dest_port)
    src, dest = (server, client) if reverse else (client, server)
    record: dict[str, Any] = {
        "timestamp": _eve_time(moment),
        "flow_id": flow.flow_id,
        "in_iface": "ens2f1",
        "event_type": event_type,
        "src_ip": src[0],
        "src_port": src[1],
        "dest_ip": dest[0],
        "dest_port": dest[1],
        "proto": flow.proto,
        "community_id": community_id(flow),
    }
    if flow.app_proto:
        record["app_proto"] = flow.app_proto
    return orjson.dumps(record | body)


def flow_end(
    moment: datetime,
    *,
    flow: Flow,
    duration_s: float,
    idle_s: float,
    packets: tuple[int, int],
    octets: tuple[int, int],
    state: str,
    tcp_flags: tuple[int, int] = (0x1B, 0x1B),
    alerted: bool = False,
) -> bytes:
    """The ``flow`` record Suricata writes once the flow has been idle for its timeout (``idle_s`` before
    ``moment``): counters per direction and, for TCP, the flags seen each way."""
    ended = moment - timedelta(seconds=idle_s)
    record: dict[str, Any] = {
        "flow": {
            "pkts_toserver": packets[0], "pkts_toclient": packets[1],
            "bytes_toserver": octets[0], "bytes_toclient": octets[1],
            "start": _eve_time(ended - timedelta(seconds=duration_s)), "end": _eve_time(ended),
            "age": int(duration_s), "state": state, "reason": "timeout", "alerted": alerted,
        },
    }  # fmt: skip
    if flow.proto == "TCP":
        to_server, to_client = tcp_flags
        record["tcp"] = {
            "tcp_flags": f"{to_server | to_client:02x}",
            "tcp_flags_ts": f"{to_server:02x}",
            "tcp_flags_tc": f"{to_client:02x}",
            **{name: True for name, bit in _TCP_FLAGS.items() if (to_server | to_client) & bit},
            "state": state,
        }
    return eve(moment, flow=flow, event_type="flow", body=record)


@dataclass(frozen=True)
class Signature:
    """An Emerging Threats Open rule as Suricata reports it in an alert."""

    sid: int
    rev: int
    msg: str
    category: str
    severity: int


def alert(
    moment: datetime,
    *,
    flow: Flow,
    signature: Signature,
    octets: tuple[int, int] = (74, 0),
    extra: dict[str, Any] | None = None,
) -> bytes:
    """An ``alert`` record on the packet that matched, with the flow's byte counts so far (by default, its
    first packet) and ``extra``, the app-layer object Suricata attaches (``http``)."""
    body = {
        "alert": {
            "action": "allowed", "gid": 1, "signature_id": signature.sid, "rev": signature.rev,
            "signature": signature.msg, "category": signature.category, "severity": signature.severity,
        },
        **(extra or {}),
        "flow": {
            "pkts_toserver": 1 + octets[0] // 1400, "pkts_toclient": math.ceil(octets[1] / 1400),
            "bytes_toserver": octets[0], "bytes_toclient": octets[1], "start": _eve_time(moment),
        },
    }  # fmt: skip
    return eve(moment, flow=flow, event_type="alert", body=body)


def community_id(flow: Flow) -> str:
    """Community ID v1 (seed 0) of the flow: the same string Zeek and Suricata compute, so flows can be joined
    across sensors."""
    proto = {"TCP": 6, "UDP": 17}[flow.proto]
    src = (ipaddress.ip_address(flow.src_ip).packed, flow.src_port)
    dest = (ipaddress.ip_address(flow.dest_ip).packed, flow.dest_port)
    (a_ip, a_port), (b_ip, b_port) = sorted([src, dest])
    data = struct.pack("!H", 0) + a_ip + b_ip + struct.pack("!BBHH", proto, 0, a_port, b_port)
    return "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()


def _eve_time(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S.%f}+0000"


# --- Kubernetes audit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeUser:
    username: str
    groups: tuple[str, ...]
    user_agent: str
    source_ip: str


def k8s_audit(
    moment: datetime,
    *,
    audit_id: str,
    user: KubeUser,
    verb: str,
    resource: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
    api_group: str = "",
    query: str = "",
    code: int = 200,
    stage: str = "ResponseComplete",
    reason: str = "",
    latency_ms: int = 5,
) -> bytes:
    """An ``audit.k8s.io/v1`` Event at the ``Metadata`` level, as the API server's log backend writes it. The
    request URI follows from the object: a create posts to the collection, yet the event names the object."""
    path = f"/apis/{api_group}/v1" if api_group else "/api/v1"
    path += f"/namespaces/{namespace}/{resource}" if namespace else f"/{resource}"
    if name and (verb != "create" or subresource):
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    object_ref = {
        "resource": resource, "namespace": namespace, "name": name, "subresource": subresource,
        "apiGroup": api_group or None, "apiVersion": "v1",
    }  # fmt: skip
    event = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": stage,
        "requestURI": f"{path}?{query}" if query else path,
        "verb": verb,
        "user": {"username": user.username, "groups": list(user.groups)},
        "sourceIPs": [user.source_ip],
        "userAgent": user.user_agent,
        "objectRef": {key: value for key, value in object_ref.items() if value is not None},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": rfc3339(moment - timedelta(milliseconds=latency_ms)),
        "stageTimestamp": rfc3339(moment),
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason},
    }
    return orjson.dumps(event)


# --- auditd, syslog, Keycloak ------------------------------------------------------------------------------


def audit_string(value: str) -> str:
    """How the kernel logs an untrusted string: quoted when it is plain printable ASCII without ``"``,
    otherwise hex-encoded (upper case), which is what a space, a quote or a NUL between arguments triggers."""
    if value and all(0x21 <= ord(char) <= 0x7E and char != '"' for char in value):
        return f'"{value}"'
    return value.encode().hex().upper()


def _audit_time(moment: datetime) -> str:
    return f"{int(moment.timestamp())}.{moment.microsecond // 1000:03d}"


def auditd_exec(
    moment: datetime,
    *,
    serials: Iterator[int],
    host: str,
    pid: int,
    ppid: int,
    uid: int,
    auid: int,
    ses: int,
    comm: str,
    exe: str,
    argv: list[str],
    cwd: str,
    tty: str = "(none)",
) -> bytes:
    """One execve as auditd logs it for an ``-S execve -k exec`` rule: SYSCALL, EXECVE, CWD, PATH for the
    program and its loader, PROCTITLE and EOE, sharing one timestamp and the host's next serial."""
    header = f"node={host} type={{}} msg=audit({_audit_time(moment)}:{next(serials)}):"
    heap = 0x55D0_0000_0000 + (pid << 12)  # argv pointers in the new process; any plausible address does
    ids = (
        f"auid={auid} uid={uid} gid={uid} euid={uid} suid={uid} fsuid={uid} egid={uid} sgid={uid} fsgid={uid}"
    )
    path = (
        "dev=fd:01 mode=0100755 ouid=0 ogid=0 rdev=00:00 nametype=NORMAL "
        "cap_fp=0 cap_fi=0 cap_fe=0 cap_fver=0 cap_frootid=0"
    )
    # The kernel keeps the first 128 bytes of the command line, its arguments separated by NUL.
    title = "\0".join(argv).encode()[:128].decode(errors="ignore")
    records = [
        ("SYSCALL", f"arch=c000003e syscall=59 success=yes exit=0 a0={heap:x} a1={heap + 0x3A0:x} "
                    f"a2={heap + 0x5C0:x} a3=0 items=2 ppid={ppid} pid={pid} {ids} tty={tty} ses={ses} "
                    f'comm={audit_string(comm)} exe={audit_string(exe)} subj=unconfined key="exec"'),
        ("EXECVE", " ".join([f"argc={len(argv)}", *(f"a{n}={audit_string(a)}" for n, a in enumerate(argv))])),
        ("CWD", f"cwd={audit_string(cwd)}"),
        ("PATH", f"item=0 name={audit_string(exe)} inode={1_048_576 + pid % 65_536} {path}"),
        ("PATH", f'item=1 name="/lib64/ld-linux-x86-64.so.2" inode=1837321 {path}'),
        ("PROCTITLE", f"proctitle={audit_string(title)}"),
    ]  # fmt: skip
    lines = [f"{header.format(kind)} {body}" for kind, body in records]
    lines.append(header.format("EOE"))
    return "\n".join(lines).encode()


def auditd_pam(
    moment: datetime,
    *,
    serials: Iterator[int],
    host: str,
    kind: str,
    pid: int,
    auid: int,
    ses: int,
    op: str,
    grantors: str,
    acct: str,
    exe: str,
    terminal: str,
) -> bytes:
    """A user-space PAM record (USER_ACCT, CRED_ACQ, USER_START, ...): a single record, without EOE."""
    header = f"node={host} type={kind} msg=audit({_audit_time(moment)}:{next(serials)}):"
    message = (
        f"op={op} grantors={grantors} acct={audit_string(acct)} exe={audit_string(exe)} hostname=? addr=? "
        f"terminal={terminal} res=success"
    )
    return f"{header} pid={pid} uid=0 auid={auid} ses={ses} subj=unconfined msg='{message}'".encode()


def syslog(moment: datetime, *, priority: int, host: str, app: str, pid: int, message: str) -> bytes:
    """An RFC 3164 line as rsyslog forwards it: ``<PRI>Mmm dd hh:mm:ss host app[pid]: message``, in UTC."""
    stamp = f"{_MONTHS[moment.month - 1]} {moment.day:2d} {moment:%H:%M:%S}"
    return f"<{priority}>{stamp} {host} {app}[{pid}]: {message}".encode()


def keycloak(
    moment: datetime,
    *,
    sequence: Iterator[int],
    thread: int,
    fields: Mapping[str, str | None],
    error: bool = False,
) -> bytes:
    """An ``org.keycloak.events`` record; the listener logs successes at DEBUG and errors at WARN, and quotes
    values as Keycloak 24 and later do."""
    message = ", ".join(f'{key}="{_keycloak_value(value)}"' for key, value in fields.items())
    record = {
        "timestamp": f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z",
        "sequence": next(sequence),
        "loggerClassName": "org.jboss.logging.Logger",
        "loggerName": "org.keycloak.events",
        "level": "WARN" if error else "DEBUG",
        "message": message,
        "threadName": f"executor-thread-{thread}",
        "threadId": 40 + thread,
        "mdc": {},
        "ndc": "",
        "hostName": "keycloak-0",
        "processName": "QuarkusEntryPoint",
        "processId": 1,
    }
    return orjson.dumps(record)


def _keycloak_value(value: str | None) -> str:
    """Keycloak 24+ quoting: whitespace becomes a space and the quote character is escaped."""
    if value is None:
        return "null"
    return " ".join(value.split()).replace('"', '\\"')
