"""Authentication end to end: a real `dicomd serve` (worker processes fetching the JWKS over real HTTP from
the test issuer, support/oidc.py) with bearer tokens and API keys."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicomd.auth.api_keys import add_key, revoke_key

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow, unique_id, wait_for
from support.oidc import AUDIENCE, Issuer, make_key, running_issuer
from support.server import Server, start_server, stop_server


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer(make_key("RS256"), make_key("ES256")) as found:
        yield found


@pytest.fixture
def secured(issuer: Issuer, tmp_path: Path) -> Iterator[Server]:
    server = start_server(
        tmp_path / "data",
        "--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE,
        "--api-keys-file", str(tmp_path / "keys.jsonl"),
    )  # fmt: skip
    yield server
    stop_server(server)


def test_a_secured_server_end_to_end(secured: Server, issuer: Issuer, tmp_path: Path) -> None:
    owner = {"Authorization": "Bearer " + issuer.token(sub="uploader")}
    reader = {"Authorization": "Bearer " + issuer.token(issuer.keys[1], roles=["Data Reader"])}
    refused = issuer.token(aud="someone-else")
    patient = unique_id("AUTH")
    study = new_uid()
    with httpx.Client(base_url=secured.v2, timeout=30) as client:
        assert httpx.get(secured.url + "/health/check").status_code == 200
        response = client.get("/studies")
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == 'Bearer realm="dicomd"'

        instance = make_instance(study=study, patient_id=patient)
        assert stow(client, [instance], **owner).status_code == 200
        assert stow(client, [make_instance(patient_id=patient)], **reader).status_code == 403

        # both workers fetch the keys themselves: ask often enough to reach each
        for _ in range(4):
            found = client.get("/studies", params={"PatientID": patient}, headers=reader)
            assert found.status_code == 200 and len(found.json()) == 1
        assert client.delete(f"/studies/{study}", headers=reader).status_code == 403

        response = client.get("/studies", headers={"Authorization": "Bearer " + refused})
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]

        key = add_key(tmp_path / "keys.jsonl", "nightly-export", ("Data Reader",), None)
        assert wait_for(lambda: client.get("/studies", headers={"X-API-Key": key}).status_code == 200)
        revoke_key(tmp_path / "keys.jsonl", "nightly-export")
        assert wait_for(lambda: client.get("/studies", headers={"X-API-Key": key}).status_code == 401)

        assert client.delete(f"/studies/{study}", headers=owner).status_code in (200, 202, 204)

    log = secured.log()
    assert "authentication is off" not in log
    for secret in (owner["Authorization"][7:], reader["Authorization"][7:], refused, key, patient, study):
        assert secret not in log
