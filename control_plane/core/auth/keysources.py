"""Public keys per issuer: the built-in issuer's key file, or an external issuer's JWKS over HTTPS.

An unknown ``kid`` usually means the issuer rotated its keys, so it triggers one refetch; refetches are
rate-limited so that a flood of tokens with made-up ``kid`` values cannot turn refsys into a JWKS hammer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import jwt

from control_plane.core.auth.issuer import BuiltinIssuer
from control_plane.core.auth.tokens import ALLOWED_ALGORITHMS

log = logging.getLogger(__name__)
JWKS_FETCH_TIMEOUT_S = 5.0


def _usable_keys(jwks: Iterable[dict[str, Any]]) -> dict[str, jwt.PyJWK]:
    """Signing keys with an allowed algorithm, by kid (Keycloak also publishes an RSA-OAEP encryption key)."""
    keys: dict[str, jwt.PyJWK] = {}
    for item in jwks:
        if item.get("use", "sig") != "sig" or "kid" not in item:
            continue
        try:
            key = jwt.PyJWK(item)
        except jwt.PyJWTError as exc:
            log.warning("ignoring unusable JWKS key %s: %s", item.get("kid"), exc)
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            keys[item["kid"]] = key
    return keys


class _RefreshingKeys:
    """Keys by kid, refreshed from ``load`` on an unknown kid at most once per ``min_refresh_s``."""

    def __init__(self, load: Callable[[], list[dict[str, Any]]], min_refresh_s: float) -> None:
        self._load = load
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return None
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            if kid not in self._keys and time.monotonic() - self._fetched_at >= self._min_refresh_s:
                self._fetched_at = time.monotonic()
                try:
                    self._keys = _usable_keys(self._load())
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    log.warning("cannot refresh signing keys: %s", exc)
        return self._keys.get(kid)


class BuiltinKeySource(_RefreshingKeys):
    """The built-in issuer's published keys; re-reads its key file when a token names a key it has not seen."""

    def __init__(self, issuer: BuiltinIssuer, *, min_refresh_s: float) -> None:
        def load() -> list[dict[str, Any]]:
            issuer.reload()
            keys: list[dict[str, Any]] = issuer.jwks()["keys"]
            return keys

        super().__init__(load, min_refresh_s)


class JwksKeySource(_RefreshingKeys):
    """An external OIDC issuer's keys, from ``jwks_url`` or discovered from the issuer's metadata."""

    def __init__(
        self, *, issuer: str, jwks_url: str | None, min_refresh_s: float, http: httpx.Client | None = None
    ) -> None:
        self._issuer = issuer.rstrip("/")
        self._jwks_url = jwks_url
        self._http = http or httpx.Client(timeout=JWKS_FETCH_TIMEOUT_S)
        super().__init__(self._fetch, min_refresh_s)

    def _fetch(self) -> list[dict[str, Any]]:
        if self._jwks_url is None:
            discovery = self._http.get(f"{self._issuer}/.well-known/openid-configuration")
            discovery.raise_for_status()
            self._jwks_url = str(discovery.json()["jwks_uri"])
        response = self._http.get(self._jwks_url)
        response.raise_for_status()
        keys = response.json().get("keys")
        if not isinstance(keys, list):
            raise ValueError(f"{self._jwks_url} is not a JWKS document")
        return keys
