"""Codec calls in processes of their own (dicomd.pixels.codec_processes): they leave the calling process
(whose event loop the codecs' GIL would stall), and a codec that crashes fails its frame without taking
the caller down."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
