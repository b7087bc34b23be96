"""What the reading of one data set depends on besides its own bytes: its encoding, character set and
private creators, and the attributes ambiguous VRs are resolved with (pydicom's rules). Each sequence
item has its own context, linked to its parent's."""

from __future__ import annotations

from typing import Any

from .charset import Charset


class DataSetContext:
    """Per data set state, filled in by the parser as it meets the attributes."""

    __slots__ = (
        "bits_allocated",
        "charset",
        "creators",
        "has_pixel_data",
        "has_pr",
        "implicit",
        "lut_desc0",
        "parent",
        "pr",
        "wba",
    )

    def __init__(self, parent: DataSetContext | None, charset: Charset, implicit: bool) -> None:
        self.parent = parent
        self.charset = charset
        self.implicit = implicit
        self.pr: int | None = None  # Pixel Representation value in this data set (converted)
        self.has_pr = False
        self.has_pixel_data = False
        self.bits_allocated: int | None = None
        self.wba: int | None = None  # Waveform Bits Allocated
        self.lut_desc0: int | None = None
        self.creators: dict[int, str] = {}  # (group << 16 | block) -> private creator


def record_creator(ctx: DataSetContext, tag: int, value: list[Any] | None) -> None:
    """Remember a private creator (odd group, element 0x0010-0x00FF) of a single text value: the
    implicit VRs of its block's elements (and explicit UN) are looked up by it, like pydicom does."""
    if value and len(value) == 1 and isinstance(value[0], str):
        ctx.creators[tag & 0xFFFF00FF] = value[0]  # (group << 16) | block
