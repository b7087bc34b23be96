"""Person names decoded without pydicom (no escape sequences, a round-trip codec) equal pydicom's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomd.dicom import charset as charset_module
from dicomd.dicom.charset import Charset, decode_person_names, resolve_charset

# terms of (0008,0005) as a data set names them; the first encoding decides whether a name is direct
TERMS = [
    (),
    ("ISO_IR 100",),
    ("ISO_IR 192",),
    ("ISO_IR 101",),
    ("ISO_IR 144",),
    ("ISO_IR 126",),
    ("ISO_IR 138",),
    ("ISO_IR 148",),
    ("ISO_IR 166",),
    ("ISO 2022 IR 6", "ISO 2022 IR 100"),
    ("", "ISO 2022 IR 87"),
    ("ISO_IR 13",),
    ("GB18030",),
    ("ISO 2022 IR 149",),
]
NAME_TEXT = st.text(
    alphabet=st.sampled_from(
        list("AbZz ^=\\\x00.-'") + list("ÄÖÜßéèçñøÅ") + list("ЯжΩλשאก山田雪") + ["\ufffd"]
    ),
    max_size=40,
)


def by_pydicom(raw: bytes, cs: Charset) -> tuple[list[tuple[str, ...]], list[str]]:
    """The reference: decode_person_names with its direct path turned off (pydicom all the way)."""
    slow = Charset(cs.encodings, cs.warnings)
    slow.names_direct = False
    return decode_person_names(raw, slow)  # type: ignore[return-value]


@pytest.mark.parametrize("terms", TERMS, ids=lambda t: "+".join(t) or "default")
@settings(max_examples=150, deadline=None)
@given(text=NAME_TEXT, noise=st.binary(max_size=12))
def test_a_name_decodes_as_pydicom_decodes_it(terms: tuple[str, ...], text: str, noise: bytes) -> None:
    cs = resolve_charset(terms)
    encoded = text.encode(cs.encodings[0], errors="ignore") if cs.encodings else b""
    for raw in (encoded, encoded + noise, noise, encoded.rstrip() + b" "):
        assert decode_person_names(raw, cs) == by_pydicom(raw, cs), (terms, raw)


def test_the_direct_path_is_taken_where_it_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Latin-1 and UTF-8 names skip pydicom; an escape sequence or a codec that does not round-trip
    does not (a test that could pass with the direct path never taken proves nothing above)."""
    calls: list[bytes] = []
    real = charset_module.convert_PN

    def counting(raw: bytes, encodings: list[str]) -> object:
        calls.append(raw)
        return real(raw, encodings)

    monkeypatch.setattr(charset_module, "convert_PN", counting)
    assert decode_person_names("Müller^Jürgen".encode(), resolve_charset(("ISO_IR 192",))) == (
        [("Müller^Jürgen",)],
        [],
    )
    latin = "Åsa=Ωλ=".encode("latin-1", "ignore")  # b"\xc5sa==": the empty groups dropped
    assert decode_person_names(latin, resolve_charset(("ISO_IR 100",))) == ([("Åsa",)], [])
    assert calls == []
    decode_person_names(
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B", resolve_charset(("", "ISO 2022 IR 87"))
    )
    decode_person_names("山田".encode("shift_jis"), resolve_charset(("ISO_IR 13",)))
    decode_person_names(b"M\xfcller", resolve_charset(("ISO_IR 192",)))  # not UTF-8: replacement + warning
    assert len(calls) == 3
    names, msgs = by_pydicom(b"M\xfcller", resolve_charset(("ISO_IR 192",)))
    assert decode_person_names(b"M\xfcller", resolve_charset(("ISO_IR 192",))) == (names, msgs) and msgs
