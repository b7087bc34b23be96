"""The presentation contexts a C-MOVE proposes, the syntax each instance is sent in (dimse/retrieve.py,
dimse/q_syntax.py), and the wait for pynetdicom's reactor between C-STOREs, without a network."""

from __future__ import annotations

import threading
import time

import pytest
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from dicomd.dimse.q_syntax import choose_syntax
from dicomd.dimse.retrieve import MAX_PRESENTATION_CONTEXTS, reactor_resumed, storage_contexts
from dicomd.index.types import StoredInstance

from support.dicom_files import new_uid

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
DEFLATED, RLE = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.5"


def _stored(sop_class: str, syntax: str) -> StoredInstance:
    return StoredInstance("1.2", "1.2.3", new_uid(), sop_class, syntax, "key", 1, 1, "{}", "{}", 1)


def test_contexts_propose_the_stored_syntax_alone_then_the_conversions() -> None:
    instances = [_stored(str(CTImageStorage), EXPLICIT), _stored(str(CTImageStorage), RLE)]
    instances += [_stored(str(MRImageStorage), DEFLATED)]
    proposed = [
        (str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]) for cx in storage_contexts(instances)
    ]
    assert proposed == [
        (str(CTImageStorage), [EXPLICIT]),
        (str(CTImageStorage), [RLE]),
        (str(MRImageStorage), [DEFLATED]),
        (str(CTImageStorage), [IMPLICIT, EXPLICIT]),  # the RLE CT can be decoded
        (str(MRImageStorage), [EXPLICIT, IMPLICIT]),
    ]


def test_too_many_contexts_are_merged_per_sop_class() -> None:
    classes = [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, 71)]  # 70 classes x 2 syntaxes
    instances = [_stored(sop, ts) for sop in classes for ts in (EXPLICIT, RLE)]
    contexts = storage_contexts(instances)
    assert len(contexts) == 70
    assert [str(t) for t in contexts[0].transfer_syntax] == [EXPLICIT, IMPLICIT, RLE]
    many = [_stored(f"1.2.3.{n}", EXPLICIT) for n in range(200)]
    assert len(storage_contexts(many)) == MAX_PRESENTATION_CONTEXTS


@pytest.mark.parametrize(
    ("stored", "accepted", "chosen"),
    [
        (EXPLICIT, [IMPLICIT, EXPLICIT], EXPLICIT),
        (EXPLICIT, [IMPLICIT], IMPLICIT),
        (DEFLATED, [EXPLICIT], EXPLICIT),
        (DEFLATED, [DEFLATED, IMPLICIT], DEFLATED),
        (RLE, [EXPLICIT, IMPLICIT], EXPLICIT),  # decoded by the pixel services
        (RLE, [IMPLICIT], IMPLICIT),
        ("1.2.840.10008.1.2.2", [EXPLICIT], EXPLICIT),  # big endian: pixel data byte-swapped
        ("1.2.840.10008.1.2.4.100", [EXPLICIT, IMPLICIT], None),  # MPEG-2: no decoder here
        ("1.2.840.10008.1.2.4.90", ["1.2.840.10008.1.2.4.80"], None),  # no compressed conversions
        (IMPLICIT, [], None),
    ],
)
def test_choose_syntax(stored: str, accepted: list[str], chosen: str | None) -> None:
    assert choose_syntax(stored, accepted) == chosen


class _Reactor:
    """What reactor_resumed reads of a pynetdicom association."""

    def __init__(self, paused: bool) -> None:
        self._is_paused = paused
        self.is_established = True


def test_the_next_c_store_waits_for_the_reactor_to_resume() -> None:
    reactor = _Reactor(paused=True)  # the previous send_c_store resumed it; its thread has not run yet
    threading.Timer(0.05, lambda: setattr(reactor, "_is_paused", False)).start()
    started = time.monotonic()
    reactor_resumed(reactor)()  # type: ignore[arg-type]
    assert 0.04 < time.monotonic() - started < 0.4
    running = _Reactor(paused=False)
    started = time.monotonic()
    reactor_resumed(running)()  # type: ignore[arg-type]
    assert time.monotonic() - started < 0.01
    stuck = _Reactor(paused=True)
    started = time.monotonic()
    reactor_resumed(stuck)()  # type: ignore[arg-type]
    assert 0.4 < time.monotonic() - started < 2  # bounded
