"""A small client of the Wazuh manager API (port 55000): the agent inventory, to enrich Wazuh alerts.

An alert names its agent (``agent.id``, ``agent.name``, sometimes ``agent.ip``) but never the agent's operating
system; the manager's ``GET /agents`` knows it. ``AgentInventory`` keeps that list in memory for a TTL and
``AgentInventory.enrich`` fills ``host.name`` / ``host.ip`` / ``host.os.*`` / ``host.architecture`` of a
normalised Wazuh event from it, without overwriting what the alert itself said.

Authentication follows the Wazuh API: ``POST /security/user/authenticate`` with HTTP basic auth returns a JWT in
``data.token``; later calls carry it as a bearer token. The token lives ``auth_token_exp_timeout`` seconds (900 by
default), so the client logs in again shortly before the token's ``exp`` and, should the manager revoke it
earlier (any change to its security configuration does), once more after a 401 before giving up.

Wazuh installs a self-signed certificate: point ``ca_bundle`` at the manager's root CA (``root-ca.pem``).
Verification is only ever off when ``insecure_skip_tls_verify`` says so, and then every client warns.
The endpoints and fields used here follow Wazuh's OpenAPI specification (``api/api/spec/spec.yaml``); the tests
check requests and responses against an excerpt of it (``tests/unit/fixtures/wazuh_api_spec_excerpt.yaml``).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import jwt

from security import ecs
from security.ecs import ip as ecs_ip

log = logging.getLogger(__name__)

DEFAULT_PORT = 55000
AUTHENTICATE_PATH = "/security/user/authenticate"
AGENTS_PATH = "/agents"
AGENT_FIELDS = ("name", "ip", "os.name", "os.platform", "os.version", "os.arch", "os.uname")
"""What ``GET /agents`` is asked to ``select``; Wazuh always adds the agent ``id``."""
DEFAULT_TOKEN_LIFETIME_S = 900.0
"""Wazuh's default ``auth_token_exp_timeout``: assumed when a token carries no readable ``exp``."""
MAX_ERROR_TEXT = 256
"""Error bodies are cut to this many characters before they reach an exception or a log line."""
_OS_TYPES = {"windows": "windows", "darwin": "macos"}


class WazuhApiError(Exception):
    """The Wazuh API answered with an error, or with something that is not the documented response."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WazuhAuthError(WazuhApiError):
    """The credentials were refused, or a fresh token was refused too."""


@dataclass(frozen=True)
class WazuhApiSettings:
    url: str
    """``https://manager.example:55000``; without a port, 55000 is used."""
    username: str
    password: str = field(repr=False)
    ca_bundle: Path | None = None
    """PEM file of the CA that signed the manager's certificate (Wazuh's ``root-ca.pem``)."""
    insecure_skip_tls_verify: bool = False
    """Turns certificate verification off; never implied, and warned about on every client."""
    timeout_s: float = 10.0
    page_size: int = 500
    """``limit`` of each ``GET /agents`` page; Wazuh recommends at most 500."""
    token_refresh_margin_s: float = 30.0
    """Log in again this long before the token's ``exp``, so no request races the expiry."""

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= 100_000:
            raise ValueError("page_size must be between 1 and 100000 (the Wazuh API's limit)")
        if self.ca_bundle is not None and self.insecure_skip_tls_verify:
            raise ValueError("ca_bundle and insecure_skip_tls_verify contradict each other: choose one")


def base_url(url: str) -> httpx.URL:
    """The manager's URL, on the Wazuh API's port 55000 unless another is given."""
    parsed = httpx.URL(url)
    return parsed if parsed.port is not None else parsed.copy_with(port=DEFAULT_PORT)


def tls_verify(settings: WazuhApiSettings) -> ssl.SSLContext | bool:
    """httpx's ``verify``: the configured CA bundle, the system trust store, or off when explicitly asked."""
    if settings.insecure_skip_tls_verify:
        log.warning("TLS certificate verification of the Wazuh API at %s is OFF (configured)", settings.url)
        return False
    if settings.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(settings.ca_bundle))
    return True


@dataclass(frozen=True)
class Agent:
    """One agent of the inventory, as ``GET /agents`` lists it."""

    id: str
    name: str | None = None
    ip: str | None = None
    os: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Agent:
        os_info = item.get("os")
        return cls(
            id=str(item["id"]),
            name=item.get("name"),
            ip=item.get("ip"),
            os=dict(os_info) if isinstance(os_info, Mapping) else {},
        )

    def host_fields(self) -> dict[str, Any]:
        """ECS ``host.*`` fields by dotted path; an agent IP of ``any`` (unknown) is left out."""
        fields: dict[str, Any] = {
            "host.name": self.name,
            "host.ip": [self.ip] if ecs_ip(self.ip) is not None else None,
            "host.os.name": self.os.get("name"),
            "host.os.platform": self.os.get("platform"),
            "host.os.version": self.os.get("version"),
            "host.os.type": _os_type(self.os),
            "host.os.kernel": _kernel(self.os.get("uname")),
            "host.architecture": self.os.get("arch"),
        }
        return {path: value for path, value in fields.items() if not ecs.is_empty(value)}


class WazuhApiClient:
    """Synchronous client: the inventory is refreshed every few minutes, off the ingest path's hot loop."""

    def __init__(
        self,
        settings: WazuhApiSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._http = httpx.Client(
            base_url=base_url(settings.url),
            verify=tls_verify(settings),
            timeout=settings.timeout_s,
            transport=transport,
        )
        self._token: str | None = None
        self._token_expires_at = 0.0

    def __enter__(self) -> WazuhApiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def login(self) -> None:
        """Exchange the user's credentials for a JWT; remembers when it expires."""
        response = self._http.post(AUTHENTICATE_PATH, auth=(self.settings.username, self.settings.password))
        if response.status_code == 401:
            raise WazuhAuthError(
                f"Wazuh API refused the credentials of user {self.settings.username!r}", status=401
            )
        token = ecs.get(_json(response), "data.token")
        if not isinstance(token, str) or not token:
            raise WazuhApiError("Wazuh API login answered without data.token", status=response.status_code)
        self._token = token
        self._token_expires_at = _expiry(token, now=self._clock())

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``GET path`` with a valid token: logs in when there is none or it is about to expire, and once more
        when the manager answers 401 anyway (a revoked token); a second 401 is a ``WazuhAuthError``."""
        if (
            self._token is None
            or self._clock() >= self._token_expires_at - self.settings.token_refresh_margin_s
        ):
            self.login()
        response = self._send(path, params)
        if response.status_code == 401:
            log.info("Wazuh API answered 401 to GET %s; logging in again and retrying once", path)
            self.login()
            response = self._send(path, params)
            if response.status_code == 401:
                raise WazuhAuthError(f"Wazuh API refused a fresh token for GET {path}", status=401)
        return _json(response)

    def agents(self) -> Iterator[Agent]:
        """Every agent, page by page (``offset`` / ``limit``), with the fields of ``AGENT_FIELDS``."""
        offset = 0
        while True:
            params = {"offset": offset, "limit": self.settings.page_size, "select": ",".join(AGENT_FIELDS)}
            data = self.get(AGENTS_PATH, params).get("data")
            items = data.get("affected_items") if isinstance(data, Mapping) else None
            total = data.get("total_affected_items") if isinstance(data, Mapping) else None
            if not isinstance(items, list) or not isinstance(total, int):
                raise WazuhApiError(
                    "GET /agents answered without data.affected_items and total_affected_items"
                )
            for item in items:
                if isinstance(item, Mapping) and item.get("id") is not None:
                    yield Agent.from_api(item)
            offset += len(items)
            if not items or offset >= total:
                return

    def _send(self, path: str, params: Mapping[str, Any] | None) -> httpx.Response:
        return self._http.get(path, params=params, headers={"Authorization": f"Bearer {self._token}"})


class AgentInventory:
    """The manager's agents by id, refreshed when older than ``ttl_s``. Thread-safe.

    A failed refresh keeps the previous list (and tries again one TTL later) rather than dropping enrichment
    for every event while the manager is unreachable; the very first load has nothing to fall back on, so its
    failure propagates. An agent registered since the last refresh is enriched from the next one on.
    """

    def __init__(
        self, client: WazuhApiClient, *, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._clock = clock
        self._agents: dict[str, Agent] = {}
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def get(self, agent_id: str) -> Agent | None:
        with self._lock:
            if self._loaded_at is None or self._clock() - self._loaded_at >= self._ttl_s:
                self._refresh()
            return self._agents.get(agent_id)

    def enrich(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Fill the missing ``host.*`` fields of a normalised Wazuh event from its agent (``wazuh.agent.id``);
        fields the alert already has are left as they are. Returns ``doc``."""
        agent_id = ecs.get(doc, "wazuh.agent.id")
        agent = self.get(str(agent_id)) if isinstance(agent_id, str | int) else None
        if agent is not None:
            for path, value in agent.host_fields().items():
                if ecs.get(doc, path) is None:
                    ecs.put(doc, path, value)
        return doc

    def _refresh(self) -> None:
        try:
            agents = {agent.id: agent for agent in self._client.agents()}
        except (WazuhApiError, httpx.HTTPError) as exc:
            if self._loaded_at is None:
                raise
            log.warning(
                "Wazuh agent inventory refresh failed (%s); keeping %d agents", exc, len(self._agents)
            )
            self._loaded_at = self._clock()
            return
        self._agents = agents
        self._loaded_at = self._clock()
        log.info("Wazuh agent inventory refreshed: %d agents", len(agents))


def _json(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful response, or a ``WazuhApiError`` with Wazuh's ``title``/``detail``."""
    if response.is_error:
        try:
            body = response.json()
            reason = f"{body.get('title', '')}: {body.get('detail', '')}" if isinstance(body, dict) else ""
        except ValueError:
            reason = response.text
        raise WazuhApiError(
            f"Wazuh API {response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {reason[:MAX_ERROR_TEXT]}",
            status=response.status_code,
        )
    try:
        body = response.json()
    except ValueError:
        raise WazuhApiError(
            "Wazuh API answered with a body that is not JSON", status=response.status_code
        ) from None
    if not isinstance(body, dict):
        raise WazuhApiError("Wazuh API answered with JSON that is not an object", status=response.status_code)
    return body


def _expiry(token: str, *, now: float) -> float:
    """The token's ``exp`` (epoch seconds). Read without verifying the signature: the client only needs to
    know when to log in again, and the manager, not the client, is the one that checks the token."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        exp = None
    return float(exp) if isinstance(exp, int | float) else now + DEFAULT_TOKEN_LIFETIME_S


def _os_type(os_info: Mapping[str, Any]) -> str | None:
    platform = str(os_info.get("platform") or "").lower()
    if platform in _OS_TYPES:
        return _OS_TYPES[platform]
    uname = os_info.get("uname")
    return "linux" if isinstance(uname, str) and uname.startswith("Linux") else None


def _kernel(uname: Any) -> str | None:
    """Wazuh's ``os.uname`` is ``sysname |nodename |release |version |machine``: the release is the kernel."""
    parts = [part.strip() for part in uname.split("|")] if isinstance(uname, str) else []
    return parts[2] if len(parts) >= 3 and parts[2] else None
