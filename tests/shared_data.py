"""Real third-party samples in ``../shared/data`` (see its PROVENANCE.md): read in place, never copied here.

Absent locally, tests that need them skip and say so; in CI (``REFSYS_REQUIRE_SERVICES=1``) they are always
present, and their absence fails the test.
"""

from __future__ import annotations

from pathlib import Path

from tests.services import unavailable

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """The sample at ``relative`` under ``../shared/data``, or skip (fail in CI) when it is not there."""
    path = SHARED_DATA / relative
    if not path.exists():
        unavailable(f"shared sample {relative} not found under {SHARED_DATA}")
    return path
