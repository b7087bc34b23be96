"""Accept header negotiation for DICOMweb (PS3.18 8.7, RFC 7231 5.3.2).

Parsing is deliberately lenient because real viewers send slightly broken headers
(unquoted ``type=application/dicom``, ``*`` instead of ``*/*``, bad q-values) and a
406 for those is worse than a best-effort answer:

* an absent or empty header, or one where no element parses, means ``*/*``;
* an element without ``/`` is dropped, except ``*`` which is read as ``*/*``;
* a q-value that is not a number counts as 1; out-of-range values are clamped to [0, 1];
* for duplicated parameters the first one wins;
* only the first ``MAX_RANGES`` elements count (see :func:`parse_accept`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from dicomd.http.multipart import parse_content_type, split_header_list

__all__ = [
    "ANY_TRANSFER_SYNTAX",
    "Candidate",
    "Choice",
    "MediaRange",
    "Offer",
    "accept_header_allows",
    "candidates",
    "negotiate",
    "parse_accept",
]

#: Media ranges of an Accept header that are considered; the elements after them are ignored.
MAX_RANGES = 64

#: ``transfer-syntax=*``: the stored (original) transfer syntax, no transcoding.
ANY_TRANSFER_SYNTAX = "*"

# Media types that a client asking for one should also receive for the other.
_ALIASES: dict[str, str] = {
    "application/dicom+json": "application/json",
    "application/json": "application/dicom+json",
    "application/dicom+xml": "application/xml",
    "application/xml": "application/dicom+xml",
}


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept header.

    ``params`` holds the media type parameters (names lower-cased) without ``q``;
    DICOMweb uses ``type`` (lower-cased value) and ``transfer-syntax``.
    """

    type: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def part_type(self) -> str | None:
        """The multipart ``type`` parameter, if given."""
        return self.params.get("type")

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _parse_q(raw: str) -> float:
    try:
        q = float(raw)
    except ValueError:
        return 1.0
    if q != q:  # NaN
        return 1.0
    return min(max(q, 0.0), 1.0)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, in header order (see module doc).

    Only the first :data:`MAX_RANGES` elements (empty ones not counted) are considered and the rest are
    ignored, unparsed, so a long header costs no more than a short one (negotiation is ranges x offers):
    a client lists what it prefers first, and no real client sends so many.
    """
    ranges: list[MediaRange] = []
    seen = 0
    for element in split_header_list(header or "", ","):
        if not element.strip():
            continue
        seen += 1
        if seen > MAX_RANGES:
            break
        media_type, params = parse_content_type(element)
        if media_type == "*":
            media_type = "*/*"
        type_, slash, subtype = media_type.partition("/")
        type_, subtype = type_.strip(), subtype.strip()
        if not slash or not type_ or not subtype or "/" in subtype:
            continue
        q = _parse_q(params.pop("q")) if "q" in params else 1.0
        if "type" in params:
            params["type"] = params["type"].strip().lower()
        if "transfer-syntax" in params:
            params["transfer-syntax"] = params["transfer-syntax"].strip()
        ranges.append(MediaRange(type_, subtype, params, q))
    return ranges or [MediaRange("*", "*")]


@dataclass(frozen=True)
class Offer:
    """A representation a resource can produce.

    ``transfer_syntaxes`` lists the syntaxes that can be served, with
    :data:`ANY_TRANSFER_SYNTAX` meaning "the original is available" (Accept
    ``transfer-syntax=*``).  An empty set means the parameter does not apply (JSON,
    rendered media) and is ignored.  ``default_transfer_syntax`` is chosen when the
    client names the media type but no transfer syntax (PS3.18 8.7.3: e.g. Explicit VR
    Little Endian for application/dicom); a default that is not among
    ``transfer_syntaxes`` cannot be sent, and such a range does not match. A wildcard
    range (``*/*``, ``multipart/related`` without ``type``) accepts any representation
    and gets the original when ``transfer_syntaxes`` has :data:`ANY_TRANSFER_SYNTAX`
    (no transcoding), else the default.
    """

    media_type: str
    part_type: str | None = None
    transfer_syntaxes: frozenset[str] = frozenset()
    default_transfer_syntax: str | None = None


@dataclass(frozen=True)
class Choice:
    """Outcome of :func:`negotiate`; ``transfer_syntax`` may be ``"*"`` (send the original)."""

    media_type: str
    part_type: str | None
    transfer_syntax: str | None
    offer: Offer


def _type_matches(pattern: str, media_type: str) -> bool:
    """``pattern`` may be ``*/*`` or ``type/*``; ``media_type`` is concrete."""
    if pattern in ("*/*", "*"):
        return True
    p_type, _, p_sub = pattern.partition("/")
    m_type, _, m_sub = media_type.partition("/")
    return p_type == m_type and p_sub in ("*", m_sub)


def _specificity(rng: MediaRange) -> int:
    """RFC 7231: more specific ranges override less specific ones for the same offer."""
    if rng.type == "*":
        base = 0
    elif rng.subtype == "*":
        base = 10
    else:
        base = 20
    return base + ("type" in rng.params) + ("transfer-syntax" in rng.params)


def _matches(rng: MediaRange, offer: Offer) -> list[str | None]:
    """The transfer syntaxes of ``offer`` that ``rng`` asks for (empty: it does not cover the offer)."""
    if not _type_matches(rng.media_type, offer.media_type.lower()):
        return []
    # A missing `type` means "whatever this resource sends by default"; offers are
    # listed default-first, so no check is needed for that case.
    if (
        offer.part_type is not None
        and rng.part_type is not None
        and not _type_matches(rng.part_type, offer.part_type.lower())
    ):
        return []
    wanted = rng.transfer_syntax
    default = offer.default_transfer_syntax
    if not offer.transfer_syntaxes:
        return [default]
    if wanted is not None:
        return [wanted] if wanted in offer.transfer_syntaxes else []
    found: list[str | None] = []
    if not _names(rng, offer) and ANY_TRANSFER_SYNTAX in offer.transfer_syntaxes:
        found.append(ANY_TRANSFER_SYNTAX)  # a wildcard accepts any representation: the original first
    if default is None or default in offer.transfer_syntaxes:
        found.append(default)  # the default representation (when it cannot be produced: no match)
    return found


def _names(rng: MediaRange, offer: Offer) -> bool:
    """Whether ``rng`` names the offer's media type (its multipart ``type``) rather than a wildcard."""
    if offer.part_type is None:
        return rng.type != "*" and rng.subtype != "*"
    return rng.part_type is not None and "*" not in rng.part_type


@dataclass(frozen=True)
class Candidate:
    """A representation the Accept header allows: an offer (by index) in a transfer syntax, with the q
    of the most specific range covering it and that range's position in the header."""

    offer_index: int
    transfer_syntax: str | None
    q: float
    range_index: int


def candidates(
    accept: Sequence[MediaRange], offers: Sequence[Offer], prefer: Collection[str] = ()
) -> list[Candidate]:
    """Every acceptable (offer, transfer syntax), best first: highest q, then (on equal q) a syntax in
    ``prefer`` or ``*`` (the stored one: no transcoding), then the earliest range in the header, then the
    earliest offer. Each takes its q from the most specific range that covers it (so
    ``application/dicom+json, */*;q=0`` still allows JSON); q=0 excludes."""
    # (offer index, transfer syntax) -> (specificity, q, range index)
    governing: dict[tuple[int, str | None], tuple[int, float, int]] = {}
    for r_idx, rng in enumerate(accept):
        spec = _specificity(rng)
        for o_idx, offer in enumerate(offers):
            for ts in _matches(rng, offer):
                key = (o_idx, ts)
                prev = governing.get(key)
                if prev is None or spec > prev[0]:
                    governing[key] = (spec, rng.q, r_idx)
    found = [Candidate(o_idx, ts, q, r_idx) for (o_idx, ts), (_spec, q, r_idx) in governing.items() if q > 0]

    def rank(c: Candidate) -> tuple[float, int, int, int]:
        preferred = c.transfer_syntax == ANY_TRANSFER_SYNTAX or c.transfer_syntax in prefer
        return (-c.q, 0 if preferred else 1, c.range_index, c.offer_index)

    return sorted(found, key=rank)


def negotiate(
    accept: Sequence[MediaRange], offers: Sequence[Offer], prefer: Collection[str] = ()
) -> Choice | None:
    """Pick the best offer for ``accept`` (the first of :func:`candidates`); ``None`` means answer 406.
    ``prefer``: the stored transfer syntaxes, which win ties (``*/*`` thus selects the first offer)."""
    found = candidates(accept, offers, prefer)
    if not found:
        return None
    offer = offers[found[0].offer_index]
    return Choice(offer.media_type, offer.part_type, found[0].transfer_syntax, offer)


def accept_header_allows(accept: Sequence[MediaRange] | str | None, media_type: str) -> bool:
    """Whether a single-representation resource of ``media_type`` may be sent.

    ``application/dicom+json`` and ``application/json`` (and the XML pair) are
    interchangeable, since clients such as dicomweb-client and OHIF send either.
    """
    ranges = parse_accept(accept) if accept is None or isinstance(accept, str) else accept
    media_type = media_type.lower()
    offers = [Offer(media_type)]
    if media_type in _ALIASES:
        offers.append(Offer(_ALIASES[media_type]))
    return any(negotiate(ranges, [offer]) is not None for offer in offers)
