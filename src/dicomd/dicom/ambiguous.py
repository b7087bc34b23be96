"""Ambiguous VRs ("US or SS", "OB or OW", ...: the dictionary's VR of some tags, met in implicit VR or
for explicit UN) resolved like pydicom's ``filewriter.correct_ambiguous_vr_element``, from attributes
of the data set or of its ancestors (`DataSetContext`).

Some depend on attributes that may come later in the file (Pixel Representation of an ancestor,
Waveform Bits Allocated): those are resolved once the whole data set tree is read.
"""

from __future__ import annotations

from .context import DataSetContext
from .tags import LUT_DATA_TAG, PIXEL_DATA_TAG
from .values import DropElement

AMBIGUOUS_VRS = frozenset(("US or SS", "US or SS or OW", "US or OW", "OB or OW"))

# pydicom's tables (filewriter._correct_ambiguous_vr_element)
_OB_OW_WAVEFORM_TAGS = frozenset((0x54000110, 0x54000112, 0x5400100A, 0x54001010))
LUT_DESCRIPTOR_TAGS = frozenset((0x00281101, 0x00281102, 0x00281103, 0x00283002))


def resolve_now(tag: int, vr: str, ctx: DataSetContext, undefined: bool) -> str | None:
    """The VR an element of ambiguous VR `vr` is read with ("OB", "OW" or "US"), or None when it depends
    on what may come later: `resolve_later` tells once the whole data set tree is read."""
    if tag == PIXEL_DATA_TAG:
        if undefined:
            return "OB"  # encapsulated
        if ctx.implicit:
            return "OW"
        if ctx.bits_allocated is None:
            raise DropElement("cannot resolve 'OB or OW' without Bits Allocated")
        return "OW" if ctx.bits_allocated > 8 else "OB"
    if (tag >> 16) & 0xFF01 == 0x6000 and tag & 0xFFFF == 0x3000:
        return "OW"  # Overlay Data
    if tag == LUT_DATA_TAG:
        if ctx.lut_desc0 == 1:
            return "US"
        if ctx.lut_desc0 is None and ctx.implicit:
            raise DropElement("cannot resolve 'US or OW' without LUT Descriptor")
        return "OW"
    if vr == "US or SS":
        return None  # Pixel Representation, possibly of an ancestor parsed later
    if tag in _OB_OW_WAVEFORM_TAGS and not ctx.implicit:
        return None  # Waveform Bits Allocated
    return "OW"  # Implicit VR: OB/OW ambiguity is always OW (PS3.5 A.1)


def resolve_later(vr: str, ctx: DataSetContext) -> str:
    """The VR of an element `resolve_now` left for later, the data set tree read."""
    if vr == "US or SS":
        pr: int | None = None
        c: DataSetContext | None = ctx
        while c is not None:
            if c.pr is not None:
                pr = c.pr
                break
            c = c.parent
        if pr is None:
            if not ctx.has_pr and not ctx.has_pixel_data:
                pr = 0
            elif not ctx.has_pr:
                raise DropElement("cannot resolve 'US or SS' without Pixel Representation")
            else:
                pr = 1
        return "US" if pr == 0 else "SS"
    if ctx.wba is None:
        raise DropElement("cannot resolve 'OB or OW' without Waveform Bits Allocated")
    return "OW" if ctx.wba > 8 else "OB"
