from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient

from dicomd.http.negotiation import (
    ANY_TRANSFER_SYNTAX,
    Choice,
    MediaRange,
    Offer,
    accept_header_allows,
    candidates,
    negotiate,
    parse_accept,
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# What an instance/study resource stored as JPEG 2000 lossless can produce: the original
# ("*" or its own UID), or Explicit VR LE by transcoding (the default, as Azure/Orthanc do).
INSTANCE_OFFERS = [
    Offer(
        "multipart/related",
        "application/dicom",
        frozenset({ANY_TRANSFER_SYNTAX, EXPLICIT_LE, J2K_LOSSLESS}),
        EXPLICIT_LE,
    ),
]
FRAME_OFFERS = [
    Offer(
        "multipart/related",
        "application/octet-stream",
        frozenset({ANY_TRANSFER_SYNTAX, EXPLICIT_LE}),
        EXPLICIT_LE,
    ),
    Offer("multipart/related", "image/jp2", frozenset({J2K_LOSSLESS}), J2K_LOSSLESS),
]
JSON_OFFERS = [Offer("application/dicom+json"), Offer("application/json")]


def pick(accept: str | None, offers: list[Offer]) -> tuple[str, str | None, str | None] | None:
    choice = negotiate(parse_accept(accept), offers)
    return None if choice is None else (choice.media_type, choice.part_type, choice.transfer_syntax)


# --------------------------------------------------------------------------- parse_accept


@pytest.mark.parametrize("header", [None, "", "   ", ",", "garbage", "text"])
def test_parse_accept_default_any(header: str | None) -> None:
    assert parse_accept(header) == [MediaRange("*", "*", {}, 1.0)]


def test_parse_accept_variants() -> None:
    ranges = parse_accept(
        'application/dicom+json, multipart/related; type="application/dicom+xml",'
        "multipart/related ; TYPE = Application/Octet-Stream ; transfer-syntax=* ;q=0.5,"
        ' */*;q=0.1, application/*; q=0 , *, image/jp2;q=abc, a/b;q=7, c/d;q=-1, e/f;q="0.3"'
    )
    assert ranges == [
        MediaRange("application", "dicom+json", {}, 1.0),
        MediaRange("multipart", "related", {"type": "application/dicom+xml"}, 1.0),
        MediaRange("multipart", "related", {"type": "application/octet-stream", "transfer-syntax": "*"}, 0.5),
        MediaRange("*", "*", {}, 0.1),
        MediaRange("application", "*", {}, 0.0),
        MediaRange("*", "*", {}, 1.0),
        MediaRange("image", "jp2", {}, 1.0),  # malformed q -> 1
        MediaRange("a", "b", {}, 1.0),  # clamped
        MediaRange("c", "d", {}, 0.0),
        MediaRange("e", "f", {}, 0.3),
    ]
    assert ranges[2].part_type == "application/octet-stream"
    assert ranges[2].transfer_syntax == "*"
    assert ranges[0].media_type == "application/dicom+json"


def test_parse_accept_duplicate_params_first_wins_and_quoted_commas() -> None:
    (rng,) = parse_accept('multipart/related; type="application/dicom"; type=image/jp2; x="a, b"')
    assert rng.params == {"type": "application/dicom", "x": "a, b"}


def test_parse_accept_drops_malformed_elements_but_keeps_others() -> None:
    assert parse_accept("nonsense, application/dicom+json, a/b/c") == [
        MediaRange("application", "dicom+json")
    ]


# --------------------------------------------------------------------------- negotiate


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        # Absent / wildcard -> first offer, as stored (no transcoding).
        (None, ("multipart/related", "application/dicom", "*")),
        ("*/*", ("multipart/related", "application/dicom", "*")),
        ("multipart/*", ("multipart/related", "application/dicom", "*")),
        ("multipart/related", ("multipart/related", "application/dicom", "*")),
        (
            'multipart/related; type="application/dicom"',
            ("multipart/related", "application/dicom", EXPLICIT_LE),
        ),
        (
            "multipart/related; type=application/dicom",
            ("multipart/related", "application/dicom", EXPLICIT_LE),
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            ("multipart/related", "application/dicom", "*"),
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}',
            ("multipart/related", "application/dicom", J2K_LOSSLESS),
        ),
        # Unsupported transfer syntax -> 406 unless something else is acceptable.
        (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}', None),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}, '
            f'multipart/related; type="application/dicom"; transfer-syntax={IMPLICIT_LE}; q=0.9, '
            'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5',
            ("multipart/related", "application/dicom", "*"),
        ),
        ("application/dicom+json", None),
        ('multipart/related; type="application/dicom+xml"', None),
        ("image/jpeg, application/*", None),
        ('multipart/related; type="application/dicom"; q=0', None),
        ("*/*;q=0", None),
        # A more specific q=0 only excludes what it names.
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*; q=0, */*',
            ("multipart/related", "application/dicom", EXPLICIT_LE),
        ),
        # ...and a more specific range overrides a general q=0.
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*, */*; q=0',
            ("multipart/related", "application/dicom", "*"),
        ),
        # Higher q wins over header order.
        (
            'multipart/related; type="application/dicom"; q=0.2, '
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}; q=0.8',
            ("multipart/related", "application/dicom", J2K_LOSSLESS),
        ),
        # Equal q: the stored syntax (*) wins, then header order.
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}, '
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            ("multipart/related", "application/dicom", "*"),
        ),
        (
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}, '
            'multipart/related; type="application/dicom"',
            ("multipart/related", "application/dicom", J2K_LOSSLESS),
        ),
    ],
)
def test_negotiate_instances(accept: str | None, expected: tuple[str, str, str] | None) -> None:
    assert pick(accept, INSTANCE_OFFERS) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, ("multipart/related", "application/octet-stream", "*")),
        # OHIF's default frame / bulkdata Accept (unquoted type).
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            ("multipart/related", "application/octet-stream", "*"),
        ),
        ('multipart/related; type="*/*"', ("multipart/related", "application/octet-stream", "*")),
        ('multipart/related; type="image/*"', ("multipart/related", "image/jp2", J2K_LOSSLESS)),
        ('multipart/related; type="image/jp2"', ("multipart/related", "image/jp2", J2K_LOSSLESS)),
        (
            f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}',
            ("multipart/related", "image/jp2", J2K_LOSSLESS),
        ),
        (f'multipart/related; type="image/jp2"; transfer-syntax={EXPLICIT_LE}', None),
        ('multipart/related; type="image/jpeg"', None),
        (
            'multipart/related; type="image/jpeg", multipart/related; type="image/jp2"; q=0.5',
            ("multipart/related", "image/jp2", J2K_LOSSLESS),
        ),
        (
            'multipart/related; type="application/octet-stream"; q=0.4, multipart/related; type="image/jp2"',
            ("multipart/related", "image/jp2", J2K_LOSSLESS),
        ),
    ],
)
def test_negotiate_frames(accept: str | None, expected: tuple[str, str, str] | None) -> None:
    assert pick(accept, FRAME_OFFERS) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/dicom+json"),
        ("application/dicom+json, application/json", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/json, application/dicom+json", "application/json"),
        ("application/json;q=0.5, application/dicom+json", "application/dicom+json"),
        ("application/dicom+json; charset=utf-8", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("application/dicom+json, */*;q=0", "application/dicom+json"),
        ("application/dicom+xml", None),
        ('multipart/related; type="application/dicom"', None),
    ],
)
def test_negotiate_json(accept: str | None, expected: str | None) -> None:
    choice = negotiate(parse_accept(accept), JSON_OFFERS)
    assert (choice.media_type if choice else None) == expected
    if choice is not None:
        assert choice.transfer_syntax is None
        assert choice.part_type is None


def test_negotiate_returns_the_offer_and_ignores_ts_for_offers_without_syntaxes() -> None:
    choice = negotiate(parse_accept("application/dicom+json; transfer-syntax=1.2.3"), JSON_OFFERS)
    assert choice == Choice("application/dicom+json", None, None, JSON_OFFERS[0])


def test_negotiate_no_offers() -> None:
    assert negotiate(parse_accept("*/*"), []) is None


def test_single_part_application_dicom_offer() -> None:
    offers = [
        *INSTANCE_OFFERS,
        Offer("application/dicom", None, INSTANCE_OFFERS[0].transfer_syntaxes, EXPLICIT_LE),
    ]
    assert pick("application/dicom", offers) == ("application/dicom", None, EXPLICIT_LE)
    assert pick("application/dicom; transfer-syntax=*", offers) == ("application/dicom", None, "*")
    assert pick("*/*", offers) == ("multipart/related", "application/dicom", "*")


def test_equal_q_prefers_the_stored_syntax_then_header_order() -> None:
    accept = parse_accept(
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}, '
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}'
    )
    first = negotiate(accept, INSTANCE_OFFERS)
    assert first is not None and first.transfer_syntax == EXPLICIT_LE
    stored = negotiate(accept, INSTANCE_OFFERS, prefer={J2K_LOSSLESS})
    assert stored is not None and stored.transfer_syntax == J2K_LOSSLESS
    # a higher q still beats the stored syntax
    accept = parse_accept(
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}; q=0.5, '
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'
    )
    best = negotiate(accept, INSTANCE_OFFERS, prefer={J2K_LOSSLESS})
    assert best is not None and best.transfer_syntax == EXPLICIT_LE


def test_candidates_list_every_acceptable_syntax_best_first() -> None:
    accept = parse_accept(
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}, '
        'multipart/related; type="application/dicom"; q=0.5, */*; q=0.1'
    )
    found = [(c.transfer_syntax, c.q) for c in candidates(accept, INSTANCE_OFFERS)]
    assert found == [(J2K_LOSSLESS, 1.0), (EXPLICIT_LE, 0.5), ("*", 0.1)]
    # a wildcard also covers the default, behind the original
    found = [(c.transfer_syntax, c.q) for c in candidates(parse_accept("*/*"), INSTANCE_OFFERS)]
    assert found == [("*", 1.0), (EXPLICIT_LE, 1.0)]


# --------------------------------------------------------------------------- accept_header_allows


@pytest.mark.parametrize(
    ("accept", "media_type", "allowed"),
    [
        (None, "application/dicom+json", True),
        ("", "application/dicom+json", True),
        ("*/*", "application/dicom+json", True),
        ("application/json", "application/dicom+json", True),
        ("application/dicom+json", "application/json", True),
        ("application/dicom+json, application/json", "application/dicom+json", True),
        ("application/*", "application/dicom+json", True),
        ("text/html, application/xhtml+xml, */*;q=0.8", "application/dicom+json", True),
        ("application/dicom+xml", "application/dicom+json", False),
        ("application/xml", "application/dicom+xml", True),
        ("application/dicom+json;q=0", "application/dicom+json", False),
        ('multipart/related; type="application/dicom"', "application/dicom+json", False),
        ("image/jpeg", "application/dicom+json", False),
        ("image/*", "image/jpeg", True),
    ],
)
def test_accept_header_allows(accept: str | None, media_type: str, allowed: bool) -> None:
    assert accept_header_allows(accept, media_type) is allowed
    assert accept_header_allows(parse_accept(accept), media_type) is allowed


# --------------------------------------------------------------------------- real clients


class _Captured(Exception):
    pass


def dicomweb_client_headers(call: Callable[[DICOMwebClient], Any]) -> dict[str, str]:
    """Headers dicomweb-client builds for a call, captured before anything hits the network."""
    client = DICOMwebClient("http://localhost/dicomweb")
    captured: dict[str, str] = {}

    def fake_get(url: str, params: Any = None, headers: Any = None, stream: bool = False) -> Any:
        captured.update(headers or {})
        raise _Captured

    client._http_get = fake_get  # type: ignore[method-assign]
    with pytest.raises(_Captured):
        result = call(client)
        list(result)  # some methods are lazy generators
    return captured


@pytest.mark.parametrize(
    ("call", "accept", "offers", "expected"),
    [
        (
            lambda c: c.retrieve_study("1.2"),
            'multipart/related; type="application/dicom"',
            INSTANCE_OFFERS,
            ("multipart/related", "application/dicom", EXPLICIT_LE),
        ),
        (
            lambda c: c.retrieve_study("1.2", media_types=(("application/dicom", "*"),)),
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            INSTANCE_OFFERS,
            ("multipart/related", "application/dicom", "*"),
        ),
        (
            lambda c: c.retrieve_instance("1", "2", "3"),
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            INSTANCE_OFFERS,
            ("multipart/related", "application/dicom", "*"),
        ),
        (
            lambda c: c.retrieve_instance("1", "2", "3", media_types=(("application/dicom", J2K_LOSSLESS),)),
            f'multipart/related; type="application/dicom"; transfer-syntax={J2K_LOSSLESS}',
            INSTANCE_OFFERS,
            ("multipart/related", "application/dicom", J2K_LOSSLESS),
        ),
        (
            lambda c: c.retrieve_study_metadata("1"),
            "application/dicom+json, application/json",
            JSON_OFFERS,
            ("application/dicom+json", None, None),
        ),
        (
            lambda c: c.search_for_studies(),
            "application/dicom+json, application/json",
            JSON_OFFERS,
            ("application/dicom+json", None, None),
        ),
        (
            lambda c: c.retrieve_instance_frames("1", "2", "3", [1]),
            'multipart/related; type="*/*"',
            FRAME_OFFERS,
            ("multipart/related", "application/octet-stream", "*"),
        ),
        (
            lambda c: c.retrieve_instance_frames(
                "1", "2", "3", [1], media_types=("application/octet-stream",)
            ),
            'multipart/related; type="application/octet-stream"',
            FRAME_OFFERS,
            ("multipart/related", "application/octet-stream", EXPLICIT_LE),
        ),
        (
            lambda c: c.retrieve_instance_frames(
                "1", "2", "3", [1], media_types=(("image/jp2", J2K_LOSSLESS),)
            ),
            f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}',
            FRAME_OFFERS,
            ("multipart/related", "image/jp2", J2K_LOSSLESS),
        ),
        (
            lambda c: c.retrieve_bulkdata("http://localhost/dicomweb/bulk/1"),
            'multipart/related; type="*/*"',
            FRAME_OFFERS,
            ("multipart/related", "application/octet-stream", "*"),
        ),
    ],
)
def test_dicomweb_client_accept_headers(
    call: Callable[[DICOMwebClient], Any],
    accept: str,
    offers: list[Offer],
    expected: tuple[str, str | None, str | None],
) -> None:
    headers = dicomweb_client_headers(call)
    assert headers["Accept"] == accept
    assert pick(headers["Accept"], offers) == expected


def test_dicomweb_client_store_sends_no_accept() -> None:
    # store_instances only sets Content-Type, so the JSON response must be allowed by default.
    assert accept_header_allows(None, "application/dicom+json")


@pytest.mark.parametrize(
    ("accept", "offers", "expected"),
    [
        # OHIF DicomWebDataSource defaults (dicomweb-client JS).
        ("application/dicom+json", JSON_OFFERS, ("application/dicom+json", None, None)),
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            FRAME_OFFERS,
            ("multipart/related", "application/octet-stream", "*"),
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=*',
            INSTANCE_OFFERS,
            ("multipart/related", "application/dicom", "*"),
        ),
        (
            'multipart/related; type="image/jls", multipart/related; type="image/jp2"; q=0.9, '
            "multipart/related; type=application/octet-stream; transfer-syntax=*; q=0.5",
            FRAME_OFFERS,
            ("multipart/related", "image/jp2", J2K_LOSSLESS),
        ),
    ],
)
def test_ohif_accept_headers(
    accept: str, offers: list[Offer], expected: tuple[str, str | None, str | None]
) -> None:
    assert pick(accept, offers) == expected
