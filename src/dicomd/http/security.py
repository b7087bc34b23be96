"""Transport-level protections of every request: trusted Host values, security headers and per-client
rate limits.

- **Host**: RetrieveURL and BulkDataURI are built from the request's ``Host`` (unless ``base_url`` is
  set), so a forged one would be reflected into answers (and into caches before them). A request whose
  Host is not trusted gets ``400``. Trusted: loopback names and addresses, this machine's name, the bind
  address when it is a specific one, ``base_url``'s host and the names in ``trusted_hosts`` (``*`` = any,
  ``*.example.org`` = its subdomains). The port is not compared. Health checks are exempt (no URLs).
- **Headers** on every answer: no MIME sniffing, no framing, no referrer, ``Cache-Control: no-store``
  (answers carry PHI: no browser or proxy keeps them), ``Strict-Transport-Security`` with TLS.
- **Rate**: a token bucket per client address, ``rate_limit`` requests per second across the workers
  (each worker takes its share), bursts of twice that; beyond it ``429`` with ``Retry-After``. Health
  checks are exempt.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomd.api.common import SUPPORTED_VERSIONS_HEADER
from dicomd.config import Settings
from dicomd.http.tls import tls_enabled

HSTS_MAX_AGE = 365 * 24 * 3600  # seconds
BURST = 2.0  # a client's bucket holds this many seconds of its rate
MAX_TRACKED_CLIENTS = 65536  # buckets kept per worker before full (idle) ones are forgotten
# health probes are exempt from both checks: load balancers and orchestrators send them at their own pace,
# with the Host they know (often a container's address), and the answer holds no URL to forge
HEALTH_PREFIX = "/health/"

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")

_SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # answers are data, never pages: nothing may load from them or frame them
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_HSTS_HEADER = (b"strict-transport-security", b"max-age=%d" % HSTS_MAX_AGE)
_REPLACED = {name for name, _ in _SECURITY_HEADERS} | {_HSTS_HEADER[0]}


# ---- Host ------------------------------------------------------------------------------------------
def host_name(value: str) -> str:
    """The host part of a Host header value or host[:port] entry, lower case ("[::1]:8080" -> "::1")."""
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal, maybe with a port after the bracket
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare IPv6 address (several colons) or a name


def _is_loopback(name: str) -> bool:
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class TrustedHosts:
    """Which Host header values are accepted."""

    def __init__(self, names: Iterable[str]) -> None:
        entries = {host_name(name) for name in names if name.strip()}
        self.any = "*" in entries
        self.suffixes = tuple(entry[1:] for entry in entries if entry.startswith("*."))  # ".example.org"
        self.names = frozenset(entry for entry in entries if not entry.startswith("*"))

    @classmethod
    def from_settings(cls, settings: Settings) -> TrustedHosts:
        names = [socket.gethostname(), *settings.trusted_hosts.split(",")]
        if host_name(settings.host) not in _WILDCARD_BINDS:
            names.append(settings.host)
        if settings.base_url:
            names.append(urlsplit(settings.base_url).netloc)
        return cls(names)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if self.any or name in self.names or _is_loopback(name):
            return True
        return bool(self.suffixes) and name.endswith(self.suffixes)


# ---- rate ------------------------------------------------------------------------------------------
class RateLimiter:
    """Token buckets per client address: `rate` requests per second, up to `burst` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # client: (tokens, when)
        self._prune_at = MAX_TRACKED_CLIENTS

    def take(self, client: str) -> float:
        """0 when the client may go on, else the seconds until it may."""
        now = self.clock()
        tokens, when = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self.buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self.buckets[client] = (tokens - 1.0, now)
        if len(self.buckets) > self._prune_at:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        """Forget the clients whose buckets have filled up again (the same as a new client's)."""
        refill = self.burst / self.rate
        self.buckets = {c: (t, w) for c, (t, w) in self.buckets.items() if now - w < refill}
        # many clients at once: pruning again only after as many more, so its cost stays spread
        self._prune_at = max(MAX_TRACKED_CLIENTS, 2 * len(self.buckets))


def worker_rate(settings: Settings) -> float:
    """This worker's share of the requests per second a client may make (0: unlimited)."""
    return settings.rate_limit / max(1, settings.effective_workers)


# ---- the middleware --------------------------------------------------------------------------------
def _error(status: int, message: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> tuple[Message, Message]:
    """An error answer in the form of the application's (JSON, api-supported-versions)."""
    body = orjson.dumps({"status": status, "message": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"api-supported-versions", SUPPORTED_VERSIONS_HEADER.encode()),
        *extra,
    ]
    start: Message = {"type": "http.response.start", "status": status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


class Protected:
    """The checks and headers of every HTTP request (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.trusted = TrustedHosts.from_settings(settings)
        rate = worker_rate(settings)
        self.limiter = RateLimiter(rate, BURST * rate) if rate > 0 else None
        self.headers = [*_SECURITY_HEADERS, *([_HSTS_HEADER] if tls_enabled(settings) else [])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _REPLACED]
                message["headers"] = [*kept, *self.headers]
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            for message in refusal:
                await send_with_headers(message)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> tuple[Message, Message] | None:
        if scope["path"].startswith(HEALTH_PREFIX):
            return None
        host = Headers(scope=scope).get("host")
        # without a Host (HTTP/1.0) URLs are built from the address the client connected to: nothing forged
        if host is not None and not self.trusted.allows(host):
            return _error(400, "invalid Host header")
        client = scope.get("client")
        if self.limiter is not None and client:
            wait = self.limiter.take(client[0])
            if wait:
                retry_after = str(max(1, math.ceil(wait))).encode()
                return _error(429, "too many requests; try again later", [(b"retry-after", retry_after)])
        return None


def protected(app: ASGIApp, settings: Settings) -> ASGIApp:
    return Protected(app, settings)
