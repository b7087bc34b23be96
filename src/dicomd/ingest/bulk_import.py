"""`dicomd import`: load DICOM files from disk into the archive without HTTP.

For migrations and large test corpora. Files are copied (byte-exact) and parsed by a pool of processes
(both cores; a small file is read once, then staged, checksummed and parsed from those bytes), then
committed in large batches through the same path as STOW: staged objects are synced, the index is
committed, the objects are published. The commits run in a thread of their own, one at a time, so the
parsers are fed while a batch's SQL and device flush are under way; the next batch grows meanwhile.
It may run while `dicomd serve` uses the same data directory: writers of the two queue on the index's
writer lock and object keys never collide.

A journal (ingest/import_journal.py) remembers each imported file's size and modification time: a run
that was interrupted, or run again, skips those files without reading them, once the index confirms
that their instances are still stored. Only a bounded number of files is in flight between the walk, the
parser processes and the commits, so memory stays flat over millions of files.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dicomd.index.schema import DEFAULT_PARTITION_KEY
from dicomd.index.store import Index, PreparedInstance
from dicomd.ingest.committer import STORED, commit_batch
from dicomd.ingest.import_journal import ImportJournal, JournalEntry, SourceFile
from dicomd.ingest.prepare import PrepareJob, prepare_staged
from dicomd.ingest.shared_flush import SharedFlush
from dicomd.process_tuning import tune_for_throughput
from dicomd.storage import ObjectStore, Stager, content_checksum

_CHUNK = 32  # files per task sent to a parser process
_IN_FLIGHT_PER_PROCESS = 4  # tasks queued per parser process: enough to keep it busy, no more
_SKIP_CHECK = 512  # journal hits confirmed against the index at once
_MAX_BATCHES = 2  # a batch grows to this many times its size while the previous one commits
READ_WHOLE = 4 << 20  # files up to this size are read into memory once, larger ones streamed

# what a parser process returns per file: (staged key, its (size, CRC-32), the prepared instance or
# None, the failure reason)
_Staged = tuple[str, tuple[int, int], PreparedInstance | None, str]


@dataclass
class ImportReport:
    """Counts so far (the progress display reads them while the import runs) and, at the end, totals."""

    found: int = 0  # files seen by the counting walk (the total, once `counted`)
    counted: bool = False
    stored: int = 0
    already_stored: int = 0  # parsed and found stored (identical, or kept by the duplicate policy)
    skipped: int = 0  # found in the journal unchanged and still stored: not read at all
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    interrupted: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.stored + self.already_stored + self.skipped + len(self.failed)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield path


def _sources(paths: Iterable[Path], report: ImportReport) -> Iterator[SourceFile]:
    for path in iter_files(paths):
        try:
            st = path.stat()
        except OSError as exc:
            report.failed[str(path)] = exc.strerror or str(exc)
            continue
        yield SourceFile(str(path.absolute()), st.st_size, st.st_mtime_ns)


def _count(paths: list[Path], report: ImportReport, stop: threading.Event) -> None:
    """The total for the progress display, walked in a thread of its own (a walk of a million files
    takes seconds; the import starts at once). It counts the names iter_files would yield without
    building or sorting them: this thread shares the importer's GIL."""
    for path in paths:
        if not path.is_dir():
            report.found += 1
            continue
        for _, _, files in os.walk(path):
            report.found += len(files)
            if stop.is_set():
                return
    report.counted = True


def _read_whole(source: str, limit: int) -> bytes | None:
    """The file's bytes when it holds at most ``limit`` (most do), else None: it is then copied in
    chunks and parsed from the staged copy."""
    with open(source, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size > limit:
            return None
        return f.readall()


def _stage_chunk(stager: Stager, read_whole: int, jobs: list[tuple[str, PrepareJob]]) -> list[_Staged]:
    """In a pool process: copy each file into the importer's staging, then prepare it as STOW does. A
    small file is read once: staged, checksummed and parsed from the same bytes."""
    out: list[_Staged] = []
    for source, job in jobs:
        try:
            data = _read_whole(source, read_whole)
            if data is None:
                checksum = stager.stage_file(job.key, source)
            else:
                stager.stage_bytes(job.key, (data,))
                checksum = content_checksum((data,))
                job = dataclasses.replace(job, data=data)
            outcome, prepared = prepare_staged(job, stager)
        except OSError as exc:
            out.append((job.key, (0, 0), None, exc.strerror or str(exc)))
            continue
        out.append((job.key, checksum, prepared, "; ".join(outcome.messages)))
    return out


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
    journal: ImportJournal | None = None,
    report: ImportReport | None = None,
    stop: threading.Event | None = None,
    read_whole: int = READ_WHOLE,
) -> ImportReport:
    """Import the files. Setting `stop` (Ctrl-C, in the CLI) ends the import after committing what was
    already parsed; the report then says `interrupted`. `report` may be given to watch the counts from
    another thread."""
    report = report or ImportReport()
    stop = stop or threading.Event()
    paths = list(paths)
    stop_counting = threading.Event()
    threading.Thread(target=_count, args=(paths, report, stop_counting), daemon=True).start()
    pending: list[tuple[SourceFile, PreparedInstance]] = []
    committing: Future[None] | None = None  # the batch the commit thread works on

    def job(source: SourceFile) -> tuple[str, PrepareJob]:
        return source.path, PrepareJob(
            store.new_key(),
            url_study=None,
            version=2,
            partition_key=partition_key,
            bulk_threshold=bulk_threshold,
        )

    shared_flush = SharedFlush.where_possible(index, store, overwrite=overwrite)

    def commit_in_thread(batch: list[tuple[SourceFile, PreparedInstance]]) -> None:
        items = [prepared for _, prepared in batch]
        results = commit_batch(index, store, items, overwrite=overwrite, shared_flush=shared_flush)
        entries = []
        for (source, prepared), result in zip(batch, results, strict=True):
            if result.status in STORED:
                report.stored += 1
            elif result.status in ("identical", "exists"):  # identical: the same bytes again
                report.already_stored += 1
            else:
                report.failed[source.path] = "the SOP Instance UID is stored under another study or series"
                continue
            sop = prepared.item.parsed.sop_instance_uid
            entries.append(JournalEntry(source.path, source.size, source.mtime_ns, partition_key, sop))
        if journal is not None:
            journal.record(entries)  # after the index commit: a recorded file is stored

    def finish_commit() -> None:
        nonlocal committing
        if committing is not None:
            done, committing = committing, None
            done.result()  # raises what the commit raised

    def commit(*, last: bool = False) -> None:
        """Hand the pending files to the commit thread once it is done with the previous batch: the
        parsers' results keep arriving during a commit's SQL and device flush (both release the GIL),
        and the next batch grows meanwhile, up to _MAX_BATCHES times ``batch``."""
        nonlocal committing
        busy = committing is not None and not committing.done()
        if busy and len(pending) < batch * _MAX_BATCHES and not last:
            return
        finish_commit()
        committing = committer.submit(commit_in_thread, pending.copy())
        pending.clear()

    def take(chunk: list[SourceFile], results: list[_Staged]) -> None:
        for source, (key, checksum, prepared, error) in zip(chunk, results, strict=True):
            if prepared is None:
                store.discard_staged(key)
                report.failed[source.path] = error
                continue
            if shared_flush is not None:
                shared_flush.store.note_checksum(key, checksum)  # saves reading the file back
            pending.append((source, prepared))
            if len(pending) >= batch:
                commit()

    def unjournaled(candidates: list[SourceFile]) -> list[SourceFile]:
        """The candidates that must be read: not in the journal unchanged, or no longer stored."""
        if journal is None:
            return candidates
        known = journal.lookup(candidates)
        if not known:
            return candidates
        stored = index.stored_versions({(pk, sop) for pk, sop in known.values()})
        todo = []
        for source in candidates:
            entry = known.get(source.path)
            if entry is not None and entry in stored:
                report.skipped += 1
            else:
                todo.append(source)
        return todo

    # each task with the files it was given, in order: its results line up with them
    in_flight: deque[tuple[list[SourceFile], Future[list[_Staged]]]] = deque()
    with (
        ProcessPoolExecutor(max_workers=processes, initializer=_parser_process) as pool,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-commit") as committer,
    ):
        stage_chunk = functools.partial(_stage_chunk, store.stager(), read_whole)
        walk = _sources(paths, report)
        while not stop.is_set():
            candidates = [s for _, s in zip(range(_SKIP_CHECK), walk, strict=False)]
            if not candidates:
                break
            todo = unjournaled(candidates)
            for start in range(0, len(todo), _CHUNK):
                chunk = todo[start : start + _CHUNK]
                while len(in_flight) >= processes * _IN_FLIGHT_PER_PROCESS:
                    done, task = in_flight.popleft()
                    take(done, task.result())
                in_flight.append((chunk, pool.submit(stage_chunk, [job(s) for s in chunk])))
        # what is in flight was read already: finish it (a few seconds of work at most)
        while in_flight:
            done, task = in_flight.popleft()
            take(done, task.result())
        if pending:
            commit(last=True)
        finish_commit()
    if shared_flush is not None:
        shared_flush.forget_synced()  # all synced: no recovery needs to read them back
    report.interrupted = stop.is_set()
    stop_counting.set()
    return report


def _parser_process() -> None:
    """A parser process leaves Ctrl-C (sent to the whole process group) to the importer, which stops in
    order (a parser killed mid-file would break the pool), and is tuned as a worker is: with the default
    collector thresholds, collections took ~5% of an import's CPU."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_for_throughput()
