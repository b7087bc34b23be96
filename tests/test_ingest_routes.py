"""Which STOW parts are prepared on the event loop (small, kept in memory, not deflated) and which in a
thread; the end-to-end STOW tests check that both routes store the same thing."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from test_e2e_common import make_instance

from dicomd.ingest.service import PREPARE_ON_LOOP_BYTES, prepare_on_loop

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
