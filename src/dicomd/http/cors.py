"""Browser viewers on other origins (CORS), from the ``cors_origins`` setting.

- A **named origin** (``https://viewer.example.org``) is trusted like the user's own client: every method,
  credentials (``Access-Control-Allow-Credentials: true``), and the headers an authenticated viewer sends:
  ``Authorization``, ``X-API-Key``, ``Content-Type``, ``Accept``, ``X-Request-ID`` and the client audit
  headers (``X-DICOMD-AUDIT-*``, ``X-MS-AZUREDICOM-AUDIT-*``).
- **Any origin** (``*``) may read: ``GET`` (and ``HEAD``) only, no credentials, no ``Authorization``. With
  no named origin in front of it, any web page a user opens could otherwise write to the archive, or use a
  token the browser holds.
- Other origins get no CORS headers (the browser withholds the answer), their preflights ``400``, and a
  request that changes data (POST, PUT, DELETE, ...) carrying such an ``Origin`` is refused with ``403``
  before it runs: a browser sends some cross-origin requests without asking first.

Preflights and refusals are answered here, in the JSON form of the application's errors; the
application's own answers get the headers added (its errors too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomd.api.common import SUPPORTED_VERSIONS_HEADER
from dicomd.config import Settings

MAX_AGE = 600  # seconds a browser may keep a preflight's answer

ALL_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")
READ_METHODS = ("GET", "HEAD")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# what a browser may send without a preflight's permission (the CORS-safelisted request headers)
_SAFELISTED_HEADERS = ("accept", "accept-language", "content-language", "content-type", "range")
VIEWER_HEADERS = (
    *_SAFELISTED_HEADERS,
    "authorization",
    "x-api-key",
    "x-request-id",
    "if-none-match",
    "if-modified-since",
)
AUDIT_HEADER_PREFIXES = ("x-dicomd-audit-", "x-ms-azuredicom-audit-")
ANY_ORIGIN_HEADERS = (*_SAFELISTED_HEADERS, "x-request-id", "if-none-match", "if-modified-since")
# what a viewer may read of an answer besides the safelisted response headers (OHIF reads ETag)
EXPOSED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Location",
    "ETag",
    "Retry-After",
    "Warning",
    "X-Request-ID",
    "api-supported-versions",
)
_VARY = (b"vary", b"Origin")
_EXPOSE = (b"access-control-expose-headers", ", ".join(EXPOSED_HEADERS).encode())


@dataclass(frozen=True)
class Grant:
    """What one kind of origin may do."""

    methods: tuple[str, ...]
    headers: tuple[str, ...]  # lower case
    header_prefixes: tuple[str, ...]
    credentials: bool

    def allows_headers(self, requested: Iterable[str]) -> bool:
        return all(h in self.headers or h.startswith(self.header_prefixes) for h in requested)


NAMED_ORIGIN = Grant(ALL_METHODS, VIEWER_HEADERS, AUDIT_HEADER_PREFIXES, credentials=True)
ANY_ORIGIN = Grant(READ_METHODS, ANY_ORIGIN_HEADERS, (), credentials=False)


@dataclass(frozen=True)
class CorsPolicy:
    named: frozenset[str]
    any_origin: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> CorsPolicy:
        origins = {o for o in settings.cors_origins.split(",") if o}
        return cls(frozenset(origins - {"*"}), "*" in origins)

    def grant(self, origin: str) -> Grant | None:
        if origin in self.named:
            return NAMED_ORIGIN
        return ANY_ORIGIN if self.any_origin else None


def _origin_headers(origin: str, grant: Grant) -> list[tuple[bytes, bytes]]:
    """Credentials need the origin named: a browser refuses them with "*"."""
    if not grant.credentials:
        return [(b"access-control-allow-origin", b"*")]
    return [(b"access-control-allow-origin", origin.encode()), (b"access-control-allow-credentials", b"true")]


def _answer(status: int, headers: list[tuple[bytes, bytes]], message: str = "") -> tuple[Message, Message]:
    body = orjson.dumps({"status": status, "message": message}) if message else b""
    head = [
        *headers,
        (b"content-length", str(len(body)).encode()),
        (b"api-supported-versions", SUPPORTED_VERSIONS_HEADER.encode()),
    ]
    if body:
        head.append((b"content-type", b"application/json"))
    return (
        {"type": "http.response.start", "status": status, "headers": head},
        {"type": "http.response.body", "body": body},
    )


class Cors:
    """The CORS middleware of `policy` (see the module's docstring)."""

    def __init__(self, app: ASGIApp, policy: CorsPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-origin request: nothing to do
            await self.app(scope, receive, send)
            return
        grant = self.policy.grant(origin)
        method = scope["method"]
        if method == "OPTIONS" and "access-control-request-method" in headers:
            await self._send_all(send, self._preflight(origin, grant, headers))
            return
        if method not in _SAFE_METHODS and (grant is None or method not in grant.methods):
            refusal = _answer(403, [_VARY], f"requests from this origin may not use {method[:20]}")
            await self._send_all(send, refusal)
            return
        allowed = [*_origin_headers(origin, grant), _EXPOSE] if grant else []

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), _VARY, *allowed]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _preflight(self, origin: str, grant: Grant | None, headers: Headers) -> tuple[Message, Message]:
        method = headers["access-control-request-method"]
        requested = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")]
        requested = [h for h in requested if h]
        vary = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        if grant is None:
            return _answer(400, [vary], "CORS preflight refused: origin not allowed")
        if method not in grant.methods:
            return _answer(400, [vary], f"CORS preflight refused: method {method[:20]} not allowed")
        if not grant.allows_headers(requested):
            return _answer(400, [vary], "CORS preflight refused: a requested header is not allowed")
        answer = [
            vary,
            *_origin_headers(origin, grant),
            (b"access-control-allow-methods", ", ".join(grant.methods).encode()),
            (b"access-control-max-age", str(MAX_AGE).encode()),
        ]
        if requested:  # echoed, all checked above (the audit headers are a family of names)
            answer.append((b"access-control-allow-headers", ", ".join(requested).encode()))
        return _answer(200, answer)

    @staticmethod
    async def _send_all(send: Send, messages: tuple[Message, Message]) -> None:
        for message in messages:
            await send(message)


def cors(app: ASGIApp, settings: Settings) -> ASGIApp:
    """The application with CORS for `settings.cors_origins` (app.py adds it when the setting is set)."""
    return Cors(app, CorsPolicy.from_settings(settings))
