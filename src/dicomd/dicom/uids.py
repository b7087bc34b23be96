"""UID syntax (PS3.5 9.1) and the transfer syntaxes dicomd knows by name."""

from __future__ import annotations

import re

# What dicomd stores and finds: digits and dots, starting with a digit, at most 64 characters (the rule
# of the cloud service; Orthanc and dcm4chee store such UIDs too). A UID that breaks PS3.5 9.1 beyond
# that (a leading zero in a component, an empty component) is real-world data: stored with a warning.
_UID = re.compile(r"[0-9][0-9.]{0,63}")
# PS3.5 9.1: components without leading zeros, none empty
_CONFORMANT_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: str) -> bool:
    """Whether dicomd accepts ``value`` as a UID (to store, to find, in a URL)."""
    return _UID.fullmatch(value) is not None


def is_conformant_uid(value: str) -> bool:
    """Whether ``value`` follows PS3.5 9.1 to the letter (accepted UIDs that do not get a warning)."""
    return len(value) <= 64 and _CONFORMANT_UID.fullmatch(value) is not None


def uid_problem(value: str) -> str | None:
    """Why an accepted UID is not conformant, for a warning; None when it is."""
    if is_conformant_uid(value):
        return None
    if any(not part for part in value.split(".")):
        return "has an empty component"
    return "has a component with a leading zero"


EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset(
    {EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN}
)


# dicomd's Implementation Class UID (a UUID-derived 2.25 UID): the File Meta Information of the files it
# writes (transcoded instances, instances received over DIMSE) and its DIMSE associations
IMPLEMENTATION_CLASS_UID = "2.25.166416390766226519392745669163393720011"
IMPLEMENTATION_VERSION_NAME = "DICOMD"  # with the class UID above
