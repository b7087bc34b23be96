"""``connections.lone_request``: whether a worker's event loop may commit a request's instances itself
(ingest/committer.py), judged from its guarded connections' phases."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dicomd.http import connections
from dicomd.http.connections import RECENT_RESPONSE, Limits, lone_request, protocol_class


class _Connection:
    """What the Guard keeps of a connection: its loop and since when it waits."""

    def __init__(self, loop: asyncio.AbstractEventLoop, since: float = 0.0) -> None:
        self.loop = loop
        self.since = since


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(connections, "_guard", None)  # restored after the test
    limits = Limits(header_timeout=10, body_timeout=10, keep_alive_timeout=5, max_connections=100)
    return protocol_class(limits).guard  # type: ignore[attr-defined]


async def test_one_request_in_progress_wholly_received_is_lone(guard: Any) -> None:
    loop = asyncio.get_running_loop()
    busy = _Connection(loop)
    guard.open.add(busy)
    assert lone_request()
    idle = _Connection(loop, since=loop.time() - 10 * RECENT_RESPONSE)  # keep-alive, long idle
    guard.open.add(idle)
    guard.waiting[idle] = None
    assert lone_request()


async def test_a_body_coming_in_another_request_or_one_just_answered_is_not_lone(guard: Any) -> None:
    loop = asyncio.get_running_loop()
    busy = _Connection(loop)
    guard.open.add(busy)
    guard.receiving.add(busy)  # its own body, or another's, still coming
    assert not lone_request()
    guard.receiving.clear()
    other = _Connection(loop)
    guard.open.add(other)  # another request in progress
    assert not lone_request()
    other.since = loop.time()  # answered just now: its client may send the next request at once
    guard.waiting[other] = None
    assert not lone_request()


def test_unguarded_connections_are_never_lone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "_guard", None)
    assert not lone_request()
