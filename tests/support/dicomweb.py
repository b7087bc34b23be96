"""Talking DICOMweb to a server in tests: STOW requests, reading multipart responses and DICOM JSON, the
attributes of STOW responses, unique patient IDs, waiting for a condition. Holds no tests itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from support.dicom_files import multipart

# Accept headers for the stored (original) transfer syntax
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTET_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'

# STOW response attributes
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
RETRIEVE_URL = "00081190"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"


def unique_id(prefix: str = "E2E") -> str:
    """A PatientID (or other LO value) no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def stow(
    client: httpx.Client, parts: list[bytes], study: str | None = None, **headers: str
) -> httpx.Response:
    body, content_type = multipart(parts)
    url = f"/studies/{study}" if study else "/studies"
    return client.post(url, content=body, headers={"Content-Type": content_type, **headers})


async def stow_async(
    client: httpx.AsyncClient, parts: list[bytes], study: str | None = None, **headers: str
) -> httpx.Response:
    """`stow` for the in-process application (support/asgi.py); its client's paths carry the version."""
    body, content_type = multipart(parts)
    url = f"/v2/studies/{study}" if study else "/v2/studies"
    return await client.post(url, content=body, headers={"Content-Type": content_type, **headers})


def assert_versions_header(response: httpx.Response) -> None:
    assert "api-supported-versions" in response.headers, response.headers
    assert "2" in response.headers["api-supported-versions"]


def values(dataset: dict[str, Any], tag: str) -> list[Any]:
    return list(dataset.get(tag, {}).get("Value") or [])


def value(dataset: dict[str, Any], tag: str) -> Any:
    found = values(dataset, tag)
    return found[0] if found else None


def referenced_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    return values(body, REFERENCED_SOP_SEQUENCE)


def failed_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    return values(body, FAILED_SOP_SEQUENCE)


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related response into (headers with lower-case names, body) pairs."""
    content_type = response.headers["content-type"]
    assert content_type.lower().startswith("multipart/related"), content_type
    boundary = None
    for param in content_type.split(";")[1:]:
        name, _, raw = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            boundary = raw.strip().strip('"')
    assert boundary, content_type
    delimiter = b"\r\n--" + boundary.encode()
    pieces = (b"\r\n" + response.content).split(delimiter)
    assert pieces[0] == b"", "unexpected preamble"
    assert pieces[-1].startswith(b"--"), "missing close delimiter"
    parts = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n"), piece[:40]
        head, sep, body = piece[2:].partition(b"\r\n\r\n")
        assert sep, "part without header/body separator"
        headers = {}
        for line in head.split(b"\r\n"):
            if line:
                name, _, val = line.decode().partition(":")
                headers[name.strip().lower()] = val.strip()
        parts.append((headers, body))
    return parts


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def instance_url(ds: Any) -> str:
    """The instance's path below /v{n} (a pydicom Dataset or anything with the three UIDs)."""
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
