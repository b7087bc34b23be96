"""`dicomd migrate` and `dicomd sweep`: the maintenance commands a deployment runs next to its replicas."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from dicomd import cli
from dicomd.config import load_settings
from dicomd.storage import open_store


@pytest.fixture(autouse=True)
def _no_dicomd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DICOMD_"):
            monkeypatch.delenv(name)


def test_migrate_migrates_once_then_reports_up_to_date(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    first = CliRunner().invoke(cli.main, ["migrate", "--data-dir", data])
    assert first.exit_code == 0, first.output
    assert "migrated from revision (none) to" in first.output
    again = CliRunner().invoke(cli.main, ["migrate", "--data-dir", data])
    assert again.exit_code == 0 and "up to date" in again.output


def test_sweep_removes_objects_no_index_row_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert CliRunner().invoke(cli.main, ["migrate", "--data-dir", str(data)]).exit_code == 0
    store = open_store(load_settings(flags={"data_dir": str(data)}))
    try:
        key = store.new_key()
        fan_out = store.path(key).parent  # type: ignore[attr-defined]
        fan_out.mkdir(parents=True, exist_ok=True)
        store.path(key).write_bytes(b"orphan")  # type: ignore[attr-defined]
    finally:
        store.close()
    # younger than the grace period: kept
    kept = CliRunner().invoke(cli.main, ["sweep", "--data-dir", str(data)])
    assert kept.exit_code == 0 and "removed 0 of 0" in kept.output, kept.output
    swept = CliRunner().invoke(cli.main, ["sweep", "--data-dir", str(data), "--older-than", "0"])
    assert swept.exit_code == 0 and "removed 1 of 1" in swept.output, swept.output
    assert not store.path(key).exists()  # type: ignore[attr-defined]


@pytest.mark.parametrize("prefixed_client_option", ["", ",aws_allow_http=true"])
def test_an_unreachable_object_store_is_one_line_without_credentials(
    tmp_path: Path, prefixed_client_option: str
) -> None:
    """Also with a client option written with its backend's prefix, as obstore's environment variables
    are (obstore itself aborts on that form)."""
    # a closed port: nothing listens there
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = (
        f"aws_endpoint=http://127.0.0.1:{port},aws_access_key_id=AKIDSECRET,aws_secret_access_key=s3cr3t"
        + prefixed_client_option
    )
    assert CliRunner().invoke(cli.main, ["migrate", "--data-dir", str(tmp_path / "data")]).exit_code == 0
    result = CliRunner().invoke(
        cli.main,
        ["sweep", "--data-dir", str(tmp_path / "data"), "--storage-url", "s3://bucket/prefix",
         "--storage-options", options],
        env={"DICOMD_STORAGE_TIMEOUT": "1"},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "s3://bucket/prefix" in result.output and "Traceback" not in result.output
    assert "s3cr3t" not in result.output and "AKIDSECRET" not in result.output


def test_invalid_object_store_options_are_a_configuration_error(tmp_path: Path) -> None:
    assert CliRunner().invoke(cli.main, ["migrate", "--data-dir", str(tmp_path / "data")]).exit_code == 0
    result = CliRunner().invoke(
        cli.main,
        ["sweep", "--data-dir", str(tmp_path / "data"), "--storage-url", "s3://bucket/prefix",
         "--storage-options", "no_such_option=secretvalue"],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "configuration error" in result.output and "secretvalue" not in result.output
