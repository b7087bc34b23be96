"""Object store emulators for the tests: moto's S3 server and Azurite (Azure Blob Storage), each started
once per session on an ephemeral port by the fixtures `s3_emulator` and `azure_emulator` (imported by
tests/conftest.py) and stopped at its end. scripts/test-services.sh installs Azurite into .tools/; moto
comes with the test extras. A missing emulator skips its tests, except in CI (CI=true), where it fails
them.

No GCS emulator here: obstore 0.12.1 writes through GCS's XML API, which neither gcp-storage-emulator
(no ETag on PUT) nor fake-gcs-server (PUT routed to its JSON upload handler: 400 invalid uploadType)
serves; GCS goes through the same obstore code path as S3 and Azure."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.server import free_port

REPOSITORY = Path(__file__).resolve().parents[2]
AZURITE = REPOSITORY / ".tools" / "node_modules" / ".bin" / "azurite-blob"

# Azurite's well-known development account (public, documented by Microsoft: not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_REGION = "us-east-1"


@dataclass
class Emulator:
    kind: str  # "s3" or "azure"
    endpoint: str  # http://127.0.0.1:port (Azure: with the account's path)
    process: subprocess.Popen[bytes]
    log_path: Path

    def new_store(self, prefix: str = "archive") -> tuple[str, str]:
        """A fresh, empty bucket (container): its ``storage_url`` and ``storage_options``."""
        name = "t" + uuid.uuid4().hex[:20]
        if self.kind == "s3":
            httpx.put(f"{self.endpoint}/{name}", timeout=10).raise_for_status()
            options = (
                f"aws_endpoint={self.endpoint},aws_region={S3_REGION},"
                "aws_access_key_id=testing,aws_secret_access_key=testing"
            )
            return f"s3://{name}/{prefix}", options
        create_azure_container(self.endpoint, name)
        return f"az://{name}/{prefix}", f"connection_string={self.connection_string()}"

    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def create_azure_container(endpoint: str, name: str) -> None:
    """Create a container with a Shared Key signed request (obstore creates none)."""
    headers = {"x-ms-date": email.utils.formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
    # verb, then 11 standard headers (all empty here), then the x-ms-* headers and the resource
    to_sign = "PUT\n" + "\n" * 11 + canonical_headers + f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}"
    to_sign += "\nrestype:container"
    digest = hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest()
    headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{base64.b64encode(digest).decode()}"
    response = httpx.put(f"{endpoint}/{name}?restype=container", headers=headers, timeout=10)
    response.raise_for_status()


def _missing(what: str) -> None:
    message = f"{what} is not installed: run scripts/test-services.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log_path: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{what} did not start:\n{log_path.read_text()}")


def start_s3(directory: Path, port: int = 0) -> Emulator:
    """moto's S3 server (in memory: a restart on the same port comes back empty)."""
    try:
        import moto.server  # noqa: F401 - only whether it is installed
    except ImportError:
        _missing("moto[server]")
    port = port or free_port()
    log_path = directory / f"moto-{port}-{time.monotonic_ns()}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=open(log_path, "wb"),  # noqa: SIM115 - handed to the child process
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    _wait_until_up(process, endpoint, log_path, "moto")
    return Emulator("s3", endpoint, process, log_path)


def start_azure(directory: Path) -> Emulator:
    if not AZURITE.exists() or shutil.which("node") is None:
        _missing("Azurite (.tools/node_modules/.bin/azurite-blob)")
    port = free_port()
    log_path = directory / "azurite.log"
    (directory / "azurite").mkdir()
    process = subprocess.Popen(
        [
            str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
            "--location", str(directory / "azurite"), "--skipApiVersionCheck", "--loose", "--silent",
        ],
        stdout=open(log_path, "wb"),  # noqa: SIM115 - handed to the child process
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    _wait_until_up(process, endpoint, log_path, "Azurite")
    return Emulator("azure", endpoint, process, log_path)


def stop(emulator: Emulator) -> None:
    emulator.process.kill()  # nothing of its state is kept (and moto takes 10 s over a SIGTERM)
    emulator.process.wait()


@pytest.fixture(scope="session")
def s3_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_s3(tmp_path_factory.mktemp("moto"))
    yield emulator
    stop(emulator)


@pytest.fixture(scope="session")
def azure_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    emulator = start_azure(tmp_path_factory.mktemp("azurite"))
    yield emulator
    stop(emulator)


def emulator_for(request: pytest.FixtureRequest, kind: str) -> Emulator:
    """The session's emulator of a kind ("s3" or "azure"), started on first use."""
    emulator: Emulator = request.getfixturevalue(f"{kind}_emulator")
    return emulator
