"""The Wazuh API client against a fake manager whose every request and response is checked against Wazuh's
OpenAPI specification (the excerpt in ``fixtures/``, see its header), not only against what we think it says."""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.exceptions import OpenAPIError
from werkzeug.datastructures import Headers, ImmutableMultiDict

from security.ecs import get
from security.sources import wazuh_api
from security.sources.base import Line
from security.sources.wazuh import WazuhAdapter
from security.sources.wazuh_api import (
    AgentInventory,
    WazuhApiClient,
    WazuhApiError,
    WazuhApiSettings,
    WazuhAuthError,
)

EXCERPT = Path(__file__).parent / "fixtures" / "wazuh_api_spec_excerpt.yaml"
URL = "https://wazuh.test:55000"
USER, PASSWORD = "wazuh-wui", "S3cret.Pass"
SIGNING_KEY = "fake-manager-signing-key-of-32-bytes!"
SPEC = OpenAPI.from_dict(yaml.safe_load(EXCERPT.read_text()))


class _Request:
    """An httpx request as openapi-core's ``Request`` protocol wants it."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(request.url.params.multi_items()),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict(),
        )
        self.host_url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.path = request.url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "")


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "")
        self.headers = Headers(dict(response.headers))
        self.data = response.content


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _agent(number: int) -> dict[str, Any]:
    return {
        "id": f"{number:03d}",
        "name": f"proc-node-{number}",
        "ip": f"10.0.0.{number}" if number else "127.0.0.1",
        "status": "active",
        "version": "Wazuh v4.12.0",
        "registerIP": "any",
        "group": ["default"],
        "os": {
            "arch": "x86_64",
            "name": "Ubuntu",
            "platform": "ubuntu",
            "version": "22.04.4 LTS",
            "uname": f"Linux |proc-node-{number} |5.15.0-105-generic |#115-Ubuntu SMP |x86_64",
        },
        "status_code": 0,
    }


class FakeManager:
    """A Wazuh manager's API as far as the client uses it. Every request is validated against the
    specification before it is answered, and every answer before it is returned."""

    def __init__(self, clock: Clock, agents: int = 7, token_lifetime_s: int = 900) -> None:
        self.clock = clock
        self.agents = [_agent(number) for number in range(agents)]
        self.token_lifetime_s = token_lifetime_s
        self.revoked_before = 0.0
        self.refuse_all_tokens = False
        self.requests: list[httpx.Request] = []
        self.logins = 0
        self.unauthorized = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        SPEC.validate_request(_Request(request))
        self.requests.append(request)
        if request.url.path == "/security/user/authenticate":
            response = self._authenticate(request)
        else:
            response = self._agents(request)
        response.request = request
        SPEC.validate_response(_Request(request), _Response(response))
        return response

    def _authenticate(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != httpx.BasicAuth(USER, PASSWORD)._auth_header:
            return httpx.Response(401, json={"title": "Unauthorized", "detail": "Invalid credentials"})
        self.logins += 1
        claims = {"iss": "wazuh", "sub": "d3p1", "iat": int(self.clock.now), "nbf": int(self.clock.now)}
        if self.token_lifetime_s:
            claims["exp"] = int(self.clock.now) + self.token_lifetime_s
        token = jwt.encode(claims, SIGNING_KEY, algorithm="HS256")
        return httpx.Response(200, json={"data": {"token": token}, "error": 0})

    def _agents(self, request: httpx.Request) -> httpx.Response:
        if not self._token_valid(request.headers.get("authorization", "")):
            self.unauthorized += 1
            return httpx.Response(401, json={"title": "Unauthorized", "detail": "Invalid token"})
        offset = int(request.url.params.get("offset", 0))
        limit = int(request.url.params.get("limit", 500))
        selected = request.url.params.get("select", "").split(",")
        page = [_select(agent, selected) for agent in self.agents[offset : offset + limit]]
        data = {
            "affected_items": page,
            "total_affected_items": len(self.agents),
            "total_failed_items": 0,
            "failed_items": [],
        }
        return httpx.Response(
            200, json={"data": data, "message": "All selected agents information was returned", "error": 0}
        )

    def _token_valid(self, header: str) -> bool:
        if self.refuse_all_tokens or not header.startswith("Bearer "):
            return False
        try:
            claims = jwt.decode(
                header.removeprefix("Bearer "),
                SIGNING_KEY,
                algorithms=["HS256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return False
        if "exp" in claims and claims["exp"] <= self.clock.now:  # the fake's clock, not the wall clock
            return False
        return bool(claims["iat"] >= self.revoked_before)


def _select(agent: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Wazuh's ``select``: the named fields (``os.name`` is nested) plus the agent id."""
    picked: dict[str, Any] = {"id": agent["id"]}
    for name in filter(None, fields):
        head, _, rest = name.partition(".")
        if rest and isinstance(agent.get(head), dict) and rest in agent[head]:
            picked.setdefault(head, {})[rest] = agent[head][rest]
        elif not rest and head in agent:
            picked[head] = agent[head]
    return picked


def _client(manager: FakeManager, clock: Clock, **settings: Any) -> WazuhApiClient:
    return WazuhApiClient(
        WazuhApiSettings(url=URL, username=USER, password=PASSWORD, **settings),
        transport=manager.transport(),
        clock=clock,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(clock: Clock) -> FakeManager:
    return FakeManager(clock)


class TestSpecificationHarness:
    def test_a_response_off_the_schema_is_caught(self, clock: Clock) -> None:
        """The fake's answers are really checked: an agent id that is a number, or an unknown status, fails."""
        broken = FakeManager(clock)
        broken.agents[0]["id"] = 0
        broken.agents[1]["status"] = "online"
        with _client(broken, clock) as client, pytest.raises(OpenAPIError):
            list(client.agents())

    def test_a_request_without_a_bearer_token_is_caught(self, manager: FakeManager) -> None:
        with pytest.raises(OpenAPIError):
            manager.handle(httpx.Request("GET", f"{URL}/agents"))

    def test_excerpt_matches_the_published_specification(self) -> None:
        full = os.environ.get("REFSYS_WAZUH_SPEC")
        if not full:
            pytest.skip("opt-in: set REFSYS_WAZUH_SPEC to api/api/spec/spec.yaml of a wazuh/wazuh checkout")
        published = yaml.safe_load(Path(full).read_text())
        excerpt = yaml.safe_load(EXCERPT.read_text())
        for section in ("schemas", "parameters", "securitySchemes"):
            for name, schema in excerpt["components"][section].items():
                assert _bare(published["components"][section][name]) == _bare(schema), f"{section}/{name}"
        for path, methods in excerpt["paths"].items():
            for method, operation in methods.items():
                upstream = published["paths"][path][method]
                assert upstream["operationId"] == operation["operationId"]
                assert all(parameter in upstream["parameters"] for parameter in operation["parameters"])
                assert _bare(upstream["responses"]["200"]["content"]["application/json"]["schema"]) == _bare(
                    operation["responses"]["200"]["content"]["application/json"]["schema"]
                )


def _bare(node: Any) -> Any:
    """A schema without its prose (what the excerpt leaves out)."""
    if isinstance(node, dict):
        return {
            key: _bare(value)
            for key, value in node.items()
            if key not in {"description", "example", "x-basicInfoFunc", "x-bearerInfoFunc"}
        }
    if isinstance(node, list):
        return [_bare(item) for item in node]
    return node


class TestAuthentication:
    def test_basic_auth_for_the_token_then_bearer(self, manager: FakeManager, clock: Clock) -> None:
        with _client(manager, clock) as client:
            list(client.agents())
        login, first_page = manager.requests[0], manager.requests[1]
        assert (login.method, login.url.path) == ("POST", "/security/user/authenticate")
        assert login.headers["authorization"].startswith("Basic ")
        assert first_page.headers["authorization"].startswith("Bearer ")
        assert PASSWORD not in first_page.headers["authorization"]

    def test_wrong_credentials(self, manager: FakeManager, clock: Clock) -> None:
        client = WazuhApiClient(
            WazuhApiSettings(url=URL, username=USER, password="wrong"),
            transport=manager.transport(),
            clock=clock,
        )
        with client, pytest.raises(WazuhAuthError, match="refused the credentials of user 'wazuh-wui'"):
            list(client.agents())

    def test_token_is_reused_until_it_nears_its_exp(self, manager: FakeManager, clock: Clock) -> None:
        with _client(manager, clock, token_refresh_margin_s=30) as client:
            list(client.agents())
            clock.now += 860  # 40 s before exp: still good
            list(client.agents())
            assert manager.logins == 1
            clock.now += 20  # 20 s before exp: inside the margin, so log in first rather than race the expiry
            list(client.agents())
        assert manager.logins == 2
        assert manager.unauthorized == 0

    def test_token_without_exp_is_given_wazuhs_default_lifetime(self, clock: Clock) -> None:
        manager = FakeManager(clock, token_lifetime_s=0)
        with _client(manager, clock) as client:
            list(client.agents())
            clock.now += 900 - 31
            list(client.agents())
            assert manager.logins == 1
            clock.now += 2
            list(client.agents())
        assert manager.logins == 2

    def test_revoked_token_logs_in_again_and_retries_once(self, manager: FakeManager, clock: Clock) -> None:
        with _client(manager, clock) as client:
            list(client.agents())
            clock.now += 60
            manager.revoked_before = clock.now  # e.g. PUT /security/config revokes every token
            clock.now += 1
            agents = list(client.agents())
        assert len(agents) == 7
        assert (manager.logins, manager.unauthorized) == (2, 1)

    def test_a_second_401_is_not_retried_again(self, manager: FakeManager, clock: Clock) -> None:
        manager.refuse_all_tokens = True
        with _client(manager, clock) as client, pytest.raises(WazuhAuthError, match="refused a fresh token"):
            list(client.agents())
        assert (manager.logins, manager.unauthorized) == (2, 2)

    def test_server_error_is_reported_without_secrets(self, clock: Clock) -> None:
        def failing(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/security/user/authenticate":
                return httpx.Response(200, json={"data": {"token": "not-a-jwt"}, "error": 0})
            return httpx.Response(500, json={"title": "Wazuh Error", "detail": "x" * 1000})

        client = WazuhApiClient(
            WazuhApiSettings(url=URL, username=USER, password=PASSWORD),
            transport=httpx.MockTransport(failing),
        )
        with client, pytest.raises(WazuhApiError, match="answered 500: Wazuh Error") as caught:
            list(client.agents())
        assert caught.value.status == 500
        assert len(str(caught.value)) < 400
        assert PASSWORD not in str(caught.value)


class TestPaging:
    def test_every_page_with_offset_limit_and_select(self, manager: FakeManager, clock: Clock) -> None:
        with _client(manager, clock, page_size=3) as client:
            agents = list(client.agents())
        assert [agent.id for agent in agents] == ["000", "001", "002", "003", "004", "005", "006"]
        pages = [request for request in manager.requests if request.url.path == "/agents"]
        assert [(r.url.params["offset"], r.url.params["limit"]) for r in pages] == [
            ("0", "3"),
            ("3", "3"),
            ("6", "3"),
        ]
        assert pages[0].url.params["select"] == "name,ip,os.name,os.platform,os.version,os.arch,os.uname"
        assert agents[1].name == "proc-node-1"
        assert agents[1].os["version"] == "22.04.4 LTS"

    def test_empty_inventory(self, clock: Clock) -> None:
        manager = FakeManager(clock, agents=0)
        with _client(manager, clock) as client:
            assert list(client.agents()) == []


class TestTls:
    def test_verification_is_on_by_default(self) -> None:
        assert wazuh_api.tls_verify(WazuhApiSettings(url=URL, username=USER, password=PASSWORD)) is True

    def test_ca_bundle_is_loaded(self, tmp_path: Path) -> None:
        bundle = _self_signed_ca(tmp_path / "root-ca.pem")
        context = wazuh_api.tls_verify(
            WazuhApiSettings(url=URL, username=USER, password=PASSWORD, ca_bundle=bundle)
        )
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert [dict(item[0] for item in ca["subject"]) for ca in context.get_ca_certs()] == [
            {"commonName": "wazuh-root-ca"}
        ]

    def test_off_only_when_configured_and_then_loudly(self, caplog: pytest.LogCaptureFixture) -> None:
        settings = WazuhApiSettings(url=URL, username=USER, password=PASSWORD, insecure_skip_tls_verify=True)
        with caplog.at_level(logging.WARNING, logger=wazuh_api.__name__):
            assert wazuh_api.tls_verify(settings) is False
        assert "verification of the Wazuh API at https://wazuh.test:55000 is OFF" in caplog.text

    def test_contradicting_settings_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="contradict"):
            WazuhApiSettings(
                url=URL, username=USER, password=PASSWORD, ca_bundle=tmp_path, insecure_skip_tls_verify=True
            )

    def test_client_is_built_with_the_tls_choice_and_port_55000(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        built: dict[str, Any] = {}

        class RecordingClient(httpx.Client):
            def __init__(self, **kwargs: Any) -> None:
                built.update(kwargs)
                super().__init__(**kwargs)

        monkeypatch.setattr(wazuh_api.httpx, "Client", RecordingClient)
        bundle = _self_signed_ca(tmp_path / "root-ca.pem")
        settings = WazuhApiSettings(
            url="https://wazuh.test", username=USER, password=PASSWORD, ca_bundle=bundle
        )
        with WazuhApiClient(settings):
            pass
        assert isinstance(built["verify"], ssl.SSLContext)
        assert str(built["base_url"]) == "https://wazuh.test:55000"
        assert repr(settings).count(PASSWORD) == 0


def _self_signed_ca(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wazuh-root-ca")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _normalised_alert(agent_id: str, **alert: Any) -> dict[str, Any]:
    value = {
        "timestamp": "2024-03-01T08:00:00.000+0000",
        "rule": {"id": "5710", "level": 5, "description": "sshd: Attempt to login using a non-existent user"},
        "agent": {"id": agent_id, "name": f"proc-node-{int(agent_id)}"},
        "manager": {"name": "wazuh-master"},
        "id": "1709280000.1",
        **alert,
    }
    return WazuhAdapter().normalise(Line(1, b"{}", value))[0]


class TestAgentInventory:
    def test_enrich_fills_host_os_from_the_agent(self, manager: FakeManager, clock: Clock) -> None:
        inventory = AgentInventory(_client(manager, clock), clock=Ticker())
        doc = inventory.enrich(_normalised_alert("003"))
        assert get(doc, "host.name") == "proc-node-3"
        assert get(doc, "host.ip") == ["10.0.0.3"]
        assert get(doc, "host.os.name") == "Ubuntu"
        assert get(doc, "host.os.version") == "22.04.4 LTS"
        assert get(doc, "host.os.platform") == "ubuntu"
        assert get(doc, "host.os.type") == "linux"
        assert get(doc, "host.os.kernel") == "5.15.0-105-generic"
        assert get(doc, "host.architecture") == "x86_64"

    def test_what_the_alert_says_wins(self, manager: FakeManager, clock: Clock) -> None:
        inventory = AgentInventory(_client(manager, clock), clock=Ticker())
        doc = _normalised_alert("003", agent={"id": "003", "name": "renamed-since", "ip": "192.0.2.7"})
        inventory.enrich(doc)
        assert get(doc, "host.name") == "renamed-since"
        assert get(doc, "host.ip") == ["192.0.2.7"]
        assert get(doc, "host.os.name") == "Ubuntu"

    def test_unknown_agent_is_left_alone(self, manager: FakeManager, clock: Clock) -> None:
        inventory = AgentInventory(_client(manager, clock), clock=Ticker())
        doc = _normalised_alert("042")
        assert inventory.enrich(doc)["host"] == {"name": "proc-node-42"}

    def test_cached_for_the_ttl(self, manager: FakeManager, clock: Clock) -> None:
        ticker = Ticker()
        inventory = AgentInventory(_client(manager, clock), ttl_s=300, clock=ticker)
        assert inventory.get("001") is not None
        ticker.now += 299
        manager.agents.append(_agent(7))
        assert inventory.get("007") is None
        ticker.now += 1
        assert inventory.get("007") is not None
        assert sum(request.url.path == "/agents" for request in manager.requests) == 2

    def test_failed_refresh_keeps_the_last_inventory(
        self, manager: FakeManager, clock: Clock, caplog: pytest.LogCaptureFixture
    ) -> None:
        ticker = Ticker()
        inventory = AgentInventory(_client(manager, clock), ttl_s=300, clock=ticker)
        assert inventory.get("002") is not None
        manager.refuse_all_tokens = True
        ticker.now += 301
        with caplog.at_level(logging.WARNING, logger=wazuh_api.__name__):
            assert inventory.get("002") is not None
        assert "keeping 7 agents" in caplog.text

    def test_first_load_failure_propagates(self, manager: FakeManager, clock: Clock) -> None:
        manager.refuse_all_tokens = True
        inventory = AgentInventory(_client(manager, clock), clock=Ticker())
        with pytest.raises(WazuhAuthError):
            inventory.get("001")


def test_an_explicit_port_is_kept() -> None:
    assert urlsplit(str(wazuh_api.base_url("https://wazuh.example:8443"))).port == 8443
