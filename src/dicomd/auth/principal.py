"""The caller of a request, as authentication found it; set on the ASGI scope once per request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from starlette.types import Scope

Action = Literal["read", "write", "delete", "manage"]
ACTIONS: frozenset[str] = frozenset(("read", "write", "delete", "manage"))

_SCOPE_KEY = "dicomd.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    """``subject``: the token's sub or the API key's name (audit "who"); ``actions``: what the caller's
    roles allow; ``partitions``: the data partitions it may use, None for all; ``method``: how it was
    authenticated ("anonymous" when authentication is off)."""

    subject: str
    actions: frozenset[str]
    partitions: frozenset[str] | None = None
    method: str = "anonymous"
    name: str = ""  # a display name, when the token has one

    def may(self, action: str) -> bool:
        return action in self.actions

    def may_use_partition(self, name: str) -> bool:
        return self.partitions is None or name in self.partitions


ANONYMOUS = Principal("anonymous", ACTIONS)


def set_principal(scope: Scope, principal: Principal) -> None:
    scope[_SCOPE_KEY] = principal


def principal_of(scope: Scope) -> Principal | None:
    """The request's caller; None before authentication ran (or for unversioned routes)."""
    found: Principal | None = scope.get(_SCOPE_KEY)
    return found
