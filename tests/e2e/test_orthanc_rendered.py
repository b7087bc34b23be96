"""A real Orthanc (Debian's orthanc + orthanc-dicomweb) configured with dicomd as a DICOMweb server gets
rendered images and thumbnails from it through its DICOMweb client (``POST /dicom-web/servers/dicomd/get``).
Without Orthanc the test skips, except in CI (CI=true), where it fails."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from support.dicom_files import make_instance, new_uid
from support.dicomweb import stow
from support.server import Server, free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def orthanc(server: Server, tmp_path: Path) -> Iterator[str]:
    """An Orthanc whose DICOMweb client knows dicomd as "dicomd": its REST URL."""
    if not (os.path.exists(ORTHANC) and DICOMWEB_PLUGIN.exists()):
        message = (
            "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    config = {
        "Name": "dicomd-test-orthanc",
        "StorageDirectory": str(tmp_path / "storage"),
        "IndexDirectory": str(tmp_path / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"dicomd": [server.v2 + "/"]}},
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log_path = tmp_path / "orthanc.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(url + "/system", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_orthanc_gets_rendered_images_and_thumbnails_from_dicomd(client: httpx.Client, orthanc: str) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    assert (
        stow(client, [make_instance(study=study, series=series, sop=sop, rows=32, columns=48)]).status_code
        == 200
    )
    instance = f"/studies/{study}/series/{series}/instances/{sop}"
    for uri, arguments, size in (
        (instance + "/rendered", {}, (48, 32)),
        (instance + "/frames/1/rendered", {}, (48, 32)),
        # Orthanc passes query parameters as "Arguments" (a "?" in "Uri" is a bad file format to it)
        (instance + "/rendered", {"viewport": "24,24"}, (24, 16)),
        (f"/studies/{study}/series/{series}/thumbnail", {}, (128, 85)),
    ):
        body = {"Uri": uri, "Arguments": arguments}
        r = httpx.post(f"{orthanc}/dicom-web/servers/dicomd/get", json=body, timeout=60)
        assert r.status_code == 200, (uri, r.text)
        picture = Image.open(io.BytesIO(r.content))
        picture.load()
        assert picture.format == "JPEG" and picture.size == size, uri
