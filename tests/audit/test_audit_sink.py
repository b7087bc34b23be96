"""The audit writer on its own: rotation by rename (logrotate without copytruncate)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dicomd.audit.sink import ROTATION_CHECK_SECONDS, AuditSink

from support.dicomweb import wait_for


def test_a_renamed_audit_file_is_followed_by_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(str(path))
    sink.open()
    try:
        sink.write(b'{"n":1}\n')
        assert wait_for(lambda: path.exists() and path.read_bytes() == b'{"n":1}\n', timeout=5)
        rotated = tmp_path / "audit.jsonl.1"
        os.rename(path, rotated)
        time.sleep(ROTATION_CHECK_SECONDS + 0.1)
        sink.write(b'{"n":2}\n')
        assert wait_for(lambda: path.exists() and path.read_bytes() == b'{"n":2}\n', timeout=5)
        assert rotated.read_bytes() == b'{"n":1}\n'
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        sink.close()
