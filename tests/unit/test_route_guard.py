"""Every route of the app, read from its router (not a hand-written list), refuses an anonymous call and a call
without its role; only the routes DESIGN.md names are anonymous."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from control_plane.core.auth.roles import Role
from control_plane.core.deps import Authorize
from control_plane.core.services import Services
from tests.apps import bearer, make_settings, running_app

# DESIGN.md section 4: health, readiness and the built-in issuer's JWKS (the console's sign-in page, static
# assets and OIDC callback join this list when the console lands).
ANONYMOUS_ROUTES = {"/healthz", "/readyz", "/.well-known/jwks.json"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Services]]:
    with running_app(make_settings(Path(tmp_path_factory.mktemp("guard")))) as pair:
        yield pair


def _authorizers(route: APIRoute) -> list[Authorize]:
    found, stack = [], [route.dependant]
    while stack:
        dependant = stack.pop()
        if isinstance(dependant.call, Authorize):
            found.append(dependant.call)
        stack.extend(dependant.dependencies)
    return found


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-7000-8000-000000000000", path)


def _routes(client: TestClient) -> list[tuple[str, str, APIRoute]]:
    """(method, path, route) for every API route, including those of included routers."""
    found = []
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        if isinstance(route, APIRoute):
            found += [(method, context.path, route) for method in sorted(context.methods or ())]
    return found


def test_every_route_is_either_anonymous_by_design_or_guarded(app: tuple[TestClient, Services]) -> None:
    client, _services = app
    routes = _routes(client)
    assert len(routes) >= 6, "the enumeration found too few routes to be meaningful"
    for method, path, route in routes:
        guards = _authorizers(route)
        if path in ANONYMOUS_ROUTES:
            assert not guards, f"{method} {path} is anonymous by design but declares a permission"
        else:
            assert len(guards) == 1, f"{method} {path} must declare exactly one permission"


def test_every_guarded_route_refuses_anonymous_and_role_less_calls(app: tuple[TestClient, Services]) -> None:
    client, services = app
    no_roles = bearer(services, subject="nobody")
    checked = 0
    for method, path, route in _routes(client):
        if path in ANONYMOUS_ROUTES:
            continue
        url = _concrete(path)
        anonymous = client.request(method, url)
        assert anonymous.status_code == 401, (
            f"{method} {path} answered {anonymous.status_code} to an anonymous call"
        )
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert client.request(method, url, headers=no_roles).status_code == 403, f"{method} {path}"
        (guard,) = _authorizers(route)
        for role in set(Role) - guard.roles:
            response = client.request(method, url, headers=bearer(services, role))
            assert response.status_code == 403, f"{method} {path} let role {role} through"
        checked += 1
    assert checked >= 4


def test_anonymous_routes_answer_without_credentials(app: tuple[TestClient, Services]) -> None:
    client, _services = app
    for path in sorted(ANONYMOUS_ROUTES):
        assert client.get(path).status_code == 200, path
