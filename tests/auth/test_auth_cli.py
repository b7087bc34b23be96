"""`dicomd api-key` and the start-up checks of `dicomd serve` (no server is started here)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from dicomd import cli
from dicomd.auth.api_keys import KEY_PREFIX, ApiKeys, key_hash
from dicomd.auth.checks import is_loopback
from dicomd.auth.roles import RoleMap
from dicomd.config import load_settings


@pytest.fixture(autouse=True)
def _no_dicomd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DICOMD_"):
            monkeypatch.delenv(name)


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli.main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_api_key_add_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.jsonl"
    code, out, err = _run(
        "api-key", "add", "--api-keys-file", str(path), "--name", "pacs-sync", "--role", "Data Reader",
        "--partition", "north", "--partition", "south",
    )  # fmt: skip
    assert code == 0, err
    key = out.strip()
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 43  # 32 bytes, base64url
    assert "shown only this once" in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert key not in text and key[len(KEY_PREFIX) :] not in text
    [record] = [orjson.loads(line) for line in text.splitlines()]
    assert record["sha256"] == key_hash(key)
    assert record["roles"] == ["Data Reader"] and record["partitions"] == ["north", "south"]

    principal = ApiKeys(path, RoleMap()).principal_for(key)
    assert principal is not None
    assert principal.subject == "pacs-sync" and principal.method == "api-key"
    assert principal.actions == {"read"} and principal.partitions == {"north", "south"}


def test_api_key_list_and_revoke(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.jsonl")
    env_path = {"DICOMD_API_KEYS_FILE": path}
    assert _run("api-key", "add", "--api-keys-file", path, "--name", "a", "--role", "Data Owner")[0] == 0
    # the file named by the environment, like every other setting
    result = CliRunner(env=env_path).invoke(
        cli.main, ["api-key", "add", "--name", "b", "--role", "Data Reader"]
    )
    assert result.exit_code == 0, result.stderr
    b_key = result.stdout.strip()

    code, out, _ = _run("api-key", "list", "--api-keys-file", path)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("a\troles=Data Owner\tpartitions=all")
    assert all(line.endswith("active") for line in lines)
    assert b_key not in out

    assert _run("api-key", "revoke", "--api-keys-file", path, "b") == (0, "API key 'b' revoked\n", "")
    code, out, _ = _run("api-key", "list", "--api-keys-file", path)
    assert "revoked" in out.splitlines()[1] and out.splitlines()[0].endswith("active")
    assert ApiKeys(Path(path), RoleMap()).principal_for(b_key) is None

    code, _, err = _run("api-key", "revoke", "--api-keys-file", path, "b")
    assert code == 1 and "no active API key named 'b'" in err
    # a revoked name may be given to a new key; an active one may not
    assert _run("api-key", "add", "--api-keys-file", path, "--name", "b", "--role", "Data Reader")[0] == 0
    code, _, err = _run("api-key", "add", "--api-keys-file", path, "--name", "a", "--role", "Data Reader")
    assert code == 1 and "exists already" in err


def test_api_key_add_knows_the_configured_roles_only(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.jsonl")
    code, _, err = _run("api-key", "add", "--api-keys-file", path, "--name", "x", "--role", "Uploader")
    assert code == 2 and "unknown role 'Uploader'" in err and "'Data Owner'" in err
    code, _, err = _run(
        "api-key", "add", "--api-keys-file", path, "--roles", "Uploader=write",
        "--name", "x", "--role", "Uploader",
    )  # fmt: skip
    assert code == 0, err
    assert not os.path.exists(path + ".tmp")


def test_api_key_commands_need_a_key_file() -> None:
    code, _, err = _run("api-key", "list")
    assert code == 2 and "no API key file" in err


def test_a_malformed_key_file_is_named_and_never_quoted(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text('{"name": "a", "sha256": "' + "0" * 64 + '", "roles": []}\nsecret-looking garbage\n')
    code, _, err = _run("api-key", "list", "--api-keys-file", str(path))
    assert code == 1 and "line 2 is not JSON" in err and "garbage" not in err
    code, _, err = _run("serve", "--api-keys-file", str(path))
    assert code == 2 and "line 2 is not JSON" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without authentication"),
        (["--host", "192.0.2.7"], "refusing to serve on 192.0.2.7 without authentication"),
        (["--oidc-issuer", "https://login.example.org"], "'oidc_audience' is required"),
        (
            ["--oidc-jwks-url", "https://login.example.org/jwks", "--oidc-audience", "x"],
            "needs 'oidc_issuer'",
        ),
        (
            [
                "--oidc-issuer",
                "https://l.example",
                "--oidc-audience",
                "x",
                "--oidc-algorithms",
                "RS256,HS256",
            ],
            "setting 'oidc_algorithms' (from flag --oidc-algorithms): must be among RS256",
        ),
        (["--api-keys-file", "k", "--oidc-algorithms", "none"], "got 'none'"),
        (
            ["--oidc-issuer", "http://login.example.org", "--oidc-audience", "x"],
            "setting 'oidc_issuer' (from flag --oidc-issuer) must be https://",
        ),
        (
            [
                "--oidc-issuer",
                "https://l.example",
                "--oidc-jwks-url",
                "http://l.example/jwks",
                "--oidc-audience",
                "x",
            ],
            "setting 'oidc_jwks_url' (from flag --oidc-jwks-url) must be https://",
        ),
        (["--api-keys-file", "k", "--roles", "Viewer=read+print"], "unknown action 'print'"),
    ],
)
def test_serve_refuses_unsafe_or_inconsistent_authentication_settings(args: list[str], message: str) -> None:
    code, _, err = _run("serve", *args)
    assert code == 2, err
    assert message in err


def test_serve_warns_once_when_authentication_is_off(capsys: pytest.CaptureFixture[str]) -> None:
    cli._check_authentication(load_settings(flags={"host": "127.0.0.1"}))
    assert capsys.readouterr().err.count("authentication is off") == 1
    cli._check_authentication(load_settings(flags={"host": "0.0.0.0", "allow_unauthenticated": "true"}))
    assert "authentication is off on 0.0.0.0 (allow_unauthenticated)" in capsys.readouterr().err
    cli._check_authentication(load_settings(flags={"host": "0.0.0.0", "api_keys_file": "keys.jsonl"}))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.5.6.7", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("pacs.example.org", False),
        ("10.0.0.1", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
