"""`dicomd import`'s pipeline (ingest/bulk_import.py), in process: real parser processes, real SQLite and
real files. A small file is read once (staged, checksummed and parsed from the same bytes), a larger one
streamed; the commits run in a thread of their own while the parsers go on."""

from __future__ import annotations

import gc
import sqlite3
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dicomd import cli
from dicomd.index import Index
from dicomd.ingest import bulk_import
from dicomd.ingest.bulk_import import import_files
from dicomd.ingest.import_journal import ImportJournal, SourceFile
from dicomd.process_tuning import GC_THRESHOLDS, SWITCH_INTERVAL
from dicomd.storage import METADATA
from dicomd.storage.local import LocalObjectStore

from support.dicom_files import TEST_FILES, make_instance


class Archive:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True)
        self.db = root / "index.db"
        self.index = Index(f"sqlite:///{self.db}")
        self.index.migrate()
        self.store = LocalObjectStore(root / "objects")

    def objects(self) -> dict[str, tuple[bytes, bytes]]:
        """Each stored instance's DICOM object and metadata object, by SOP Instance UID."""
        with sqlite3.connect(self.db) as db:
            keys = db.execute("SELECT sop_instance_uid, object_key FROM instance").fetchall()
        return {sop: (self.store.read(key), self.store.read(key, METADATA)) for sop, key in keys}

    def close(self) -> None:
        self.store.close()
        self.index.close()


def sources(folder: Path, count: int) -> dict[Path, bytes]:
    folder.mkdir()
    files = {}
    for i in range(count):
        data = make_instance(InstanceNumber=i + 1)
        path = folder / f"{i:03}.dcm"
        path.write_bytes(data)
        files[path] = data
    return files


def test_read_once_and_streamed_files_store_the_same_bytes_and_metadata(tmp_path: Path) -> None:
    """Every bundled file (deflated, big endian, encapsulated, odd ones), through both ways in."""
    held, streamed = Archive(tmp_path / "held"), Archive(tmp_path / "streamed")
    try:
        first = import_files([TEST_FILES], held.index, held.store, processes=2)
        second = import_files([TEST_FILES], streamed.index, streamed.store, processes=2, read_whole=0)
        assert first.stored > 60 and (first.stored, first.failed) == (second.stored, second.failed)
        one, other = held.objects(), streamed.objects()
        assert one == other and len(one) == first.stored
        originals = {path.read_bytes() for path in TEST_FILES.rglob("*") if path.is_file()}
        assert all(dicom in originals for dicom, _ in one.values())  # byte-exact copies
    finally:
        held.close()
        streamed.close()


def test_the_parsers_go_on_while_a_batch_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first commit waits until more files than a batch and the parsers' queue hold were prepared:
    it would wait forever (here: 20 s, then fail) if the commit held up the parsers' results."""
    files = sources(tmp_path / "in", 24)
    archive = Archive(tmp_path / "archive")
    monkeypatch.setattr(bulk_import, "_CHUNK", 1)
    monkeypatch.setattr(bulk_import, "_IN_FLIGHT_PER_PROCESS", 1)
    staging = Path(archive.store.stager().staged_file("x")).parent
    real_commit = bulk_import.commit_batch
    waited: list[bool] = []

    def first_commit_waits(*args: Any, **kwargs: Any) -> Any:
        if not waited:
            reached = False
            for _ in range(400):
                if len(list(staging.glob("*.dcm"))) >= 6:  # 2 committing, 4 prepared meanwhile
                    reached = True
                    break
                threading.Event().wait(0.05)
            waited.append(reached)
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(bulk_import, "commit_batch", first_commit_waits)
    try:
        report = import_files([tmp_path / "in"], archive.index, archive.store, processes=1, batch=2)
        assert waited == [True]
        assert report.stored == 24
        assert {dicom for dicom, _ in archive.objects().values()} == set(files.values())
    finally:
        archive.close()


def test_a_failed_commit_ends_the_import_and_journals_only_what_was_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = sources(tmp_path / "in", 12)
    archive = Archive(tmp_path / "archive")
    journal = ImportJournal(tmp_path / "journal.sqlite")
    real_commit = bulk_import.commit_batch
    calls: list[int] = []

    def second_commit_fails(index: Index, store: Any, items: list[Any], **kwargs: Any) -> Any:
        calls.append(len(items))
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_commit(index, store, items, **kwargs)

    monkeypatch.setattr(bulk_import, "commit_batch", second_commit_fails)
    monkeypatch.setattr(bulk_import, "_CHUNK", 1)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            import_files(
                [tmp_path / "in"], archive.index, archive.store, processes=1, batch=2, journal=journal
            )
        stored = archive.objects()
        assert len(stored) == calls[0] and {d for d, _ in stored.values()} <= set(files.values())
        # the journal names exactly the committed files: a run again reads all the others
        recorded = journal.lookup([SourceFile(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
        assert {sop for _, sop in recorded.values()} == set(stored)
    finally:
        journal.close()
        archive.close()


def _interpreter_settings() -> tuple[tuple[int, int, int], int, float]:
    return gc.get_threshold(), gc.get_freeze_count(), sys.getswitchinterval()


def test_the_importer_and_its_parser_processes_run_tuned_as_workers_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with the default collector thresholds, collections took ~5% of an import's CPU (the importer's
    # full collections walked its pending batch while the parsers waited on it)
    initializers = []

    class Pool(ProcessPoolExecutor):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            initializers.append(kwargs.get("initializer"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bulk_import, "ProcessPoolExecutor", Pool)
    sources(tmp_path / "in", 2)
    data = tmp_path / "data"
    before = _interpreter_settings()
    try:
        result = CliRunner().invoke(cli.main, ["import", "--data-dir", str(data), str(tmp_path / "in")])
        assert result.exit_code == 0, result.output
        threshold, frozen, interval = _interpreter_settings()
    finally:
        gc.set_threshold(*before[0])
        gc.unfreeze()
        sys.setswitchinterval(before[2])
    assert "stored 2" in result.output
    assert (threshold, interval) == (GC_THRESHOLDS, SWITCH_INTERVAL) and frozen > 0
    assert initializers and initializers[0] is not None
    with ProcessPoolExecutor(1, initializer=initializers[0]) as pool:
        threshold, frozen, interval = pool.submit(_interpreter_settings).result()
    assert (threshold, interval) == (GC_THRESHOLDS, SWITCH_INTERVAL) and frozen > 0
