"""The bound on the media ranges of an Accept header that are considered."""

from __future__ import annotations

import time

from dicomd.http.negotiation import MAX_RANGES, Offer, negotiate, parse_accept


def test_only_the_first_ranges_are_considered() -> None:
    ranges = parse_accept(",".join(f"x/y{i}" for i in range(MAX_RANGES)) + ",application/dicom+json")
    assert len(ranges) == MAX_RANGES
    assert negotiate(ranges, [Offer("application/dicom+json")]) is None  # the 65th is ignored
    within = parse_accept(",".join(f"x/y{i}" for i in range(MAX_RANGES - 1)) + ",application/dicom+json")
    assert negotiate(within, [Offer("application/dicom+json")]) is not None


def test_empty_elements_do_not_count() -> None:
    ranges = parse_accept("," * 1000 + "application/dicom+json")
    assert [r.media_type for r in ranges] == ["application/dicom+json"]


def test_a_long_header_is_cheap() -> None:
    """Before: 16,000 ranges (a 64 KiB header) were all parsed and negotiated against every offer."""
    header = "a/b;q=0.5;type=x," * 4000
    offers = [Offer("multipart/related", "application/dicom", frozenset({"*"}), "*")] * 4
    started = time.perf_counter()
    for _ in range(10):
        ranges = parse_accept(header)
        negotiate(ranges, offers)
    assert len(ranges) == MAX_RANGES
    assert time.perf_counter() - started < 1.5
