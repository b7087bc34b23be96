"""The `dicomd` command."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from dicomd import __version__
from dicomd.config import SETTINGS, ConfigError, Settings, load_settings

_F = TypeVar("_F", bound=Callable[..., Any])

_METAVARS: dict[type, str] = {int: "INTEGER", bool: "BOOLEAN", Path: "PATH", str: "TEXT"}


def _setting_options(*names: str) -> Callable[[_F], _F]:
    """Options --<name> for these settings, made from their declarations in `Settings`.

    A flag's value reaches `load_settings` as given (click converts nothing), so a bad value is reported
    like one from the environment or the TOML file: naming the setting and the flag.
    """

    def decorate(command: _F) -> _F:
        for name in reversed(names):  # click lists options in the order of the decorators, top down
            spec = SETTINGS[name]
            metavar = "[" + "|".join(spec.choices) + "]" if spec.choices else _METAVARS[spec.kind]
            help_text = f"{spec.description}  [env {spec.env}; default {spec.default_text}]"
            command = click.option(spec.flag, name, metavar=metavar, help=help_text)(command)
        return command

    return decorate


_CONFIG_OPTION = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="TOML configuration file  [env DICOMD_CONFIG]",
)

_SERVE_HELP = """Start the DICOMweb server.

\b
Every setting below can be given as a flag, as an environment variable
DICOMD_<NAME> (shown with each) or in a TOML file (--config or
DICOMD_CONFIG), keyed by the flag's name without the leading -- (index-url
or index_url), at top level or under [dicomd]. Priority, lowest to highest:
defaults, the TOML file, environment variables, flags.
"""


# How long a command that shares the data directory with a running server waits for the index's locks
# (the server holds them for one commit at a time: milliseconds).
_LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def _index_errors() -> Iterator[None]:
    """Turn the index's lock and database errors, and an unreachable object store, into one clear line and
    exit code 1, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from dicomd.index.store import IndexBusy, SchemaTooNew
    from dicomd.storage import StorageUnavailable

    try:
        yield
    except StorageUnavailable as exc:  # its message names the store without credentials
        click.echo(f"dicomd: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:  # an object store's invalid options (the message names keys, not values)
        click.echo(f"dicomd: configuration error: {exc}", err=True)
        sys.exit(2)
    except SchemaTooNew as exc:
        click.echo(f"dicomd: {exc}", err=True)
        sys.exit(1)
    except IndexBusy as exc:
        click.echo(f"dicomd: the index is busy: {exc}; try again later", err=True)
        sys.exit(1)
    except OperationalError as exc:
        reason = str(exc.orig) if exc.orig is not None else str(exc)
        click.echo(f"dicomd: the index database failed: {reason}", err=True)
        sys.exit(1)


def _settings_or_exit(config_file: str | None, flags: dict[str, object]) -> Settings:
    try:
        return load_settings(config_file=config_file, flags=flags)
    except ConfigError as exc:
        click.echo(f"dicomd: configuration error: {exc}", err=True)
        sys.exit(2)


_lock_timeout_option = click.option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=_LOCK_TIMEOUT,
    show_default=True,
    help="seconds to wait for the index's locks held by a running server (SQLite)",
)


@click.group()
@click.version_option(__version__, prog_name="dicomd")
def main() -> None:
    """dicomd - a self-hosted DICOMweb archive."""


@main.command(help=_SERVE_HELP)
@_CONFIG_OPTION
@_setting_options(*SETTINGS)
def serve(config_file: str | None, **flags: object) -> None:
    from dicomd import logs
    from dicomd.app import SETTINGS_ENV
    from dicomd.http.tls import check_tls_settings, tls_enabled
    from dicomd.startup import prepare

    settings = _settings_or_exit(config_file, flags)
    _check_authentication(settings)
    try:
        check_tls_settings(settings)
    except ConfigError as exc:
        click.echo(f"dicomd: configuration error: {exc}", err=True)
        sys.exit(2)
    log_config = logs.configure(settings.log_level)
    with _index_errors():
        prepare(settings, lock_timeout=_LOCK_TIMEOUT)
    os.environ[SETTINGS_ENV] = settings.to_json()
    click.echo(
        f"dicomd {__version__} serving DICOMweb on {'https' if tls_enabled(settings) else 'http'}://"
        f"{settings.host}:{settings.port}/v2/ "
        f"({settings.effective_workers} workers, data in {settings.data_dir.resolve()})",
        err=True,
    )
    from dicomd.server import serve as run_workers

    try:
        run_workers(
            settings.host,
            settings.port,
            settings.effective_workers,
            log_config,
            {SETTINGS_ENV: settings.to_json()},
        )
    except OSError as exc:
        click.echo(f"dicomd: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", err=True)
        sys.exit(1)


def _check_authentication(settings: Settings) -> None:
    """Exit 2 for authentication settings that cannot work, and for a server open to the network without
    authentication unless allowed; a warning line when authentication is off."""
    from dicomd.auth.checks import check_auth_settings, is_loopback

    try:
        check_auth_settings(settings)
    except ConfigError as exc:
        click.echo(f"dicomd: configuration error: {exc}", err=True)
        sys.exit(2)
    if settings.authentication_enabled:
        return
    if not is_loopback(settings.host):
        if not settings.allow_unauthenticated:
            click.echo(
                f"dicomd: refusing to serve on {settings.host} without authentication: anyone who can reach "
                "it could read, store and delete; configure oidc_issuer + oidc_audience or api_keys_file, "
                "or set allow_unauthenticated (never for PHI)",
                err=True,
            )
            sys.exit(2)
        click.echo(
            f"dicomd: warning: authentication is off on {settings.host} (allow_unauthenticated)", err=True
        )
    else:
        click.echo(
            "dicomd: warning: authentication is off (loopback only; set oidc_issuer or api_keys_file)",
            err=True,
        )


_FAILURES_SHOWN = 20  # failures listed on the terminal when they also go to --failed-list


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_setting_options("data_dir")
@_CONFIG_OPTION
@_setting_options(
    "index_url", "duplicate_policy", "storage_path", "storage_url", "storage_options", "staging_dir"
)
@click.option("--processes", type=int, default=0, help="parser processes (default: one per core)")
@click.option(
    "--failed-list",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write each failed file and its reason (tab-separated) to this file",
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the record of imported files that lets a run resume (default: <data_dir>/import-journal.sqlite)",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="seconds between progress lines when standard error is not a terminal",
)
@_lock_timeout_option
def import_command(
    paths: tuple[Path, ...],
    config_file: str | None,
    processes: int,
    failed_list: Path | None,
    journal: Path | None,
    progress_interval: float,
    lock_timeout: float,
    **flags: object,
) -> None:
    """Import DICOM files or directories (recursively) without HTTP; safe while the server runs.

    Progress goes to standard error (a bar on a terminal, else a line every --progress-interval seconds).
    Ctrl-C stops after the files in progress; running the same command again resumes, skipping unchanged
    files it imported."""
    import threading

    from dicomd.index.store import Index
    from dicomd.ingest.bulk_import import ImportReport, import_files
    from dicomd.ingest.import_journal import ImportJournal
    from dicomd.ingest.import_progress import ImportProgress, summary_counts
    from dicomd.process_tuning import tune_for_throughput
    from dicomd.startup import prepare
    from dicomd.stop_signals import StopSignals
    from dicomd.storage import open_store

    settings = _settings_or_exit(config_file, flags)
    stop = threading.Event()

    def interrupted(_signum: int) -> None:
        click.echo("\nimport: stopping after the files in progress (Ctrl-C again to abort)", err=True)

    with _index_errors():
        prepare(settings, lock_timeout=lock_timeout)
        index = Index(settings.effective_index_url, lock_timeout=lock_timeout)
        store = open_store(settings)
        tune_for_throughput()  # this process commits and collects the parsers' results
        record = ImportJournal(journal or settings.data_dir / "import-journal.sqlite")
        report = ImportReport()
        signals = StopSignals(stop, (signal.SIGINT,), interrupted, second_interrupts=True)
        try:
            with ImportProgress(report, every=progress_interval):
                import_files(
                    paths,
                    index,
                    store,
                    processes=processes or settings.effective_workers,
                    bulk_threshold=settings.bulk_threshold,
                    overwrite=settings.duplicate_policy == "overwrite",
                    journal=record,
                    report=report,
                    stop=stop,
                )
        finally:
            signals.restore()
            record.close()
            store.close()
            index.close()
    seconds = time.monotonic() - report.started
    failures = sorted(report.failed.items())
    if failed_list is not None:
        failed_list.write_text("".join(f"{source}\t{reason}\n" for source, reason in failures))
    shown = failures if failed_list is None else failures[:_FAILURES_SHOWN]
    for source, reason in shown:
        click.echo(f"failed: {source}: {reason}", err=True)
    if len(shown) < len(failures):
        click.echo(f"... and {len(failures) - len(shown)} more failures in {failed_list}", err=True)
    click.echo(
        f"{summary_counts(report)} in {seconds:.1f} s ({report.done / max(seconds, 1e-9):.0f} files/s, "
        f"{report.stored / max(seconds, 1e-9):.0f} instances/s stored)"
    )
    if report.interrupted:
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    sys.exit(1 if report.failed else 0)


@main.command("optimize")
@_setting_options("data_dir")
@_CONFIG_OPTION
@_setting_options("index_url")
@_lock_timeout_option
def optimize_command(config_file: str | None, lock_timeout: float, **flags: object) -> None:
    """Refresh the index's query planner statistics from the stored data (after a large import, or
    now and then, e.g. daily from cron); safe while the server runs. SQLite starts with statistics
    estimated for a large archive; PostgreSQL's autovacuum keeps its own up to date."""
    import time

    from dicomd.index.store import Index
    from dicomd.startup import prepare

    settings = _settings_or_exit(config_file, flags)
    with _index_errors():
        prepare(settings, lock_timeout=lock_timeout)
        index = Index(settings.effective_index_url, lock_timeout=lock_timeout)
        started = time.monotonic()
        try:
            index.optimize()
        finally:
            index.close()
    click.echo(f"planner statistics refreshed in {time.monotonic() - started:.1f} s")


@main.group("api-key")
def api_key_group() -> None:
    """Manage the API keys of service accounts and scripts (stored hashed in the file named by the
    api_keys_file setting; a running server picks up changes within a second)."""


def _api_keys_path(config_file: str | None, flags: dict[str, object]) -> tuple[Settings, Path]:
    settings = _settings_or_exit(config_file, flags)
    if not settings.api_keys_file:
        click.echo(
            "dicomd: no API key file: give --api-keys-file, DICOMD_API_KEYS_FILE or api_keys_file "
            "in the --config file",
            err=True,
        )
        sys.exit(2)
    return settings, Path(settings.api_keys_file).expanduser()


@contextlib.contextmanager
def _key_file_errors() -> Iterator[None]:
    from dicomd.auth.api_keys import ApiKeyFileError

    try:
        yield
    except ApiKeyFileError as exc:
        click.echo(f"dicomd: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"dicomd: the API key file cannot be written: {exc.strerror}", err=True)
        sys.exit(1)


@api_key_group.command("add")
@click.option("--name", required=True, help="the account's name (unique among keys not revoked)")
@click.option(
    "--role",
    "role_names",
    multiple=True,
    required=True,
    help="a role the key grants: 'Data Owner', 'Data Reader' or one of the roles setting (repeatable)",
)
@click.option(
    "--partition",
    "partition_names",
    multiple=True,
    help="a data partition the key may use (repeatable; default: all)",
)
@_CONFIG_OPTION
@_setting_options("api_keys_file", "roles")
def api_key_add(
    name: str,
    role_names: tuple[str, ...],
    partition_names: tuple[str, ...],
    config_file: str | None,
    **flags: object,
) -> None:
    """Create an API key and print it (once: only its hash is stored)."""
    from dicomd.auth.api_keys import add_key
    from dicomd.auth.roles import RoleMap

    settings, path = _api_keys_path(config_file, flags)
    try:
        roles = RoleMap(settings.roles)
    except ValueError as exc:
        click.echo(f"dicomd: configuration error: setting 'roles': {exc}", err=True)
        sys.exit(2)
    unknown = [r for r in role_names if r not in roles]
    if unknown:
        known = ", ".join(repr(r) for r in roles.roles)
        click.echo(f"dicomd: unknown role {unknown[0]!r}; roles: {known}", err=True)
        sys.exit(2)
    with _key_file_errors():
        key = add_key(path, name, role_names, partition_names or None)
    click.echo(key)
    click.echo(f"API key {name!r} added to {path}; it is shown only this once", err=True)


@api_key_group.command("list")
@_CONFIG_OPTION
@_setting_options("api_keys_file")
def api_key_list(config_file: str | None, **flags: object) -> None:
    """List the API keys (names, roles, partitions, dates; never the keys)."""
    from dicomd.auth.api_keys import read_records

    _, path = _api_keys_path(config_file, flags)
    with _key_file_errors():
        records = read_records(path)
    for record in records:
        partitions = "all" if record.partitions is None else ",".join(record.partitions)
        state = f"revoked {record.revoked}" if record.revoked else "active"
        click.echo(
            f"{record.name}\troles={','.join(record.roles)}\tpartitions={partitions}\t"
            f"created {record.created}\t{state}"
        )


@api_key_group.command("revoke")
@click.argument("name")
@_CONFIG_OPTION
@_setting_options("api_keys_file")
def api_key_revoke(name: str, config_file: str | None, **flags: object) -> None:
    """Revoke the API key NAME (a running server refuses it within a second)."""
    from dicomd.auth.api_keys import revoke_key

    _, path = _api_keys_path(config_file, flags)
    with _key_file_errors():
        revoked = revoke_key(path, name)
    if not revoked:
        click.echo(f"dicomd: no active API key named {name!r}", err=True)
        sys.exit(1)
    click.echo(f"API key {name!r} revoked")


@main.command("migrate")
@_setting_options("data_dir")
@_CONFIG_OPTION
@_setting_options("index_url")
@_lock_timeout_option
def migrate_command(config_file: str | None, lock_timeout: float, **flags: object) -> None:
    """Bring the index schema to this version's (safe while replicas run: one migrates, the others wait
    on the database's migration lock). `dicomd serve` does the same at start-up."""
    from dicomd.startup import migrate_index

    settings = _settings_or_exit(config_file, flags)
    with _index_errors():
        click.echo(migrate_index(settings, lock_timeout=lock_timeout))


@main.command("sweep")
@_setting_options("data_dir")
@_CONFIG_OPTION
@_setting_options("index_url", "storage_path", "storage_url", "storage_options", "staging_dir")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=None,
    help="seconds an unindexed object must have existed (default: orphan_grace_period); 0 only when no "
    "store is in flight anywhere",
)
def sweep_command(config_file: str | None, older_than: float | None, **flags: object) -> None:
    """Remove stored objects that no index row names (what a crash between upload and commit leaves), now;
    the servers run the same pass every few minutes, under the same lease."""
    from dicomd.startup import sweep_orphans

    settings = _settings_or_exit(config_file, flags)
    with _index_errors():
        result = sweep_orphans(settings, grace_period=older_than)
    if result is None:
        click.echo("another process is sweeping; nothing done")
        return
    click.echo(f"removed {result.removed} of {result.checked} objects older than the grace period")


def _dicom_peer_options(command: _F) -> _F:
    """The options of the DICOM client commands (echo, send)."""
    from dicomd.dimse.client import DEFAULT_CALLING_AE

    command = click.option(
        "--timeout",
        type=click.FloatRange(min=1),
        default=30.0,
        show_default=True,
        help="seconds to wait for the peer",
    )(command)
    command = click.option("--called-ae", default="DICOMD", show_default=True, help="the peer's AE title")(
        command
    )
    command = click.option(
        "--calling-ae", default=DEFAULT_CALLING_AE, show_default=True, help="this client's AE title"
    )(command)
    return command


def _peer_or_exit(address: str, calling_ae: str, called_ae: str, timeout: float) -> Any:
    from dicomd.dimse.client import Peer, parse_address

    try:
        host, port = parse_address(address)
    except ValueError as exc:
        click.echo(f"dicomd: {exc}", err=True)
        sys.exit(2)
    return Peer(host, port, calling_ae, called_ae, timeout)


@main.command("echo")
@click.argument("address")
@_dicom_peer_options
def echo_command(address: str, calling_ae: str, called_ae: str, timeout: float) -> None:
    """C-ECHO the DICOM peer at ADDRESS (HOST:PORT): exit 0 when it answers success."""
    from dicomd.dimse.client import ClientError, echo

    peer = _peer_or_exit(address, calling_ae, called_ae, timeout)
    try:
        status = echo(peer)
    except ClientError as exc:
        click.echo(f"dicomd: {exc}", err=True)
        sys.exit(1)
    click.echo(f"C-ECHO status 0x{status:04X}")
    sys.exit(0 if status == 0 else 1)


@main.command("send")
@click.argument("address")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_dicom_peer_options
def send_command(
    address: str, paths: tuple[Path, ...], calling_ae: str, called_ae: str, timeout: float
) -> None:
    """C-STORE DICOM files (directories recursively) to the peer at ADDRESS (HOST:PORT), each in its own
    transfer syntax, byte for byte; exit 0 when every file was stored."""
    from dicomd.dimse.client import ClientError, dicom_files, send

    peer = _peer_or_exit(address, calling_ae, called_ae, timeout)
    stored = warned = failed = 0
    try:
        for result in send(peer, dicom_files(paths)):
            if result.stored:
                stored += 1
                warned += result.status != 0
                if result.status != 0:
                    click.echo(
                        f"{result.path}: stored with warning 0x{result.status:04X} {result.comment}".rstrip()
                    )
            else:
                failed += 1
                what = "not sent" if result.status is None else f"status 0x{result.status:04X}"
                click.echo(f"{result.path}: {what} {result.comment}".rstrip(), err=True)
    except ClientError as exc:
        click.echo(f"dicomd: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{stored} stored ({warned} with warnings), {failed} failed")
    sys.exit(0 if failed == 0 else 1)
