"""TLS on the listener (dicomd.http.tls): a real `dicomd serve` with a certificate made here, HTTPS requests
to it (through the supervisor's hand-over and with a single worker), URLs in answers that say https,
Strict-Transport-Security, and a renewal: the files replaced while the server runs, the new certificate
served to a new connection without a restart."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.certificates import Certificate, make_certificate
from support.dicom_files import make_instance
from support.dicomweb import stow, unique_id, value
from support.server import Server, free_port, start_server, stop_server


def write_atomically(path: Path, data: bytes) -> None:
    """As a renewal tool does: a new file renamed over the old one."""
    temporary = path.with_suffix(".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def trusting(cert: Certificate) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=cert.pem.decode())


@dataclass
class TlsServer:
    server: Server
    cert_file: Path
    key_file: Path

    @property
    def url(self) -> str:
        return self.server.url  # https://127.0.0.1:port

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.server.process

    def log(self) -> str:
        return self.server.log()


def start_tls_server(tmp_path: Path, cert: Certificate, workers: int) -> TlsServer:
    """`dicomd serve` with TLS, reached over https trusting ``cert``."""
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(cert.pem)
    key_file.write_bytes(cert.key_pem)
    server = start_server(
        tmp_path / "data",
        "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
        workers=workers, tls=trusting(cert),
    )  # fmt: skip
    return TlsServer(server, cert_file, key_file)


@pytest.fixture(params=[2, 1], ids=["handed-over", "one-worker"])
def tls_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TlsServer, Certificate]]:
    cert = make_certificate("dicomd-test-first")
    server = start_tls_server(tmp_path, cert, workers=request.param)
    yield server, cert
    stop_server(server.server)


def served_certificate(port: int) -> bytes:
    """The certificate (DER) a new connection gets, unverified: the test compares it itself."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_https_serves_dicomweb_with_https_urls_and_hsts(tls_server: tuple[TlsServer, Certificate]) -> None:
    server, cert = tls_server
    with httpx.Client(base_url=server.url + "/v2", verify=trusting(cert), timeout=30) as client:
        patient = unique_id("TLS")
        stored = stow(client, [make_instance(patient_id=patient)])
        assert stored.status_code == 200, stored.text
        assert stored.headers["strict-transport-security"].startswith("max-age=")
        studies = client.get("/studies", params={"PatientID": patient})
        assert studies.status_code == 200 and len(studies.json()) == 1
        retrieve_url = value(studies.json()[0], "00081190")
        assert retrieve_url.startswith(f"https://127.0.0.1:{server.port}/v2/studies/"), retrieve_url
        assert client.get(retrieve_url.removeprefix(server.url + "/v2") + "/metadata").status_code == 200


def test_plain_http_to_the_tls_port_gets_no_answer(tls_server: tuple[TlsServer, Certificate]) -> None:
    server, cert = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{server.port}/health/check", timeout=5)
    # the server goes on serving TLS
    assert httpx.get(server.url + "/health/check", verify=trusting(cert), timeout=5).status_code == 200


def test_a_renewed_certificate_is_served_to_new_connections_without_restart(
    tls_server: tuple[TlsServer, Certificate],
) -> None:
    server, first = tls_server
    assert served_certificate(server.port) == first.der
    with httpx.Client(verify=trusting(first), timeout=10) as old_client:
        assert old_client.get(server.url + "/health/check").status_code == 200  # a kept-alive connection

        second = make_certificate("dicomd-test-second")
        write_atomically(server.cert_file, second.pem)  # for a moment the pair does not match: kept old
        write_atomically(server.key_file, second.key_pem)
        deadline = time.monotonic() + 10
        while served_certificate(server.port) != second.der:
            assert time.monotonic() < deadline, "the renewed certificate was not served within 10 s"
            time.sleep(0.2)
        # every worker serves it: each looks at the files at most once a second, on a new connection
        time.sleep(1.2)
        for _ in range(6):
            assert served_certificate(server.port) == second.der
        r = httpx.get(server.url + "/health/check", verify=trusting(second), timeout=5)
        assert r.status_code == 200
        with pytest.raises(httpx.ConnectError):  # a client that trusts only the old one refuses it now
            httpx.get(server.url + "/health/check", verify=trusting(first), timeout=5)
        # the connection opened before the renewal goes on with the certificate it began with
        assert old_client.get(server.url + "/health/check").status_code == 200
    assert server.process.poll() is None
    assert "dicomd-test" not in server.log()  # nothing of the certificates in the log but the fact
    assert "TLS certificate reloaded" in server.log()


def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path: Path) -> None:
    cert_file = tmp_path / "server.crt"
    cert_file.write_bytes(make_certificate("lonely").pem)
    args = [sys.executable, "-m", "dicomd", "serve", "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        [*args, "--port", str(free_port()), "--tls-cert-file", str(cert_file)],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert b"tls_key_file" in done.stderr, done.stderr[-2000:]


def test_a_key_that_does_not_match_the_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"
    cert_file.write_bytes(make_certificate("one").pem)
    key_file.write_bytes(make_certificate("other").key_pem)
    args = [sys.executable, "-m", "dicomd", "serve", "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(
        [
            *args,
            "--port",
            str(free_port()),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
        ],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert b"tls_cert_file" in done.stderr and b"private key" in done.stderr, done.stderr[-2000:]
