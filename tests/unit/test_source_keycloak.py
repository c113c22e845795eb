"""The Keycloak adapter on our own samples, written after the formats Keycloak documents and its source writes
(see the module docstring of ``security.sources.keycloak``): listener log lines (quoted and unquoted), JSON log
records (Quarkus and ECS layouts), and the admin REST API's event JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from security.ecs import get
from security.intake.framing import FramedLine, frame
from security.sources.base import Line, Parsed, Rejected, Rejection
from security.sources.keycloak import KeycloakAdapter, parse_message
from security.sources.registry import adapter_for

REALM = "4c5e0a4e-1c2b-4a8e-9f41-0c8d6b2e7a10"
MASTER = "0d3c9a55-7e1f-4b0c-a3d2-5f6e7a8b9c01"
ALICE = "9b1f6c3d-2e4a-4f7b-8c9d-1a2b3c4d5e6f"
ADMIN = "7c8c3984-477c-4ab0-8644-f19c6d159a4b"
SESSION = "e2b7c1d0-5a6f-4e3d-9c8b-7a6f5e4d3c2b"

LOGIN_MESSAGE = (
    f'type="LOGIN", realmId="{REALM}", realmName="refsys", clientId="refsys-console", userId="{ALICE}", '
    f'sessionId="{SESSION}", ipAddress="192.0.2.10", auth_method="openid-connect", auth_type="code", '
    'response_type="code", redirect_uri="https://refsys.example/ui/callback", consent="no_consent_required", '
    f'code_id="{SESSION}", username="alice", response_mode="query", authSessionParentId="{SESSION}", '
    'authSessionTabId="x1Y2z3"'
)
LOGIN_LINE = f"2024-05-02 09:15:07,123 DEBUG [org.keycloak.events] (executor-thread-3) {LOGIN_MESSAGE}"
LOGIN_ERROR_LINE = (
    "2024-05-02 09:16:40,002 WARN  [org.keycloak.events] (executor-thread-7) "
    f'type="LOGIN_ERROR", realmId="{REALM}", realmName="refsys", clientId="refsys-console", userId="null", '
    'ipAddress="198.51.100.23", error="user_not_found", auth_method="openid-connect", auth_type="code", '
    'redirect_uri="https://refsys.example/ui/callback", code_id="c0de", username="mallory", '
    'authSessionParentId="c0de", authSessionTabId="tab1"'
)
UNQUOTED_LOGOUT_LINE = (
    "2023-06-01 12:00:00,001 INFO  [org.keycloak.events] (default task-6) "
    f"type=LOGOUT, realmId=refsys, clientId=null, userId={ALICE}, ipAddress=192.0.2.10, "
    "redirect_uri=https://refsys.example/ui/, username='Alice Example'"
)
ROLE_GRANT_MESSAGE = (
    f'operationType="CREATE", realmId="{MASTER}", realmName="master", clientId="security-admin-console", '
    f'userId="{ADMIN}", ipAddress="192.0.2.44", resourceType="REALM_ROLE_MAPPING", '
    f'resourcePath="users/{ALICE}/role-mappings/realm", representation="[{{\\"id\\":\\"r-1\\",'
    f'\\"name\\":\\"refsys-admin\\",\\"composite\\":false,\\"clientRole\\":false,\\"containerId\\":\\"{REALM}\\"}}]"'
)
STARTUP_LINE = "2024-05-02 09:00:01,000 INFO  [io.quarkus] (main) Keycloak 26.0.5 on JVM (powered by Quarkus 3.15.1) started"


def _quarkus_json(message: str, *, logger: str = "org.keycloak.events") -> str:
    return json.dumps(
        {
            "timestamp": "2024-05-02T11:15:07.123+02:00",
            "sequence": 8442,
            "loggerClassName": "org.jboss.logging.Logger",
            "loggerName": logger,
            "level": "DEBUG",
            "message": message,
            "threadName": "executor-thread-3",
            "threadId": 57,
            "mdc": {},
            "ndc": "",
            "hostName": "keycloak-0",
            "processName": "QuarkusEntryPoint",
            "processId": 1,
        }
    )


def _ecs_json(message: str) -> str:
    return json.dumps(
        {
            "@timestamp": "2024-05-02T09:20:00.5Z",
            "log.level": "DEBUG",
            "log.logger": "org.keycloak.events",
            "message": message,
            "process.thread.name": "executor-thread-9",
            "host.hostname": "keycloak-1",
        }
    )


API_LOGIN_ERROR = {
    "id": "3f0c2b1a-9d8e-4c7b-a6f5-e4d3c2b1a098",
    "time": 1714641400002,
    "type": "LOGIN_ERROR",
    "realmId": REALM,
    "clientId": "refsys-console",
    "ipAddress": "198.51.100.23",
    "error": "invalid_user_credentials",
    "details": {"auth_method": "openid-connect", "auth_type": "code", "username": "bob"},
}
API_GROUP_MEMBERSHIP = {
    "id": "5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d",
    "time": 1714641500000,
    "realmId": REALM,
    "authDetails": {"realmId": MASTER, "clientId": "c-1", "userId": ADMIN, "ipAddress": "192.0.2.44"},
    "operationType": "CREATE",
    "resourceType": "GROUP_MEMBERSHIP",
    "resourcePath": f"users/{ALICE}/groups/g-456",
    "representation": json.dumps({"id": "g-456", "name": "operators", "path": "/operators"}),
}


def _lines(*texts: str) -> list[Line]:
    """Our samples framed by the intake's own text framing: one line each, no decoded value."""
    framed = [item for item in frame("\n".join(texts).encode(), "text") if isinstance(item, FramedLine)]
    assert len(framed) == len(texts)
    return [item.line for item in framed]


def _one(text: str) -> dict[str, Any]:
    docs = KeycloakAdapter().normalise(_lines(text)[0])
    assert len(docs) == 1
    return docs[0]


class TestListenerLogLines:
    def test_login(self) -> None:
        doc = _one(LOGIN_LINE)
        assert doc["@timestamp"] == "2024-05-02T09:15:07.123000Z"
        assert get(doc, "event.kind") == "event"
        assert get(doc, "event.module") == "keycloak"
        assert get(doc, "event.original") == LOGIN_LINE
        assert get(doc, "event.category") == ["authentication"]
        assert get(doc, "event.type") == ["start"]
        assert get(doc, "event.action") == "LOGIN"
        assert get(doc, "event.outcome") == "success"
        assert get(doc, "user.name") == "alice"
        assert get(doc, "user.id") == ALICE
        assert get(doc, "user.domain") == "refsys"
        assert get(doc, "source.ip") == "192.0.2.10"
        assert get(doc, "log.level") == "debug"
        assert get(doc, "process.thread.name") == "executor-thread-3"
        assert get(doc, "event.id") is None  # a log line has no id: the intake derives one from its place
        assert get(doc, "keycloak.clientId") == "refsys-console"
        assert get(doc, "keycloak.sessionId") == SESSION
        assert get(doc, "keycloak.details.auth_method") == "openid-connect"
        assert get(doc, "keycloak.details.redirect_uri") == "https://refsys.example/ui/callback"
        assert get(doc, "keycloak.authSessionTabId") == "x1Y2z3"

    def test_login_error_of_an_unknown_user(self) -> None:
        doc = _one(LOGIN_ERROR_LINE)
        assert get(doc, "event.outcome") == "failure"
        assert get(doc, "event.action") == "LOGIN_ERROR"
        assert get(doc, "event.reason") == "user_not_found"
        assert get(doc, "user.name") == "mallory"
        assert get(doc, "user.id") is None  # userId="null"
        assert get(doc, "keycloak.error") == "user_not_found"
        assert get(doc, "log.level") == "warn"

    def test_unquoted_format_of_older_releases(self) -> None:
        doc = _one(UNQUOTED_LOGOUT_LINE)
        assert doc["@timestamp"] == "2023-06-01T12:00:00.001000Z"
        assert (get(doc, "event.category"), get(doc, "event.type")) == (["authentication"], ["end"])
        assert get(doc, "user.name") == "Alice Example"
        assert get(doc, "keycloak.realmId") == "refsys"
        assert "clientId" not in doc["keycloak"]

    def test_admin_event_with_representation(self) -> None:
        doc = _one(
            f"2024-05-02 09:30:00,000 DEBUG [org.keycloak.events] (executor-thread-2) {ROLE_GRANT_MESSAGE}"
        )
        assert get(doc, "event.category") == ["iam"]
        assert get(doc, "event.type") == ["user", "change"]
        assert get(doc, "event.action") == "CREATE-REALM_ROLE_MAPPING"
        assert get(doc, "user.id") == ADMIN
        assert get(doc, "user.domain") == "master"
        assert get(doc, "source.ip") == "192.0.2.44"
        assert get(doc, "user.target.id") == ALICE
        assert get(doc, "user.target.roles") == ["refsys-admin"]
        assert get(doc, "keycloak.authDetails.realmId") == MASTER
        assert get(doc, "keycloak.resourcePath") == f"users/{ALICE}/role-mappings/realm"
        assert json.loads(get(doc, "keycloak.representation"))[0]["name"] == "refsys-admin"

    def test_other_loggers_are_not_events(self) -> None:
        assert KeycloakAdapter().normalise(_lines(STARTUP_LINE)[0]) == []


class TestJsonLogRecords:
    def test_quarkus_layout_carries_the_offset(self) -> None:
        doc = _one(_quarkus_json(LOGIN_MESSAGE))
        assert doc["@timestamp"] == "2024-05-02T09:15:07.123000Z"
        assert get(doc, "host.name") == "keycloak-0"
        assert get(doc, "log.logger") == "org.keycloak.events"

    def test_same_event_same_native_shape_as_the_text_line(self) -> None:
        assert _one(_quarkus_json(LOGIN_MESSAGE))["keycloak"] == _one(LOGIN_LINE)["keycloak"]

    def test_ecs_layout(self) -> None:
        doc = _one(_ecs_json(ROLE_GRANT_MESSAGE))
        assert doc["@timestamp"] == "2024-05-02T09:20:00.500000Z"
        assert get(doc, "host.name") == "keycloak-1"
        assert get(doc, "process.thread.name") == "executor-thread-9"
        assert get(doc, "user.target.roles") == ["refsys-admin"]

    def test_other_loggers_are_not_events(self) -> None:
        record = _quarkus_json("Keycloak 26.0.5 on JVM started in 3.253s", logger="io.quarkus")
        assert KeycloakAdapter().normalise(_lines(record)[0]) == []


class TestApiEventJson:
    def test_user_event(self) -> None:
        doc = _one(json.dumps(API_LOGIN_ERROR))
        assert doc["@timestamp"] == "2024-05-02T09:16:40.002000Z"
        assert get(doc, "event.id") == API_LOGIN_ERROR["id"]
        assert get(doc, "event.outcome") == "failure"
        assert get(doc, "event.reason") == "invalid_user_credentials"
        assert get(doc, "user.name") == "bob"
        assert get(doc, "source.ip") == "198.51.100.23"
        assert get(doc, "keycloak.details.auth_type") == "code"

    def test_group_membership(self) -> None:
        doc = _one(json.dumps(API_GROUP_MEMBERSHIP))
        assert (get(doc, "event.category"), get(doc, "event.type")) == (["iam"], ["group", "change"])
        assert get(doc, "event.action") == "CREATE-GROUP_MEMBERSHIP"
        assert get(doc, "event.outcome") == "success"
        assert get(doc, "user.id") == ADMIN
        assert get(doc, "user.target.id") == ALICE
        assert get(doc, "user.target.group.id") == "g-456"
        assert get(doc, "user.target.group.name") == "operators"

    @pytest.mark.parametrize(
        ("changes", "category", "types", "outcome"),
        [
            ({"resourceType": "USER", "operationType": "DELETE", "error": "unknown_error"}, "iam", ["user", "deletion"], "failure"),
            ({"resourceType": "CLIENT", "operationType": "UPDATE", "resourcePath": "clients/c-9"}, "configuration", ["change"], "success"),
            ({"resourceType": "REALM_ROLE", "operationType": "CREATE", "resourcePath": "roles/auditor"}, "iam", ["admin", "creation"], "success"),
            ({"resourceType": "CLIENT_ROLE_MAPPING", "resourcePath": "groups/g-1/role-mappings/clients/c-1"}, "iam", ["group", "change"], "success"),
        ],
    )  # fmt: skip
    def test_admin_event_categories(
        self, changes: dict[str, Any], category: str, types: list[str], outcome: str
    ) -> None:
        doc = _one(json.dumps({**API_GROUP_MEMBERSHIP, "representation": None, **changes}))
        assert (get(doc, "event.category"), get(doc, "event.type"), get(doc, "event.outcome")) == (
            [category],
            types,
            outcome,
        )

    def test_new_user_is_named_from_its_representation(self) -> None:
        created = {
            **API_GROUP_MEMBERSHIP,
            "resourceType": "USER",
            "resourcePath": "users/u-new",
            "representation": json.dumps({"username": "carol", "enabled": True}),
        }
        doc = _one(json.dumps(created))
        assert (get(doc, "user.target.id"), get(doc, "user.target.name")) == ("u-new", "carol")
        assert get(doc, "event.type") == ["user", "creation"]

    def test_ids_are_stable(self) -> None:
        line = _lines(json.dumps(API_GROUP_MEMBERSHIP))[0]
        assert KeycloakAdapter().normalise(line) == KeycloakAdapter().normalise(line)
        assert get(KeycloakAdapter().normalise(line)[0], "event.id") == API_GROUP_MEMBERSHIP["id"]


class TestMessageParser:
    def test_escaped_quote_and_sanitised_value(self) -> None:
        fields = parse_message('type="LOGIN", username="o\\"brien", redirect_uri="a, b", userId="null"')
        assert fields == {"type": "LOGIN", "username": 'o"brien', "redirect_uri": "a, b", "userId": None}

    def test_single_quote_configuration(self) -> None:
        assert parse_message("type='LOGIN', username='al ice'") == {"type": "LOGIN", "username": "al ice"}

    def test_trace_cookies_are_bracketed_and_dropped(self) -> None:
        doc = _one(f'{LOGIN_LINE}, requestUri="https://kc/x", cookies=[KEYCLOAK_SESSION=secret, AUTH=abc]')
        assert "cookies" not in doc["keycloak"] and "cookies" not in doc["keycloak"].get("details", {})
        assert get(doc, "keycloak.requestUri") == "https://kc/x"

    @pytest.mark.parametrize("message", ['type="LOGIN', 'type="LOGIN" realmId="x"', "garbage"])
    def test_unreadable(self, message: str) -> None:
        with pytest.raises(ValueError):
            parse_message(message)


class TestSampleFile:
    def test_counts(self) -> None:
        sample = [
            STARTUP_LINE,
            LOGIN_LINE,
            LOGIN_ERROR_LINE,
            UNQUOTED_LOGOUT_LINE,
            _quarkus_json(LOGIN_MESSAGE),
            _ecs_json(ROLE_GRANT_MESSAGE),
            json.dumps(API_LOGIN_ERROR),
            json.dumps(API_GROUP_MEMBERSHIP),
            "16:30:11,662 INFO  [org.keycloak.events] (default task-6) type=LOGIN, realmId=master",  # no date
            '{"type": "LOGIN", "realmId": "x"}',  # API shape without its time
            '{"level": "INFO", "message": "hello"}',  # neither an event nor a log record
            '{"type": ',  # broken JSON
            "2024-05-02 09:15:07,123 DEBUG [org.keycloak.events] (t) realmId=x, clientId=y",
        ]
        outcomes = list(KeycloakAdapter().parse(_lines(*sample)))
        parsed = [outcome for outcome in outcomes if isinstance(outcome, Parsed)]
        rejected = [outcome for outcome in outcomes if isinstance(outcome, Rejection)]
        assert (len(parsed), len(rejected)) == (7, 5)  # and the start-up line is skipped, not dead-lettered
        reasons = {rejection.line.number: rejection.reason for rejection in rejected}
        assert "not a Keycloak log line" in reasons[9]
        assert "without a numeric time" in reasons[10]
        assert "no logger name" in reasons[11]
        assert "invalid JSON" in reasons[12]
        assert "without type or operationType" in reasons[13]

    def test_time_out_of_range(self) -> None:
        with pytest.raises(Rejected, match="not a time in epoch milliseconds"):
            _one(json.dumps({**API_LOGIN_ERROR, "time": 10**30}))

    def test_not_an_object(self) -> None:
        with pytest.raises(Rejected, match="not a JSON list"):
            KeycloakAdapter().normalise(Line(1, b"[]", []))


def test_registered() -> None:
    assert isinstance(adapter_for("keycloak"), KeycloakAdapter)
