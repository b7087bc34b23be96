"""What authentication costs: QIDO and STOW throughput of a server with authentication off and of one with
OIDC on (every request carrying the same bearer token, as a viewer or uploader does), same workload,
rounds alternating between the two; prints requests/s and the ratio on/off.

    .venv/bin/python -m bench.auth_cost [--seconds 4] [--rounds 3] [--concurrency 8]

Uses the test issuer (tests/support/oidc.py) and `dicomd serve` processes (tests/support/server.py), one
worker each (the client shares the machine)."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.client import BOUNDARY, HttpConn, multipart

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.dicom_files import make_instance, new_uid
from support.oidc import AUDIENCE, make_key, running_issuer
from support.server import Server, start_server, stop_server

_CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'


async def _load(server: Server, kind: str, headers: bytes, seconds: float, concurrency: int) -> float:
    """Requests per second over `seconds` with `concurrency` keep-alive connections."""
    host, port = "127.0.0.1", int(server.url.rsplit(":", 1)[1])
    stop = time.monotonic() + seconds
    done = 0
    study = new_uid()
    content_type = (
        f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}\r\n'
    )

    async def connection() -> None:
        nonlocal done
        conn = HttpConn(host, port)
        try:
            while time.monotonic() < stop:
                if kind == "qido":
                    response = await conn.request("GET", "/v2/studies?limit=10", headers)
                else:
                    chunks, length = multipart([make_instance(study=study, patient_id="BENCH-AUTH")])
                    response = await conn.request(
                        "POST", "/v2/studies", headers + content_type.encode(), chunks, length
                    )
                if response.status != 200:
                    raise RuntimeError(f"{kind}: HTTP {response.status}")
                done += 1
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch, running_issuer(make_key("RS256")) as issuer:
        token = issuer.token()
        plain = start_server(Path(scratch) / "plain", workers=1)
        secured = start_server(
            Path(scratch) / "secured", "--oidc-issuer", issuer.url, "--oidc-audience", AUDIENCE, workers=1
        )
        try:
            bearer = f"Authorization: Bearer {token}\r\n".encode()
            seeding: tuple[tuple[Server, dict[str, str]], ...] = (
                (plain, {}),
                (secured, {"Authorization": f"Bearer {token}"}),
            )
            for server, auth in seeding:
                with httpx.Client(base_url=server.v2, timeout=30, headers=auth) as client:
                    for _ in range(50):  # something for QIDO to find
                        body, content_type = _multipart_body(make_instance(patient_id="BENCH-SEED"))
                        client.post("/studies", content=body, headers={"Content-Type": content_type})
            results: dict[tuple[str, str], list[float]] = {}
            for kind in ("qido", "stow"):
                for _ in range(args.rounds):
                    for name, target, head in (("off", plain, b""), ("on", secured, bearer)):
                        rate = asyncio.run(_load(target, kind, head, args.seconds, args.concurrency))
                        results.setdefault((kind, name), []).append(rate)
            for kind in ("qido", "stow"):
                off = statistics.median(results[(kind, "off")])
                on = statistics.median(results[(kind, "on")])
                print(
                    f"{kind}: authentication off {off:.0f} req/s, on {on:.0f} req/s, "
                    f"ratio on/off {on / off:.3f}"
                )
        finally:
            stop_server(plain)
            stop_server(secured)


def _multipart_body(instance: bytes) -> tuple[bytes, str]:
    chunks, _ = multipart([instance])
    return b"".join(chunks), _CONTENT_TYPE


if __name__ == "__main__":
    main()
