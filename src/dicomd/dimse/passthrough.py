"""Stored instances sent over DIMSE as the bytes they were stored with.

A C-MOVE or C-GET sub-operation in the stored transfer syntax needs no decoding: the data set of a C-STORE
is the stored file after its File Meta Information. pynetdicom's C-MOVE/C-GET service only sends pydicom
Datasets, which it encodes again; parsing and re-encoding took two thirds of a sub-operation's CPU time
(a C-MOVE ran at ~210 instances/s). ``StoredDataSet`` is a Dataset carrying the stored bytes with just
the UIDs pynetdicom reads, and ``install()`` (done by the first ``stored_data_set``) has pynetdicom's
association module encode it by handing those bytes over. Should pynetdicom ask for another encoding
(it picks the presentation context from the file meta's transfer syntax, so it does not), the bytes are
parsed and encoded as before.
"""

from __future__ import annotations

import threading
from io import BytesIO
from typing import Any

import pynetdicom.association as _association
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicomd.dicom.meta import meta_end
from dicomd.dicom.model import InvalidDicom


class StoredDataSet(Dataset):
    """A data set as stored (encoded in ``transfer_syntax``), for pynetdicom to send unchanged."""

    def __init__(self, encoded: bytes, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
        super().__init__()
        syntax = UID(transfer_syntax)
        self.SOPClassUID = sop_class
        self.SOPInstanceUID = sop_instance
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = syntax
        # plain attributes, outside the data set's elements
        self.__dict__["stored_bytes"] = encoded
        encoding = (syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
        self.__dict__["stored_encoding"] = encoding

    def decoded(self) -> Dataset:
        """The data set parsed from the stored bytes (a deflated one is inflated)."""
        implicit, little, deflated = self.__dict__["stored_encoding"]
        data = self.__dict__["stored_bytes"]
        if deflated:
            import zlib

            data = zlib.decompress(data, -zlib.MAX_WBITS)
        return read_dataset(BytesIO(data), implicit, little)


def data_set_of(part10: bytes) -> memoryview:
    """The data set of a stored Part 10 file (what follows its File Meta Information), not copied;
    InvalidDicom when its File Meta Information is not one."""
    if len(part10) < 132 or part10[128:132] != b"DICM":
        raise InvalidDicom("not a DICOM Part 10 file")
    return memoryview(part10)[meta_end(part10, len(part10)) :]


def stored_data_set(
    data: bytes, sop_class: str, sop_instance: str, transfer_syntax: str, *, whole: bool = True
) -> StoredDataSet:
    """The StoredDataSet of a stored Part 10 file (``whole``; InvalidDicom when its File Meta Information
    is not one), or of a data set's bytes in ``transfer_syntax``."""
    data_set = bytes(data_set_of(data)) if whole else data
    install()  # never a StoredDataSet that pynetdicom would encode as the near-empty Dataset it is
    return StoredDataSet(data_set, sop_class, sop_instance, transfer_syntax)


_original_encode = _association.encode


def _encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> Any:
    if isinstance(ds, StoredDataSet):
        if ds.__dict__["stored_encoding"] == (is_implicit_vr, is_little_endian, deflated):
            return ds.__dict__["stored_bytes"]
        ds = ds.decoded()
    return _original_encode(ds, is_implicit_vr, is_little_endian, deflated)


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Have pynetdicom send StoredDataSets as stored (idempotent)."""
    global _installed
    with _install_lock:
        if not _installed:
            _association.encode = _encode  # type: ignore[assignment]
            _installed = True
