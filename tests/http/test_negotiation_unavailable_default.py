"""Accept negotiation when an offer's default transfer syntax cannot be produced (compressed frames asked
for as application/octet-stream: the default is uncompressed, which needs transcoding)."""

from __future__ import annotations

import pytest

from dicomd.http.negotiation import ANY_TRANSFER_SYNTAX, Offer, negotiate, parse_accept

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# what a JPEG instance's frames can be sent as without transcoding
STORED = frozenset({JPEG_BASELINE, ANY_TRANSFER_SYNTAX})
OFFERS = [
    Offer("multipart/related", "application/octet-stream", STORED, EXPLICIT_LE),
    Offer("multipart/related", "image/jpeg", STORED, ANY_TRANSFER_SYNTAX),
]


def _pick(accept: str | None) -> tuple[str | None, str | None] | None:
    choice = negotiate(parse_accept(accept), OFFERS)
    return None if choice is None else (choice.part_type, choice.transfer_syntax)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # names application/octet-stream without a transfer syntax: the (unavailable) default
        ('multipart/related; type="application/octet-stream"', None),
        ("multipart/related; type=application/octet-stream", None),
        (f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}', None),
        # the stored syntax, asked for
        (
            'multipart/related; type="application/octet-stream"; transfer-syntax=*',
            ("application/octet-stream", "*"),
        ),
        (
            f'multipart/related; type="application/octet-stream"; transfer-syntax={JPEG_BASELINE}',
            ("application/octet-stream", JPEG_BASELINE),
        ),
        ('multipart/related; type="image/jpeg"', ("image/jpeg", "*")),
        # wildcards accept whatever is stored
        (None, ("application/octet-stream", "*")),
        ("*/*", ("application/octet-stream", "*")),
        ("multipart/related", ("application/octet-stream", "*")),
        ('multipart/related; type="*/*"', ("application/octet-stream", "*")),
        # the unavailable default does not hide another acceptable offer
        (
            'multipart/related; type="application/octet-stream", multipart/related; type="image/jpeg"',
            ("image/jpeg", "*"),
        ),
    ],
)
def test_unavailable_default(accept: str | None, expected: tuple[str, str] | None) -> None:
    assert _pick(accept) == expected


def test_offers_with_an_available_default_are_unchanged() -> None:
    native = [
        Offer("multipart/related", "application/octet-stream", frozenset({EXPLICIT_LE, "*"}), EXPLICIT_LE)
    ]
    choice = negotiate(parse_accept('multipart/related; type="application/octet-stream"'), native)
    assert choice is not None and choice.transfer_syntax == EXPLICIT_LE
    without_any = [
        Offer("multipart/related", "application/octet-stream", frozenset({JPEG_BASELINE}), EXPLICIT_LE)
    ]
    assert negotiate(parse_accept("*/*"), without_any) is None  # nothing to fall back to
