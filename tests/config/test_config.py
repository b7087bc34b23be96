from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dicomd.config import SETTINGS, ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def _no_dicomd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # a DICOMD_* variable of the shell running the tests would change what they load
    for name in list(os.environ):
        if name.startswith("DICOMD_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert (s.host, s.port, s.duplicate_policy) == ("127.0.0.1", 8080, "reject")
    assert s.effective_workers >= 1
    assert s.effective_index_url.startswith("sqlite:///") and s.effective_index_url.endswith("index.db")
    assert s == Settings() and s.sources == {}


def test_priority_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('[dicomd]\nport = 9000\nworkers = 3\nduplicate_policy = "overwrite"\n', encoding="utf-8")
    monkeypatch.setenv("DICOMD_WORKERS", "4")
    s = load_settings(config_file=cfg, flags={"port": 9100, "host": None})
    assert s.port == 9100 and s.workers == 4 and s.duplicate_policy == "overwrite"
    assert s.sources["port"] == "flag --port"
    assert s.sources["workers"] == "environment variable DICOMD_WORKERS"
    assert s.sources["duplicate_policy"] == f"config file {cfg}"
    assert "host" not in s.sources


def test_config_file_from_the_environment_and_top_level_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text('keep-alive-timeout = 5\ncors_origins = "https://viewer.example/"\n', encoding="utf-8")
    monkeypatch.setenv("DICOMD_CONFIG", str(cfg))
    s = load_settings()
    assert (s.keep_alive_timeout, s.cors_origins) == (5, "https://viewer.example")
    assert s.sources["keep_alive_timeout"] == f"config file {cfg}"


def test_every_setting_is_declared_once() -> None:
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "sources"]
    assert list(SETTINGS) == names
    for name, spec in SETTINGS.items():
        assert spec.name == name and spec.help
        assert spec.env == "DICOMD_" + name.upper()
        assert spec.flag == "--" + name.replace("_", "-")
        assert spec.kind in (int, bool, str, Path)
        default = getattr(Settings(), name)
        assert spec.default == default
        # the default passes its own rules, and its text form (environment, flag) reads back the same
        assert spec.parse(default, "test") == default
        assert spec.parse(str(default), "test") == default


def test_the_duplicate_policy_choices_come_from_its_type() -> None:
    assert SETTINGS["duplicate_policy"].choices == ("reject", "overwrite")


# one bad value per rule: setting, value, what the message says after "setting 'X' (from <source>): "
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("port", "http", "expected an integer, got 'http'"),
    ("port", 70000, "must be between 1 and 65535, got 70000"),
    ("port", 0, "must be between 1 and 65535, got 0"),
    ("workers", -1, "must be between 0 and 256, got -1"),
    ("workers", 257, "must be between 0 and 256, got 257"),
    ("bulk_threshold", 0, "must be positive, got 0"),
    ("max_request_bytes", "4G", "expected an integer, got '4G'"),
    ("max_request_bytes", 0, "must be positive, got 0"),
    ("commit_batch", -5, "must be positive, got -5"),
    ("header_timeout", 0, "must be positive, got 0"),
    ("body_timeout", "1.5", "expected an integer, got '1.5'"),
    ("body_timeout", 0, "must be positive, got 0"),
    ("keep_alive_timeout", 0, "must be positive, got 0"),
    ("max_connections", 0, "must be positive, got 0"),
    ("delete_grace_period", -1, "must be zero or more, got -1"),
    ("duplicate_policy", "ignore", "must be 'reject' or 'overwrite', got 'ignore'"),
    ("duplicate_policy", "Overwrite", "must be 'reject' or 'overwrite', got 'Overwrite'"),
    ("log_level", "loud", "must be one of critical, error, warning, info, debug, got 'loud'"),
    ("index_url", "mysql://x", "must start with sqlite:/// or postgresql+psycopg://, got 'mysql://x'"),
    ("base_url", "pacs.example.org", "must start with http:// or https://, got 'pacs.example.org'"),
    ("base_url", "ftp://pacs.example.org", "must start with http:// or https://"),
    (
        "cors_origins",
        "https://ok.example, viewer.example",
        "origins must be * or start with http:// or https://, got 'viewer.example'",
    ),
    ("storage_url", "ftp://bucket", "must start with file://, s3://, az:// or gs://"),
    ("storage_options", "aws_region", "expected key=value pairs separated by commas"),
    ("storage_options", "=secret", "expected key=value pairs separated by commas"),
    ("storage_timeout", 0, "must be positive, got 0"),
    ("db_pool_size", 0, "must be between 1 and 256, got 0"),
    ("db_timeout", 0, "must be positive, got 0"),
    ("orphan_grace_period", 60, "must be at least 600, got 60"),
    ("oidc_issuer", "issuer.example", "must start with http:// or https://"),
    ("oidc_jwks_url", "jwks.example", "must start with http:// or https://"),
    ("oidc_algorithms", "RS256,none", "must be among RS256"),
    ("oidc_algorithms", "HS256", "must be among RS256"),
    ("oidc_algorithms", " , ", "must name at least one algorithm"),
    ("clock_skew", 601, "must be between 0 and 600, got 601"),
    ("allow_unauthenticated", "maybe", "expected true or false, got 'maybe'"),
    ("partitions", "2", "expected true or false, got '2'"),
    ("create_partitions", "y", "expected true or false, got 'y'"),
    ("audit_log", "/", "must be a file path, - or off, got the directory '/'"),
    ("audit_header_bytes", -1, "must be between 0 and 65536, got -1"),
    ("trusted_hosts", "https://pacs.example", "must be host names (no scheme or path)"),
    ("rate_limit", -1, "must be zero or more, got -1"),
    ("pixel_workers", 0, "must be between 1 and 64, got 0"),
    ("pixel_memory_limit", 1000, "must be at least 1048576, got 1000"),
    ("render_cache_bytes", -1, "must be zero or more, got -1"),
    ("dicom_port", 70000, "must be between 0 and 65535, got 70000"),
    ("dicom_ae_title", "A" * 17, "AE titles are 1-16 characters"),
    ("dicom_ae_title", "PACS\\1", "AE titles are printable ASCII without backslashes"),
    ("dicom_peers", "STORESCP", "expected AE=host:port entries separated by commas, got 'STORESCP'"),
    ("dicom_peers", "STORESCP=host:0", "expected AE=host:port entries"),
    ("dicom_allowed_callers", "MODALITY@", "expected AE or AE@host entries"),
    ("dicom_max_associations", 0, "must be between 1 and 1024, got 0"),
    ("dicom_listeners", 65, "must be between 0 and 64, got 65"),
    ("dicom_max_pdu", 100, "must be between 4096 and 2147483647, got 100"),
    ("dicom_timeout", 0, "must be positive"),
    ("dicom_tls", "maybe", "expected true or false, got 'maybe'"),
    ("forwarded_allow_ips", "127.0.0.1,proxy.local", "must be IP addresses or networks, or *"),
]


def _source(source: str, name: str, tmp_path: Path) -> str:
    """The source of a value as error messages name it."""
    return {
        "env": f"environment variable {SETTINGS[name].env}",
        "toml": f"config file {tmp_path / 'dicomd.toml'}",
        "flag": f"flag {SETTINGS[name].flag}",
    }[source]


def _load_from(source: str, name: str, raw: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if source == "env":
        monkeypatch.setenv(SETTINGS[name].env, str(raw))
        load_settings()
    elif source == "toml":
        cfg = tmp_path / "dicomd.toml"
        cfg.write_text(f"[dicomd]\n{name} = {json.dumps(raw)}\n", encoding="utf-8")  # JSON scalars are TOML
        load_settings(config_file=cfg)
    else:
        load_settings(flags={name: str(raw)})  # click hands a flag's value over as text


@pytest.mark.parametrize("source", ["env", "toml", "flag"])
@pytest.mark.parametrize(("name", "raw", "reason"), BAD_VALUES)
def test_invalid_values_name_the_setting_and_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, name: str, raw: Any, reason: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load_from(source, name, raw, tmp_path, monkeypatch)
    assert str(caught.value).startswith(
        f"setting '{name}' (from {_source(source, name, tmp_path)}): {reason}"
    )


def test_every_rule_has_a_bad_value_above() -> None:
    with_rules = {name for name, spec in SETTINGS.items() if spec.kind is int or spec.choices or spec.check}
    # the directory check needs a file to exist: test_data_dir_and_storage_path_must_not_be_files
    assert with_rules - {"data_dir", "storage_path", "staging_dir"} <= {name for name, _, _ in BAD_VALUES}


@pytest.mark.parametrize("raw", [True, 1.5, [8080]])
def test_toml_values_of_the_wrong_type_are_not_integers(tmp_path: Path, raw: Any) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text(f"port = {json.dumps(raw)}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"setting 'port' \(from config file .*\): expected an integer"):
        load_settings(config_file=cfg)


def test_values_are_normalised_alike_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = {
        "log_level": "DEBUG",
        "base_url": "https://pacs.example.org/dicomweb/",
        "cors_origins": " https://a.example/ ,, * ",
        "port": " 8081 ",
        "data_dir": "~/dicomd",
    }
    expected = {
        "log_level": "debug",
        "base_url": "https://pacs.example.org/dicomweb",
        "cors_origins": "https://a.example,*",
        "port": 8081,
        "data_dir": Path("~/dicomd").expanduser(),
    }
    from_flags = load_settings(flags=raw)
    cfg = tmp_path / "d.toml"
    cfg.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in raw.items()), encoding="utf-8")
    from_file = load_settings(config_file=cfg)
    for name, value in raw.items():
        monkeypatch.setenv(SETTINGS[name].env, value)
    from_env = load_settings()
    for s in (from_flags, from_file, from_env):
        assert {name: getattr(s, name) for name in expected} == expected


def test_data_dir_and_storage_path_must_not_be_files(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x", encoding="utf-8")
    for name in ("data_dir", "storage_path", "staging_dir"):
        with pytest.raises(ConfigError, match=rf"setting '{name}' \(from flag .*\): must be a directory"):
            load_settings(flags={name: str(a_file)})


def test_unknown_key_and_bad_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prot = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown setting 'prot'"):
        load_settings(config_file=cfg)
    cfg.write_text("port = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(config_file=cfg)
    cfg.write_text("dicomd = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'dicomd' must be a table"):
        load_settings(config_file=cfg)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(config_file=tmp_path / "missing.toml")


def test_settings_round_trip_through_json() -> None:
    s = Settings(port=1234, data_dir=Path("/x/y"), duplicate_policy="overwrite", cors_origins="*")
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


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("YES", True), ("1", True), ("off", False)])
def test_boolean_settings_from_text(raw: str, expected: bool) -> None:
    assert load_settings(flags={"partitions": raw}).partitions is expected


def test_boolean_settings_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "d.toml"
    cfg.write_text("partitions = true\nallow-unauthenticated = false\n", encoding="utf-8")
    settings = load_settings(config_file=cfg)
    assert settings.partitions is True and settings.allow_unauthenticated is False
