"""Who commits a STOW request's instances, in process: the worker's event loop itself for the last part
of a request when the worker has nothing else in progress (``connections.lone_request``), else the group
committer's thread, once for the parts received together (ingest/committer.py)."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomd.http import connections
from dicomd.ingest import committer as committer_module

from support.asgi import in_process, settings_for
from support.backends import backend_url
from support.dicom_files import make_instance, multipart
from support.dicomweb import unique_id

_MULTIPART = 'multipart/related; type="application/dicom"; boundary=dicomd-test-boundary'


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """Each group commit: its thread's name and its instance count."""
    seen: list[tuple[str, int]] = []
    real = committer_module.commit_batch

    def watching(index: Any, store: Any, items: list[Any], **kwargs: Any) -> Any:
        seen.append((threading.current_thread().name, len(items)))
        return real(index, store, items, **kwargs)

    monkeypatch.setattr(committer_module, "commit_batch", watching)
    yield seen


@pytest.fixture
async def lone_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, its worker taken to have no other request in progress."""
    monkeypatch.setattr(connections, "lone_request", lambda: True)
    with backend_url("sqlite", tmp_path) as url:
        async with in_process(settings_for(tmp_path / "data", url)) as client:
            yield client


async def _store(client: httpx.AsyncClient, count: int) -> None:
    body, _ = multipart([make_instance(patient_id=unique_id()) for _ in range(count)])
    r = await client.post("/v2/studies", content=body, headers={"Content-Type": _MULTIPART})
    assert r.status_code == 200, r.text
    assert len(r.json()["00081199"]["Value"]) == count


async def test_a_lone_one_instance_request_is_committed_on_the_event_loop(
    lone_client: httpx.AsyncClient, commits: list[tuple[str, int]]
) -> None:
    await _store(lone_client, 1)
    assert commits == [(threading.current_thread().name, 1)]


async def test_the_parts_of_a_request_received_together_share_one_commit_in_the_committers_thread(
    lone_client: httpx.AsyncClient, commits: list[tuple[str, int]]
) -> None:
    await _store(lone_client, 3)
    assert [size for _, size in commits] == [3]
    assert commits[0][0].startswith("dicomd-commit")
