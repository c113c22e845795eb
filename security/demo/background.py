"""Benign background activity of the demo site, one function per kind of activity (a "unit").

A unit starts at a demo time and returns every event it causes, including those a sensor writes later (the
flow record after Suricata's flow timeout, the end of an SSH session, the Job refsys deletes once it has run).
``UNITS`` weighs them so that the events come out in the mix ``traffic`` documents.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from security.demo import formats
from security.demo.formats import KubeUser
from security.demo.site import (
    API_SERVER_IP,
    AUTHPRIV_INFO,
    BASTION_IP,
    DATABASE_IP,
    DNS_IP,
    EXTERNAL_SERVICES,
    INGRESS_IP,
    KEYCLOAK,
    KUBE_VERSION,
    KUBERNETES_SERVICE_IP,
    NODES,
    OBJECT_STORE_IP,
    PROCESSING_HOSTS,
    Emission,
    Person,
    Site,
    audit_event,
    auditd_sensor,
    closed_flow,
    eve_event,
    falco_event,
    rbac,
    ssh_versions,
    sshd_line,
)

Unit = Callable[[Site, float], list[Emission]]
"""A piece of benign activity starting at a given demo time: the events it makes, now and later."""

UNSET_ID = 4294967295
"""auditd's ``auid`` and ``ses`` of a process that no login started (a daemon and its children)."""


# --- Suricata ----------------------------------------------------------------------------------------------


def _dns_lookup(site: Site, at_s: float) -> list[Emission]:
    rng = site.rng
    name = rng.choice(EXTERNAL_SERVICES)
    flow = site.flow(rng.choice([*PROCESSING_HOSTS.values(), *NODES.values()]), DNS_IP, 53, "UDP", "dns")
    question = {"id": rng.randint(1, 65535), "rrname": name, "rrtype": "A", "opcode": 0}
    answer = {"rrname": name, "rrtype": "A", "ttl": rng.randint(30, 300), "rdata": site.service_ips[name]}
    response = {
        "version": 2, "type": "answer", **question, "flags": "8180", "qr": True, "rd": True, "ra": True,
        "rcode": "NOERROR", "answers": [answer], "grouped": {"A": [answer["rdata"]]},
    }  # fmt: skip
    return [
        eve_event(at_s, flow, "dns", {"dns": {"type": "query", **question, "tx_id": 0}}),
        eve_event(at_s + 0.002, flow, "dns", {"dns": response}),
        closed_flow(site, flow, at_s, 0.002, (rng.randint(70, 95), rng.randint(90, 180))),
    ]


def _tls_session(site: Site, at_s: float) -> list[Emission]:
    """Operators reaching the console, Grafana and Keycloak through the ingress; processing hosts, nodes
    (image pulls) and processing pods (auxiliary data) fetching from outside."""
    rng = site.rng
    if rng.random() < 0.3:
        client, server = f"10.20.0.{rng.randint(10, 250)}", INGRESS_IP
        name = rng.choice(["refsys.eo-gs.example", "grafana.eo-gs.example", "keycloak.eo-gs.example"])
    else:
        pods = [pod.ip for pod in site.pods_in("eo-processing")]
        client = rng.choice([*PROCESSING_HOSTS.values(), *NODES.values(), *pods])
        name = rng.choice(EXTERNAL_SERVICES)
        server = site.service_ips[name]
    flow = site.flow(client, server, 443, "TCP", "tls")
    downloaded = int(rng.lognormvariate(11, 2.5))  # from API answers to whole products
    duration_s = rng.uniform(0.1, 5) + downloaded / 50e6
    return [
        eve_event(at_s + 0.05, flow, "tls", {"tls": {"sni": name, "version": "TLS 1.3"}}),
        closed_flow(site, flow, at_s, duration_s, (rng.randint(900, 9000), downloaded)),
    ]


def _apt_update(site: Site, at_s: float) -> list[Emission]:
    rng = site.rng
    mirror = "deb.debian.example"
    flow = site.flow(rng.choice(list(PROCESSING_HOSTS.values())), site.service_ips[mirror], 80, "TCP", "http")
    suite = rng.choice(["bookworm", "bookworm-updates", "bookworm-security"])
    http = {
        "hostname": mirror, "url": f"/debian/dists/{suite}/InRelease", "http_method": "GET",
        "http_user_agent": "Debian APT-HTTP/1.3 (2.6.1)", "protocol": "HTTP/1.1", "status": 304, "length": 0,
    }  # fmt: skip
    return [
        eve_event(at_s + 0.03, flow, "http", {"tx_id": 0, "http": http}),
        closed_flow(site, flow, at_s, 0.1, (420, 260)),
    ]


def _storage_flow(site: Site, at_s: float) -> list[Emission]:
    """Products going to the object store, and the processing hosts' database sessions."""
    rng = site.rng
    host = rng.choice(list(PROCESSING_HOSTS.values()))
    if rng.random() < 0.6:
        flow = site.flow(host, OBJECT_STORE_IP, 9000, "TCP", "http")
        octets = (int(rng.lognormvariate(17, 1.5)), rng.randint(2000, 9000))
    else:
        flow = site.flow(host, DATABASE_IP, 5432, "TCP", "pgsql")
        octets = (rng.randint(2000, 60000), rng.randint(2000, 400000))
    return [closed_flow(site, flow, at_s, rng.uniform(0.05, 30), octets)]


# --- Kubernetes audit --------------------------------------------------------------------------------------


def _kubelet(node: str) -> KubeUser:
    groups = ("system:nodes", "system:authenticated")
    return KubeUser(f"system:node:{node}", groups, f"kubelet/{KUBE_VERSION}", NODES[node])


def _lease_renewal(site: Site, at_s: float) -> list[Emission]:
    """Kubelets renew their node leases every 10 s, the controller manager and scheduler their leader ones."""
    rng = site.rng
    if rng.random() < 0.65:
        name = rng.choice(list(NODES))
        user, namespace, reason = _kubelet(name), "kube-node-lease", ""  # the Node authorizer gives no reason
    else:
        name, namespace = rng.choice(["kube-controller-manager", "kube-scheduler"]), "kube-system"
        agent = f"{name}/{KUBE_VERSION}/leader-election"
        user = KubeUser(f"system:{name}", ("system:authenticated",), agent, API_SERVER_IP)
        reason = rbac(
            f'ClusterRoleBinding "system:{name}"', f'of ClusterRole "system:{name}" to User "system:{name}"'
        )
    lease = {"resource": "leases", "api_group": "coordination.k8s.io", "namespace": namespace, "name": name}
    latency_ms = rng.randint(2, 12)
    return [
        audit_event(
            site, at_s, user, "update", query="timeout=5s", reason=reason, latency_ms=latency_ms, **lease
        )
    ]


def _processing_job(site: Site, at_s: float) -> list[Emission]:
    """refsys runs a production step as a Job: creates it, polls it, deletes it once it has ended."""
    rng = site.rng
    groups = ("system:serviceaccounts", "system:serviceaccounts:refsys", "system:authenticated")
    agent = "OpenAPI-Generator/30.1.0/python"  # the official Kubernetes Python client
    user = KubeUser("system:serviceaccount:refsys:refsys", groups, agent, site.pod("refsys-control-plane").ip)
    step = rng.choice(["l0-unpack", "l1-calibrate", "l2-sr", "quicklook"])
    grant = 'of Role "refsys-executor" to ServiceAccount "refsys/refsys"'
    reason = rbac('RoleBinding "refsys-executor/eo-processing"', grant)
    job = {"resource": "jobs", "api_group": "batch", "namespace": "eo-processing", "reason": reason,
           "name": f"run-{site.hex_id(8)}-{step}"}  # fmt: skip
    ended_s = at_s + rng.uniform(20, 240)
    return [
        audit_event(site, at_s, user, "create", code=201, latency_ms=18, **job),
        audit_event(site, at_s + 5, user, "get", **job),
        audit_event(site, ended_s, user, "get", **job),
        audit_event(site, ended_s + 1, user, "delete", latency_ms=12, **job),
    ]


def _api_reads(site: Site, at_s: float) -> list[Emission]:
    """Reads of normal operation: kubelets fetching their pods' secrets and config maps, operators looking at
    pods and logs with kubectl."""
    rng = site.rng
    pod = rng.choice(site.pods)
    if rng.random() < 0.6:
        resource, name = rng.choice([("secrets", f"{pod.service_account}-credentials"),
                                     ("configmaps", "kube-root-ca.crt")])  # fmt: skip
        return [audit_event(site, at_s, _kubelet(pod.node), "get", resource=resource, namespace=pod.namespace,
                            name=name)]  # fmt: skip
    person = rng.choice(site.people)
    groups = ("oidc:eo-operators", "system:authenticated")
    user = KubeUser(person.k8s_user, groups, f"kubectl/{KUBE_VERSION}", person.vpn_ip)
    grant = 'of ClusterRole "view" to Group "oidc:eo-operators"'
    pods = {
        "resource": "pods",
        "namespace": pod.namespace,
        "reason": rbac(f'RoleBinding "eo-operators/{pod.namespace}"', grant),
    }
    log = f"container={pod.container}&tailLines=200"
    return [
        audit_event(site, at_s, user, "list", query="limit=500", latency_ms=9, **pods),
        audit_event(site, at_s + rng.uniform(3, 20), user, "get", name=pod.name, subresource="log", query=log,
                    latency_ms=40, **pods),
    ]  # fmt: skip


# --- auditd on the processing hosts ------------------------------------------------------------------------

_PROCESSORS = ("l0_unpack", "l1_calibrate", "l2_surface_reflectance", "quicklook")
_CRON_JOBS = (
    "test -x /usr/sbin/logrotate && /usr/sbin/logrotate /etc/logrotate.conf",
    "/opt/refsys/bin/purge-workdirs --older-than 2d",
    "cd / && run-parts --report /etc/cron.hourly",
)


def _processor_run(site: Site, at_s: float) -> list[Emission]:
    """The refsys agent starts a processor, which converts its output to a cloud-optimised GeoTIFF."""
    rng = site.rng
    host, processor = rng.choice(list(PROCESSING_HOSTS)), rng.choice(_PROCESSORS)
    workdir, agent = f"/srv/refsys/work/run-{site.hex_id(8)}", site.pid()
    pid = agent + rng.randint(1, 500)
    execve = partial(formats.auditd_exec, serials=site.audit_serials[host], host=host, uid=990, auid=UNSET_ID,
                     ses=UNSET_ID, cwd=workdir)  # fmt: skip
    python = ["python3", "-m", f"pipelines.processors.{processor}", "--job-order", f"{workdir}/JobOrder.xml"]
    gdal = ["gdal_translate", "-of", "COG", "-co", "COMPRESS=DEFLATE", f"{processor}.tif", "cog.tif"]
    return [
        Emission(at_s, "auditd", auditd_sensor(host), partial(
            execve, pid=pid, ppid=agent, comm="python3", exe="/usr/bin/python3.11", argv=python)),
        Emission(at_s + rng.uniform(5, 60), "auditd", auditd_sensor(host), partial(
            execve, pid=pid + 9, ppid=pid, comm="gdal_translate", exe="/usr/bin/gdal_translate", argv=gdal)),
    ]  # fmt: skip


def _cron_session(site: Site, at_s: float) -> list[Emission]:
    """cron opens a PAM session for root, runs the job through ``sh -c`` and closes the session."""
    rng = site.rng
    host = rng.choice(list(PROCESSING_HOSTS))
    pid, ses, ended_s = site.pid(), rng.randint(100, 9000), at_s + rng.uniform(0.5, 20)
    serials = site.audit_serials[host]
    pam = partial(formats.auditd_pam, serials=serials, host=host, pid=pid, acct="root", exe="/usr/sbin/cron",
                  terminal="cron")  # fmt: skip
    unset: dict[str, Any] = {"auid": UNSET_ID, "ses": UNSET_ID}  # until pam_loginuid opens the session
    login: dict[str, Any] = {"auid": 0, "ses": ses}
    setcred = {"op": "PAM:setcred", "grantors": "pam_permit,pam_env"}
    session = {"grantors": "pam_loginuid,pam_env,pam_env,pam_permit,pam_unix,pam_limits"}
    command = ["/bin/sh", "-c", rng.choice(_CRON_JOBS)]
    job = partial(formats.auditd_exec, serials=serials, host=host, pid=pid + 1, ppid=pid, uid=0, comm="sh",
                  exe="/usr/bin/dash", argv=command, cwd="/root", **login)  # fmt: skip
    records = [
        (at_s, partial(pam, kind="USER_ACCT", op="PAM:accounting", grantors="pam_permit", **unset)),
        (at_s + 0.001, partial(pam, kind="CRED_ACQ", **setcred, **unset)),
        (at_s + 0.004, partial(pam, kind="USER_START", op="PAM:session_open", **session, **login)),
        (at_s + 0.01, job),
        (ended_s, partial(pam, kind="CRED_DISP", **setcred, **login)),
        (ended_s + 0.001, partial(pam, kind="USER_END", op="PAM:session_close", **session, **login)),
    ]
    return [Emission(at, "auditd", auditd_sensor(host), render) for at, render in records]


# --- Keycloak ----------------------------------------------------------------------------------------------

_REDIRECTS = {
    "refsys-console": "https://refsys.eo-gs.example/ui/callback",
    "grafana": "https://grafana.eo-gs.example/login/generic_oauth",
}


def _keycloak_event(
    site: Site, at_s: float, fields: Mapping[str, str | None], *, error: bool = False
) -> Emission:
    """An event of the ``eo-gs`` realm; the listener writes ``type``, then the realm, then the rest."""
    ordered = {"type": fields["type"], "realmId": site.realm_id, "realmName": "eo-gs", **fields}
    thread = site.rng.randint(0, 15)
    render = partial(formats.keycloak, sequence=site.log_sequence, thread=thread, fields=ordered, error=error)
    return Emission(at_s, "keycloak", KEYCLOAK, render)


def _session(person: Person, client: str, session: str | None) -> dict[str, str | None]:
    """Who, through which client, from where: the fields every user event starts with."""
    return {
        "clientId": client,
        "userId": person.keycloak_id,
        "sessionId": session,
        "ipAddress": person.vpn_ip,
    }


def _browser_login(site: Site, at_s: float) -> list[Emission]:
    """An operator signs in to the console or Grafana, now and then after mistyping the password."""
    rng = site.rng
    person, client, session = rng.choice(site.people), rng.choice(list(_REDIRECTS)), site.uuid()
    user = {**_session(person, client, session), "username": person.login}
    code_flow = {
        "auth_method": "openid-connect", "auth_type": "code", "redirect_uri": _REDIRECTS[client],
        "code_id": session, "authSessionParentId": session, "authSessionTabId": site.name_suffix(11),
    }  # fmt: skip
    events = []
    if rng.random() < 0.15:
        failed = {"type": "LOGIN_ERROR", **user, "sessionId": None, "error": "invalid_user_credentials"}
        events.append(_keycloak_event(site, at_s, {**failed, **code_flow}, error=True))
        at_s += rng.uniform(4, 12)
    login = {
        "type": "LOGIN", **user, **code_flow, "response_type": "code", "consent": "no_consent_required",
        "response_mode": "query",
    }  # fmt: skip
    token = {
        "type": "CODE_TO_TOKEN", **_session(person, client, session), "token_id": site.uuid(),
        "grant_type": "authorization_code", "refresh_token_type": "Refresh", "scope": "openid profile email",
        "refresh_token_id": site.uuid(), "code_id": session, "client_auth_method": "client-secret",
    }  # fmt: skip
    return [*events, _keycloak_event(site, at_s, login), _keycloak_event(site, at_s + 0.2, token)]


def _token_activity(site: Site, at_s: float) -> list[Emission]:
    """Token refreshes of open sessions, the collectors' client-credential logins, and sign-outs."""
    rng = site.rng
    person, client, draw = rng.choice(site.people), rng.choice(list(_REDIRECTS)), rng.random()
    fields: dict[str, str | None]
    if draw < 0.55:
        fields = {
            "type": "REFRESH_TOKEN", **_session(person, client, site.uuid()), "token_id": site.uuid(),
            "grant_type": "refresh_token", "refresh_token_id": site.uuid(),
            "updated_refresh_token_id": site.uuid(), "refresh_token_type": "Refresh",
            "scope": "openid profile email", "client_auth_method": "client-secret",
        }  # fmt: skip
    elif draw < 0.9:
        fields = {
            "type": "CLIENT_LOGIN", "clientId": "refsys-collector", "userId": site.collector_id,
            "sessionId": None, "ipAddress": rng.choice(list(PROCESSING_HOSTS.values())),
            "token_id": site.uuid(), "grant_type": "client_credentials", "scope": "profile email",
            "client_auth_method": "client-secret", "username": "service-account-refsys-collector",
        }  # fmt: skip
    else:
        fields = {
            "type": "LOGOUT",
            **_session(person, client, site.uuid()),
            "redirect_uri": _REDIRECTS[client],
        }
    return [_keycloak_event(site, at_s, fields)]


# --- sshd on the bastion, Falco ----------------------------------------------------------------------------


def _operator_ssh(site: Site, at_s: float) -> list[Emission]:
    """An operator logs in to the bastion with a key from the VPN, works a while and logs out."""
    rng = site.rng
    person, pid, session_s = rng.choice(site.people), site.pid(), rng.uniform(120, 3600)
    flow = site.flow(person.vpn_ip, BASTION_IP, 22, "TCP", "ssh")
    ip, port, login = flow.src_ip, flow.src_port, person.login
    key = base64.b64encode(hashlib.sha256(person.email.encode()).digest()).decode().rstrip("=")
    accepted = f"Accepted publickey for {login} from {ip} port {port} ssh2: ED25519 SHA256:{key}"
    opened = f"pam_unix(sshd:session): session opened for user {login}(uid={person.uid}) by (uid=0)"
    closed = f"pam_unix(sshd:session): session closed for user {login}"
    end_s = at_s + session_s
    octets = (rng.randint(8_000, 400_000), rng.randint(20_000, 4_000_000))
    return [
        sshd_line(at_s, pid, accepted),
        sshd_line(at_s + 0.02, pid, opened, priority=AUTHPRIV_INFO),
        eve_event(at_s + 0.3, flow, "ssh", {"ssh": ssh_versions("OpenSSH_9.6")}),
        sshd_line(end_s, pid, f"Received disconnect from {ip} port {port}:11: disconnected by user"),
        sshd_line(end_s, pid, f"Disconnected from user {login} {ip} port {port}"),
        sshd_line(end_s + 0.01, pid, closed, priority=AUTHPRIV_INFO),
        closed_flow(site, flow, at_s, session_s, octets),
    ]


def _internet_noise(site: Site, at_s: float) -> list[Emission]:
    """The bastion faces the internet: scanners connect and leave, or try one common account name."""
    rng = site.rng
    ip, port, pid = site.external_ip(), site.port(), site.pid()
    if rng.random() < 0.5:
        return [sshd_line(at_s, pid, f"Connection closed by {ip} port {port} [preauth]")]
    user = rng.choice(["admin", "test", "ubuntu", "oracle", "git", "user"])
    closed = f"Connection closed by invalid user {user} {ip} port {port} [preauth]"
    return [
        sshd_line(at_s, pid, f"Invalid user {user} from {ip} port {port}"),
        sshd_line(at_s + rng.uniform(0.2, 2), pid, closed),
    ]


CONTACT_K8S_API = formats.FalcoRule(
    "Contact K8S API Server From Container",
    "Notice",
    "Unexpected connection to K8s API Server from container | "
    f"{formats.CONNECTION_FIELDS} {formats.PROCESS_FIELDS}",
    ("maturity_stable", "container", "network", "k8s", "mitre_discovery", "T1565"),
)
"""Fires on every connection to the API server from an image Falco does not know as a Kubernetes client."""


def _api_client_in_container(site: Site, at_s: float) -> list[Emission]:
    """Falco's usual false positive: in-house controllers talking to the API server from their pods."""
    rng = site.rng
    pod, port = site.pod(rng.choice(["refsys-control-plane", "catalog-indexer"])), site.port()
    serve = "python3 -m control_plane.cli serve"
    command = serve if pod.container == "control-plane" else "catalog-indexer --watch"
    program = command.split()[0]
    process = {
        "evt.type": "connect", "user.name": "app", "user.uid": 10001, "user.loginuid": -1,
        "proc.name": program, "proc.exepath": f"/usr/local/bin/{program}", "proc.pname": "containerd-shim",
        "proc.cmdline": command, "proc.tty": 0, "fd.name": f"{pod.ip}:{port}->{KUBERNETES_SERVICE_IP}:443",
        "fd.lport": port, "fd.rport": 443, "fd.type": "ipv4", "fd.l4proto": "tcp",
    }  # fmt: skip
    return [falco_event(pod, at_s, CONTACT_K8S_API, process)]


UNITS: tuple[tuple[Unit, float], ...] = (
    # unit, weight of a draw: tuned so that the events come out in the mix the traffic module documents
    (_dns_lookup, 5.0),
    (_tls_session, 8.0),
    (_apt_update, 1.5),
    (_storage_flow, 5.0),
    (_lease_renewal, 13.0),
    (_processing_job, 1.5),
    (_api_reads, 5.0),
    (_processor_run, 3.0),
    (_cron_session, 0.8),
    (_browser_login, 1.3),
    (_token_activity, 4.5),
    (_operator_ssh, 0.6),
    (_internet_noise, 2.5),
    (_api_client_in_container, 2.0),
)
