"""The deployment examples in deploy/ name real settings with valid values (they are documentation that
users copy: a renamed setting must fail here, not at a hospital's start-up)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dicomd.config import SETTINGS, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_systemd_example_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(SETTINGS):
        monkeypatch.delenv(SETTINGS[name].env, raising=False)
    settings = load_settings(config_file=DEPLOY / "systemd" / "dicomd.toml")
    assert settings.storage_url.startswith("s3://") and settings.index_url.startswith("postgresql")
    assert settings.authentication_enabled


def test_compose_environment_names_known_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    found = dict(re.findall(r"^\s+#?\s*(DICOMD_[A-Z_]+): (.+)$", text, flags=re.MULTILINE))
    known = {spec.env: name for name, spec in SETTINGS.items()}
    assert found and set(found) <= set(known), set(found) - set(known)
    for env, raw in found.items():
        monkeypatch.setenv(env, raw.strip().strip('"'))
    load_settings()  # every value valid


def test_systemd_unit_runs_the_example_config() -> None:
    unit = (DEPLOY / "systemd" / "dicomd.service").read_text(encoding="utf-8")
    assert "dicomd serve --config /etc/dicomd/dicomd.toml" in unit
