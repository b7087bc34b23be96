"""The `dicomd` command's options, made from the settings' declarations (no server is started here)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dicomd import cli
from dicomd.config import SETTINGS, Settings, load_settings


@pytest.fixture(autouse=True)
def _no_dicomd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DICOMD_"):
            monkeypatch.delenv(name)


def _options(command: click.Command) -> dict[str, list[str]]:
    return {p.name: p.opts for p in command.params if isinstance(p, click.Option) and p.name}


def test_serve_has_a_flag_for_every_setting() -> None:
    options = _options(cli.serve)
    for name, spec in SETTINGS.items():
        assert options[name] == [spec.flag]
    assert set(options) == {*SETTINGS, "config_file"}


def test_import_and_optimize_keep_their_flags() -> None:
    assert _options(cli.import_command) == {
        "data_dir": ["--data-dir"],
        "config_file": ["--config"],
        "index_url": ["--index-url"],
        "duplicate_policy": ["--duplicate-policy"],
        "storage_path": ["--storage-path"],
        "storage_url": ["--storage-url"],
        "storage_options": ["--storage-options"],
        "staging_dir": ["--staging-dir"],
        "processes": ["--processes"],
        "failed_list": ["--failed-list"],
        "journal": ["--journal"],
        "progress_interval": ["--progress-interval"],
        "lock_timeout": ["--lock-timeout"],
    }
    assert _options(cli.optimize_command) == {
        "data_dir": ["--data-dir"],
        "config_file": ["--config"],
        "index_url": ["--index-url"],
        "lock_timeout": ["--lock-timeout"],
    }


def test_serve_help_lists_every_setting_with_its_variable_and_default() -> None:
    result = CliRunner().invoke(cli.main, ["serve", "--help"], terminal_width=400)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # click puts the help of a long option on the next line
    for spec in SETTINGS.values():
        listed = f"{spec.description} [env {spec.env}; default {spec.default_text}]"
        assert re.search(rf"{re.escape(spec.flag)} \S+ {re.escape(listed)}", text), spec.name
    assert "TOML" in result.output and "DICOMD_CONFIG" in result.output
    assert "[reject|overwrite]" in result.output


def test_every_flag_reaches_the_settings_under_its_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {
        "data_dir": str(tmp_path / "data"),
        "host": "0.0.0.0",
        "port": "8443",
        "workers": "3",
        "index_url": "postgresql+psycopg://dicomd@db/dicomd",
        "storage_path": str(tmp_path / "objects"),
        "duplicate_policy": "overwrite",
        "bulk_threshold": "2048",
        "max_request_bytes": "1000000",
        "commit_batch": "64",
        "log_level": "warning",
        "base_url": "https://pacs.example.org",
        "header_timeout": "5",
        "body_timeout": "6",
        "keep_alive_timeout": "7",
        "max_connections": "100",
        "delete_grace_period": "0",
        "cors_origins": "*",
        "storage_url": "s3://bucket/prefix",
        "storage_options": "aws_region=eu-west-1,aws_endpoint=http://127.0.0.1:9000",
        "staging_dir": str(tmp_path / "staging"),
        "storage_timeout": "12",
        "db_pool_size": "4",
        "db_timeout": "5",
        "orphan_grace_period": "7200",
        "oidc_issuer": "https://login.example.org/realms/pacs",
        "oidc_audience": "dicomd",
        "oidc_jwks_url": "https://login.example.org/realms/pacs/certs",
        "oidc_algorithms": "RS256",
        "oidc_roles_claim": "groups",
        "oidc_partitions_claim": "tenants",
        "clock_skew": "30",
        "roles": "Radiologist=read+write",
        "api_keys_file": str(tmp_path / "keys.jsonl"),
        "allow_unauthenticated": "true",
        "partitions": "yes",
        "create_partitions": "false",
        "audit_log": "-",
        "audit_header_bytes": "512",
        "tls_cert_file": str(tmp_path / "cert.pem"),
        "tls_key_file": str(tmp_path / "key.pem"),
        "trusted_hosts": "pacs.example.org",
        "forwarded_allow_ips": "10.0.0.0/8,192.0.2.1",
        "rate_limit": "100",
        "pixel_workers": "3",
        "pixel_memory_limit": "268435456",
        "render_cache_bytes": "0",
        "dicom_port": "11112",
        "dicom_ae_title": "ARCHIVE",
        "dicom_peers": "VIEWER=10.0.0.5:104",
        "dicom_allowed_callers": "CT1@10.0.0.7,MR1",
        "dicom_max_associations": "8",
        "dicom_listeners": "3",
        "dicom_max_pdu": "65536",
        "dicom_timeout": "30",
        "dicom_tls": "true",
    }
    assert set(values) == set(SETTINGS)
    received: list[Settings] = []

    def capture(config_file: str | None, flags: dict[str, object]) -> Settings:
        received.append(load_settings(config_file=config_file, flags=flags))
        raise SystemExit(0)  # before anything is prepared or served

    monkeypatch.setattr(cli, "_settings_or_exit", capture)
    args = [arg for name, value in values.items() for arg in (SETTINGS[name].flag, value)]
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 0, result.output
    [settings] = received
    for name, value in values.items():
        assert settings.sources[name] == f"flag {SETTINGS[name].flag}"
        assert getattr(settings, name) == SETTINGS[name].parse(value, "test")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "http"], "setting 'port' (from flag --port): expected an integer, got 'http'"),
        (["--workers", "300"], "setting 'workers' (from flag --workers): must be between 0 and 256, got 300"),
        (
            ["--max-connections", "0"],
            "setting 'max_connections' (from flag --max-connections): must be positive",
        ),
        (["--duplicate-policy", "ignore"], "(from flag --duplicate-policy): must be 'reject' or 'overwrite'"),
        (["--base-url", "ftp://x"], "(from flag --base-url): must start with http:// or https://"),
        (["--cors-origins", "viewer.example"], "(from flag --cors-origins): origins must be * or start with"),
    ],
)
def test_bad_flags_stop_serve_with_the_setting_named(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 2
    assert "dicomd: configuration error: " in result.stderr and message in result.stderr


@pytest.mark.parametrize("command", ["import", "optimize"])
def test_import_and_optimize_validate_their_setting_flags(command: str, tmp_path: Path) -> None:
    args = [command, "--index-url", "mysql://x"] + ([str(tmp_path)] if command == "import" else [])
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2
    assert "setting 'index_url' (from flag --index-url): must start with sqlite:///" in result.stderr
