"""Configuration: YAML plus REFSYS_* variables, validated; a wrong key or value is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.core.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFSYS_CONFIG", raising=False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "refsys.yaml"
    path.write_text(text)
    return path


def test_embedded_defaults_keep_state_under_var(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.data_dir == tmp_path / "var"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'refsys.db'}"
    assert settings.bus_url == f"sqlite:///{tmp_path / 'var' / 'bus.db'}"
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.builtin_issuer_enabled
    assert not (tmp_path / "var").exists(), "loading settings must create nothing"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, "server:\n  port: 9000\n  host: 0.0.0.0\n")
    monkeypatch.setenv("REFSYS_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9100)


def test_postgres_urls_use_psycopg_and_host_the_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFSYS_DATABASE__URL", "postgresql://refsys@db:5432/refsys")
    settings = load_settings()
    assert settings.database_url == "postgresql+psycopg://refsys@db:5432/refsys"
    assert settings.bus_url == settings.database_url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("databse:\n  url: sqlite:///x.db\n", "config error: unknown setting databse"),
        ("server:\n  prot: 80\n", "config error: unknown setting server.prot"),
        ("server:\n  port: eighty\n", "config error: server.port: Input should be a valid integer"),
        (
            "server:\n  port: 70000\n",
            "config error: server.port: Input should be less than or equal to 65535",
        ),
        ("bus:\n  backend: rabbit\n", "config error: bus.backend: Input should be 'embedded' or 'kafka'"),
        ("database:\n  url: mysql://x\n", "only sqlite:/// and postgresql:// URLs are supported"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("server: [\n", "refsys.yaml:2: not valid YAML"),
    ],
)
def test_bad_configuration_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFSYS_DATABSE__URL", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="unknown environment variable REFSYS_DATABSE__URL"):
        load_settings()


def test_wrong_value_from_the_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFSYS_AUDIT__REFUSALS_PER_MINUTE", "many")
    with pytest.raises(ConfigError, match=r"audit\.refusals_per_minute"):
        load_settings()


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


def test_external_issuer_turns_the_builtin_issuer_off_unless_kept(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, "auth:\n  oidc:\n    issuer: https://kc/realms/eo\n"))
    assert not settings.builtin_issuer_enabled
    kept = load_settings(
        _write(
            tmp_path,
            "auth:\n  oidc:\n    issuer: https://kc/realms/eo\n  builtin_issuer:\n    enabled: true\n",
        )
    )
    assert kept.builtin_issuer_enabled
