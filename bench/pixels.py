"""The pixel services run (``python -m bench.run --pixels``): frame retrieve with transcoding (JPEG 2000
lossless -> Explicit VR Little Endian, and the reverse), rendered JPEG of a 512x512 CT and thumbnails,
dicomd and Orthanc over the same instances, one run.

Each line is checked first (one request, its answer decoded and compared with the source pixels, or the
image opened): a server that answers wrongly or not at all gets "not timed" with the reason, never a figure.
"""

from __future__ import annotations

import copy
import io
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, JPEG2000Lossless, generate_uid

from bench import servers
from bench.client import ACCEPT_JSON, Pool
from bench.corpus import build_template
from bench.report import Line
from bench.run import Bench, Config, http_get, log, multipart_payloads, stow_one

COUNT = 24  # instances per transfer syntax: each line cycles over them
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ACCEPT_UNCOMPRESSED = f'multipart/related; type="application/octet-stream"; transfer-syntax={EXPLICIT_LE}'
ACCEPT_J2K = f'multipart/related; type="image/jp2"; transfer-syntax={JPEG2000Lossless}'
ACCEPT_JPEG = "image/jpeg"


@dataclass
class PixelCorpus:
    """COUNT 512x512 CT slices stored twice: uncompressed and JPEG 2000 lossless (other UIDs)."""

    study: str
    uncompressed: list[str]  # instance paths
    j2k: list[str]
    pixels: np.ndarray  # every slice has these pixels


def _instances(study: str) -> tuple[list[bytes], list[bytes], np.ndarray]:
    template = build_template("ct512")
    template.StudyInstanceUID = study
    pixels = template.pixel_array.copy()
    plain: list[bytes] = []
    j2k: list[bytes] = []
    for series, out in ((f"{study}.1", plain), (f"{study}.2", j2k)):
        for i in range(COUNT):
            ds = copy.deepcopy(template)
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{series}.{i + 1}")
            ds.InstanceNumber = i + 1
            if out is j2k:
                ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out.append(buf.getvalue())
    return plain, j2k, pixels


def load(srv: servers.Server) -> PixelCorpus:
    study = generate_uid(prefix="1.2.826.0.1.3680043.10.1077.")[:50]
    plain, j2k, pixels = _instances(study)
    for data in plain + j2k:
        stow_one(srv, data)

    def path(series: str, i: int) -> str:
        return f"/studies/{study}/series/{series}/instances/{series}.{i + 1}"

    return PixelCorpus(
        study,
        [path(f"{study}.1", i) for i in range(COUNT)],
        [path(f"{study}.2", i) for i in range(COUNT)],
        pixels,
    )


def _check_uncompressed(srv: servers.Server, path: str, pixels: np.ndarray) -> str:
    st, ct, body = http_get(srv.base + path, ACCEPT_UNCOMPRESSED)
    if st != 200:
        return f"{st}: {body[:160]!r}"
    parts = multipart_payloads(body, ct)
    if len(parts) != 1 or parts[0] != pixels.astype("<u2").tobytes():
        return f"200 ({ct}) but not the source pixels ({[len(p) for p in parts]} bytes)"
    return ""


def _check_j2k(srv: servers.Server, path: str, pixels: np.ndarray) -> str:
    st, ct, body = http_get(srv.base + path, ACCEPT_J2K)
    if st != 200:
        return f"{st}: {body[:160]!r}"
    parts = multipart_payloads(body, ct)
    rows, columns = pixels.shape
    try:
        # the pixel description as keyword options (pydicom's DecodeOptions, typed as one mapping)
        options: dict[str, Any] = {
            "rows": rows,
            "columns": columns,
            "samples_per_pixel": 1,
            "bits_allocated": 16,
            "bits_stored": 12,
            "pixel_representation": 0,
            "photometric_interpretation": "MONOCHROME2",
            "number_of_frames": 1,
        }
        decoded, _ = get_decoder(JPEG2000Lossless).as_array(encapsulate([parts[0]]), **options)
    except Exception as exc:  # a wrong answer is reported, not raised
        return f"200 ({ct}) but not a JPEG 2000 frame: {type(exc).__name__}: {exc}"
    if not np.array_equal(decoded, pixels):
        return f"200 ({ct}) but the decoded frame differs from the source"
    return ""


def _check_image(srv: servers.Server, path: str, accept: str, size: tuple[int, int] | None) -> str:
    st, ct, body = http_get(srv.base + path, accept)
    if st != 200:
        return f"{st}: {body[:160]!r}"
    try:
        image = Image.open(io.BytesIO(body))
        image.load()
    except Exception as exc:  # a wrong answer is reported, not raised
        return f"200 ({ct}) but not an image: {type(exc).__name__}"
    if size and image.size != size:
        return f"200 but {image.size[0]}x{image.size[1]}, expected {size[0]}x{size[1]}"
    if len(np.unique(np.asarray(image.convert("L")))) < 8:
        return "200 but a blank image"
    return ""


@dataclass
class _Workload:
    key: str
    title: str
    paths: list[str]
    accept: str
    problem: str  # why it is not timed ("" = checked, time it)


def _timed(b: Bench, w: _Workload, conc: int) -> None:
    _line(b, f"{w.key}_c{conc}", f"{w.title}, {conc} conn", w.paths, w.accept, conc, w.problem)


def _line(
    b: Bench, key: str, title: str, paths: list[str], accept: str, conc: int, problem: str = ""
) -> None:
    """One timed line; a problem found before (or a server that dies under the load) is its note."""
    if problem:
        b.lines[key] = Line(key=key, title=title, unit="req/s", value=float("nan"), errors=1, note=problem)
        return
    try:
        b.get(key, title, paths, accept, conc, b.cfg.dur)
    except Exception as exc:  # a server that dies under the load is reported; the run goes on
        died = b.srv.proc.poll() if b.srv.proc else None
        note = f"server exited (code {died}) during this line" if died is not None else repr(exc)
        log(f"  ! {key}: {note}")
        b.lines[key] = Line(key=key, title=title, unit="req/s", value=float("nan"), errors=1, note=note)
        if died is not None and b.srv.name == "orthanc":
            _restart_orthanc(b.srv)


def _restart_orthanc(srv: servers.Server) -> None:
    """Orthanc again on the same configuration, port and storage (the corpus is still there)."""
    log("  restarting orthanc on the same storage")
    try:
        servers.restart_orthanc(srv)
    except RuntimeError as exc:  # it crashed again at once: the next lines report it gone
        log(f"  ! orthanc did not come back: {str(exc).splitlines()[0]}")


def _qido_while_transcoding(b: Bench, c: PixelCorpus, frames: list[str]) -> None:
    """Study searches at 1 connection while two other clients keep asking for JPEG 2000 frames as
    uncompressed: what a heavy decode costs everyone else's requests."""
    search = [f"/studies?StudyInstanceUID={c.study}"]
    _line(b, "px_qido_idle", "QIDO study search, idle server, 1 conn", search, ACCEPT_JSON, 1)
    stop = threading.Event()

    def load(offset: int) -> None:
        i = offset
        while not stop.is_set():
            try:
                http_get(b.srv.base + frames[i % len(frames)], ACCEPT_UNCOMPRESSED)
            except OSError:  # the server went away (Orthanc crashes under this load): the line says so
                time.sleep(0.1)
            i += 2

    loaders = [threading.Thread(target=load, args=(k,), daemon=True) for k in range(2)]
    for t in loaders:
        t.start()
    try:
        title = "QIDO study search while 2 clients transcode JPEG 2000 frames, 1 conn"
        _line(b, "px_qido_busy", title, search, ACCEPT_JSON, 1)
    finally:
        stop.set()
        for t in loaders:
            t.join()


def _checked(srv: servers.Server, check: Callable[..., str], *args: Any) -> str:
    """``check(srv, *args)``; a server that crashes on it (Orthanc on JPEG 2000 encoding) is the problem."""
    try:
        return check(srv, *args)
    except OSError as exc:
        died = srv.proc.poll() if srv.proc else None
        if died is None:
            return f"{type(exc).__name__}: {exc}"
        if srv.name == "orthanc":
            _restart_orthanc(srv)
        return f"the server exited (code {died}) on the first request"


def bench_pixels(srv: servers.Server, pool: Pool, cfg: Config) -> tuple[dict[str, Line], dict[str, Any]]:
    """Every line checked, then each timed over 1 and 4 connections; a server that crashes has the
    figures of the lines before."""
    b = Bench(srv, pool, cfg)
    log(f"{srv.name}: storing {2 * COUNT} 512x512 CT instances (uncompressed and JPEG 2000 lossless)")
    c = load(srv)
    frames_plain = [p + "/frames/1" for p in c.uncompressed]
    frames_j2k = [p + "/frames/1" for p in c.j2k]
    rendered = [p + "/rendered" for p in c.uncompressed]
    thumbnails = [p + "/thumbnail" for p in c.uncompressed]
    # every request a different window (center, width): a server's rendered-image cache never hits
    windows = random.Random(5).sample(range(20_000), 5_000)
    uncached = [
        f"{rendered[i % COUNT]}?window={w % 200 + 20},{w // 200 + 300},linear" for i, w in enumerate(windows)
    ]
    workloads = [
        _Workload(
            "px_rendered",
            "Rendered JPEG of a 512x512 CT instance (24 instances, cached after the first pass)",
            rendered,
            ACCEPT_JPEG,
            _checked(srv, _check_image, rendered[0], ACCEPT_JPEG, (512, 512)),
        ),
        _Workload(
            "px_rendered_uncached",
            "Rendered JPEG of a 512x512 CT instance, a new window each time (no cache hit)",
            uncached,
            ACCEPT_JPEG,
            _checked(srv, _check_image, uncached[0], ACCEPT_JPEG, (512, 512)),
        ),
        _Workload(
            "px_thumbnail",
            "Thumbnail of a 512x512 CT instance (JPEG)",
            thumbnails,
            ACCEPT_JPEG,
            _checked(srv, _check_image, thumbnails[0], ACCEPT_JPEG, None),
        ),
        _Workload(
            "px_j2k_to_le",
            "Frame 512x512 JPEG 2000 lossless -> Explicit VR LE",
            frames_j2k,
            ACCEPT_UNCOMPRESSED,
            _checked(srv, _check_uncompressed, frames_j2k[0], c.pixels),
        ),
        _Workload(
            "px_le_to_j2k",
            "Frame 512x512 Explicit VR LE -> JPEG 2000 lossless",
            frames_plain,
            ACCEPT_J2K,
            _checked(srv, _check_j2k, frames_plain[0], c.pixels),
        ),
    ]
    for w in workloads:
        if w.problem:
            w.problem = f"not timed: {w.problem}"
            log(f"  ! {w.key}: {w.problem}")
    for w in workloads:  # the transcoding lines last: Debian's Orthanc crashes on them (bench/README.md)
        for conc in (1, 4):
            _timed(b, w, conc)
    if not workloads[-1].problem:  # searches while 2 clients keep the server transcoding
        _qido_while_transcoding(b, c, frames_j2k)
    return b.lines, {"instances": 2 * COUNT, "frame_bytes": int(c.pixels.nbytes)}
