"""The made-up ground segment the demo watches: hosts, pods and people drawn once from the seed, the counters
its sensors keep, and the schedule entry (``Emission``) both the background and the scenarios produce, with a
helper per sensor that binds a renderer of ``formats`` into one.

Addresses: the site is 10.0.0.0/8, and "the internet" is the documentation ranges (RFC 5737), so no real host
is ever named; domain names are under ``.example``.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from security.demo import formats
from security.demo.formats import Flow, KubeUser

NODES = {"node-1": "10.10.1.11", "node-2": "10.10.1.12", "node-3": "10.10.1.13"}
"""Kubernetes workers; ``node-N`` hosts the pods of 10.42.N.0/24, as a CNI gives each node its own pod range.
Pod addresses are routed, not masqueraded, so the edge sensor sees them."""
KUBERNETES_SERVICE_IP = "10.43.0.1"
API_SERVER_IP = "10.10.1.10"
PROCESSING_HOSTS = {"proc-1": "10.10.3.21", "proc-2": "10.10.3.22"}
BASTION, BASTION_IP = "bastion-1", "10.10.0.10"
INGRESS_IP, DNS_IP = "10.10.0.20", "10.10.0.53"
OBJECT_STORE_IP, DATABASE_IP = "10.10.2.20", "10.10.2.30"
EXTERNAL_NETS = ("192.0.2.", "198.51.100.", "203.0.113.")
REGISTRY = "registry.eo-gs.example"
KUBE_VERSION = "v1.30.4 (linux/amd64) kubernetes/a51b3b7"
"""The version suffix of every Kubernetes component's and kubectl's user agent."""
EXTERNAL_SERVICES = (
    "catalogue.dataspace.example",
    "download.dataspace.example",
    "auxdata.eo-provider.example",
    "orbits.eo-provider.example",
    "registry.eo-gs.example",
    "deb.debian.example",
    "pypi.mirror.example",
)
"""Names the site resolves and connects to: product hubs, auxiliary data and orbit providers, mirrors."""

SURICATA, APISERVER, SSHD, KEYCLOAK = "suricata-edge", "k8s-apiserver", "sshd-bastion", "keycloak"
"""Sensor names; the runner reports each as observer ``demo:<name>``. Falco and auditd run one per host."""

_WORKLOADS = (
    # namespace, deployment, container, image, tag, replicas, service account
    ("eo-processing", "l0-ingest-worker", "worker", f"{REGISTRY}/eo/l0-ingest", "3.2.0", 2, "eo-worker"),
    ("eo-processing", "l1-calibration-worker", "worker", f"{REGISTRY}/eo/l1-cal", "2.4.1", 3, "eo-worker"),
    ("eo-processing", "l2-surface-reflectance", "worker", f"{REGISTRY}/eo/l2-sr", "1.7.3", 2, "eo-worker"),
    ("catalog", "catalog-api", "api", f"{REGISTRY}/catalog/api", "1.9.0", 2, "catalog-api"),
    ("catalog", "catalog-indexer", "indexer", f"{REGISTRY}/catalog/indexer", "1.9.0", 1, "catalog-indexer"),
    ("refsys", "refsys-control-plane", "control-plane", f"{REGISTRY}/refsys/refsys", "0.4.0", 1, "refsys"),
    ("monitoring", "prometheus", "prometheus", "quay.io/prometheus/prometheus", "v2.53.0", 1, "prometheus"),
    ("kube-system", "coredns", "coredns", "registry.k8s.io/coredns/coredns", "v1.11.1", 2, "coredns"),
)  # fmt: skip
_PEOPLE = (("arossi", "a.rossi"), ("jmartin", "j.martin"), ("knowak", "k.nowak"), ("sfischer", "s.fischer"))
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
"""The alphabet Kubernetes draws ReplicaSet and pod name suffixes from."""


def falco_sensor(node: str) -> str:
    return f"falco-{node}"


def auditd_sensor(host: str) -> str:
    return f"auditd-{host}"


@dataclass(frozen=True)
class Emission:
    """One event on the schedule, due ``at_s`` seconds into the demo. ``render`` turns its wall-clock time
    into the bytes ``sensor`` writes (one line, or one auditd record group), for the ``source`` adapter."""

    at_s: float
    source: str
    sensor: str
    render: Callable[[datetime], bytes]


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    node: str
    ip: str
    container: str
    container_id: str
    image: str
    tag: str
    service_account: str

    def falco_fields(self) -> dict[str, str]:
        """The container fields Falco appends to every syscall alert from this pod."""
        return {
            "container.id": self.container_id[:12],
            "container.name": self.container,
            "container.image.repository": self.image,
            "container.image.tag": self.tag,
            "k8s.pod.name": self.name,
            "k8s.ns.name": self.namespace,
        }


@dataclass(frozen=True)
class Person:
    """An operations engineer: a Unix account on the bastion, a Keycloak user and an OIDC identity in the
    cluster."""

    login: str
    email: str
    keycloak_id: str
    uid: int
    vpn_ip: str

    @property
    def k8s_user(self) -> str:
        return f"oidc:{self.email}"


class Site:
    """The ground segment, drawn once from the generator's random source, plus the counters real sensors keep
    (audit serials per host, the log sequence of Keycloak)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.pods = [pod for spec in _WORKLOADS for pod in self._deploy(*spec)]
        self.people = [
            Person(login, f"{name}@eo-gs.example", self.uuid(), 1001 + n, f"10.20.0.{rng.randint(10, 250)}")
            for n, (login, name) in enumerate(_PEOPLE)
        ]
        self.realm_id = self.uuid()
        self.collector_id = self.uuid()
        """Keycloak user id of the collectors' service account (``service-account-refsys-collector``)."""
        self.service_ips = {name: self.external_ip() for name in EXTERNAL_SERVICES}
        self.audit_serials: dict[str, Iterator[int]] = {
            host: itertools.count(rng.randint(100_000, 900_000)) for host in PROCESSING_HOSTS
        }
        self.log_sequence = itertools.count(rng.randint(1000, 9000))

    def _deploy(
        self,
        namespace: str,
        deployment: str,
        container: str,
        image: str,
        tag: str,
        replicas: int,
        account: str,
    ) -> list[Pod]:
        template = self.name_suffix(10)
        pods = []
        for _ in range(replicas):
            node = self.rng.choice(list(NODES))
            ip = f"10.42.{node[-1]}.{self.rng.randint(2, 254)}"
            name = f"{deployment}-{template}-{self.name_suffix(5)}"
            pods.append(Pod(name, namespace, node, ip, container, self.hex_id(64), image, tag, account))
        return pods

    def pods_in(self, namespace: str) -> list[Pod]:
        return [pod for pod in self.pods if pod.namespace == namespace]

    def pod(self, deployment: str) -> Pod:
        return self.rng.choice([pod for pod in self.pods if pod.name.startswith(f"{deployment}-")])

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex_id(self, digits: int) -> str:
        return f"{self.rng.getrandbits(4 * digits):0{digits}x}"

    def name_suffix(self, length: int) -> str:
        return "".join(self.rng.choice(_NAME_CHARS) for _ in range(length))

    def port(self) -> int:
        """An ephemeral client port, from Linux's default range."""
        return self.rng.randint(32768, 60999)

    def pid(self) -> int:
        return self.rng.randint(2000, 400_000)

    def external_ip(self) -> str:
        return f"{self.rng.choice(EXTERNAL_NETS)}{self.rng.randint(2, 254)}"

    def flow(
        self,
        src_ip: str,
        dest_ip: str,
        dest_port: int,
        proto: str = "TCP",
        app_proto: str | None = None,
        *,
        src_port: int | None = None,
    ) -> Flow:
        flow_id = self.rng.randrange(2**49, 2**51)  # Suricata's flow hash, in the range the samples show
        return Flow(flow_id, src_ip, src_port or self.port(), dest_ip, dest_port, proto, app_proto)


# --- schedule entries, per sensor --------------------------------------------------------------------------

AUTH_INFO, AUTHPRIV_NOTICE, AUTHPRIV_INFO = 38, 85, 86
"""Syslog priorities: sshd logs to ``auth`` at ``info``; pam_unix and sudo to ``authpriv``, failures at
``notice``."""


def eve_event(at_s: float, flow: Flow, event_type: str, body: dict[str, Any]) -> Emission:
    render = partial(formats.eve, flow=flow, event_type=event_type, body=body)
    return Emission(at_s, "suricata", SURICATA, render)


def closed_flow(
    site: Site,
    flow: Flow,
    at_s: float,
    duration_s: float,
    octets: tuple[int, int],
    *,
    tcp_flags: tuple[int, int] = (0x1B, 0x1B),
    alerted: bool = False,
) -> Emission:
    """The flow record, written once the flow has been idle for Suricata's flow timeout."""
    idle_s = site.rng.uniform(5, 60)
    packets = (1 + octets[0] // 1200, 1 + octets[1] // 1400)
    state = "closed" if flow.proto == "TCP" else "established"
    render = partial(
        formats.flow_end,
        flow=flow,
        duration_s=duration_s,
        idle_s=idle_s,
        packets=packets,
        octets=octets,
        state=state,
        tcp_flags=tcp_flags,
        alerted=alerted,
    )
    return Emission(at_s + duration_s + idle_s, "suricata", SURICATA, render)


def audit_event(site: Site, at_s: float, user: KubeUser, verb: str, **request: Any) -> Emission:
    """One API request in the audit log, under a new audit ID unless ``request`` brings the one of its
    earlier stage."""
    request.setdefault("audit_id", site.uuid())
    return Emission(at_s, "k8s_audit", APISERVER, partial(formats.k8s_audit, user=user, verb=verb, **request))


def rbac(binding: str, grant: str) -> str:
    """The RBAC authorizer's reason, ``RBAC: allowed by <binding> of <role> to <subject>``."""
    return f"RBAC: allowed by {binding} {grant}"


def sshd_line(
    at_s: float, pid: int, message: str, *, priority: int = AUTH_INFO, app: str = "sshd"
) -> Emission:
    render = partial(formats.syslog, priority=priority, host=BASTION, app=app, pid=pid, message=message)
    return Emission(at_s, "syslog", SSHD, render)


def ssh_versions(client: str) -> dict[str, dict[str, str]]:
    """Suricata's ``ssh`` object: both ends' banners (the bastion runs Debian 12's OpenSSH)."""
    return {
        "client": {"proto_version": "2.0", "software_version": client},
        "server": {"proto_version": "2.0", "software_version": "OpenSSH_9.2p1 Debian-2+deb12u3"},
    }


def falco_event(pod: Pod, at_s: float, rule: formats.FalcoRule, process: dict[str, Any]) -> Emission:
    """A syscall alert from the Falco on ``pod``'s node, with the container fields Falco adds."""
    render = partial(
        formats.falco_alert, rule=rule, hostname=pod.node, fields={**process, **pod.falco_fields()}
    )
    return Emission(at_s, "falco", falco_sensor(pod.node), render)
