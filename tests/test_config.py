from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomd.config import ConfigError, Settings, load_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("DICOMD_"):
            monkeypatch.delenv(name)
    s = load_settings()
    assert (s.host, s.port, s.duplicate_policy) == ("127.0.0.1", 8080, "reject")
    assert s.effective_workers >= 1
    assert s.effective_index_url.startswith("sqlite:///") and s.effective_index_url.endswith("index.db")


def test_priority_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('[dicomd]\nport = 9000\nworkers = 3\nduplicate_policy = "overwrite"\n', encoding="utf-8")
    monkeypatch.setenv("DICOMD_WORKERS", "4")
    s = load_settings(config_file=cfg, flags={"port": 9100, "host": None})
    assert s.port == 9100 and s.workers == 4 and s.duplicate_policy == "overwrite"
    assert s.sources["port"] == "flag --port"
    assert s.sources["workers"] == "environment variable DICOMD_WORKERS"


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        (
            "DICOMD_PORT",
            "http",
            "setting 'port' (from environment variable DICOMD_PORT): expected an integer",
        ),
        ("DICOMD_PORT", "70000", "between 1 and 65535"),
        ("DICOMD_DUPLICATE_POLICY", "ignore", "'reject' or 'overwrite'"),
        ("DICOMD_INDEX_URL", "mysql://x", "sqlite:///"),
        ("DICOMD_LOG_LEVEL", "loud", "log_level"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_settings()


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prot = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings(config_file=cfg)
    cfg.write_text("port = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(config_file=cfg)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(config_file=tmp_path / "missing.toml")


def test_settings_round_trip_through_json() -> None:
    s = Settings(port=1234, data_dir=Path("/x/y"), duplicate_policy="overwrite")
    assert Settings.from_json(s.to_json()) == s


def test_cli_reports_config_errors() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomd", "serve", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "setting 'port' (from flag --port)" in result.stderr


def test_cli_help_explains_configuration() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicomd", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "DICOMD_DUPLICATE_POLICY" in result.stdout and "TOML" in result.stdout
