"""Start-up checks of the authentication settings (`dicomd serve` and every worker's app run them)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from dicomd.auth.api_keys import ApiKeyFileError, read_records
from dicomd.auth.roles import parse_roles
from dicomd.config import ConfigError, Settings


def _source(settings: Settings, name: str) -> str:
    return settings.sources.get(name, "default")


def check_auth_settings(settings: Settings) -> None:
    """ConfigError for settings that cannot work together (naming them and where they came from); each
    setting's own value (the signature algorithms among them) config.py checked already."""
    if (settings.oidc_issuer or settings.oidc_jwks_url) and not settings.oidc_audience:
        raise ConfigError(
            "setting 'oidc_audience' is required with 'oidc_issuer' or 'oidc_jwks_url' "
            "(tokens issued for other applications must not be accepted)"
        )
    if settings.oidc_jwks_url and not settings.oidc_issuer:
        raise ConfigError(
            f"setting 'oidc_jwks_url' (from {_source(settings, 'oidc_jwks_url')}) needs 'oidc_issuer' "
            "(the tokens' issuer is checked)"
        )
    for name in ("oidc_issuer", "oidc_jwks_url"):
        url = urlsplit(getattr(settings, name))
        if url.scheme == "http" and not is_loopback(url.hostname or ""):
            # whoever is on the network path could hand out signing keys: every token would be forged
            raise ConfigError(
                f"setting '{name}' (from {_source(settings, name)}) must be https:// (plain http:// only on "
                "loopback, e.g. a test issuer)"
            )
    try:
        parse_roles(settings.roles)
    except ValueError as exc:
        raise ConfigError(f"setting 'roles' (from {_source(settings, 'roles')}): {exc}") from None
    if settings.api_keys_file:
        try:
            read_records(Path(settings.api_keys_file).expanduser())
        except ApiKeyFileError as exc:
            raise ConfigError(f"setting 'api_keys_file': {exc}") from None


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (with or without brackets)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
