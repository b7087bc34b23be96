"""The API key file under concurrent edits: `dicomd api-key add` and `revoke` run by several operators (or
scripts) at once lose no key and bring back no revoked one."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from dicomd.auth.api_keys import add_key, read_records, revoke_key


def _add_many(path: str, prefix: str) -> None:
    for n in range(15):
        add_key(Path(path), f"{prefix}-{n}", ("Data Reader",), None)


def test_concurrent_edits_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    add_key(path, "revoked-early", ("Data Owner",), None)
    context = multiprocessing.get_context("spawn")
    editors = [context.Process(target=_add_many, args=(str(path), f"p{i}")) for i in range(4)]
    for editor in editors:
        editor.start()
    assert revoke_key(path, "revoked-early")  # while the others add
    for editor in editors:
        editor.join(60)
        assert editor.exitcode == 0
    records = read_records(path)
    assert {r.name for r in records if not r.revoked} == {f"p{i}-{n}" for i in range(4) for n in range(15)}
    assert [r.name for r in records if r.revoked] == ["revoked-early"]
