"""Static API keys for service accounts and scripts, kept hashed in a JSON lines file.

Each line: {"name", "sha256" (hex of the key's SHA-256), "roles": [...], "partitions": [...] or null,
"created", and "revoked" once revoked}. A key is ``dicomd_`` + 32 random bytes in base64url; only its
hash is stored, so the file is no secret by itself (it is still created 0600: it lists the accounts).
The server re-reads the file when it changes (checked at most once a second): revocation needs no
restart. ``dicomd api-key`` (cli.py) writes it; each write replaces the file atomically."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from dicomd.auth.principal import Principal
from dicomd.auth.roles import RoleMap

log = logging.getLogger(__name__)

KEY_PREFIX = "dicomd_"
_RECHECK_SECONDS = 1.0  # how often the server looks at the file's modification time


class ApiKeyFileError(ValueError):
    """The key file cannot be read or has a malformed line (the message names the line, never a key)."""


@dataclass(frozen=True)
class ApiKeyRecord:
    name: str
    sha256: str
    roles: tuple[str, ...]
    partitions: tuple[str, ...] | None
    created: str
    revoked: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "sha256": self.sha256,
            "roles": list(self.roles),
            "partitions": None if self.partitions is None else list(self.partitions),
            "created": self.created,
        }
        if self.revoked:
            data["revoked"] = self.revoked
        return data


def new_key() -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _strings(value: Any, what: str, line: int) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiKeyFileError(f"line {line}: '{what}' must be a list of strings")
    return tuple(value)


def read_records(path: Path) -> list[ApiKeyRecord]:
    """The file's records in order; a missing file has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ApiKeyFileError(f"API key file {path}: cannot be read ({exc.strerror})") from None
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ApiKeyFileError(f"API key file {path}: line {number} is not JSON") from None
        if not isinstance(data, dict):
            raise ApiKeyFileError(f"API key file {path}: line {number} is not a JSON object")
        name, digest = data.get("name"), data.get("sha256")
        if not isinstance(name, str) or not name:
            raise ApiKeyFileError(f"API key file {path}: line {number}: 'name' is missing")
        if not isinstance(digest, str) or len(digest) != 64:
            raise ApiKeyFileError(f"API key file {path}: line {number}: 'sha256' must be 64 hex digits")
        partitions = data.get("partitions")
        try:
            records.append(
                ApiKeyRecord(
                    name=name,
                    sha256=digest.lower(),
                    roles=_strings(data.get("roles", []), "roles", number),
                    partitions=None if partitions is None else _strings(partitions, "partitions", number),
                    created=str(data.get("created", "")),
                    revoked=str(data["revoked"]) if data.get("revoked") else None,
                )
            )
        except ApiKeyFileError as exc:
            raise ApiKeyFileError(f"API key file {path}: {exc}") from None
    return records


def write_records(path: Path, records: list[ApiKeyRecord]) -> None:
    """Replace the file atomically (a server reading it sees the old or the new file, whole), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            for record in records:
                out.write(orjson.dumps(record.to_json()) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[None]:
    """One editor of the key file at a time (an `add` that read the file before a concurrent `revoke`
    wrote it would bring the revoked key back): an exclusive lock on ``<file>.lock`` around read and
    write. The server only reads, and the file is replaced whole, so it never sees half an edit."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{path}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ApiKeyFileError(f"the API key file cannot be written: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_key(path: Path, name: str, roles: tuple[str, ...], partitions: tuple[str, ...] | None) -> str:
    """Create a key named ``name`` (unique among the keys not revoked); returns the key, shown once."""
    with _editing(path):
        records = read_records(path)
        if any(r.name == name and not r.revoked for r in records):
            raise ApiKeyFileError(f"an API key named {name!r} exists already (revoke it first)")
        key = new_key()
        records.append(ApiKeyRecord(name, key_hash(key), roles, partitions, _now()))
        write_records(path, records)
    return key


def revoke_key(path: Path, name: str) -> bool:
    """Mark the key named ``name`` revoked; False when there is no such key that is not revoked."""
    with _editing(path):
        records = read_records(path)
        found = False
        for i, record in enumerate(records):
            if record.name == name and not record.revoked:
                records[i] = ApiKeyRecord(
                    record.name, record.sha256, record.roles, record.partitions, record.created, _now()
                )
                found = True
        if found:
            write_records(path, records)
    return found


class ApiKeys:
    """The server's view of the key file: principals by key hash, re-read when the file changes."""

    def __init__(self, path: Path, roles: RoleMap) -> None:
        self.path = path
        self.roles = roles
        self._by_hash: dict[str, tuple[str, Principal]] = {}
        self._file_state: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) last read
        self._loaded = False
        self._checked = time.monotonic()
        self.reload()

    def reload(self) -> None:
        """Re-read the file when it changed; a file that became unreadable or malformed keeps the keys
        read before (a half-edited file must not lock every client out; the error is logged)."""
        try:
            stat = self.path.stat()
            state: tuple[int, int, int] | None = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except FileNotFoundError:
            state = None
        except OSError as exc:
            log.error("the API key file cannot be read (%s); keeping the keys read before", exc.strerror)
            return
        if self._loaded and state == self._file_state:
            return
        try:
            records = read_records(self.path)
        except ApiKeyFileError as exc:
            log.error("%s; keeping the keys read before", exc)
            return
        self._by_hash = {
            r.sha256: (
                r.sha256,
                Principal(
                    subject=r.name,
                    actions=self.roles.actions_for(r.roles),
                    partitions=None if r.partitions is None else frozenset(r.partitions),
                    method="api-key",
                    name=r.name,
                ),
            )
            for r in records
            if not r.revoked
        }
        self._file_state = state
        self._loaded = True

    def principal_for(self, key: str) -> Principal | None:
        """The principal of an active key, None for an unknown or revoked one."""
        now = time.monotonic()
        if now - self._checked >= _RECHECK_SECONDS:
            self.reload()
            self._checked = now
        digest = key_hash(key)
        found = self._by_hash.get(digest)
        if found is None:
            return None
        # the lookup was by the key's digest (its timing says nothing about the key); the final
        # comparison is in constant time all the same
        stored, principal = found
        return principal if hmac.compare_digest(stored, digest) else None
