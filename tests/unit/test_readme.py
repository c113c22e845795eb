"""The README's configuration reference names every setting (and nothing that is not one)."""

from __future__ import annotations

import re
from pathlib import Path

from control_plane.core.config import env_name, setting_paths

README = Path(__file__).resolve().parents[2] / "README.md"


def test_configuration_reference_matches_the_settings() -> None:
    rows = re.findall(r"^\| `([a-z_.]+)` \| `(REFSYS_[A-Z_]+)`", README.read_text(), flags=re.MULTILINE)
    assert sorted(path for path, _env in rows) == sorted(setting_paths())
    assert all(env == env_name(path) for path, env in rows)
