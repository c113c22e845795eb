"""What the authentication programs of a Linux host say in syslog, as ECS fields.

Each recogniser takes the message text (after the syslog header and tag) and returns dotted ECS paths and
values, or None when the message is not one it knows; the adapter then keeps the line as a plain message.
Covered: sshd (accepted and failed logins, invalid or denied users, too many attempts, PAM errors, connections
closed or reset before or after authentication), sudo (commands run, refused or with wrong passwords), su
(switches and failures in the util-linux, shadow and BSD wordings) and PAM (``pam_unix`` authentication
failures, unknown users, sessions opened and closed, in the ``app[pid]: pam_unix(service:type):`` form and the
older ``app(pam_unix)[pid]:`` form).

Who is who: ``user.name`` is the person acting, ``user.effective.name`` the account they act as when it differs
(ECS's sudo example). For sudo and su that is invoker and target; for a PAM message that names a requesting
user (``ruser=``, ``by alice(uid=1000)``) it is that user and the PAM user; otherwise ``user.name`` is the PAM
user or the account an sshd login was for. Remote addresses go to ``source.address`` as written and to
``source.ip`` only when they are IP addresses (sshd can log a mangled ``183.106.179.x``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from security.ecs import ip as ecs_ip

Fields = dict[str, Any]

_AUTH_FAILURE: Fields = {
    "event.category": ["authentication"],
    "event.type": ["info"],
    "event.outcome": "failure",
}
_LOGIN: Fields = {
    "event.category": ["authentication", "session"],
    "event.type": ["start"],
    "event.outcome": "success",
}
_SESSION_START: Fields = {"event.category": ["session"], "event.type": ["start"], "event.outcome": "success"}
_SESSION_END: Fields = {"event.category": ["session"], "event.type": ["end"], "event.outcome": "success"}
_CONNECTION_END: Fields = {"event.category": ["network"], "event.type": ["connection", "end"]}

_USER = r"(?:(?P<invalid>invalid|illegal) user )?(?P<user>.*?)"
_FROM = r" from (?P<ip>\S+?)(?: port (?P<port>\d+))?(?=$|[ :;,])"
_SSHD: list[tuple[re.Pattern[str], str, Fields]] = [
    (re.compile(rf"Accepted (?P<method>\S+) for {_USER}{_FROM}"), "ssh_login", _LOGIN),
    (re.compile(rf"Failed (?P<method>\S+) for {_USER}{_FROM}"), "ssh_login", _AUTH_FAILURE),
    (re.compile(rf"(?P<invalid>Invalid|Illegal) user (?P<user>.*?){_FROM}"), "ssh_invalid_user", _AUTH_FAILURE),
    (re.compile(r"input_userauth_request: (?P<invalid>invalid|illegal) user (?P<user>\S*)"), "ssh_invalid_user", _AUTH_FAILURE),
    (re.compile(rf"Postponed (?P<method>\S+) for (?P<invalid>invalid|illegal) user (?P<user>.*?){_FROM}"), "ssh_invalid_user", _AUTH_FAILURE),
    (re.compile(rf"User (?P<user>\S+){_FROM} not allowed because (?P<reason>.*)"), "ssh_user_denied", _AUTH_FAILURE),
    (re.compile(rf"(?:error: )?maximum authentication attempts exceeded for {_USER}{_FROM}"), "ssh_max_attempts", _AUTH_FAILURE),
    (re.compile(rf"(?:error: )?PAM: (?P<reason>authentication error|User not known to the underlying authentication module|unknown user) for {_USER}{_FROM}"), "ssh_login", _AUTH_FAILURE),
    (re.compile(r"Authentication refused: (?P<reason>.*)"), "ssh_auth_refused", _AUTH_FAILURE),
    (re.compile(r"(?:Connection (?:closed|reset) by|Disconnect(?:ed from|ing)) (?:(?P<invalid>invalid)|authenticating) user (?P<user>.*?) (?P<ip>\S+) port (?P<port>\d+)"), "ssh_disconnect", _AUTH_FAILURE),
    (re.compile(r"Disconnected from user (?P<user>.*?) (?P<ip>\S+) port (?P<port>\d+)"), "ssh_disconnect", _SESSION_END),
    (re.compile(r"(?:Connection (?:closed|reset) by|Disconnected from) (?P<ip>\S+) port (?P<port>\d+)"), "ssh_disconnect", _CONNECTION_END),
]  # fmt: skip
"""Order matters: a specific wording before the general one that would also match it."""

_PAM_PREFIX = re.compile(r"(?P<module>pam_\w+)\((?P<service>[^:)]+):(?P<facility>\w+)\): (?P<text>.*)", re.S)
_PAM_KV = re.compile(r"(\w+)=(\S*)")
_PAM_FAILURES = re.compile(r"(?:\d+ more )?authentication failures?; (?P<pairs>.*)", re.S)
_PAM_SESSION = re.compile(
    r"session (?P<what>opened|closed) for user (?P<user>[^\s(]+)(?:\(uid=\d+\))?(?: by (?P<by>[^\s(]*)\(uid=\d+\))?"
)

_SUDO = re.compile(r"\s*(?P<user>\S+) : (?P<rest>.*)", re.S)
_SUDO_WRONG_PASSWORD = re.compile(r"\d+ incorrect password attempts?")

_SU: list[tuple[re.Pattern[str], Fields]] = [
    (re.compile(r"FAILED SU \(to (?P<target>\S+)\) (?P<user>\S+) on (?P<tty>\S+)"), _AUTH_FAILURE),
    (re.compile(r"\(to (?P<target>\S+)\) (?P<user>\S+) on (?P<tty>\S+)"), _LOGIN),
    (re.compile(r"BAD SU (?P<user>\S+) to (?P<target>\S+)(?: on (?P<tty>\S+))?"), _AUTH_FAILURE),
    (re.compile(r"failed: (?P<tty>\S+) changing from (?P<user>\S+) to (?P<target>\S+)"), _AUTH_FAILURE),
    (re.compile(r"'su (?P<target>\S+)' failed for (?P<user>\S+)(?: on (?P<tty>\S+))?"), _AUTH_FAILURE),
    (re.compile(r"(?P<user>\S+) to (?P<target>\S+) on (?P<tty>\S+)$"), _LOGIN),
]


def interpret(app: str, pam_module: str | None, message: str) -> Fields | None:
    """ECS fields for a message from ``app`` (``pam_module`` from an ``app(pam_unix)`` tag), or None."""
    if pam_module is not None:
        return _pam(pam_module, app, None, message)
    pam = _PAM_PREFIX.match(message)
    if pam is not None:
        return _pam(pam["module"], pam["service"], pam["facility"], pam["text"])
    recogniser = _BY_APP.get(app)
    return recogniser(message) if recogniser is not None else None


def _sshd(message: str) -> Fields | None:
    message = re.sub(r"^\[ID \d+ [\w.]+\] ", "", message)  # Solaris-style message id before the text
    for pattern, action, outcome in _SSHD:
        match = pattern.match(message)
        if match is None:
            continue
        fields = {"event.action": action, **outcome}
        groups = match.groupdict()
        fields["user.name"] = groups.get("user")
        fields |= _address(groups.get("ip"))
        fields["source.port"] = int(groups["port"]) if groups.get("port") else None
        fields["syslog.sshd.method"] = groups.get("method")
        fields["syslog.sshd.invalid_user"] = True if groups.get("invalid") else None
        fields["syslog.sshd.reason"] = groups.get("reason")
        return fields
    return None


def _sudo(message: str) -> Fields | None:
    """``alice : [error ;] TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls``."""
    match = _SUDO.match(message)
    if match is None or "COMMAND=" not in match["rest"]:
        return None
    head, _, command = match["rest"].partition("COMMAND=")  # the command may itself contain " ; "
    pairs: dict[str, str] = {}
    error: str | None = None
    for part in (item.strip() for item in head.split(" ; ")):
        key, equals, value = part.partition("=")
        if equals and key.isupper():
            pairs[key] = value
        elif part:
            error = part
    if error is not None and _SUDO_WRONG_PASSWORD.fullmatch(error):
        fields: Fields = {"event.action": "sudo_auth_failure", **_AUTH_FAILURE}
    else:
        outcome = "failure" if error else "success"
        fields = {"event.action": "sudo_command", "event.category": ["process"], "event.type": ["start"]}
        fields["event.outcome"] = outcome
    fields["user.name"] = match["user"]
    fields["user.effective.name"] = pairs.get("USER")
    fields["process.command_line"] = command.strip()
    fields["process.working_directory"] = pairs.get("PWD")
    fields["syslog.sudo.tty"] = pairs.get("TTY")
    fields["syslog.sudo.error"] = error
    return fields


def _su(message: str) -> Fields | None:
    for pattern, outcome in _SU:
        match = pattern.match(message)
        if match is not None:
            fields = {"event.action": "su", **outcome}
            fields["user.name"] = match["user"]
            fields["user.effective.name"] = match["target"]
            fields["syslog.su.tty"] = match["tty"]
            return fields
    return None


def _pam(module: str, service: str, facility: str | None, text: str) -> Fields | None:
    fields: Fields = {"syslog.pam.module": module, "syslog.pam.service": service, "syslog.pam.type": facility}
    failures = _PAM_FAILURES.match(text)
    if failures is not None:
        pairs = dict(_PAM_KV.findall(failures["pairs"]))
        fields |= {"event.action": "pam_authentication_failure", **_AUTH_FAILURE}
        fields |= _users(requester=pairs.get("ruser"), account=pairs.get("user"))
        fields |= _address(pairs.get("rhost"))
        fields["syslog.pam.tty"] = pairs.get("tty")
        return fields
    if text.startswith("check pass; user unknown"):
        return fields | {"event.action": "pam_unknown_user", **_AUTH_FAILURE}
    session = _PAM_SESSION.match(text)
    if session is not None:
        opened = session["what"] == "opened"
        fields |= {
            "event.action": f"pam_session_{session['what']}",
            **(_SESSION_START if opened else _SESSION_END),
        }
        return fields | _users(requester=session["by"], account=session["user"])
    return None


def _users(*, requester: str | None, account: str | None) -> Fields:
    """The acting user, and the account acted as when someone else asked for it (see the module doc)."""
    if requester and account and requester != account:
        return {"user.name": requester, "user.effective.name": account}
    return {"user.name": account or requester or None}


def _address(address: str | None) -> Fields:
    if not address:
        return {}
    ip = ecs_ip(address)
    return {"source.address": address, "source.ip": ip} if ip else {"source.address": address}


_BY_APP: dict[str, Callable[[str], Fields | None]] = {
    "sshd": _sshd,
    "sshd-session": _sshd,  # OpenSSH 9.8 and later log from a per-session binary of that name
    "sudo": _sudo,
    "su": _su,
}
