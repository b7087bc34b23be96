"""The `dicomd` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dicomd import __version__
from dicomd.config import SETTINGS_HELP, ConfigError, Settings, load_settings

_SETTING_LINES = "\n".join(
    f"  {name:<18} {text} (env DICOMD_{name.upper()}, default {getattr(Settings(), name)!s})"
    for name, text in SETTINGS_HELP.items()
)
_CONFIG_HELP = f"""Start the DICOMweb server.

\b
Settings come from (lowest to highest priority): defaults, a TOML file
(--config or DICOMD_CONFIG), environment variables DICOMD_<NAME>, and flags.
TOML keys are the setting names below, at top level or under [dicomd].
\b
{_SETTING_LINES}
"""


def _settings_or_exit(config_file: str | None, flags: dict[str, object]) -> Settings:
    try:
        return load_settings(config_file=config_file, flags=flags)
    except ConfigError as exc:
        click.echo(f"dicomd: configuration error: {exc}", err=True)
        sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="dicomd")
def main() -> None:
    """dicomd - a self-hosted DICOMweb archive."""


@main.command(help=_CONFIG_HELP)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="data directory")
@click.option("--host", help="interface to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="TCP port (default 8080)")
@click.option("--workers", type=int, help="worker processes (default: one per core)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file")
@click.option("--index-url", help="index database URL")
@click.option(
    "--duplicate-policy", type=click.Choice(["reject", "overwrite"]), help="STOW of a stored instance"
)
@click.option("--log-level", help="critical, error, warning, info or debug")
def serve(config_file: str | None, **flags: object) -> None:
    from dicomd import logs
    from dicomd.app import SETTINGS_ENV, prepare

    settings = _settings_or_exit(config_file, flags)
    log_config = logs.configure(settings.log_level)
    prepare(settings)
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
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="data directory")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file")
@click.option("--index-url", help="index database URL")
@click.option("--duplicate-policy", type=click.Choice(["reject", "overwrite"]), help="stored instances")
@click.option("--processes", type=int, default=0, help="parser processes (default: one per core)")
def import_command(paths: tuple[Path, ...], config_file: str | None, processes: int, **flags: object) -> None:
    """Import DICOM files or directories (recursively) without HTTP; safe while the server runs."""
    import time

    from dicomd.app import prepare
    from dicomd.index.store import Index
    from dicomd.ingest.bulk_import import import_files
    from dicomd.storage.local import LocalObjectStore

    settings = _settings_or_exit(config_file, flags)
    prepare(settings)
    index = Index(settings.effective_index_url)
    started = time.monotonic()
    try:
        report = import_files(
            paths,
            index,
            LocalObjectStore(settings.effective_storage_path),
            processes=processes or settings.effective_workers,
            bulk_threshold=settings.bulk_threshold,
            overwrite=settings.duplicate_policy == "overwrite",
        )
    finally:
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
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="data directory")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file")
@click.option("--index-url", help="index database URL")
def optimize_command(config_file: str | None, **flags: object) -> None:
    """Refresh the index's query planner statistics from the stored data (after a large import, or
    now and then, e.g. daily from cron); safe while the server runs. SQLite starts with statistics
    estimated for a large archive; PostgreSQL's autovacuum keeps its own up to date."""
    import time

    from dicomd.app import prepare
    from dicomd.index.store import Index

    settings = _settings_or_exit(config_file, flags)
    prepare(settings)
    index = Index(settings.effective_index_url)
    started = time.monotonic()
    try:
        index.optimize()
    finally:
        index.close()
    click.echo(f"planner statistics refreshed in {time.monotonic() - started:.1f} s")
