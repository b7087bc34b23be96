"""The token verifier (auth/oidc.py) against the real test issuer: claims to principals, the cache of accepted
tokens, discovery and the JWKS refresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dicomd.auth.oidc import IssuerUnavailable, Jwks, TokenRefused, TokenVerifier
from dicomd.auth.roles import RoleMap, parse_roles
from dicomd.config import load_settings

from support.oidc import AUDIENCE, Issuer, make_key, running_issuer


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer(make_key("ES256")) as found:
        yield found


def _verifier(issuer: Issuer, **flags: Any) -> TokenVerifier:
    settings = load_settings(flags={"oidc_issuer": issuer.url, "oidc_audience": AUDIENCE, **flags})
    return TokenVerifier(settings, RoleMap(settings.roles))


async def test_claims_make_the_principal(issuer: Issuer) -> None:
    verifier = _verifier(issuer, roles="dicomweb.read=read;uploader=write")
    principal = await verifier.principal_for(
        issuer.token(
            sub="u-7",
            preferred_username="dr.house",
            roles=["Data Reader", "unknown"],
            scope="openid uploader",
            dicomd_partitions=["north", "south"],
        ).encode()
    )
    assert principal.subject == "u-7" and principal.name == "dr.house" and principal.method == "oidc"
    assert principal.actions == {"read", "write"}
    assert principal.partitions == {"north", "south"}
    assert principal.may_use_partition("north") and not principal.may_use_partition("east")

    # scp as a list; roles as a space-separated string; no partitions claim: all partitions
    principal = await verifier.principal_for(issuer.token(roles="uploader", scp=["dicomweb.read"]).encode())
    assert principal.actions == {"read", "write"} and principal.partitions is None


async def test_configurable_claims_and_nested_roles(issuer: Issuer) -> None:
    verifier = _verifier(issuer, oidc_roles_claim="realm_access.roles", oidc_partitions_claim="tenants")
    token = issuer.token(roles=None, realm_access={"roles": ["Data Owner"]}, tenants="a,b")
    principal = await verifier.principal_for(token.encode())
    assert principal.actions == {"read", "write", "delete", "manage"}
    assert principal.partitions == {"a", "b"}
    # a partitions claim that is neither a list nor a string grants none (fails closed)
    principal = await verifier.principal_for(issuer.token(tenants={"x": 1}).encode())
    assert principal.partitions == frozenset()


async def test_an_accepted_token_is_verified_once_until_it_expires(issuer: Issuer) -> None:
    verifier = _verifier(issuer, clock_skew="0")
    token = issuer.token(exp=int(time.time()) + 2).encode()
    first = await verifier.principal_for(token)
    assert await verifier.principal_for(token) is first  # from the cache: the same object
    await asyncio.sleep(2.1)
    with pytest.raises(TokenRefused, match="expired"):
        await verifier.principal_for(token)


async def test_a_repeated_token_costs_a_lookup(issuer: Issuer) -> None:
    verifier = _verifier(issuer)
    token = issuer.token().encode()
    started = time.perf_counter()
    await verifier.principal_for(token)
    first = time.perf_counter() - started  # the JWKS fetch and an ES256 verification
    started = time.perf_counter()
    for _ in range(1000):
        await verifier.principal_for(token)
    repeated = (time.perf_counter() - started) / 1000
    assert repeated < 50e-6 and repeated < first / 20, (first, repeated)


async def test_old_keys_are_refreshed_before_a_token_is_verified_with_them(issuer: Issuer) -> None:
    jwks = Jwks(issuer.url, "", {"ES256"}, refresh_seconds=0)
    await jwks.key(issuer.keys[0].kid)
    fetches = issuer.jwks_fetches()
    await jwks.key(issuer.keys[0].kid)  # stale keys: fetched again before the answer
    assert issuer.jwks_fetches() == fetches + 1


async def test_a_key_withdrawn_while_the_keys_were_idle_verifies_no_token() -> None:
    """After an idle spell the first token is not verified with a key the issuer withdrew meanwhile."""
    old = make_key("RS256")
    with running_issuer(old) as rotating:
        settings = load_settings(flags={"oidc_issuer": rotating.url, "oidc_audience": AUDIENCE})
        verifier = TokenVerifier(settings, RoleMap(settings.roles))
        verifier.jwks._refresh_seconds = 0.5  # the keys go stale quickly
        await verifier.principal_for(rotating.token().encode())
        rotating.rotate(make_key("RS256"), withdraw=old.kid)
        await asyncio.sleep(0.6)
        with pytest.raises(TokenRefused):
            # a token never seen before: other claims than the first one's (signed in the same second with
            # the same claims, it would be the same token, accepted from the verifier's cache)
            await verifier.principal_for(rotating.token(old, sub="user-2").encode())


async def test_a_configured_jwks_url_skips_discovery(issuer: Issuer) -> None:
    verifier = _verifier(issuer, oidc_jwks_url=issuer.url + "/jwks")
    before = issuer.requests.count("/.well-known/openid-configuration")
    await verifier.principal_for(issuer.token().encode())
    assert issuer.requests.count("/.well-known/openid-configuration") == before


async def test_discovery_naming_another_issuer_gives_no_keys() -> None:
    with running_issuer(make_key("ES256")) as issuer:
        # the issuer's metadata says http://127.0.0.1:<port>; a configured localhost URL is another issuer
        jwks = Jwks(issuer.url.replace("127.0.0.1", "localhost"), "", {"ES256"})
        with pytest.raises(IssuerUnavailable):
            await jwks.key(None)
        assert "/jwks" not in issuer.requests


async def test_keys_of_other_algorithms_are_not_used() -> None:
    with running_issuer(make_key("RS256")) as issuer:
        jwks = Jwks(issuer.url, "", {"ES256"})  # the issuer publishes only an RSA key
        with pytest.raises(IssuerUnavailable):
            await jwks.key(issuer.keys[0].kid)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Viewer", "expected role=action"),
        ("=read", "expected role=action"),
        ("Viewer=read+print", "unknown action 'print'"),
    ],
)
def test_bad_role_settings(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_roles(text)


def test_roles_setting_adds_and_redefines_roles() -> None:
    roles = RoleMap(" Uploader = write ; Data Reader=read+write ;")
    assert roles.actions_for(["Uploader"]) == {"write"}
    assert roles.actions_for(["Data Reader"]) == {"read", "write"}
    assert roles.actions_for(["Data Owner"]) == {"read", "write", "delete", "manage"}
    assert roles.actions_for(["uploader", "data owner"]) == frozenset()
