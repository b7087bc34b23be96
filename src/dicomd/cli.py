"""The `dicomd` command."""

from __future__ import annotations

import contextlib
import os
import sys
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
    """Turn the index's lock and database errors into one clear line and exit code 1, not a traceback."""
    from sqlalchemy.exc import OperationalError

    from dicomd.index.store import IndexBusy

    try:
        yield
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
    from dicomd.startup import prepare

    settings = _settings_or_exit(config_file, flags)
    log_config = logs.configure(settings.log_level)
    with _index_errors():
        prepare(settings, lock_timeout=_LOCK_TIMEOUT)
    os.environ[SETTINGS_ENV] = settings.to_json()
    click.echo(
        f"dicomd {__version__} serving DICOMweb on http://{settings.host}:{settings.port}/v2/ "
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


@main.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_setting_options("data_dir")
@_CONFIG_OPTION
@_setting_options(
    "index_url", "duplicate_policy", "storage_path", "storage_url", "storage_options", "staging_dir"
)
@click.option("--processes", type=int, default=0, help="parser processes (default: one per core)")
@_lock_timeout_option
def import_command(
    paths: tuple[Path, ...], config_file: str | None, processes: int, lock_timeout: float, **flags: object
) -> None:
    """Import DICOM files or directories (recursively) without HTTP; safe while the server runs."""
    import time

    from dicomd.index.store import Index
    from dicomd.ingest.bulk_import import import_files
    from dicomd.startup import prepare
    from dicomd.storage import open_store

    settings = _settings_or_exit(config_file, flags)
    with _index_errors():
        prepare(settings, lock_timeout=lock_timeout)
        index = Index(settings.effective_index_url, lock_timeout=lock_timeout)
        store = open_store(settings)
        started = time.monotonic()
        try:
            report = import_files(
                paths,
                index,
                store,
                processes=processes or settings.effective_workers,
                bulk_threshold=settings.bulk_threshold,
                overwrite=settings.duplicate_policy == "overwrite",
            )
        finally:
            store.close()
            index.close()
    seconds = time.monotonic() - started
    for source, reason in sorted(report.failed.items()):
        click.echo(f"failed: {source}: {reason}", err=True)
    click.echo(
        f"stored {report.stored}, already stored {report.already_stored}, failed {len(report.failed)} "
        f"in {seconds:.1f} s ({report.stored / max(seconds, 1e-9):.0f} instances/s)"
    )
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
