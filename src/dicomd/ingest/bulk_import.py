"""`dicomd import`: load DICOM files from disk into the archive without HTTP.

For migrations and large test corpora. Files are copied (byte-exact) and parsed by a pool of processes
(both cores), then committed in large batches through the same path as STOW: staged objects are synced,
the index is committed, the objects are published. It may run while `dicomd serve` uses the same data
directory: writers of the two queue on the index's writer lock and object keys never collide.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicomd.index.store import Index, PreparedInstance
from dicomd.ingest.committer import STORED, commit_batch
from dicomd.ingest.prepare import PrepareJob, prepare_staged
from dicomd.storage.local import DICOM, METADATA, LocalObjectStore, new_key


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


def _stage_one(args: tuple[str, PrepareJob]) -> tuple[str, str, PreparedInstance | None, str]:
    """In a pool process: copy the file into staging, then prepare it as STOW does."""
    source, job = args
    try:
        shutil.copyfile(source, job.staged_dicom)
        outcome, prepared = prepare_staged(job)
    except OSError as exc:
        return source, job.key, None, str(exc)
    return source, job.key, prepared, "; ".join(outcome.messages)


def import_files(
    paths: Iterable[Path],
    index: Index,
    store: LocalObjectStore,
    *,
    processes: int,
    batch: int = 500,
    bulk_threshold: int = 1024,
    overwrite: bool = False,
) -> ImportReport:
    report = ImportReport()

    def job(path: Path) -> tuple[str, PrepareJob]:
        key = new_key()
        dicom, metadata = store.staged_path(key, DICOM), store.staged_path(key, METADATA)
        return str(path), PrepareJob(str(dicom), str(metadata), key, None, 2, 1, bulk_threshold)

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
        for source, key, prepared, error in pool.map(_stage_one, jobs, chunksize=16):
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
