"""Demo traffic: ten simulated minutes go through the real adapters without a rejection, at the configured
rate, with each attack scenario showing the events a SIEM rule would key on; seeded runs repeat; the runner
feeds an ingest callable and survives its failures.

Nothing sleeps: the generator runs on a fake clock, and the runner test polls its fake ingest with a deadline.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from control_plane.core import clock
from security.demo import formats
from security.demo.formats import Flow
from security.demo.runner import DemoRunner
from security.demo.traffic import Batch, DemoTraffic
from security.ecs import get
from security.intake.framing import FramedLine, frame
from security.sources.base import Parsed, Rejection
from security.sources.registry import adapter_for

SIMULATED_S = 600
EVENTS_PER_S = 20.0
EXTERNAL = [ipaddress.ip_network(net) for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


class FakeClock:
    """Clock readings the test controls, starting at the real now, as syslog's year inference expects."""

    def __init__(self) -> None:
        self.now = clock.utcnow()

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Run:
    start: datetime
    batches: list[Batch]
    docs: list[tuple[str, dict[str, Any]]]
    """(source, ECS document) for every event the adapters made of the batches."""
    rejections: list[tuple[str, str, str]]
    silent_lines: int
    """Lines the adapters neither turned into events nor rejected (a Keycloak line of another logger)."""


def _drive(traffic: DemoTraffic, fake: FakeClock, seconds: int) -> list[Batch]:
    batches = []
    for _ in range(seconds):
        fake.now += timedelta(seconds=1)
        batches += traffic.batches(1.0)
    return batches


def _simulate(*, attack_every_s: float, seed: int = 1234, events_per_s: float = EVENTS_PER_S) -> Run:
    fake = FakeClock()
    start = fake.now
    traffic = DemoTraffic(events_per_s=events_per_s, attack_every_s=attack_every_s, seed=seed, clock=fake)
    batches = _drive(traffic, fake, SIMULATED_S)
    docs, rejections, silent = [], [], 0
    for batch in batches:
        adapter = adapter_for(batch.source)
        lines = []
        for item in frame(batch.body, adapter.framing):
            if isinstance(item, FramedLine):
                lines.append(item.line)
            else:
                rejections.append((batch.source, item.reason, item.line.text))
        answered = set()
        for outcome in adapter.parse(lines):
            answered.add(outcome.line.number)
            if isinstance(outcome, Parsed):
                docs.append((batch.source, outcome.doc))
            elif isinstance(outcome, Rejection):
                rejections.append((batch.source, outcome.reason, outcome.line.text))
        # auditd answers for a group of records through its first line: the rest are part of that event
        if batch.source != "auditd":
            silent += sum(1 for line in lines if line.number not in answered)
    return Run(start, batches, docs, rejections, silent)


@pytest.fixture(scope="module")
def attacked() -> Run:
    """Ten minutes with an attack every minute: each of the four scenarios at least twice."""
    return _simulate(attack_every_s=60)


@pytest.fixture(scope="module")
def quiet() -> Run:
    return _simulate(attack_every_s=1e9)


def _events(run: Run, source: str) -> list[dict[str, Any]]:
    return sorted((doc for name, doc in run.docs if name == source), key=lambda doc: doc["@timestamp"])


def _is_external(ip: str | None) -> bool:
    return ip is not None and any(ipaddress.ip_address(ip) in net for net in EXTERNAL)


def test_every_batch_is_accepted_by_its_adapter(attacked: Run) -> None:
    assert attacked.rejections == []
    assert attacked.silent_lines == 0
    assert {source for source, _ in attacked.docs} == {
        "falco",
        "suricata",
        "k8s_audit",
        "auditd",
        "syslog",
        "keycloak",
    }
    observers = {batch.observer for batch in attacked.batches}
    assert {"demo:suricata-edge", "demo:k8s-apiserver", "demo:sshd-bastion", "demo:keycloak"} <= observers
    assert any(name.startswith("demo:falco-node-") for name in observers)
    assert any(name.startswith("demo:auditd-proc-") for name in observers)


def test_events_are_timestamped_near_the_clock(attacked: Run) -> None:
    end = attacked.start + timedelta(seconds=SIMULATED_S)
    moments = [clock.parse_rfc3339(doc["@timestamp"]) for _, doc in attacked.docs]
    assert min(moments) >= attacked.start - timedelta(seconds=1)
    assert max(moments) <= end


@pytest.mark.parametrize("events_per_s", [2.0, EVENTS_PER_S, 100.0])
def test_rate_is_close_to_events_per_s(events_per_s: float) -> None:
    """Counted in events, not lines (an auditd event is six records), over the last minutes of a quiet run so
    that the events units write later (flow records, session ends) have caught up."""
    run = _simulate(attack_every_s=1e9, events_per_s=events_per_s, seed=7)
    since = run.start + timedelta(seconds=300)
    until = run.start + timedelta(seconds=SIMULATED_S)
    counted = sum(1 for _, doc in run.docs if since <= clock.parse_rfc3339(doc["@timestamp"]) < until)
    assert counted / 300 == pytest.approx(events_per_s, rel=0.08)


def _brute_forced(run: Run) -> set[str]:
    """Source addresses with at least ten failed SSH logins followed by a successful one."""
    failures: dict[str, list[str]] = defaultdict(list)
    broken_in = set()
    for doc in _events(run, "syslog"):
        if get(doc, "event.action") != "ssh_login":
            continue
        ip = get(doc, "source.ip")
        if get(doc, "event.outcome") == "failure":
            failures[ip].append(doc["@timestamp"])
        elif len(failures[ip]) >= 10:
            broken_in.add(ip)
    return broken_in


def _shell_then_egress(run: Run) -> list[tuple[str, str, str]]:
    """(pod, pod address, external address) where Falco saw a terminal shell in the pod, then a reverse shell,
    and Suricata a flow from the pod's address to the reverse shell's external address."""
    falco, suricata = _events(run, "falco"), _events(run, "suricata")
    confirmed = []
    for shell in (doc for doc in falco if get(doc, "rule.name") == "Terminal shell in container"):
        pod, since = get(shell, "orchestrator.resource.name"), shell["@timestamp"]
        for reverse in falco:
            if get(reverse, "rule.name") != "Redirect STDOUT/STDIN to Network Connection in Container":
                continue
            if get(reverse, "orchestrator.resource.name") != pod or reverse["@timestamp"] < since:
                continue
            pod_ip, remote = get(reverse, "source.ip"), get(reverse, "destination.ip")
            if _is_external(remote) and any(
                doc["@timestamp"] > since
                and get(doc, "source.ip") == pod_ip
                and get(doc, "destination.ip") == remote
                for doc in suricata
            ):
                confirmed.append((pod, pod_ip, remote))
    return confirmed


def _scanners(run: Run) -> set[str]:
    """Source addresses whose flows reach at least 20 distinct destination ports within one minute."""
    probes: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    for doc in _events(run, "suricata"):
        if get(doc, "event.action") == "flow":
            moment = clock.parse_rfc3339(doc["@timestamp"])
            probes[get(doc, "source.ip")].append((moment, get(doc, "destination.port")))
    return {
        ip
        for ip, seen in probes.items()
        if any(
            len({port for at, port in seen if first <= at < first + timedelta(minutes=1)}) >= 20
            for first, _ in seen
        )
    }


def _secret_read_then_exec(run: Run) -> list[str]:
    """Users who created a ``pods/exec`` after getting a secret."""
    read_a_secret, execs = set(), []
    for doc in _events(run, "k8s_audit"):
        user, action = get(doc, "user.name"), get(doc, "event.action")
        resource = get(doc, "orchestrator.resource.type")
        subresource = get(doc, "kubernetes.audit.objectRef.subresource")
        if action == "get" and resource == "secrets":
            read_a_secret.add(user)
        elif action == "create" and resource == "pods" and subresource == "exec" and user in read_a_secret:
            execs.append(user)
    return execs


def test_ssh_brute_force_fails_many_times_then_succeeds(attacked: Run) -> None:
    broken_in = _brute_forced(attacked)
    assert broken_in
    assert all(_is_external(ip) for ip in broken_in)


def test_shell_in_container_then_outbound_traffic_from_the_pod(attacked: Run) -> None:
    assert _shell_then_egress(attacked)


def test_port_scan_touches_many_ports_within_a_minute(attacked: Run) -> None:
    scanners = _scanners(attacked)
    assert scanners
    assert all(_is_external(ip) for ip in scanners)
    alerted = {
        get(doc, "source.ip")
        for doc in _events(attacked, "suricata")
        if get(doc, "rule.name", "").startswith("ET SCAN")
    }
    assert scanners <= alerted


def test_secret_read_then_exec_by_the_same_user(attacked: Run) -> None:
    users = _secret_read_then_exec(attacked)
    assert users
    assert all(user.startswith("oidc:") for user in users)


def test_background_alone_has_none_of_the_attack_patterns(quiet: Run) -> None:
    """The patterns come from the scenarios alone, although the background holds near misses (kubelets reading
    secrets, internet scanners trying an account or two, pods downloading from outside, a Falco false
    positive)."""
    assert quiet.rejections == []
    assert not _brute_forced(quiet)
    assert not _shell_then_egress(quiet)
    assert not _scanners(quiet)
    assert not _secret_read_then_exec(quiet)
    assert {get(doc, "rule.name") for doc in _events(quiet, "falco")} == {
        "Contact K8S API Server From Container"
    }
    assert not [doc for doc in _events(quiet, "suricata") if get(doc, "event.kind") == "alert"]


def test_auditd_hex_encodes_what_the_kernel_would(quiet: Run) -> None:
    """An argument with a space is logged hex-encoded (and decoded by the adapter), a plain one quoted."""
    spaced = [
        (doc, arg) for doc in _events(quiet, "auditd") for arg in get(doc, "process.args", []) if " " in arg
    ]
    assert spaced
    for doc, arg in spaced:
        original = get(doc, "event.original")
        assert arg.encode().hex().upper() in original and f'"{arg}"' not in original
        assert f'a0="{get(doc, "process.args")[0]}"' in original


def test_community_id_matches_suricatas() -> None:
    """Values from real EVE records (suricata-stamus-analytics training data, see PROVENANCE.md)."""
    samples = [
        (("10.4.18.169", 60651, "10.4.18.4", 53, "UDP"), "1:/RW9RKEKjRQj56Ac2F3o397cQAA="),
        (("10.4.18.169", 49878, "149.154.167.99", 443, "TCP"), "1:6+p4gJs7bKSBgDA6VlrgOVvWuRA="),
        (("85.239.53.219", 80, "10.4.18.169", 49879, "TCP"), "1:TZKoDXSPZl+FK56mL/4ivm/JmR0="),
    ]
    for (src, sport, dest, dport, proto), expected in samples:
        assert formats.community_id(Flow(1, src, sport, dest, dport, proto)) == expected


def test_same_seed_same_batches_and_another_seed_differs() -> None:
    def ten_seconds(seed: int) -> list[Batch]:
        fake = FakeClock()
        fake.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        return _drive(DemoTraffic(events_per_s=50, attack_every_s=5, seed=seed, clock=fake), fake, 10)

    assert ten_seconds(42) == ten_seconds(42)
    assert ten_seconds(42) != ten_seconds(43)


def test_runner_feeds_ingest_and_survives_its_failures(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def flaky_ingest(source: str, body: bytes, *, observer: str) -> None:
        with lock:
            calls.append((source, observer))
            if len(calls) == 1:
                raise RuntimeError("spool full")

    traffic = DemoTraffic(events_per_s=200, attack_every_s=1e9, seed=1)
    runner = DemoRunner(traffic=traffic, ingest=flaky_ingest, interval_s=0.01)
    with caplog.at_level(logging.ERROR, logger="security.demo.runner"):
        runner.start()
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                with lock:
                    if len(calls) >= 5:
                        break
                threading.Event().wait(0.01)
        finally:
            runner.stop()
    assert len(calls) >= 5, "the runner stopped calling ingest after it failed"
    assert all(observer.startswith("demo:") for _, observer in calls)
    assert "not ingested" in caplog.text
