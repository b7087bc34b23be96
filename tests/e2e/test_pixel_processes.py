"""Compressed frames are decoded and encoded in codec processes, not in the worker: the codec wheels hold
the GIL for the whole frame (tens of milliseconds for a 512x512 JPEG 2000 frame), which in a thread would
stall the worker's event loop, its searches and stores; and some are not thread-safe."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from bench.corpus import build_template

from support.dicom_files import new_uid
from support.dicomweb import parse_multipart, stow
from support.server import Server, descendants, start_server, stop_server

UNCOMPRESSED = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
JPEG_LS = 'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80'


@pytest.fixture
def one_worker(tmp_path: Path) -> Iterator[Server]:
    server = start_server(tmp_path / "data", workers=1)
    yield server
    stop_server(server)


def _j2k_ct(study: str, series: str, sop: str) -> tuple[bytes, np.ndarray]:
    ds = copy.deepcopy(build_template("ct512"))  # 512x512, 16 bits: 512 KiB decoded
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    pixels = ds.pixel_array.copy()
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), pixels


def test_frames_are_coded_outside_the_worker(one_worker: Server) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    data, pixels = _j2k_ct(study, series, sop)
    base = f"/studies/{study}/series/{series}/instances/{sop}"
    with httpx.Client(base_url=one_worker.v2, timeout=60) as client:
        assert stow(client, [data]).status_code == 200
        before = set(descendants(one_worker.process.pid))
        r = client.get(base + "/frames/1", headers={"Accept": UNCOMPRESSED})
        assert r.status_code == 200, r.text
        [(_, body)] = parse_multipart(r)
        assert np.array_equal(np.frombuffer(body, "<u2").reshape(512, 512), pixels)
        # the worker started codec processes for that frame (and keeps them for the next)
        codecs = set(descendants(one_worker.process.pid)) - before
        assert codecs, "a 512 KiB JPEG 2000 frame was decoded inside the worker process"
        # decoded and encoded there (JPEG 2000 -> JPEG-LS), with the same pixels
        r = client.get(base + "/frames/1", headers={"Accept": JPEG_LS})
        assert r.status_code == 200, r.text
        [(_, jls)] = parse_multipart(r)
        decoded, _ = get_decoder(JPEGLSLossless).as_array(
            encapsulate([jls]),
            rows=512,
            columns=512,
            samples_per_pixel=1,
            bits_allocated=16,
            bits_stored=12,
            pixel_representation=0,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        assert np.array_equal(decoded, pixels)
