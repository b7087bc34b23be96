"""Roles: names in a token's roles claim or scopes, or on an API key, mapped to the data actions they grant.

Two roles are built in ("Data Owner": every action, "Data Reader": read and search); the ``roles`` setting
adds or redefines others as ``role=action+action;other=action``. Names match case-sensitively."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dicomd.auth.principal import ACTIONS

BUILTIN_ROLES: Mapping[str, frozenset[str]] = {
    "Data Owner": ACTIONS,
    "Data Reader": frozenset(("read",)),
}


def parse_roles(text: str) -> dict[str, frozenset[str]]:
    """The roles of the ``roles`` setting; ValueError(reason) for a malformed entry or unknown action."""
    roles: dict[str, frozenset[str]] = {}
    for entry in text.split(";"):
        if not entry.strip():
            continue
        name, sep, actions_text = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"expected role=action+action;..., got {entry.strip()!r}")
        actions = frozenset(a.strip() for a in actions_text.split("+") if a.strip())
        unknown = sorted(actions - ACTIONS)
        if unknown:
            raise ValueError(
                f"role {name!r}: unknown action {unknown[0]!r} (actions: delete, manage, read, write)"
            )
        roles[name] = actions
    return roles


class RoleMap:
    """The built-in roles and those of the ``roles`` setting (which win on a shared name)."""

    def __init__(self, configured: str = "") -> None:
        self.roles: dict[str, frozenset[str]] = {**BUILTIN_ROLES, **parse_roles(configured)}

    def __contains__(self, name: object) -> bool:
        return name in self.roles

    def actions_for(self, names: Iterable[str]) -> frozenset[str]:
        """The union of the actions of the known roles among ``names`` (unknown names grant nothing)."""
        granted: frozenset[str] = frozenset()
        for name in names:
            granted |= self.roles.get(name, frozenset())
        return granted
