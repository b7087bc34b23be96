"""Codec calls in processes of their own (dicomd.pixels.codec_processes): they leave the calling process
(whose event loop the codecs' GIL would stall), and a codec that crashes fails its frame without taking
the caller down."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomd.pixels import codec_processes
from dicomd.pixels.codec_processes import CodecCrashed, CodecProcesses


def _crash() -> int:
    os._exit(3)  # what a segfaulting codec looks like to the pool


@pytest.fixture
def processes() -> Iterator[CodecProcesses]:
    pool = CodecProcesses(1)
    codec_processes.use(pool)
    yield pool
    codec_processes.use(None)
    pool.close()


def test_frames_are_coded_in_another_process(processes: CodecProcesses) -> None:
    assert codec_processes.run(os.getpid) != os.getpid()


def test_without_codec_processes_everything_is_coded_here() -> None:
    assert codec_processes.run(os.getpid) == os.getpid()


def test_a_crashing_codec_fails_its_frame_and_the_next_frame_works(processes: CodecProcesses) -> None:
    with pytest.raises(CodecCrashed):
        codec_processes.run(_crash)
    assert codec_processes.run(os.getpid) != os.getpid()


def test_a_codec_process_exits_when_its_worker_is_killed(tmp_path: Path) -> None:
    """A worker killed with SIGKILL cannot stop its pool: its codec processes notice and exit."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, time\n"
        "from dicomd.pixels import codec_processes\n"
        "from dicomd.pixels.codec_processes import CodecProcesses\n"
        "if __name__ == '__main__':\n"
        "    codec_processes.use(CodecProcesses(1))\n"
        "    print(codec_processes.run(os.getpid), flush=True)\n"
        "    time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    codec = int(worker.stdout.readline())
    assert codec != worker.pid and Path(f"/proc/{codec}").exists()
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{codec}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(codec, os.WNOHANG)  # (not our child: only reaps if it were)
        time.sleep(0.1)
    assert not _alive(codec), "the codec process outlived its worker"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"
