"""Health answers are public and unlimited: a flood of them must not become a flood of database and
object-store round trips."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dicomd.index.store import Index

from support.asgi import in_process, settings_for


async def test_a_flood_of_health_checks_probes_the_dependencies_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = 0
    real_ping = Index.ping

    def counted(self: Index, *args: Any, **kwargs: Any) -> Any:
        nonlocal pings
        pings += 1
        return real_ping(self, *args, **kwargs)

    monkeypatch.setattr(Index, "ping", counted)
    async with in_process(settings_for(tmp_path / "data", f"sqlite:///{tmp_path / 'index.db'}")) as client:
        answers = await asyncio.gather(*(client.get("/health/check") for _ in range(50)))
        assert {a.status_code for a in answers} == {200}
        assert pings == 1
        await asyncio.sleep(1.1)  # then probed again
        assert (await client.get("/health/ready")).status_code == 200
        assert pings == 2
