"""OAuth 2.0 / OpenID Connect bearer tokens: JWTs signed by the issuer's keys (its JWKS).

The JWKS URL comes from the issuer's discovery document (``<issuer>/.well-known/openid-configuration``)
unless configured. Each worker fetches it on the first token, in a thread (the event loop never waits on
the network while serving others), then every ``REFRESH_SECONDS`` in the background, and at once when a
token names an unknown key id (at most once per ``MISS_REFRESH_SECONDS``: the issuer rotated its keys).
A failed fetch keeps the keys fetched before; with none at all, requests get 503 (`IssuerUnavailable`).

A token is checked once: signature (asymmetric algorithms only, the key's own algorithm), issuer,
audience, expiry and not-before (with ``clock_skew``); the resulting principal is then cached by the
token's bytes until its expiry, so a repeated token costs one dict lookup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from dicomd.auth.principal import Principal
from dicomd.auth.roles import RoleMap
from dicomd.config import Settings

log = logging.getLogger(__name__)

REFRESH_SECONDS = 600.0
MISS_REFRESH_SECONDS = 60.0
RETRY_SECONDS = 5.0  # with no keys at all, how long a failed fetch is not retried (503 meanwhile)
FETCH_TIMEOUT = 10.0
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_TOKEN_BYTES = 16 * 1024
TOKEN_CACHE_SIZE = 10_000


# seconds a request waits for the refresh of stale keys before it is verified with them
STALE_KEYS_WAIT = 5.0


class TokenRefused(Exception):
    """The token is not accepted; the message is a short reason for the client (never the token)."""


class IssuerUnavailable(Exception):
    """No signing keys could be fetched from the issuer yet: the client should retry (503)."""


FetchJson = Callable[[str], Awaitable[Any]]


def _fetch_json_blocking(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
        body = response.read(MAX_DOCUMENT_BYTES + 1)
    if len(body) > MAX_DOCUMENT_BYTES:
        raise ValueError("document larger than 1 MiB")
    return orjson.loads(body)


async def fetch_json(url: str) -> Any:
    return await asyncio.to_thread(_fetch_json_blocking, url)


class Jwks:
    """The issuer's signing keys by key id, fetched and refreshed as the module docstring says."""

    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        algorithms: Iterable[str],
        *,
        fetch: FetchJson = fetch_json,
        refresh_seconds: float = REFRESH_SECONDS,
        miss_refresh_seconds: float = MISS_REFRESH_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
        on_removed: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.issuer = issuer
        self.configured_jwks_url = jwks_url
        self.algorithms = frozenset(algorithms)
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self._miss_refresh_seconds = miss_refresh_seconds
        self._retry_seconds = retry_seconds
        self._on_removed = on_removed
        self._keys: dict[str, jwt.PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._failed_at = float("-inf")
        self._missed_at = float("-inf")
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None

    async def key(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names (a token without kid: the only key); TokenRefused when unknown even
        after a refresh, IssuerUnavailable when no keys could be fetched at all."""
        now = time.monotonic()
        if self._keys is None:
            if now - self._failed_at < self._retry_seconds:
                raise IssuerUnavailable
            await self.refresh()
            if self._keys is None:
                raise IssuerUnavailable
        elif now - self._fetched_at >= self._refresh_seconds and now - self._failed_at >= self._retry_seconds:
            # stale keys: a key the issuer has withdrawn must not verify one more token, so wait (bounded)
            # for fresh ones; an issuer that does not answer in time leaves the keys held in use
            if self._background is None:
                self._background = asyncio.create_task(self._refresh_in_background())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._background), STALE_KEYS_WAIT)
        found = self._select(kid)
        if found is not None:
            return found
        if now - self._missed_at >= self._miss_refresh_seconds:
            self._missed_at = now
            await self.refresh()
            found = self._select(kid)
            if found is not None:
                return found
        raise TokenRefused("the token's signing key is unknown")

    def _select(self, kid: str | None) -> jwt.PyJWK | None:
        keys = self._keys or {}
        if kid is None:
            return next(iter(keys.values())) if len(keys) == 1 else None
        return keys.get(kid)

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        finally:
            self._background = None

    async def refresh(self) -> None:
        """Fetch the keys (once for all callers waiting meanwhile); a failure keeps the keys held."""
        started = time.monotonic()
        async with self._lock:
            if self._fetched_at >= started or self._failed_at >= started:
                return  # another caller fetched while this one waited
            try:
                keys = parse_jwks(await self._fetch(await self._jwks_url()), self.algorithms)
            except Exception as exc:
                self._failed_at = time.monotonic()
                # the exception's text may quote the document; its type says enough
                log.warning(
                    "fetching the OIDC issuer's signing keys failed (%s); %s",
                    type(exc).__name__,
                    "keeping the keys fetched before" if self._keys else "answering 503 meanwhile",
                )
                return
            removed = frozenset(self._keys or {}) - frozenset(keys)
            self._keys = keys
            self._fetched_at = time.monotonic()
            if removed and self._on_removed is not None:
                self._on_removed(removed)

    async def _jwks_url(self) -> str:
        if self.configured_jwks_url:
            return self.configured_jwks_url
        metadata = await self._fetch(self.issuer + "/.well-known/openid-configuration")
        if not isinstance(metadata, dict):
            raise ValueError("the discovery document is not a JSON object")
        if str(metadata.get("issuer", "")).rstrip("/") != self.issuer.rstrip("/"):
            raise ValueError("the discovery document names another issuer")
        url = metadata.get("jwks_uri")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError("the discovery document has no jwks_uri")
        return url


def parse_jwks(document: Any, algorithms: frozenset[str]) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS usable with ``algorithms``, by key id (a lone key may have none)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a key type this server does not use (or a malformed one): others may do
        if key.algorithm_name in algorithms:
            keys[str(entry.get("kid", ""))] = key
    if not keys:
        raise ValueError("the JWKS has no usable signing key")
    return keys


@dataclass(frozen=True, slots=True)
class _Accepted:
    principal: Principal
    expires: float
    kid: str  # of the key that verified it ("" for a lone key without one)


def _names(value: Any) -> list[str]:
    """Role or scope names from a claim: a list of strings or one space-separated string."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (Keycloak's realm_access.roles)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is for another audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.InvalidSignatureError, "the token's signature is invalid"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
)


class TokenVerifier:
    """Bearer tokens to principals, with the cache of accepted tokens."""

    def __init__(self, settings: Settings, roles: RoleMap, *, jwks: Jwks | None = None) -> None:
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.algorithms = frozenset(a for a in settings.oidc_algorithms.split(",") if a)
        self.leeway = settings.clock_skew
        self.roles_claim = settings.oidc_roles_claim
        self.partitions_claim = settings.oidc_partitions_claim
        self.roles = roles
        self.jwks = jwks or Jwks(
            self.issuer, settings.oidc_jwks_url, self.algorithms, on_removed=self._forget_keys
        )
        self._accepted: dict[bytes, _Accepted] = {}

    async def principal_for(self, token: bytes) -> Principal:
        accepted = self._accepted.get(token)
        if accepted is not None and time.time() < accepted.expires:
            return accepted.principal
        return await self._verify(token)

    async def _verify(self, token: bytes) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenRefused("the token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("the token is malformed") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise TokenRefused("the token's algorithm is not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRefused("the token is malformed")
        key = await self.jwks.key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=(self.issuer, self.issuer + "/"),
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), "the token is invalid")
            raise TokenRefused(reason) from None
        principal = self._principal(claims)
        self._remember(token, _Accepted(principal, float(claims["exp"]), key.key_id or ""))
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal:
        names = [
            *_names(_claim(claims, self.roles_claim)),
            *_names(claims.get("scp")),
            *_names(claims.get("scope")),
        ]
        partitions: frozenset[str] | None = None
        granted = _claim(claims, self.partitions_claim)
        if granted is not None:
            # a claim that is present but not a list or a string grants no partition (fail closed)
            partitions = frozenset(_names(granted.replace(",", " ") if isinstance(granted, str) else granted))
        display = claims.get("preferred_username") or claims.get("name") or ""
        return Principal(
            subject=str(claims.get("sub") or claims.get("client_id") or claims.get("azp") or ""),
            actions=self.roles.actions_for(names),
            partitions=partitions,
            method="oidc",
            name=display if isinstance(display, str) else "",
        )

    def _remember(self, token: bytes, accepted: _Accepted) -> None:
        if len(self._accepted) >= TOKEN_CACHE_SIZE:
            now = time.time()
            for stale in [t for t, a in self._accepted.items() if a.expires <= now]:
                del self._accepted[stale]
            while len(self._accepted) >= TOKEN_CACHE_SIZE:
                del self._accepted[next(iter(self._accepted))]  # the oldest entry
        self._accepted[token] = accepted

    def _forget_keys(self, removed: frozenset[str]) -> None:
        """The issuer withdrew these keys: tokens they signed are refused from now on."""
        for token in [t for t, a in self._accepted.items() if a.kid in removed]:
            del self._accepted[token]
