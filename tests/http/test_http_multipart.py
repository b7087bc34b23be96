from __future__ import annotations

import contextlib
import email.parser
import email.policy
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient

from dicomd.http.multipart import (
    MAX_HEADER_BYTES,
    MultipartError,
    Part,
    closing,
    iter_parts,
    multipart_stream,
    new_boundary,
    parse_content_type,
    part_header,
    split_header_list,
)

BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"


async def chunked(data: bytes, size: int | str) -> AsyncIterator[bytes]:
    """Deliver ``data`` in fixed-size chunks, or random ones for ``size="random"``."""
    rng = random.Random(1234)
    pos = 0
    while pos < len(data):
        n = rng.randint(1, 300) if size == "random" else int(size)
        yield data[pos : pos + n]
        pos += n


async def collect(data: bytes, boundary: str = BOUNDARY, size: int | str = 4096) -> list[tuple[dict, bytes]]:
    out = []
    async for part in iter_parts(chunked(data, size), boundary):
        out.append((part.headers, await part.read()))
    return out


def build(bodies: list[bytes], boundary: str = BOUNDARY, ct: str = "application/dicom") -> bytes:
    out = b"".join(part_header(boundary, ct, first=i == 0) + b for i, b in enumerate(bodies))
    return out + closing(boundary)


# Bodies that contain near-misses of the delimiter, to catch off-by-one splitting bugs.
TRICKY = [
    b"DICM" + bytes(range(256)) * 3,
    b"",
    b"\r\n--" + BOUNDARY[:-1].encode() + b"X\r\n--" + BOUNDARY[:10].encode(),
    b"--" + BOUNDARY.encode() + b" inside a line is not a delimiter",
    b"\r",
    b"\r\n",
    b"ends with partial delimiter \r\n--" + BOUNDARY[:-3].encode(),
]


# --------------------------------------------------------------------------- parse_content_type


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'multipart/related; type="application/dicom"; boundary=abc',
            ("multipart/related", {"type": "application/dicom", "boundary": "abc"}),
        ),
        (
            'Multipart/Related; TYPE=application/dicom; boundary="a b"',
            ("multipart/related", {"type": "application/dicom", "boundary": "a b"}),
        ),
        (
            'multipart/related;type="application/dicom";boundary="x;y=\\"z\\""',
            ("multipart/related", {"type": "application/dicom", "boundary": 'x;y="z"'}),
        ),
        ("application/dicom", ("application/dicom", {})),
        ("  application/dicom+json ; charset = utf-8 ", ("application/dicom+json", {"charset": "utf-8"})),
        ("multipart/related; boundary=AbC; boundary=other; junk", ("multipart/related", {"boundary": "AbC"})),
        ('multipart/related; type="application/dicom', ("multipart/related", {"type": "application/dicom"})),
        ("", ("", {})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected
    assert parse_content_type(value) == expected  # again, from the cache of parsed values
    long = value + " " * 600  # beyond the cached length: parsed each time, alike
    assert parse_content_type(long) == (expected[0], {k: v.strip() for k, v in expected[1].items()})


def test_each_parse_of_a_content_type_gets_params_of_its_own() -> None:
    value = 'multipart/related; type="application/dicom"; q=0.5'
    first = parse_content_type(value)[1]
    first.pop("q")  # as parse_accept does
    first["type"] = "changed"
    assert parse_content_type(value)[1] == {"type": "application/dicom", "q": "0.5"}


@pytest.mark.parametrize(
    ("value", "sep", "expected"),
    [
        ("a, b,c", ",", ["a", " b", "c"]),
        ("a;b\\;c", ";", ["a", "b\\", "c"]),  # a backslash outside quotes is a plain character
        ('a;b="x;y";c', ";", ["a", 'b="x;y"', "c"]),
        ('a;b="x\\";y";c', ";", ["a", 'b="x\\";y"', "c"]),  # an escaped quote stays inside
        ("", ",", [""]),
    ],
)
def test_split_header_list_splits_outside_quoted_strings(value: str, sep: str, expected: list[str]) -> None:
    assert split_header_list(value, sep) == expected


# --------------------------------------------------------------------------- reader


@pytest.mark.parametrize("size", [1, 7, 4096, "random"])
async def test_round_trip_chunk_sizes(size: int | str) -> None:
    data = build(TRICKY)
    parts = await collect(data, size=size)
    assert [body for _, body in parts] == TRICKY
    assert all(h == {"content-type": "application/dicom"} for h, _ in parts)


@pytest.mark.parametrize("size", [1, 3, 64])
async def test_every_split_position_of_small_message(size: int) -> None:
    bodies = [b"a\r\n--b", b"", b"xyz"]
    data = build(bodies, boundary="bnd")
    assert [b for _, b in await collect(data, "bnd", size)] == bodies


async def test_preamble_epilogue_padding_and_headers() -> None:
    data = (
        b"This is a preamble\r\n-- " + BOUNDARY.encode() + b" looks similar\r\n"
        b"\r\n--" + BOUNDARY.encode() + b" \t \r\n"
        b"Content-Type: application/dicom\r\n"
        b"Content-Location: /a\r\n"
        b"X-Folded: one\r\n two\r\n"
        b"\r\n"
        b"BODY1"
        b"\r\n--" + BOUNDARY.encode() + b"\r\n"
        b"\r\n"
        b"no headers"
        b"\r\n--" + BOUNDARY.encode() + b"--  \r\nepilogue\r\n--" + BOUNDARY.encode() + b"\r\nignored"
    )
    for size in (1, 5, 4096):
        parts = await collect(data, size=size)
        assert parts == [
            (
                {
                    "content-type": "application/dicom",
                    "content-location": "/a",
                    "x-folded": "one two",
                },
                b"BODY1",
            ),
            ({}, b"no headers"),
        ]


async def test_first_boundary_with_and_without_leading_crlf() -> None:
    body = build([b"x"])
    assert body.startswith(b"--")
    assert [b for _, b in await collect(body)] == [b"x"]
    assert [b for _, b in await collect(b"\r\n" + body)] == [b"x"]


async def test_bare_lf_after_boundary_tolerated() -> None:
    data = b"--b\nContent-Type: a/b\r\n\r\nx\r\n--b--"
    assert await collect(data, "b") == [({"content-type": "a/b"}, b"x")]


async def test_missing_final_crlf_and_close_at_eof() -> None:
    # dicomweb-client ends with "--boundary--" and no CRLF.
    assert [b for _, b in await collect(b"--b\r\n\r\nx\r\n--b--", "b")] == [b"x"]
    # A delimiter without "--" at the very end: the part itself is complete, accept it.
    assert [b for _, b in await collect(b"--b\r\n\r\nx\r\n--b", "b")] == [b"x"]
    assert [b for _, b in await collect(b"--b\r\n\r\nx\r\n--b  ", "b")] == [b"x"]


async def test_malformed_boundary_line() -> None:
    with pytest.raises(MultipartError, match="boundary line"):
        await collect(b"--bX\r\n\r\nx\r\n--b--", "b")
    with pytest.raises(MultipartError, match="boundary line"):
        await collect(b"--b\r\n\r\nx\r\n--b\rjunk", "b")


async def test_empty_multipart_body() -> None:
    assert await collect(b"--b--\r\n", "b") == []


@pytest.mark.parametrize("data", [b"", b"no boundary here at all", b"--other\r\n\r\nx\r\n--other--"])
async def test_no_boundary(data: bytes) -> None:
    with pytest.raises(MultipartError, match="no multipart boundary"):
        await collect(data, "b")


@pytest.mark.parametrize("size", [1, 7, 4096])
async def test_truncated_part_reported_on_that_part(size: int) -> None:
    data = build([b"first", b"second is cut"])[:-30]
    seen: list[bytes] = []
    errors: list[str] = []
    async for part in iter_parts(chunked(data, size), BOUNDARY):
        try:
            seen.append(await part.read())
        except MultipartError as exc:
            errors.append(str(exc))
    assert seen == [b"first"]
    assert len(errors) == 1
    assert errors[0].startswith("truncated part 1")


async def test_truncated_part_skipped_raises_from_iterator() -> None:
    data = build([b"first", b"second is cut"])[:-30]
    with pytest.raises(MultipartError, match="truncated part 1"):
        async for _part in iter_parts(chunked(data, 7), BOUNDARY):
            pass


async def test_truncated_inside_headers() -> None:
    data = b"--b\r\n\r\nok\r\n--b\r\nContent-Type: appl"
    parts = []
    async for part in iter_parts(chunked(data, 3), "b"):
        parts.append(part)
        if part.error is None:
            assert await part.read() == b"ok"
    assert len(parts) == 2
    assert parts[1].error is not None and "truncated part 1" in str(parts[1].error)
    with pytest.raises(MultipartError):
        await parts[1].read()


async def test_unconsumed_and_partially_consumed_parts_are_skipped() -> None:
    bodies = [b"A" * 10_000, b"B" * 10_000, b"C" * 50]
    data = build(bodies)
    got: list[bytes] = []
    async for part in iter_parts(chunked(data, 1000), BOUNDARY):
        if part.index == 0:
            continue  # not consumed at all
        if part.index == 1:
            async for chunk in part.stream():
                assert chunk[:1] == b"B"
                break  # partially consumed
            continue
        got.append(await part.read())
    assert got == [b"C" * 50]


async def test_stale_part_cannot_be_read_after_moving_on() -> None:
    parts: list[Part] = []
    async for part in iter_parts(chunked(build([b"a" * 100, b"b"]), 10), BOUNDARY):
        parts.append(part)
    with pytest.raises(MultipartError, match=r"after the next part"):
        await parts[0].read()


async def test_body_cannot_be_consumed_twice() -> None:
    async for part in iter_parts(chunked(build([b"abc"]), 10), BOUNDARY):
        assert await part.read() == b"abc"
        with pytest.raises(MultipartError, match="already consumed"):
            await part.read()


async def test_headers_too_long_fails_only_that_part() -> None:
    big = b"X-Big: " + b"v" * (MAX_HEADER_BYTES + 10) + b"\r\n"
    data = (
        b"--b\r\n" + big + b"Content-Type: a/b\r\n\r\nbody0\r\n"
        b"--b\r\nContent-Type: a/b\r\n\r\nbody1\r\n--b--\r\n"
    )
    results: list[Any] = []
    async for part in iter_parts(chunked(data, 4096), "b"):
        try:
            results.append(await part.read())
        except MultipartError as exc:
            results.append(str(exc))
    assert "headers longer" in results[0]
    assert results[1] == b"body1"


@pytest.mark.parametrize(
    "bad_headers",
    [b"Content-Type application/dicom\r\n", b"Bad Name: x\r\n", b": empty name\r\n"],
)
async def test_malformed_header_line_fails_only_that_part(bad_headers: bytes) -> None:
    data = (
        b"--b\r\nContent-Type: a/b\r\n\r\nbody0\r\n"
        b"--b\r\n" + bad_headers + b"\r\nbody1\r\n"
        b"--b\r\nContent-Type: a/b\r\n\r\nbody2\r\n--b--\r\n"
    )
    results: list[Any] = []
    async for part in iter_parts(chunked(data, 5), "b"):
        assert (part.error is None) == (part.index != 1)
        try:
            results.append(await part.read())
        except MultipartError as exc:
            results.append(str(exc))
    assert results[0] == b"body0"
    assert "malformed header" in results[1]
    assert results[2] == b"body2"


async def test_part_without_blank_line_after_headers() -> None:
    data = b"--b\r\nContent-Type: a/b\r\nbody0\r\n--b\r\nContent-Type: a/b\r\n\r\nbody1\r\n--b--"
    results: list[Any] = []
    async for part in iter_parts(chunked(data, 2), "b"):
        results.append(part.error if part.error else await part.read())
    assert isinstance(results[0], MultipartError)
    assert results[1] == b"body1"


async def test_part_properties() -> None:
    data = build([b"x" * 5000], ct='application/dicom; transfer-syntax="1.2.840.10008.1.2.1"')
    async for part in iter_parts(chunked(data, 100), BOUNDARY):
        assert part.content_type == 'application/dicom; transfer-syntax="1.2.840.10008.1.2.1"'
        assert part.media_type == "application/dicom"
        assert await part.read() == b"x" * 5000


async def test_read_max_size() -> None:
    async for part in iter_parts(chunked(build([b"x" * 100]), 10), BOUNDARY):
        with pytest.raises(MultipartError, match="larger than"):
            await part.read(max_size=50)


async def test_large_body_yields_large_slices() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    data = build([body])
    sizes: list[int] = []
    async for part in iter_parts(chunked(data, 65536), BOUNDARY):
        async for chunk in part.stream():
            sizes.append(len(chunk))
    assert sum(sizes) == len(body)
    assert max(sizes) > 60_000  # no byte-by-byte or tiny slicing


async def test_invalid_boundary_rejected() -> None:
    with pytest.raises(MultipartError):
        await collect(b"--\r\n", "")


# --------------------------------------------------------------------------- writer


def test_part_header_and_closing() -> None:
    assert (
        part_header("b", "application/dicom", first=True) == b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    )
    assert (
        part_header("b", "application/dicom", {"Content-Location": "/x"})
        == b"\r\n--b\r\nContent-Type: application/dicom\r\nContent-Location: /x\r\n\r\n"
    )
    assert closing("b") == b"\r\n--b--\r\n"
    with pytest.raises(ValueError):
        part_header("b", "application/dicom\r\nX-Injected: 1")
    with pytest.raises(ValueError):
        part_header("b", "a/b", {"X": "1\n2"})


def test_new_boundary_random_and_valid() -> None:
    seen = {new_boundary() for _ in range(50)}
    assert len(seen) == 50
    for b in seen:
        assert 1 <= len(b) <= 70
        assert b.isalnum()


async def agen(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def body_chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i : i + 1000]
    yield b""  # empty chunks must not break anything


async def writer_output(items: list[tuple[str, bytes]], boundary: str, streamed: bool = True) -> bytes:
    pairs = [(ct, body_chunks(b) if streamed and i % 2 else b) for i, (ct, b) in enumerate(items)]
    return b"".join([c async for c in multipart_stream(agen(pairs), boundary)])


async def test_writer_reader_round_trip() -> None:
    boundary = new_boundary()
    items = [("application/dicom", b) for b in TRICKY] + [("application/octet-stream", b"z" * 3333)]
    data = await writer_output(items, boundary)
    for size in (1, 7, 4096, "random"):
        got = []
        async for part in iter_parts(chunked(data, size), boundary):
            got.append((part.content_type, await part.read()))
        assert got == items


async def test_writer_empty() -> None:
    data = await writer_output([], "b")
    assert data == b"--b--\r\n"
    assert await collect(data, "b") == []


async def test_writer_output_parsed_by_stdlib_email() -> None:
    boundary = new_boundary()
    items = [("text/plain", b"hello\r\nworld"), ("application/json", b'{"a": 1}'), ("text/plain", b"")]
    data = await writer_output(items, boundary)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f'Content-Type: multipart/related; type="text/plain"; boundary="{boundary}"\r\n\r\n'.encode() + data
    )
    assert message.is_multipart()
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == [ct for ct, _ in items]
    assert [p.get_payload(decode=True) for p in parts] == [b for _, b in items]


class FakeResponse:
    """The subset of requests.Response used by dicomweb-client's multipart decoder."""

    def __init__(self, content: bytes, content_type: str) -> None:
        self.content = content
        self.headers = {"content-type": content_type, "Content-Type": content_type}

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        for i in range(0, len(self.content), chunk_size):
            yield self.content[i : i + chunk_size]

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("stream", [False, True])
async def test_writer_output_decoded_by_dicomweb_client(stream: bool) -> None:
    boundary = new_boundary()
    bodies = [b for b in TRICKY if b] + [bytes(random.Random(5).randbytes(200_000))]
    data = await writer_output([("application/dicom", b) for b in bodies], boundary)
    client = DICOMwebClient.__new__(DICOMwebClient)
    client._chunk_size = 4096  # type: ignore[attr-defined]
    response = FakeResponse(data, f'multipart/related; type="application/dicom"; boundary={boundary}')
    decoded = list(client._decode_multipart_message(response, stream=stream))  # type: ignore[arg-type]
    assert decoded == bodies


async def test_dicomweb_client_stow_body_parsed() -> None:
    bodies = [b"DICM" + bytes(range(256)) * 10, b"\r\n--x", b"second"]
    content_type = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
    data = DICOMwebClient._encode_multipart_message(bodies, content_type)
    media_type, params = parse_content_type(content_type)
    assert media_type == "multipart/related"
    for size in (1, 7, 4096):
        parts = await collect(data, params["boundary"], size)
        assert [b for _, b in parts] == bodies
        assert all(h["content-type"] == "application/dicom" for h, _ in parts)


async def test_every_prefix_never_yields_wrong_data() -> None:
    """Cutting the stream anywhere gives correct complete parts, then at most an error."""
    bodies = [b"one\r\n-", b"", b"three--bnd"]
    data = build(bodies, boundary="bnd")
    for cut in range(len(data) + 1):
        good: list[bytes] = []
        try:
            async for part in iter_parts(chunked(data[:cut], 4), "bnd"):
                with contextlib.suppress(MultipartError):
                    good.append(await part.read())
        except MultipartError:
            pass
        assert good == bodies[: len(good)], cut
    assert [b for _, b in await collect(data, "bnd", 4)] == bodies


@pytest.mark.parametrize("seed", range(5))
async def test_random_round_trips(seed: int) -> None:
    rng = random.Random(seed)
    boundary = "b" * rng.randint(1, 3)  # short boundaries maximise accidental near-matches
    # Bodies from a tiny alphabet so "\r\n--b" fragments occur often, but never a full delimiter.
    bodies = []
    for _ in range(rng.randint(1, 6)):
        body = bytes(rng.choice(b"\r\n-bx") for _ in range(rng.randint(0, 300)))
        bodies.append(body.replace(b"\r\n--" + boundary.encode(), b"x"))
    data = await writer_output([("a/b", b) for b in bodies], boundary)
    parts = await collect(data, boundary, "random")
    assert [b for _, b in parts] == bodies
