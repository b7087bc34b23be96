"""Authentication and authorisation on every route of the versioned route table, in-process (support/asgi.py)
against a real OIDC issuer (support/oidc.py: discovery, JWKS, RSA and EC keys) and a real API key file."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomd.api.routes import VERSIONED, Endpoint
from dicomd.auth.api_keys import add_key, revoke_key

from support.asgi import in_process, settings_for
from support.oidc import AUDIENCE, Issuer, make_key, running_issuer

_DUMMY = {
    "study": "1.2.826.0.1.3680043.10.543.1",
    "series": "1.2.826.0.1.3680043.10.543.1.2",
    "instance": "1.2.826.0.1.3680043.10.543.1.2.3",
    "frames": "1",
    "path": "00100010",
}
_CHALLENGE = 'Bearer realm="dicomd"'


def _url(endpoint: Endpoint, version: int = 2) -> str:
    path = endpoint.path
    for name in endpoint.path_params:
        path = path.replace("{" + name + ":path}", _DUMMY[name]).replace("{" + name + "}", _DUMMY[name])
    return f"/v{version}{path}"


async def _call(client: httpx.AsyncClient, endpoint: Endpoint, headers: dict[str, str]) -> httpx.Response:
    if endpoint.method == "POST":
        headers = {**headers, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
        return await client.post(_url(endpoint), content=b"--b--\r\n", headers=headers)
    return await client.request(endpoint.method, _url(endpoint), headers=headers)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """RSA and EC keys (made once: RSA key generation takes a while), plus an RSA key nobody publishes."""
    return {"rsa": make_key("RS256"), "ec": make_key("ES256"), "stranger": make_key("RS256")}


@pytest.fixture
def issuer(keys: dict[str, Any]) -> Iterator[Issuer]:
    with running_issuer(keys["rsa"], keys["ec"]) as found:
        yield found


@pytest.fixture
async def client(issuer: Issuer, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'index.db'}",
        oidc_issuer=issuer.url,
        oidc_audience=AUDIENCE,
        api_keys_file=str(tmp_path / "keys.jsonl"),
    )
    async with in_process(settings) as found:
        yield found


def _refused_everywhere(responses: dict[str, httpx.Response], description: str | None) -> None:
    for name, response in responses.items():
        assert response.status_code == 401, (name, response.status_code, response.text)
        challenge = response.headers["WWW-Authenticate"]
        if description is None:
            assert challenge == _CHALLENGE, name
        else:
            expected = f'{_CHALLENGE}, error="invalid_token", error_description="{description}"'
            assert challenge == expected, name
            assert response.json() == {"status": 401, "message": description}


async def _every_route(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, httpx.Response]:
    return {endpoint.name: await _call(client, endpoint, headers) for endpoint in VERSIONED}


async def test_without_credentials_every_route_answers_401_and_health_stays_public(
    client: httpx.AsyncClient,
) -> None:
    _refused_everywhere(await _every_route(client, {}), None)
    # v1 too, and an unknown version's routes are no way around it
    response = await client.get("/v1/studies")
    assert response.status_code == 401
    assert (await client.get("/health/check")).status_code == 200


@pytest.mark.parametrize(
    ("case", "description"),
    [
        ("expired", "the token has expired"),
        ("not yet valid", "the token is not valid yet"),
        ("wrong audience", "the token is for another audience"),
        ("wrong issuer", "the token is from another issuer"),
        ("wrong signature", "the token's signature is invalid"),
        ("alg none", "the token's algorithm is not accepted"),
        ("HS256 with the public key", "the token's algorithm is not accepted"),
        ("unknown key id", "the token's signing key is unknown"),
        ("no expiry", "the token lacks a required claim"),
        ("garbage", "the token is malformed"),
    ],
)
async def test_a_refused_token_gets_401_invalid_token_on_every_route(
    client: httpx.AsyncClient, issuer: Issuer, keys: dict[str, Any], case: str, description: str
) -> None:
    now = int(time.time())
    token = {
        # beyond the default clock skew (60 s)
        "expired": lambda: issuer.token(exp=now - 120, iat=now - 900, nbf=now - 900),
        "not yet valid": lambda: issuer.token(nbf=now + 120),
        "wrong audience": lambda: issuer.token(aud="another-app"),
        "wrong issuer": lambda: issuer.token(iss="http://127.0.0.1:9/elsewhere"),
        # signed by a key nobody publishes, claiming a published key's id
        "wrong signature": lambda: issuer.token(keys["stranger"], kid=keys["rsa"].kid),
        "alg none": lambda: issuer.unsigned_token(),
        "HS256 with the public key": lambda: issuer.hs256_with_public_key(),
        "unknown key id": lambda: issuer.token(keys["stranger"]),
        "no expiry": lambda: issuer.token(exp=None),
        "garbage": lambda: "not.a.token",
    }[case]()
    _refused_everywhere(await _every_route(client, _bearer(token)), description)


async def test_token_times_tolerate_the_clock_skew(client: httpx.AsyncClient, issuer: Issuer) -> None:
    now = int(time.time())
    for token in (issuer.token(exp=now - 30), issuer.token(nbf=now + 30, iat=now + 30)):
        assert (await client.get("/v2/studies", headers=_bearer(token))).status_code == 200


def _check_reader(responses: dict[str, httpx.Response]) -> None:
    for endpoint in VERSIONED:
        response = responses[endpoint.name]
        if endpoint.action in ("write", "delete", "manage"):
            assert response.status_code == 403, (endpoint.name, response.text)
            assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
            assert f"'{endpoint.action}'" in response.json()["message"]
        else:
            assert response.status_code not in (401, 403), (endpoint.name, response.text)
            assert response.status_code < 500, (endpoint.name, response.text)


def _check_owner(responses: dict[str, httpx.Response]) -> None:
    for name, response in responses.items():
        assert response.status_code not in (401, 403), (name, response.text)
        assert response.status_code < 500, (name, response.text)


async def test_a_reader_reads_everywhere_and_gets_403_on_write_and_delete(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    _check_reader(await _every_route(client, _bearer(issuer.token(roles=["Data Reader"]))))


@pytest.mark.parametrize("key", ["rsa", "ec"])
async def test_an_owner_passes_everywhere_with_rsa_and_ec_tokens(
    client: httpx.AsyncClient, issuer: Issuer, keys: dict[str, Any], key: str
) -> None:
    _check_owner(await _every_route(client, _bearer(issuer.token(keys[key]))))


async def test_a_token_without_a_known_role_gets_403_except_on_the_api_document(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    for roles in (None, [], ["Nurse"], ["data reader"]):  # role names match case-sensitively
        responses = await _every_route(client, _bearer(issuer.token(roles=roles)))
        for endpoint in VERSIONED:
            expected = 200 if endpoint.action is None else 403
            assert responses[endpoint.name].status_code == expected, (roles, endpoint.name)


async def test_a_rotated_key_is_fetched_and_a_withdrawn_one_refused(
    client: httpx.AsyncClient, issuer: Issuer, keys: dict[str, Any]
) -> None:
    old_token = issuer.token(keys["rsa"])
    _check_owner(await _every_route(client, _bearer(old_token)))
    fetches = issuer.jwks_fetches()

    new_key = make_key("ES256")
    issuer.rotate(new_key, withdraw=keys["rsa"].kid)
    _check_owner(await _every_route(client, _bearer(issuer.token(new_key))))
    assert issuer.jwks_fetches() == fetches + 1  # the unknown key id made one refresh

    # the cached acceptance of the old token went with its key
    _refused_everywhere(await _every_route(client, _bearer(old_token)), "the token's signing key is unknown")
    # the EC key still published keeps working
    _check_owner(await _every_route(client, _bearer(issuer.token(keys["ec"]))))


async def test_unknown_key_ids_refresh_the_keys_at_most_once_a_minute(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    assert (await client.get("/v2/studies", headers=_bearer(issuer.token()))).status_code == 200
    fetches = issuer.jwks_fetches()
    for _ in range(5):
        response = await client.get("/v2/studies", headers=_bearer(issuer.token(make_key("ES256"))))
        assert response.status_code == 401
    assert issuer.jwks_fetches() == fetches + 1


async def test_no_keys_from_the_issuer_is_503_and_cached_keys_outlive_its_failure(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    with running_issuer(keys["rsa"]) as issuer:
        settings = settings_for(
            tmp_path / "data",
            f"sqlite:///{tmp_path / 'i.db'}",
            oidc_issuer=issuer.url,
            oidc_audience=AUDIENCE,
        )
        async with in_process(settings) as client:
            issuer.failing = True
            response = await client.get("/v2/studies", headers=_bearer(issuer.token()))
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) > 0
            # while it fails, no request fetches again (no hammering of a failing issuer)
            asked = len(issuer.requests)
            assert (await client.get("/v2/studies", headers=_bearer(issuer.token()))).status_code == 503
            assert len(issuer.requests) == asked

        async with in_process(settings) as client:
            issuer.failing = False
            assert (await client.get("/v2/studies", headers=_bearer(issuer.token()))).status_code == 200
            issuer.failing = True
            # a new token signed by a known key needs no fetch; an unknown key is refused, not 503
            assert (
                await client.get("/v2/studies", headers=_bearer(issuer.token(sub="u2")))
            ).status_code == 200
            stranger = issuer.token(keys["stranger"])
            assert (await client.get("/v2/studies", headers=_bearer(stranger))).status_code == 401


@pytest.mark.parametrize("how", ["ApiKey", "X-API-Key", "Bearer"])
async def test_api_keys_good_bad_and_revoked(client: httpx.AsyncClient, tmp_path: Path, how: str) -> None:
    path = tmp_path / "keys.jsonl"
    reader = add_key(path, "ci-reader", ("Data Reader",), None)
    owner = add_key(path, "backup", ("Data Owner",), None)

    def headers(key: str) -> dict[str, str]:
        return {"X-API-Key": key} if how == "X-API-Key" else {"Authorization": f"{how} {key}"}

    await _eventually_status(client, headers(owner), 200)
    _check_reader(await _every_route(client, headers(reader)))
    _check_owner(await _every_route(client, headers(owner)))
    _refused_everywhere(await _every_route(client, headers(reader[:-2] + "xx")), "unknown or revoked API key")

    assert revoke_key(path, "ci-reader")
    await _eventually_status(client, headers(reader), 401)
    _refused_everywhere(await _every_route(client, headers(reader)), "unknown or revoked API key")
    _check_owner(await _every_route(client, headers(owner)))


async def _eventually_status(client: httpx.AsyncClient, headers: dict[str, str], status: int) -> None:
    """The server looks at the key file at most once a second."""
    deadline = time.monotonic() + 5
    while (response := await client.get("/v2/studies", headers=headers)).status_code != status:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)


async def test_malformed_authorization_headers_get_401(client: httpx.AsyncClient) -> None:
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Digest x", "Bearer a.b"):
        response = await client.get("/v2/studies", headers={"Authorization": value})
        assert response.status_code == 401, value
        assert response.headers["WWW-Authenticate"].startswith(_CHALLENGE)
