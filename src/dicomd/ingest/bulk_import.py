"""`dicomd import`: load DICOM files from disk into the archive without HTTP.

For migrations and large test corpora. Files are copied (byte-exact) and parsed by a pool of processes
(both cores), then committed in large batches through the same path as STOW: staged objects are synced,
the index is committed, the objects are published. It may run while `dicomd serve` uses the same data
directory: writers of the two queue on the index's writer lock and object keys never collide.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicomd.index.schema import DEFAULT_PARTITION_KEY
from dicomd.index.store import Index, PreparedInstance
from dicomd.ingest.committer import STORED, commit_batch
from dicomd.ingest.prepare import PrepareJob, prepare_staged
from dicomd.storage import ObjectStore, Stager


@dataclass
class ImportReport:
    stored: int = 0
    already_stored: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, _dirs, files in os.walk(path):
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def _stage_one(stager: Stager, args: tuple[str, PrepareJob]) -> tuple[str, str, PreparedInstance | None, str]:
    """In a pool process: copy the file into the importer's staging, then prepare it as STOW does."""
    source, job = args
    try:
        stager.stage_file(job.key, source)
        outcome, prepared = prepare_staged(job, stager)
    except OSError as exc:
        return source, job.key, None, str(exc)
    return source, job.key, prepared, "; ".join(outcome.messages)


def import_files(
    paths: Iterable[Path],
    index: Index,
    store: ObjectStore,
    *,
    processes: int,
    batch: int = 500,
    bulk_threshold: int = 1024,
    overwrite: bool = False,
    partition_key: int = DEFAULT_PARTITION_KEY,
) -> ImportReport:
    report = ImportReport()

    def job(path: Path) -> tuple[str, PrepareJob]:
        return str(path), PrepareJob(
            store.new_key(),
            url_study=None,
            version=2,
            partition_key=partition_key,
            bulk_threshold=bulk_threshold,
        )

    jobs = (job(path) for path in iter_files(paths))
    pending: list[tuple[str, PreparedInstance]] = []

    def commit() -> None:
        results = commit_batch(index, store, [prepared for _, prepared in pending], overwrite=overwrite)
        for (source, _), result in zip(pending, results, strict=True):
            if result.status in STORED:
                report.stored += 1
            elif result.status in ("identical", "exists"):  # identical: the same bytes again
                report.already_stored += 1
            else:
                report.failed[source] = "the SOP Instance UID is stored under another study or series"
        pending.clear()

    with ProcessPoolExecutor(max_workers=processes) as pool:
        stage_one = functools.partial(_stage_one, store.stager())
        for source, key, prepared, error in pool.map(stage_one, jobs, chunksize=16):
            if prepared is None:
                store.discard_staged(key)
                report.failed[source] = error
                continue
            pending.append((source, prepared))
            if len(pending) >= batch:
                commit()
        if pending:
            commit()
    return report
