"""Which transfer syntaxes a stored instance can be sent in over DIMSE, and the choice among those a peer
accepted.

An instance goes in its stored syntax when the peer accepts it. Otherwise only conversions that need no
pixel work are made: between implicit and explicit VR little endian, and from/to deflated explicit VR
little endian (pynetdicom re-encodes the data set for the accepted context). Encapsulated (compressed)
pixel data goes only in its own syntax, and explicit VR big endian (retired) too: its pixel data would
need byte swapping.

The seam for pixel transcoding (dicomd.pixels): `sendable_syntaxes` lists more targets for an
encapsulated syntax, and `prepare_for_syntax` converts the data set to the chosen one.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

IMPLICIT_LE = str(ImplicitVRLittleEndian)
EXPLICIT_LE = str(ExplicitVRLittleEndian)
DEFLATED_LE = str(DeflatedExplicitVRLittleEndian)
EXPLICIT_BE = str(ExplicitVRBigEndian)
# little endian syntaxes with native pixel data: pynetdicom converts between them when it encodes
_NATIVE_LITTLE_ENDIAN = (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE)


def sendable_syntaxes(stored: str) -> list[str]:
    """The syntaxes an instance stored in `stored` can be sent in, preferred first (the stored one)."""
    if stored in _NATIVE_LITTLE_ENDIAN:
        # a deflated instance is also offered inflated; deflating on the way is never proposed
        return [stored, *(ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts != stored)]
    return [stored]


def choose_syntax(stored: str, accepted: Iterable[str]) -> str | None:
    """The syntax to send an instance in, from those the peer accepted for its SOP class (None: none)."""
    accepted_set = set(accepted)
    return next((ts for ts in sendable_syntaxes(stored) if ts in accepted_set), None)


def prepare_for_syntax(ds: Dataset, stored: str, target: str) -> Dataset:
    """The data set to hand to pynetdicom for sending in `target`, which `sendable_syntaxes(stored)`
    listed. Native little endian targets need nothing: pynetdicom re-encodes for the accepted context,
    an inflated data set's original encoding being explicit VR little endian."""
    if stored == DEFLATED_LE and target != DEFLATED_LE:
        # the parsed data set is already inflated: say so, so that pynetdicom picks the target context
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds
