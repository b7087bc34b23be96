"""Which transfer syntaxes a stored instance can be sent in over DIMSE, and the choice among those a peer
accepted.

An instance goes in its stored syntax when the peer accepts it. Otherwise:

- native little endian data (implicit, explicit, deflated) is converted without pixel work: pynetdicom
  re-encodes the data set for the accepted context (deflated is inflated, never the reverse);
- compressed pixel data the codecs can decode, and explicit VR big endian (retired), is transcoded by the
  pixel services (dicomd.pixels.transcode) to explicit or implicit VR little endian: every storage SCP
  accepts implicit VR little endian (the DICOM default), so a peer without the codec still gets the
  images. Decoding a lossy syntax loses nothing more (the file keeps Lossy Image Compression "01"); no
  lossy syntax is ever produced, and no compressed one (a peer that takes none of these gets nothing).
- pixel data that cannot be decoded here goes only in its own syntax.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicomd.dicom.vr_conversion import explicit_to_implicit
from dicomd.pixels.syntaxes import is_decodable

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
    if is_decodable(stored):
        return [stored, EXPLICIT_LE, IMPLICIT_LE]
    return [stored]


def needs_pixel_work(stored: str, target: str) -> bool:
    """Whether sending in `target` an instance stored in `stored` takes the pixel services (a
    transcode), rather than pynetdicom's re-encoding of the data set."""
    return target != stored and not (stored in _NATIVE_LITTLE_ENDIAN and target in _NATIVE_LITTLE_ENDIAN)


def choose_syntax(stored: str, accepted: Iterable[str]) -> str | None:
    """The syntax to send an instance in, from those the peer accepted for its SOP class (None: none)."""
    accepted_set = set(accepted)
    return next((ts for ts in sendable_syntaxes(stored) if ts in accepted_set), None)


def prepare_for_syntax(ds: Dataset, stored: str, target: str) -> Dataset:
    """The data set to hand to pynetdicom for sending in `target`, which `sendable_syntaxes(stored)`
    listed and needs no pixel work. pynetdicom re-encodes for the accepted context, an inflated data
    set's original encoding being explicit VR little endian."""
    if stored == DEFLATED_LE and target != DEFLATED_LE:
        # the parsed data set is already inflated: say so, so that pynetdicom picks the target context
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def implicit_bytes(stored: str, target: str, data_set: bytes | memoryview) -> bytes | None:
    """The stored data set rewritten in ``target`` without parsing it, where that is only a matter of
    element headers (explicit, or deflated explicit, VR little endian to implicit: dicom/vr_conversion.py,
    ~50x faster than pydicom's parse and write); None otherwise (pydicom converts it)."""
    if target != IMPLICIT_LE or stored not in (EXPLICIT_LE, DEFLATED_LE):
        return None
    if stored == DEFLATED_LE:
        try:
            data_set = zlib.decompress(data_set, -zlib.MAX_WBITS)
        except zlib.error:
            return None
    return explicit_to_implicit(data_set)
