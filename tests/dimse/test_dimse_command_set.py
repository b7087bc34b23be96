"""The command set encoder (dimse/command_set.py) against pydicom's, its reference: the command sets of
the messages the listener sends and receives, byte for byte, and what it leaves to pydicom."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import dimse_messages, dimse_primitives
from pynetdicom.dsutils import encode as pydicom_encode

from dicomd.dimse import command_set

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
SOP = "1.2.826.0.1.3680043.10.1234.123456789"  # odd length: padded
COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model, and its well-known instance
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
ONE_ELEMENT = b"\x08\x00\x18\x00\x02\x00\x00\x001\x00"  # a data set: SOPInstanceUID "1"


def _primitive(kind: str, **fields: Any) -> Any:
    primitive = getattr(dimse_primitives, kind)()
    for name, value in fields.items():
        setattr(primitive, name, value)
    return primitive


MESSAGES = [
    ("C_ECHO_RSP", _primitive("C_ECHO", MessageIDBeingRespondedTo=1, Status=0)),
    (
        "C_STORE_RQ",
        _primitive(
            "C_STORE",
            MessageID=3,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=SOP,
            Priority=2,
            MoveOriginatorApplicationEntityTitle="FINDSCU",
            MoveOriginatorMessageID=9,
            DataSet=BytesIO(ONE_ELEMENT),
        ),
    ),
    (
        "C_STORE_RSP",
        _primitive(
            "C_STORE",
            MessageIDBeingRespondedTo=3,
            AffectedSOPClassUID=CT,
            AffectedSOPInstanceUID=SOP,
            Status=0xA700,
            ErrorComment="out of storage space",
        ),
    ),
    ("C_FIND_RQ", _primitive("C_FIND", MessageID=65535, AffectedSOPClassUID=STUDY_ROOT_FIND, Priority=0)),
    (
        "C_FIND_RSP",
        _primitive(
            "C_FIND",
            MessageIDBeingRespondedTo=65535,
            AffectedSOPClassUID=STUDY_ROOT_FIND,
            Status=0xFF00,
            Identifier=BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "),
        ),
    ),
    (
        "C_FIND_RSP",
        _primitive(
            "C_FIND",
            MessageIDBeingRespondedTo=2,
            AffectedSOPClassUID=STUDY_ROOT_FIND,
            Status=0xC000,
            ErrorComment="relational queries are not supported (Modality)",  # odd length
            OffendingElement=[0x00080060, 0x0020000D],
        ),
    ),
    (
        "C_MOVE_RSP",
        _primitive(
            "C_MOVE",
            MessageIDBeingRespondedTo=5,
            AffectedSOPClassUID=STUDY_ROOT_MOVE,
            Status=0xFF00,
            NumberOfRemainingSuboperations=997,
            NumberOfCompletedSuboperations=3,
            NumberOfFailedSuboperations=0,
            NumberOfWarningSuboperations=0,
        ),
    ),
    ("C_CANCEL_RQ", _primitive("C_CANCEL", MessageIDBeingRespondedTo=5)),
    (
        "N_EVENT_REPORT_RQ",
        _primitive(
            "N_EVENT_REPORT",
            MessageID=11,
            AffectedSOPClassUID=COMMITMENT,
            AffectedSOPInstanceUID=COMMITMENT_INSTANCE,
            EventTypeID=1,
            EventInformation=BytesIO(ONE_ELEMENT),
        ),
    ),
    (
        "N_ACTION_RSP",
        _primitive(
            "N_ACTION",
            MessageIDBeingRespondedTo=12,
            AffectedSOPClassUID=COMMITMENT,
            AffectedSOPInstanceUID=COMMITMENT_INSTANCE,
            ActionTypeID=1,
            Status=0,
        ),
    ),
]


def _command_set(kind: str, primitive: Any) -> Dataset:
    message = getattr(dimse_messages, kind)()
    message.primitive_to_message(primitive)
    return message.command_set  # type: ignore[no-any-return]


@pytest.mark.parametrize(("kind", "primitive"), MESSAGES, ids=[kind for kind, _ in MESSAGES])
def test_command_sets_encode_as_pydicom_encodes_them(kind: str, primitive: Any) -> None:
    command = _command_set(kind, primitive)
    fast = command_set.encode_command_set(command)
    assert fast is not None, "the encoder knows every element of the listener's messages"
    assert fast == pydicom_encode(command, True, True)


def test_whole_messages_are_the_same_with_the_encoder_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """P-DATA fragments of every message, pydicom's encoding then the installed one (a small maximum PDU
    splits the command sets)."""
    monkeypatch.setattr(dimse_messages, "encode", dimse_messages.encode)  # undone after the test

    def fragments() -> list[list[Any]]:
        out = []
        for kind, primitive in MESSAGES:
            message = getattr(dimse_messages, kind)()
            message.primitive_to_message(primitive)
            out.append([p.presentation_data_value_list for p in message.encode_msg(1, 64)])
        return out

    reference = fragments()
    command_set.install()
    command_set.install()  # (once per process, however often it is called)
    assert getattr(dimse_messages.encode, "fast_command_sets", False)
    assert fragments() == reference


@pytest.mark.parametrize(
    "element",
    [
        ("ErrorComment", "Zürich"),  # not ASCII: pydicom's character set handling
        ("PatientID", "not a command element"),  # group 0010
        ("Status", 70000),  # out of range for US: pydicom's error
    ],
)
def test_what_it_does_not_know_is_left_to_pydicom(element: tuple[str, Any]) -> None:
    ds = Dataset()
    ds.MessageIDBeingRespondedTo = 1
    keyword, value = element
    setattr(ds, keyword, value)
    assert command_set.encode_command_set(ds) is None
    wrapped = command_set._with_fast_command_sets(pydicom_encode)
    assert wrapped(ds, True, True) == pydicom_encode(ds, True, True)
    assert wrapped(ds, False, True) == pydicom_encode(ds, False, True)  # (another syntax: pydicom's)
