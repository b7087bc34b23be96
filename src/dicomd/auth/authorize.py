"""Authorisation: each endpoint names the data action it needs (api/routes.py); a caller whose roles do
not grant it gets 403. Authentication (auth/middleware.py) ran before and set the caller on the scope."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from dicomd.api.common import ApiError
from dicomd.auth.principal import principal_of

Handler = Callable[[Request], Awaitable[Response]]

_INSUFFICIENT = 'Bearer realm="dicomd", error="insufficient_scope"'  # RFC 6750 section 3.1


def require(action: str | None, handler: Handler) -> Handler:
    """``handler``, answering 403 first when the caller may not perform ``action`` (None: any
    authenticated caller)."""
    if action is None:
        return handler

    @functools.wraps(handler)
    async def authorized(request: Request) -> Response:
        caller = principal_of(request.scope)
        if caller is not None and not caller.may(action):
            raise ApiError(
                403,
                f"the caller's roles do not allow '{action}' on this resource",
                headers={"WWW-Authenticate": _INSUFFICIENT},
            )
        return await handler(request)

    return authorized
