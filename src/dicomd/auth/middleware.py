"""Authentication of the versioned API: sets the request's caller (auth/principal.py) on its scope.

Credentials: ``Authorization: Bearer <JWT>`` (OIDC, auth/oidc.py), or an API key (auth/api_keys.py) as
``Authorization: ApiKey <key>``, ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` (a value that is
no JWT). Missing or refused credentials get 401 with an RFC 6750 ``WWW-Authenticate: Bearer`` challenge
before routing, so a refused caller learns nothing about what exists; no JWKS yet gets 503.

With authentication off (no issuer, no API keys) every caller is the anonymous principal with every
action, as before; the start-up check refuses that on a non-loopback address unless allowed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomd.api.common import error_response
from dicomd.auth.api_keys import ApiKeys
from dicomd.auth.checks import check_auth_settings
from dicomd.auth.oidc import RETRY_SECONDS, IssuerUnavailable, TokenRefused, TokenVerifier
from dicomd.auth.principal import ANONYMOUS, Principal, set_principal
from dicomd.auth.roles import RoleMap
from dicomd.config import Settings

log = logging.getLogger(__name__)

REALM = 'Bearer realm="dicomd"'


class Unauthenticated(Exception):
    """401: ``reason`` is None when no credentials came (RFC 6750: then no error code)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


def _challenge(reason: str | None) -> str:
    if reason is None:
        return REALM
    # the reasons are this module's fixed texts: no quotes or backslashes to escape
    return f'{REALM}, error="invalid_token", error_description="{reason}"'


class Authenticator:
    """Credentials to principals: one per application (per worker), holding the JWKS, the cache of
    accepted tokens and the API key file."""

    def __init__(self, settings: Settings) -> None:
        check_auth_settings(settings)
        roles = RoleMap(settings.roles)
        self.tokens = TokenVerifier(settings, roles) if settings.oidc_issuer else None
        keys_file = Path(settings.api_keys_file).expanduser() if settings.api_keys_file else None
        self.keys = ApiKeys(keys_file, roles) if keys_file else None

    async def principal_for(self, scope: Scope) -> Principal:
        authorization: bytes | None = None
        api_key: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"x-api-key" and api_key is None:
                api_key = value
        if authorization is not None:
            scheme, _, credentials = authorization.strip().partition(b" ")
            credentials = credentials.strip()
            scheme = scheme.lower()
            if not credentials or scheme not in (b"bearer", b"apikey"):
                raise Unauthenticated("expected Bearer or ApiKey credentials")
            if scheme == b"bearer" and credentials.count(b".") == 2:
                return await self._token(credentials)
            return self._api_key(credentials)
        if api_key is not None:
            return self._api_key(api_key.strip())
        raise Unauthenticated(None)

    async def _token(self, token: bytes) -> Principal:
        if self.tokens is None:
            raise Unauthenticated("bearer tokens are not accepted here (no issuer configured)")
        try:
            return await self.tokens.principal_for(token)
        except TokenRefused as exc:
            raise Unauthenticated(str(exc)) from None

    def _api_key(self, key: bytes) -> Principal:
        if self.keys is None:
            raise Unauthenticated("API keys are not accepted here")
        try:
            text = key.decode("ascii")
        except UnicodeDecodeError:
            raise Unauthenticated("unknown or revoked API key") from None
        principal = self.keys.principal_for(text)
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        return principal


def authentication(settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    """A wrapper for any number of mounts of one application, sharing one Authenticator (one JWKS
    fetch, one token cache)."""
    if not settings.authentication_enabled:

        def anonymous_wrapper(app: ASGIApp) -> ASGIApp:
            async def anonymous(scope: Scope, receive: Receive, send: Send) -> None:
                set_principal(scope, ANONYMOUS)
                await app(scope, receive, send)

            return anonymous

        return anonymous_wrapper

    authenticator = Authenticator(settings)

    def wrapper(app: ASGIApp) -> ASGIApp:
        async def authenticated(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            try:
                principal = await authenticator.principal_for(scope)
            except Unauthenticated as exc:
                log.debug("request refused: %s", exc.reason or "no credentials")
                message = exc.reason or "authentication required: send a bearer token or an API key"
                response = error_response(401, message, {"WWW-Authenticate": _challenge(exc.reason)})
                await response(scope, receive, send)
                return
            except IssuerUnavailable:
                message = "the token issuer's signing keys are not available yet; retry later"
                response = error_response(503, message, {"Retry-After": str(int(RETRY_SECONDS))})
                await response(scope, receive, send)
                return
            set_principal(scope, principal)
            await app(scope, receive, send)

        return authenticated

    return wrapper
