"""Keycloak user events (logins, logouts, token and account events) and admin events (user, group, role and
configuration changes) to ECS.

Three shapes are read, one per line (the source is framed as text, and JSON lines are decoded here, because a
Keycloak log file mixes both in practice and plain text is Keycloak's default):

1. A server log line from the ``jboss-logging`` event listener, logger ``org.keycloak.events``, in Keycloak's
   default format ``2024-05-02 09:15:07,123 DEBUG [org.keycloak.events] (executor-thread-1) <message>``. The
   message is ``key=value`` pairs joined by ``", "``: ``type``, ``realmId``, ``realmName``, ``clientId``,
   ``userId``, ``sessionId``, ``ipAddress``, ``error``, then the event details (``auth_method``, ``username``,
   ...); admin events start with ``operationType`` and carry ``resourceType``, ``resourcePath`` and, when
   enabled, ``representation``. By Keycloak 24 values are quoted (``type="LOGIN"``, quote character
   configurable, ``"`` by default) and sanitised (whitespace becomes a space, the quote character is escaped
   with a backslash); older releases wrote ``type=LOGIN, ...`` with values containing a space in single quotes.
   The default text format has no time zone: it is read as UTC, which is what the container images log in.
2. A JSON log record (``--log-console-output=json`` / ``--log-file-output=json``) whose ``message`` is that
   string: Quarkus' default layout (``timestamp``, ``loggerName``, ``level``, ``message``, ``threadName``,
   ``hostName``) or the ECS layout (``@timestamp``, ``log.logger``, ``log.level``, ``host.hostname``).
3. An event as the admin REST API (``GET /admin/realms/{realm}/events`` and ``/admin-events``) or the event
   store returns it: ``EventRepresentation`` (``id``, ``time`` in ms, ``type``, ``realmId``, ``clientId``,
   ``userId``, ``sessionId``, ``ipAddress``, ``error``, ``details``) or ``AdminEventRepresentation`` (``id``,
   ``time``, ``realmId``, ``authDetails``, ``operationType``, ``resourceType``, ``resourcePath``,
   ``representation``, ``error``, ``details``). Send an API dump as NDJSON (``jq -c '.[]'``).

Log records of other loggers (server start-up, warnings) are not events: they yield no document and are not
dead-lettered. Every event is normalised into the shape of Keycloak's own JSON representation under
``keycloak.*`` (so a rule reads ``keycloak.details.username`` whichever way the event arrived); ``cookies``
from TRACE-level messages is dropped as it carries session cookies. ``event.action`` is Keycloak's event type
(``LOGIN_ERROR``), or ``<operationType>-<resourceType>`` (``CREATE-GROUP_MEMBERSHIP``) for admin events, as
Elastic's Keycloak integration writes them. ``event.id`` is Keycloak's event id where the event has one (the
JSON shape); log lines have none and get the intake's.

References: ``JBossLoggingEventListenerProvider`` and ``StringUtil.sanitizeSpacesAndQuotes`` in
keycloak/keycloak (``services/.../events/log``, the quoting and sanitising); the server configuration guide's
``spi-events-listener-jboss-logging-quotes`` / ``-sanitize`` / ``-include-representation`` options; the
logging guide (https://www.keycloak.org/server/logging) for the JSON layout; the javadoc of
``EventRepresentation`` / ``AdminEventRepresentation`` (https://www.keycloak.org/docs-api/latest/javadocs/).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson

from control_plane.core import clock
from security.ecs import get, put
from security.ecs import ip as ecs_ip
from security.sources.base import Adapter, Line, Rejected

EVENTS_LOGGER = "org.keycloak.events"

_TEXT_LINE = re.compile(
    r"^(?P<time>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?)\s+"
    r"(?P<level>[A-Z]+)\s+\[(?P<logger>[^\]]+)\]\s+\((?P<thread>[^)]*)\)\s(?P<message>.*)$"
)
_KEY = re.compile(r"([A-Za-z0-9_.\-]+)=")
_USER_EVENT_KEYS = frozenset(
    {"type", "realmId", "realmName", "clientId", "userId", "sessionId", "ipAddress", "error"}
)
_ADMIN_AUTH_KEYS = frozenset({"realmId", "realmName", "clientId", "userId", "ipAddress"})
_ADMIN_EVENT_KEYS = frozenset({"operationType", "resourceType", "resourcePath", "representation", "error"})
_LOG_ONLY_KEYS = frozenset({"authSessionParentId", "authSessionTabId", "requestUri", "stackTrace"})
_DROPPED_KEYS = frozenset({"cookies"})

_USER_EVENTS: dict[str, tuple[str, str]] = {
    # event type without _ERROR: (event.category, event.type); an "iam" type also gets "user".
    "LOGIN": ("authentication", "start"),
    "CLIENT_LOGIN": ("authentication", "start"),
    "IDENTITY_PROVIDER_LOGIN": ("authentication", "start"),
    "IDENTITY_PROVIDER_FIRST_LOGIN": ("authentication", "start"),
    "IMPERSONATE": ("authentication", "start"),
    "LOGOUT": ("authentication", "end"),
    "CODE_TO_TOKEN": ("authentication", "info"),
    "REFRESH_TOKEN": ("authentication", "info"),
    "TOKEN_EXCHANGE": ("authentication", "info"),
    "INTROSPECT_TOKEN": ("authentication", "info"),
    "REGISTER": ("iam", "creation"),
    "DELETE_ACCOUNT": ("iam", "deletion"),
    "UPDATE_PASSWORD": ("iam", "change"),
    "UPDATE_CREDENTIAL": ("iam", "change"),
    "REMOVE_CREDENTIAL": ("iam", "change"),
    "UPDATE_TOTP": ("iam", "change"),
    "REMOVE_TOTP": ("iam", "change"),
    "UPDATE_PROFILE": ("iam", "change"),
    "UPDATE_EMAIL": ("iam", "change"),
    "RESET_PASSWORD": ("iam", "change"),
}
_OPERATIONS = {"CREATE": "creation", "UPDATE": "change", "DELETE": "deletion", "ACTION": "change"}
_MEMBERSHIP_RESOURCES = frozenset({"GROUP_MEMBERSHIP", "REALM_ROLE_MAPPING", "CLIENT_ROLE_MAPPING"})
_IAM_RESOURCES = frozenset(
    {"USER", "GROUP", "REALM_ROLE", "CLIENT_ROLE", "REALM_SCOPE_MAPPING", "CLIENT_SCOPE_MAPPING"}
)


class KeycloakAdapter(Adapter):
    name: ClassVar[str] = "keycloak"
    dataset: ClassVar[str] = "keycloak.events"
    framing: ClassVar[Literal["json", "text"]] = "text"

    def normalise(self, line: Line) -> list[dict[str, Any]]:
        value = line.value if line.value is not None else _decode(line.text)
        if isinstance(value, Mapping):
            found = _from_json(value)
        elif isinstance(value, str):
            found = _from_text_line(value)
        else:
            raise Rejected(
                f"a Keycloak event is a log line or a JSON object, not a JSON {type(value).__name__}"
            )
        if found is None:
            return []  # a log record of another logger: not an event
        event, moment, log = found
        doc: dict[str, Any] = {"@timestamp": clock.rfc3339(moment)}
        put(doc, "event.kind", "event")
        put(doc, "event.module", "keycloak")
        put(doc, "event.original", line.text)
        put(doc, "event.id", event.get("id"))
        for path, field in log.items():
            put(doc, path, field)
        if "operationType" in event:
            _map_admin_event(doc, event)
        else:
            _map_user_event(doc, event)
        put(doc, "keycloak", event)
        return [doc]


def _decode(text: str) -> Any:
    """A JSON line decoded; any other line as its text."""
    if not text.lstrip().startswith("{"):
        return text.strip()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"invalid JSON: {exc}") from None


def _from_text_line(text: str) -> tuple[dict[str, Any], datetime, dict[str, Any]] | None:
    match = _TEXT_LINE.match(text)
    if match is None:
        raise Rejected(
            "not a Keycloak log line (expected 'yyyy-MM-dd HH:mm:ss,SSS LEVEL [logger] (thread) ...')"
        )
    if match["logger"] != EVENTS_LOGGER:
        return None
    log = {
        "log.level": match["level"].lower(),
        "log.logger": EVENTS_LOGGER,
        "process.thread.name": match["thread"],
    }
    return _event_from_message(match["message"]), _log_time(match["time"]), log


def _from_json(record: Mapping[str, Any]) -> tuple[dict[str, Any], datetime, dict[str, Any]] | None:
    if "type" in record or "operationType" in record:
        millis = record.get("time")
        if not isinstance(millis, int | float) or isinstance(millis, bool):
            raise Rejected("Keycloak event without a numeric time (epoch milliseconds)")
        try:
            moment = clock.from_timestamp(millis / 1000)
        except (OverflowError, OSError, ValueError):
            raise Rejected(f"Keycloak event time {millis!r} is not a time in epoch milliseconds") from None
        return {key: value for key, value in record.items() if value is not None}, moment, {}
    logger = get(record, "loggerName", get(record, "log.logger"))
    if not isinstance(logger, str):
        raise Rejected(
            "neither a Keycloak event (no type or operationType) nor a log record (no logger name)"
        )
    if logger != EVENTS_LOGGER:
        return None
    message, timestamp = record.get("message"), get(record, "timestamp", get(record, "@timestamp"))
    if not isinstance(message, str) or not isinstance(timestamp, str):
        raise Rejected(f"{EVENTS_LOGGER} log record without a message or a timestamp")
    level = get(record, "level", get(record, "log.level"))
    log = {
        "log.level": level.lower() if isinstance(level, str) else None,
        "log.logger": EVENTS_LOGGER,
        "host.name": get(record, "hostName", get(record, "host.hostname")),
        "process.thread.name": get(record, "threadName", get(record, "process.thread.name")),
    }
    return _event_from_message(message), _log_time(timestamp), log


def _log_time(text: str) -> datetime:
    """``2024-05-02 09:15:07,123`` (no zone: UTC) or ISO 8601 with an offset, as the JSON layouts write it."""
    normalised = text.replace(",", ".").replace(" ", "T", 1)
    if re.search(r"[+-]\d{4}$", normalised):
        normalised = f"{normalised[:-2]}:{normalised[-2:]}"
    try:
        moment = datetime.fromisoformat(normalised.replace("Z", "+00:00"))
    except ValueError:
        raise Rejected(f"unreadable Keycloak log timestamp {text!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_message(message: str) -> dict[str, str | None]:
    """The ``key=value`` pairs of an event listener message, in order; ``null`` values are None.

    A value is ``"quoted"`` or ``'quoted'`` (a backslash escapes the quote character), ``[bracketed]``
    (``cookies`` at TRACE level), or bare up to the next ``", "`` (the unquoted format).
    """
    fields: dict[str, str | None] = {}
    position, end = 0, len(message)
    while position < end:
        key = _KEY.match(message, position)
        if key is None:
            raise ValueError(f"expected key=value at character {position + 1}")
        position = key.end()
        opener = message[position : position + 1]
        if opener in ('"', "'"):
            value, position = _quoted(message, position + 1, opener, key[1])
        elif opener == "[":
            close = message.find("]", position)
            close = end - 1 if close < 0 else close
            value, position = message[position : close + 1], close + 1
        else:
            stop = message.find(", ", position)
            stop = end if stop < 0 else stop
            value, position = message[position:stop], stop
        fields[key[1]] = None if value == "null" else value
        if message.startswith(", ", position):
            position += 2
        elif position < end:
            raise ValueError(f"expected ', ' after the value of {key[1]!r}")
    return fields


def _quoted(message: str, position: int, quote: str, key: str) -> tuple[str, int]:
    chars: list[str] = []
    while position < len(message):
        char = message[position]
        if char == "\\" and message[position + 1 : position + 2] == quote:
            chars.append(quote)
            position += 2
        elif char == quote:
            return "".join(chars), position + 1
        else:
            chars.append(char)
            position += 1
    raise ValueError(f"the quoted value of {key!r} is not closed")


def _event_from_message(message: str) -> dict[str, Any]:
    """The listener's message in the shape of Keycloak's JSON representation of the same event."""
    try:
        fields = parse_message(message)
    except ValueError as exc:
        raise Rejected(f"unreadable {EVENTS_LOGGER} message: {exc}") from None
    event: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if "operationType" in fields:
        auth = {key: fields.pop(key) for key in _ADMIN_AUTH_KEYS if key in fields}
        event["authDetails"] = {key: value for key, value in auth.items() if value is not None}
        known = _ADMIN_EVENT_KEYS | _LOG_ONLY_KEYS
    elif "type" in fields:
        known = _USER_EVENT_KEYS | _LOG_ONLY_KEYS
    else:
        raise Rejected(f"{EVENTS_LOGGER} message without type or operationType")
    for key, value in fields.items():
        if value is None or key in _DROPPED_KEYS:
            continue
        (event if key in known else details)[key] = value
    if details:
        event["details"] = details
    return event


def _map_user_event(doc: dict[str, Any], event: Mapping[str, Any]) -> None:
    kind = str(event.get("type", ""))
    failed = kind.endswith("_ERROR") or bool(event.get("error"))
    category, action_type = _USER_EVENTS.get(kind.removesuffix("_ERROR"), ("authentication", "info"))
    put(doc, "event.category", [category])
    put(doc, "event.type", ["user", action_type] if category == "iam" else [action_type])
    put(doc, "event.action", kind)
    put(doc, "event.outcome", "failure" if failed else "success")
    put(doc, "event.reason", event.get("error"))
    details = _object(event.get("details"))
    put(doc, "user.id", event.get("userId"))
    put(doc, "user.name", details.get("username"))
    put(doc, "user.domain", event.get("realmName"))
    put(doc, "source.ip", ecs_ip(event.get("ipAddress")))


def _map_admin_event(doc: dict[str, Any], event: Mapping[str, Any]) -> None:
    operation, resource = str(event.get("operationType", "")), str(event.get("resourceType", ""))
    path = str(event.get("resourcePath") or "").strip("/").split("/")
    on_users, on_groups = path[0] == "users" and len(path) > 1, path[0] == "groups" and len(path) > 1
    change = _OPERATIONS.get(operation, "change")
    if resource in _MEMBERSHIP_RESOURCES:
        types = ["group" if on_groups or resource == "GROUP_MEMBERSHIP" else "user", "change"]
        category = "iam"
    elif resource in _IAM_RESOURCES:
        types = [{"USER": "user", "GROUP": "group"}.get(resource, "admin"), change]
        category = "iam"
    else:
        types, category = [change], "configuration"
    put(doc, "event.category", [category])
    put(doc, "event.type", types)
    put(doc, "event.action", f"{operation}-{resource}")
    put(doc, "event.outcome", "failure" if event.get("error") else "success")
    put(doc, "event.reason", event.get("error"))
    auth = _object(event.get("authDetails"))
    put(doc, "user.id", auth.get("userId"))
    put(doc, "user.domain", auth.get("realmName"))
    put(doc, "source.ip", ecs_ip(auth.get("ipAddress")))
    representation = _representation(event.get("representation"))
    if on_users:
        put(doc, "user.target.id", path[1])
        if resource == "USER" and isinstance(representation, Mapping):
            put(doc, "user.target.name", representation.get("username"))
        if resource == "GROUP_MEMBERSHIP" and len(path) > 3:
            put(doc, "user.target.group.id", path[3])
            if isinstance(representation, Mapping):
                put(doc, "user.target.group.name", representation.get("name"))
        if resource.endswith("_ROLE_MAPPING"):
            put(doc, "user.target.roles", _role_names(representation))
    elif on_groups:
        put(doc, "group.id", path[1])
        if resource == "GROUP" and isinstance(representation, Mapping):
            put(doc, "group.name", representation.get("name"))


def _object(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _representation(value: Any) -> Any:
    """The admin event's JSON representation (a string in both the log and the API), decoded when it parses."""
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None


def _role_names(representation: Any) -> list[str]:
    """The roles a role-mapping event granted or removed: its representation is a list of roles."""
    roles = representation if isinstance(representation, list) else []
    return [role["name"] for role in roles if isinstance(role, Mapping) and isinstance(role.get("name"), str)]
