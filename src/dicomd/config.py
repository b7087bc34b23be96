"""Settings: defaults < TOML file < environment (DICOMD_*) < command-line flags.

Every setting is validated once at start-up; an error names the setting and where its value came from.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

DuplicatePolicy = Literal["reject", "overwrite"]


class ConfigError(ValueError):
    """A setting has an invalid value; the message names it and its source."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("dicomd-data")
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # 0 = one per core
    index_url: str = ""  # "" = sqlite:///<data_dir>/index.db
    storage_path: str = ""  # "" = <data_dir>/objects
    duplicate_policy: DuplicatePolicy = "reject"
    bulk_threshold: int = 1024  # binary values above this many bytes become BulkDataURIs in metadata
    max_request_bytes: int = 4 * 1024**3  # one STOW request
    commit_batch: int = 256  # most instances in one group commit
    log_level: str = "info"
    base_url: str = ""  # "" = derive RetrieveURL/BulkDataURI from the request (set it behind a proxy)
    header_timeout: int = 30  # seconds from a connection's (or request's) first byte to its last header
    body_timeout: int = 60  # seconds a request body may go without delivering 1 KiB more
    keep_alive_timeout: int = 15  # seconds an idle keep-alive connection is kept open
    max_connections: int = 2048  # open client connections, all workers together
    delete_grace_period: int = 3600  # seconds a deleted or replaced object is kept for readers in flight
    cors_origins: str = ""  # comma-separated browser origins allowed to call the API ("*" = any)
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    # ---- derived values -------------------------------------------------------------------------
    @property
    def effective_workers(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def effective_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def effective_storage_path(self) -> Path:
        return (
            Path(self.storage_path).resolve() if self.storage_path else (self.data_dir / "objects").resolve()
        )

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["data_dir"] = str(self.data_dir)
        return orjson.dumps(data).decode()

    @classmethod
    def from_json(cls, text: str) -> Settings:
        data = orjson.loads(text)
        data["data_dir"] = Path(data["data_dir"])
        return cls(**data)


# name -> (type, help). The help text is shown by `dicomd serve --help`.
SETTINGS_HELP: dict[str, str] = {
    "data_dir": "directory for the embedded index and object store (created if missing)",
    "host": "interface to listen on",
    "port": "TCP port to listen on (1-65535)",
    "workers": "worker processes; 0 = one per CPU core",
    "index_url": "SQLAlchemy URL of the index: sqlite:///path.db or postgresql+psycopg://user@host/db",
    "storage_path": "directory of the object store (default <data_dir>/objects)",
    "duplicate_policy": "what STOW does with an instance that is already stored: reject or overwrite",
    "bulk_threshold": "binary values longer than this (bytes) are served as BulkDataURI in metadata",
    "max_request_bytes": "largest accepted STOW request body in bytes",
    "commit_batch": "most instances written to the index in one group commit",
    "log_level": "critical, error, warning, info or debug",
    "base_url": "public base URL (scheme://host[:port]) used in RetrieveURL / BulkDataURI behind a proxy",
    "header_timeout": "seconds a client may take to send a request's headers (idle new connections too)",
    "body_timeout": "seconds a request body may go without delivering at least 1 KiB more",
    "keep_alive_timeout": "seconds an idle keep-alive connection stays open between requests",
    "max_connections": "most open client connections (all workers); the longest-idle ones make room",
    "delete_grace_period": "seconds deleted or replaced objects are kept before removal (readers in flight)",
    "cors_origins": "comma-separated origins browsers may call the API from (e.g. an OHIF viewer); * = any",
}

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


_INT_SETTINGS = (
    "port",
    "workers",
    "bulk_threshold",
    "max_request_bytes",
    "commit_batch",
    "header_timeout",
    "body_timeout",
    "keep_alive_timeout",
    "max_connections",
    "delete_grace_period",
)


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Convert and validate one setting."""
    where = f"setting '{name}' (from {source})"
    if name == "data_dir":
        return Path(str(raw)).expanduser()
    if name in _INT_SETTINGS:
        return _coerce_int(name, raw, where)
    value = str(raw)
    if name == "duplicate_policy" and value not in ("reject", "overwrite"):
        raise ConfigError(f"{where}: must be 'reject' or 'overwrite', got {value!r}")
    if name == "log_level" and value.lower() not in _LOG_LEVELS:
        raise ConfigError(f"{where}: must be one of {', '.join(_LOG_LEVELS)}, got {value!r}")
    if name == "index_url" and value and not value.startswith(("sqlite:///", "postgresql")):
        raise ConfigError(f"{where}: must start with sqlite:/// or postgresql+psycopg://, got {value!r}")
    if name == "base_url" and value and not value.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: must start with http:// or https://, got {value!r}")
    if name == "cors_origins":
        origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"{where}: origins must be * or start with http:// or https://, got {origin!r}")
        return ",".join(origins)
    return value.rstrip("/") if name == "base_url" else value


def _coerce_int(name: str, raw: Any, where: str) -> int:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected an integer, got {raw!r}") from None
    if name == "port" and not 1 <= value <= 65535:
        raise ConfigError(f"{where}: must be between 1 and 65535, got {value}")
    if name == "workers" and not 0 <= value <= 256:
        raise ConfigError(f"{where}: must be between 0 and 256, got {value}")
    positive = ("bulk_threshold", "commit_batch", "max_request_bytes", "max_connections")
    positive += ("header_timeout", "body_timeout", "keep_alive_timeout")
    if name in positive and value < 1:
        raise ConfigError(f"{where}: must be positive, got {value}")
    if name == "delete_grace_period" and value < 0:
        raise ConfigError(f"{where}: must be zero or more, got {value}")
    return value


def load_settings(
    *, config_file: str | os.PathLike[str] | None = None, flags: dict[str, Any] | None = None
) -> Settings:
    """Merge defaults, the TOML file, DICOMD_* environment variables and flags (highest wins)."""
    names = [f.name for f in dataclasses.fields(Settings) if f.name != "sources"]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    config_file = config_file or os.environ.get("DICOMD_CONFIG") or None
    if config_file:
        path = Path(config_file)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: invalid TOML ({exc})") from None
        # settings may sit at top level or under [dicomd]
        table = table.get("dicomd", table)
        for key, raw in table.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"config file {path}: unknown setting '{key}'")
            values[name] = _coerce(name, raw, f"config file {path}")
            sources[name] = f"config file {path}"

    for name in names:
        env = f"DICOMD_{name.upper()}"
        if env in os.environ:
            values[name] = _coerce(name, os.environ[env], f"environment variable {env}")
            sources[name] = f"environment variable {env}"

    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        flag = "--" + name.replace("_", "-")
        values[name] = _coerce(name, raw, f"flag {flag}")
        sources[name] = f"flag {flag}"

    if "log_level" in values:
        values["log_level"] = values["log_level"].lower()
    return Settings(**values, sources=sources)
