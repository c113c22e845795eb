"""The OpenAPI document is snapshot-tested: every API change is deliberate and shows in review.

After an intended change, regenerate with ``REFSYS_UPDATE_SNAPSHOTS=1 make test`` and commit the new snapshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from control_plane.core.auth.roles import Role
from tests.apps import bearer, make_settings, running_app

SNAPSHOT = Path(__file__).parent.parent / "snapshots" / "openapi.json"


def test_openapi_matches_the_snapshot(tmp_path: Path) -> None:
    with running_app(make_settings(tmp_path)) as (client, services):
        response = client.get("/openapi.json", headers=bearer(services, Role.OPERATOR))
    assert response.status_code == 200
    document = response.json()
    rendered = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if os.environ.get("REFSYS_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(rendered)
    assert SNAPSHOT.exists(), "no snapshot yet: run with REFSYS_UPDATE_SNAPSHOTS=1"
    assert rendered == SNAPSHOT.read_text(), (
        "the API changed: review, then update the snapshot (see module docstring)"
    )
