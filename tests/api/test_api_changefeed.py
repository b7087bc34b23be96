"""Change feed parameters that are refused (400, naming the parameter), in process. The feed's entries are
tested end to end (tests/e2e/test_changefeed.py) and on the index (tests/index)."""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(
    ("version", "params"),
    [
        ("v2", {"limit": "0"}),
        ("v2", {"limit": "201"}),
        ("v2", {"limit": "ten"}),
        ("v2", {"offset": "-1"}),
        ("v2", {"offset": "x"}),
        ("v2", {"includemetadata": "maybe"}),
        ("v2", {"startTime": "yesterday"}),
        ("v2", {"startTime": "2024-01-01T00:00:00"}),  # no time zone
        ("v2", {"startTime": "2024-01-02T00:00:00Z", "endTime": "2024-01-01T00:00:00Z"}),
        ("v2", {"foo": "1"}),
        ("v1", {"limit": "101"}),
        ("v1", {"limit": "0"}),
        ("v1", {"offset": "-3"}),
        ("v1", {"startTime": "2024-01-01T00:00:00Z"}),  # a v2 parameter
    ],
)
async def test_changefeed_bad_parameters_are_400(
    app_client: httpx.AsyncClient, version: str, params: dict[str, str]
) -> None:
    r = await app_client.get(f"/{version}/changefeed", params=params)
    assert r.status_code == 400, (params, r.text)
    named = next(iter(params))
    assert named.lower() in r.json()["message"].lower() or "starttime" in r.json()["message"].lower()


async def test_changefeed_latest_bad_parameter_is_400(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/v2/changefeed/latest", params={"limit": "1"})).status_code == 400
