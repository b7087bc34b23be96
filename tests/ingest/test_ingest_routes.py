"""Staging a received part, and which STOW parts are prepared on the event loop (small, kept in memory,
not deflated) and which in a thread; the end-to-end STOW tests check that both routes store the same
thing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom
import pytest

from dicomd.ingest.service import PREPARE_ON_LOOP_BYTES, IngestService, prepare_on_loop
from dicomd.storage import local
from dicomd.storage.local import LocalObjectStore

from support.dicom_files import make_instance

DEFLATED_FILE = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files" / "image_dfl.dcm"


def test_small_parts_kept_in_memory_are_prepared_on_the_loop() -> None:
    small = make_instance(rows=16, columns=16)
    assert len(small) <= PREPARE_ON_LOOP_BYTES
    assert prepare_on_loop(small)


def test_parts_over_the_limit_or_not_kept_go_to_a_thread() -> None:
    big = make_instance(rows=256, columns=256)
    assert len(big) > PREPARE_ON_LOOP_BYTES
    assert not prepare_on_loop(big)
    assert not prepare_on_loop(None)  # parsed from the staged file


def test_small_deflated_parts_go_to_a_thread() -> None:
    data = DEFLATED_FILE.read_bytes()
    assert len(data) <= PREPARE_ON_LOOP_BYTES
    assert not prepare_on_loop(data)  # it inflates in memory, possibly to 512 MiB


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _service(root: Path) -> IngestService:
    return IngestService(LocalObjectStore(root), None, bulk_threshold=1024)  # type: ignore[arg-type]


async def _body(chunks: list[bytes], fail: BaseException | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if fail is not None:
        raise fail


def test_stage_writes_the_part_and_keeps_small_ones(tmp_path: Path) -> None:
    service = _service(tmp_path)
    part = asyncio.run(service.stage(_body([b"ab", b"cd"])))
    assert service.store.staged_path(part.key).read_bytes() == b"abcd"
    assert part.data == b"abcd"
    big = asyncio.run(service.stage(_body([b"x" * PREPARE_ON_LOOP_BYTES, b"y"])))
    assert big.data is None  # over the limit: parsed from the staged file
    assert service.store.staged_path(big.key).stat().st_size == PREPARE_ON_LOOP_BYTES + 1


@pytest.mark.parametrize("fault", [ValueError("truncated part"), asyncio.CancelledError()])
def test_a_part_failing_or_cancelled_mid_body_leaves_no_file_and_no_descriptor(
    tmp_path: Path, fault: BaseException
) -> None:
    service = _service(tmp_path)
    service.store.staging  # noqa: B018 - claims the staging area (its lock stays open, by design)
    before = _open_fds()
    with pytest.raises(type(fault)):
        asyncio.run(service.stage(_body([b"ab"], fail=fault)))
    assert list(service.store.staging.iterdir()) == []
    assert _open_fds() == before


def test_a_failing_close_fails_the_part_and_removes_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = _service(tmp_path)
    real_close = os.close

    def failing_close(fd: int) -> None:  # e.g. a quota reported at close on a network file system
        real_close(fd)
        raise OSError(122, "Disk quota exceeded")

    monkeypatch.setattr(local.os, "close", failing_close)
    with pytest.raises(OSError, match="quota"):
        asyncio.run(service.stage(_body([b"ab"])))
    assert list(service.store.staging.iterdir()) == []
