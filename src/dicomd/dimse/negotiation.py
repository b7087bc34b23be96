"""What the listener accepts in an association: its presentation contexts and transfer syntax preferences.

Storage: every storage SOP class pynetdicom knows (retired ones included), in any transfer syntax dicomd
stores (it keeps the data set byte for byte as received, so any syntax whose data set is encoded explicit
VR little endian, with native or encapsulated pixel data, plus implicit VR, deflated and big endian). When
a peer proposes several syntaxes in one context, the first of ours it proposed wins:

1. lossless compressed syntaxes (the data the peer has, smaller, no loss);
2. explicit VR little endian (keeps the value representations), deflated, implicit VR little endian,
   explicit VR big endian (retired);
3. lossy syntaxes last: a peer that offers them beside an uncompressed one is not asked to compress with
   loss for us (one that offers only lossy data is, of course, accepted).

Storage contexts accept the SCP/SCU role selection a C-GET requestor proposes (it is the storage SCP on
its own association). Verification, Storage Commitment Push Model (dimse/commitment.py), and the Patient
Root and Study Root FIND, MOVE and GET models."""

from __future__ import annotations

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

LOSSLESS_COMPRESSED = (
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 part 2 multi-component lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless (process 14)
    "1.2.840.10008.1.2.5",  # RLE lossless
)
UNCOMPRESSED = (
    str(ExplicitVRLittleEndian),
    str(DeflatedExplicitVRLittleEndian),
    str(ImplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
)
LOSSY_OR_VIDEO = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 part 2 multi-component
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.100.1",
    "1.2.840.10008.1.2.4.101",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.101.1",
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
    "1.2.840.10008.1.2.4.102.1",
    "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.103.1",
    "1.2.840.10008.1.2.4.104",
    "1.2.840.10008.1.2.4.104.1",
    "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.105.1",
    "1.2.840.10008.1.2.4.106",
    "1.2.840.10008.1.2.4.106.1",
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265
    "1.2.840.10008.1.2.4.108",
)
# in order of preference (see the module docstring)
STORAGE_TRANSFER_SYNTAXES = (*LOSSLESS_COMPRESSED, *UNCOMPRESSED, *LOSSY_OR_VIDEO)

# every storage SOP class pynetdicom knows: the listener accepts each (and C-STOREs on them take
# dimse/direct_store.py's path)
STORAGE_SOP_CLASSES = tuple(str(context.abstract_syntax) for context in AllStoragePresentationContexts)
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Push Model SOP Class (dimse/commitment.py)

QUERY_RETRIEVE_SOP_CLASSES = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
)


def supported_contexts() -> list[PresentationContext]:
    """The listener's presentation contexts (storage, verification, query/retrieve)."""
    plain = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)]
    contexts = [build_context(Verification, plain), build_context(STORAGE_COMMITMENT, plain)]
    contexts += [build_context(sop_class, plain) for sop_class in QUERY_RETRIEVE_SOP_CLASSES]
    for storage in STORAGE_SOP_CLASSES:
        context = build_context(storage, list(STORAGE_TRANSFER_SYNTAXES))
        # accept the roles a C-GET requestor proposes (SCP for storage on its association)
        context.scu_role = True
        context.scp_role = True
        contexts.append(context)
    return contexts
