"""Settings: defaults < TOML file < environment (DICOMD_*) < command-line flags.

Each setting is declared once, as a field of `Settings` made by `_setting()`: its type and default, its help
text and its rules. The environment variable DICOMD_<NAME>, the TOML key <name> and the flag
--<name-with-dashes> (`dicomd serve` has one per setting) follow from the name. Every setting is validated
once at start-up; an error names the setting and where its value came from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import orjson

DuplicatePolicy = Literal["reject", "overwrite"]

_T = TypeVar("_T")

_SPEC = "dicomd.setting"  # the key of a field's Setting in its metadata


class ConfigError(ValueError):
    """A setting has an invalid value; the message names it and its source."""


@dataclass(frozen=True)
class Setting(Generic[_T]):
    """One setting's documentation and rules; `name`, `kind`, `default` (and a Literal's choices) are
    filled in from its field of `Settings`."""

    help: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    ignore_case: bool = False  # choices match in any case; the value is kept in lower case
    check: Callable[[_T], _T] | None = None  # further rules: the value normalised, or ValueError(reason)
    shown_default: str = ""  # for `--help`, when the default is worked out at run time
    name: str = ""
    kind: type = str  # int, bool, str or Path
    default: Any = None

    @property
    def env(self) -> str:
        return f"DICOMD_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def default_text(self) -> str:
        return self.shown_default or str(self.default)

    @property
    def description(self) -> str:
        """The help text with the allowed range, for `--help`."""
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"{self.help} ({lo}-{hi})"
        if lo is not None:
            return f"{self.help} ({lo} or more)"
        return self.help

    def parse(self, raw: Any, source: str) -> _T:
        """The value of `raw` (text from the environment or a flag, or a TOML value), validated."""
        try:
            return self._convert(raw)
        except ValueError as exc:
            raise ConfigError(f"setting '{self.name}' (from {source}): {exc}") from None

    def _convert(self, raw: Any) -> Any:
        value: Any
        if self.kind is bool:
            value = _boolean(raw)
        elif self.kind is int:
            value = self._in_range(_integer(raw))
        elif self.kind is Path:
            value = Path(str(raw)).expanduser()
        else:
            value = str(raw)
            if self.choices:
                folded = value.lower() if self.ignore_case else value
                if folded not in self.choices:
                    raise ValueError(f"must be {self._choices_text()}, got {value!r}")
                value = folded
        return self.check(value) if self.check else value

    def _in_range(self, value: int) -> int:
        lo, hi = self.minimum, self.maximum
        if (lo is None or value >= lo) and (hi is None or value <= hi):
            return value
        if lo is not None and hi is not None:
            expected = f"between {lo} and {hi}"
        elif lo is not None:
            expected = {0: "zero or more", 1: "positive"}.get(lo, f"at least {lo}")
        else:
            expected = f"at most {hi}"
        raise ValueError(f"must be {expected}, got {value}")

    def _choices_text(self) -> str:
        if len(self.choices) == 2:
            return " or ".join(repr(c) for c in self.choices)
        return "one of " + ", ".join(self.choices)


def _integer(raw: Any) -> int:
    # bool is an int and float would be truncated: a TOML `true` or `1.5` is a mistake, not a number
    if isinstance(raw, bool | float):
        raise ValueError(f"expected an integer, got {raw!r}")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ValueError(f"expected an integer, got {raw!r}") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _directory(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise ValueError(f"must be a directory, got the file {str(path)!r}")
    return path


def _directory_text(value: str) -> str:
    _directory(Path(value).expanduser())
    return value


def _index_url(value: str) -> str:
    if value and not value.startswith(("sqlite:///", "postgresql")):
        raise ValueError(f"must start with sqlite:/// or postgresql+psycopg://, got {value!r}")
    return value


def _base_url(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def _origins(value: str) -> str:
    # browsers send an Origin without a trailing slash; CORSMiddleware compares whole strings
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ValueError(f"origins must be * or start with http:// or https://, got {origin!r}")
    return ",".join(origins)


def _storage_url(value: str) -> str:
    # (obstore's memory:// would give each worker process a store of its own)
    if value and not value.startswith(("file://", "s3://", "az://", "azure://", "abfs://", "gs://")):
        raise ValueError(f"must start with file://, s3://, az:// or gs://, got {value!r}")
    return value.rstrip("/")


def _comma_list(value: str) -> str:
    return ",".join(item.strip() for item in value.split(",") if item.strip())


# asymmetric signatures only: "none" and the HMAC family (a public key used as a shared secret) never
_SIGNATURE_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")


def _algorithms(value: str) -> str:
    algorithms = _comma_list(value)
    for algorithm in algorithms.split(",") if algorithms else []:
        if algorithm not in _SIGNATURE_ALGORITHMS:
            raise ValueError(f"must be among {', '.join(_SIGNATURE_ALGORITHMS)}, got {algorithm!r}")
    if not algorithms:
        raise ValueError("must name at least one algorithm")
    return algorithms


def _addresses(value: str) -> str:
    addresses = _comma_list(value)
    for address in addresses.split(",") if addresses else []:
        if address != "*":
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError:
                raise ValueError(f"must be IP addresses or networks, or *, got {address!r}") from None
    return addresses


def _hosts(value: str) -> str:
    hosts = _comma_list(value)
    for host in hosts.split(",") if hosts else []:
        if "/" in host or " " in host:
            raise ValueError(f"must be host names (no scheme or path), got {host!r}")
    return hosts


def _key_values(value: str) -> str:
    """key=value pairs separated by commas (the values themselves may not contain commas)."""
    pairs = _comma_list(value)
    for pair in pairs.split(",") if pairs else []:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            # the pair may hold a secret: name only its position
            raise ValueError("expected key=value pairs separated by commas")
    return pairs


# PS3.8 9.3.1.1: 1-16 characters of the default repertoire, no backslash or control characters
_AE_TITLE_MAX = 16


def _ae_title(title: str) -> str:
    stripped = title.strip()
    if not stripped or len(title.rstrip()) > _AE_TITLE_MAX:
        raise ValueError(f"AE titles are 1-{_AE_TITLE_MAX} characters, got {title!r}")
    if not stripped.isascii() or "\\" in stripped or any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise ValueError(f"AE titles are printable ASCII without backslashes, got {title!r}")
    return stripped


def _dicom_peers(value: str) -> str:
    """AE=host:port,... (C-MOVE destinations)."""
    peers = _comma_list(value)
    for peer in peers.split(",") if peers else []:
        title, equals, address = peer.partition("=")
        host, colon, port = address.strip().rpartition(":")
        if not equals or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected AE=host:port entries separated by commas, got {peer!r}")
        _ae_title(title)
    return peers


def _dicom_callers(value: str) -> str:
    """AE or AE@host entries: the calling AE titles (and where they may call from) that may associate."""
    callers = _comma_list(value)
    for caller in callers.split(",") if callers else []:
        if caller == "*":
            continue
        title, _, host = caller.partition("@")
        _ae_title(title)
        if "@" in caller and (not host.strip() or " " in host.strip()):
            raise ValueError(f"expected AE or AE@host entries separated by commas, got {caller!r}")
    return callers


def _audit_log(value: str) -> str:
    value = value.strip()
    if value not in ("", "-", "off") and Path(value).expanduser().is_dir():
        raise ValueError(f"must be a file path, - or off, got the directory {value!r}")
    return value


def _setting(
    default: _T,
    help: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] = (),
    ignore_case: bool = False,
    check: Callable[[_T], _T] | None = None,
    shown_default: str = "",
) -> _T:
    """A field of `Settings` with its default and its `Setting` (help and rules)."""
    spec = Setting(
        help,
        minimum=minimum,
        maximum=maximum,
        choices=choices,
        ignore_case=ignore_case,
        check=check,
        shown_default=shown_default,
    )
    return field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Settings:
    """Every setting, each declared once with `_setting()`; `SETTINGS` below describes them.

    (RUF009 takes `_setting()` for a shared mutable default, but it returns a `dataclasses.field`.)
    """

    data_dir: Path = _setting(  # noqa: RUF009
        Path("dicomd-data"),
        "directory for the embedded index and object store (created if missing)",
        check=_directory,
    )
    host: str = _setting("127.0.0.1", "interface to listen on")
    port: int = _setting(8080, "TCP port to listen on", minimum=1, maximum=65535)
    workers: int = _setting(0, "worker processes; 0 = one per CPU core", minimum=0, maximum=256)
    index_url: str = _setting(
        "",
        "SQLAlchemy URL of the index: sqlite:///path.db or postgresql+psycopg://user@host/db",
        check=_index_url,
        shown_default="sqlite:///<data_dir>/index.db",
    )
    storage_path: str = _setting(
        "", "directory of the object store", check=_directory_text, shown_default="<data_dir>/objects"
    )
    # the choices come from the Literal type
    duplicate_policy: DuplicatePolicy = _setting(  # noqa: RUF009
        "reject", "what STOW does with an instance that is already stored"
    )
    bulk_threshold: int = _setting(
        1024, "binary values longer than this (bytes) are served as BulkDataURI in metadata", minimum=1
    )
    max_request_bytes: int = _setting(4 * 1024**3, "largest accepted STOW request body in bytes", minimum=1)
    commit_batch: int = _setting(256, "most instances written to the index in one group commit", minimum=1)
    log_level: str = _setting(
        "info", "log verbosity", choices=("critical", "error", "warning", "info", "debug"), ignore_case=True
    )
    base_url: str = _setting(
        "",
        "public base URL (scheme://host[:port][/path]) used in RetrieveURL / BulkDataURI behind a proxy",
        check=_base_url,
        shown_default="taken from each request",
    )
    header_timeout: int = _setting(
        30, "seconds a client may take to send a request's headers (idle new connections too)", minimum=1
    )
    body_timeout: int = _setting(
        60, "seconds a request body may go without delivering at least 1 KiB more", minimum=1
    )
    keep_alive_timeout: int = _setting(
        15, "seconds an idle keep-alive connection stays open between requests", minimum=1
    )
    max_connections: int = _setting(
        2048, "most open client connections (all workers); the longest-idle ones make room", minimum=1
    )
    delete_grace_period: int = _setting(
        3600, "seconds deleted or replaced objects are kept before removal (readers in flight)", minimum=0
    )
    cors_origins: str = _setting(
        "",
        "comma-separated origins browsers may call the API from (e.g. an OHIF viewer); * = any",
        check=_origins,
        shown_default="none",
    )
    # ---- object storage and scale-out (docs/deployment.md) ------------------------------------------
    storage_url: str = _setting(
        "",
        "object store: file:///dir, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix",
        check=_storage_url,
        shown_default="file://<storage_path>",
    )
    storage_options: str = _setting(
        "",
        "the object store's own options as key=value,... (e.g. aws_endpoint=http://...,aws_region=...); "
        "credentials also come from the backend's usual environment variables",
        check=_key_values,
        shown_default="none",
    )
    staging_dir: str = _setting(
        "",
        "local directory where instances are staged before upload (cloud object stores)",
        check=_directory_text,
        shown_default="<data_dir>/staging",
    )
    storage_timeout: int = _setting(
        30, "seconds an object store request may take before it fails (503 to clients)", minimum=1
    )
    db_pool_size: int = _setting(8, "index (database) connections per worker process", minimum=1, maximum=256)
    db_timeout: int = _setting(
        10, "seconds to wait for an index connection or lock before answering 503", minimum=1
    )
    orphan_grace_period: int = _setting(
        3600,
        "seconds an object may exist in the object store without an index row before the sweep removes it "
        "(longer than any upload and commit can take: S3 dates a multipart object by its upload's start)",
        minimum=600,
    )
    # ---- authentication and authorisation (docs/security.md) ----------------------------------------
    oidc_issuer: str = _setting(
        "",
        "OpenID Connect issuer URL whose tokens are accepted (enables authentication)",
        check=_base_url,
        shown_default="none",
    )
    oidc_audience: str = _setting("", "required audience (aud) of access tokens", shown_default="none")
    oidc_jwks_url: str = _setting(
        "",
        "JWKS URL (when the issuer publishes no discovery document)",
        check=_base_url,
        shown_default="from the issuer's discovery document",
    )
    oidc_algorithms: str = _setting("RS256,ES256", "accepted token signature algorithms", check=_algorithms)
    oidc_roles_claim: str = _setting("roles", "token claim holding the caller's roles")
    oidc_partitions_claim: str = _setting(
        "dicomd_partitions", "token claim listing the data partitions a caller may use (absent = all)"
    )
    clock_skew: int = _setting(
        60, "seconds of clock difference tolerated on token times", minimum=0, maximum=600
    )
    roles: str = _setting(
        "",
        "extra role (or scope) to actions mapping: role=action+action;... (actions: read, write, delete, "
        "manage); the built-in roles are 'Data Owner' (all) and 'Data Reader' (read)",
        shown_default="built-in roles only",
    )
    api_keys_file: str = _setting(
        "", "file of hashed API keys (dicomd api-key add); enables authentication", shown_default="none"
    )
    allow_unauthenticated: bool = _setting(
        False, "serve without authentication on a non-loopback address (never for PHI)"
    )
    # ---- data partitions -----------------------------------------------------------------------------
    partitions: bool = _setting(False, "serve the /v{n}/partitions/{name}/... routes (multi-tenancy)")
    create_partitions: bool = _setting(
        True, "create a partition on the first store into it (with partitions on)"
    )
    # ---- audit trail ------------------------------------------------------------------------------------
    audit_log: str = _setting(
        "",
        "where audit events go: a file path, - for standard output, off",
        check=_audit_log,
        shown_default="<data_dir>/audit.jsonl",
    )
    audit_header_bytes: int = _setting(
        1024, "most bytes of client-supplied audit headers kept per event", minimum=0, maximum=65536
    )
    # ---- transport ----------------------------------------------------------------------------------------
    tls_cert_file: str = _setting(
        "", "TLS certificate chain (PEM); enables HTTPS; reloaded when it changes", shown_default="none"
    )
    tls_key_file: str = _setting("", "TLS private key (PEM)", shown_default="none")
    trusted_hosts: str = _setting(
        "",
        "comma-separated Host header values accepted (others get 400); * = any",
        check=_hosts,
        shown_default="loopback names, the bind address and base_url's host",
    )
    forwarded_allow_ips: str = _setting(
        "127.0.0.1,::1",
        "comma-separated proxy addresses (or *) whose X-Forwarded-For / -Proto are believed: the client "
        "address of audit events and rate limits",
        check=_addresses,
    )
    rate_limit: int = _setting(
        0, "requests per second one client address may make (per worker share); 0 = unlimited", minimum=0
    )
    # ---- pixel services: transcoding, rendered, thumbnails ------------------------------------------
    pixel_workers: int = _setting(
        2, "threads per worker process that decode, encode and render pixel data", minimum=1, maximum=64
    )
    pixel_memory_limit: int = _setting(
        512 * 1024**2,
        "most bytes of decoded pixel data one request may hold at once (transcoding works frame by frame); "
        "beyond it the representation is refused with 406",
        minimum=1024**2,
    )
    render_cache_bytes: int = _setting(
        64 * 1024**2, "bytes of rendered images and thumbnails cached per worker process; 0 = none", minimum=0
    )
    # ---- DIMSE gateway (docs/conformance-statement.md) ------------------------------------------------
    dicom_port: int = _setting(
        0,
        "TCP port of the DICOM (DIMSE) listener: C-ECHO/STORE/FIND/MOVE/GET; 0 = off",
        minimum=0,
        maximum=65535,
    )
    dicom_ae_title: str = _setting("DICOMD", "the DICOM listener's own AE title", check=_ae_title)
    dicom_peers: str = _setting(
        "",
        "C-MOVE destinations as AE=host:port,... (a move to an AE not listed is refused)",
        check=_dicom_peers,
        shown_default="none",
    )
    dicom_allowed_callers: str = _setting(
        "",
        "calling AE titles that may associate, as AE or AE@host,...; * = any (others are rejected)",
        check=_dicom_callers,
        shown_default="none: only loopback callers",
    )
    dicom_max_associations: int = _setting(
        16, "most concurrent DICOM associations (more are rejected, transient)", minimum=1, maximum=1024
    )
    dicom_listeners: int = _setting(
        0, "DICOM listener processes sharing the DICOM port; 0 = one per CPU core", minimum=0, maximum=64
    )
    dicom_max_pdu: int = _setting(
        262144, "largest P-DATA PDU accepted, in bytes", minimum=4096, maximum=2**31 - 1
    )
    dicom_timeout: int = _setting(
        60, "seconds a DICOM peer may stay silent (network, ACSE and DIMSE timeouts)", minimum=1
    )
    dicom_tls: bool = _setting(
        False, "speak TLS on the DICOM port, with tls_cert_file and tls_key_file (peers: DICOM TLS profile)"
    )
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    # ---- derived values -------------------------------------------------------------------------
    @property
    def effective_workers(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    @property
    def effective_dicom_listeners(self) -> int:
        return self.dicom_listeners or max(1, os.cpu_count() or 1)

    @property
    def effective_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def effective_storage_url(self) -> str:
        return self.storage_url or self.effective_storage_path.as_uri()

    @property
    def effective_staging_dir(self) -> Path:
        return Path(self.staging_dir).resolve() if self.staging_dir else (self.data_dir / "staging").resolve()

    @property
    def effective_audit_log(self) -> str:
        """A file path, "-" (standard output) or "off"."""
        return self.audit_log or str((self.data_dir / "audit.jsonl").resolve())

    @property
    def authentication_enabled(self) -> bool:
        return bool(self.oidc_issuer or self.oidc_jwks_url or self.api_keys_file)

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


def _declared() -> dict[str, Setting[Any]]:
    """Each field's Setting, completed from the field: name, default and kind (a Literal gives choices)."""
    hints = typing.get_type_hints(Settings)
    declared: dict[str, Setting[Any]] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "sources":
            continue
        spec = f.metadata.get(_SPEC)
        if not isinstance(spec, Setting):
            raise TypeError(f"Settings.{f.name} must be declared with _setting()")
        hint, choices = hints[f.name], spec.choices
        if typing.get_origin(hint) is Literal:
            hint, choices = str, tuple(typing.get_args(hint))
        if hint not in (int, bool, str, Path):
            raise TypeError(f"Settings.{f.name}: unsupported type {hint!r}")
        # a rule that does not fit the type would be ignored without a word
        if hint is not int and (spec.minimum is not None or spec.maximum is not None):
            raise TypeError(f"Settings.{f.name}: minimum and maximum apply to int settings only")
        if hint is not str and choices:
            raise TypeError(f"Settings.{f.name}: choices apply to text settings only")
        declared[f.name] = dataclasses.replace(
            spec, name=f.name, kind=hint, choices=choices, default=f.default
        )
    return declared


SETTINGS: dict[str, Setting[Any]] = _declared()
"""Every setting by name, in declaration order."""


def load_settings(
    *, config_file: str | os.PathLike[str] | None = None, flags: dict[str, Any] | None = None
) -> Settings:
    """Merge defaults, the TOML file, DICOMD_* environment variables and flags (highest wins).

    `flags` maps setting names to a flag's value, None for a flag that was not given.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(name: str, raw: Any, source: str) -> None:
        values[name] = SETTINGS[name].parse(raw, source)
        sources[name] = source

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
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: 'dicomd' must be a table")
        for key, raw in table.items():
            name = key.replace("-", "_")
            if name not in SETTINGS:
                raise ConfigError(f"config file {path}: unknown setting '{key}'")
            put(name, raw, f"config file {path}")

    for spec in SETTINGS.values():
        if spec.env in os.environ:
            put(spec.name, os.environ[spec.env], f"environment variable {spec.env}")

    for name, raw in (flags or {}).items():
        if raw is not None:
            put(name, raw, f"flag {SETTINGS[name].flag}")

    return Settings(**values, sources=sources)
