"""OHIF Viewer 3 against dicomd, in headless Chromium (support/browser.py): OHIF's built viewer served
from another origin (support/ohif.py; dicomd allows it with ``cors_origins``) lists the stored studies
(QIDO-RS) and shows each kind of study: uncompressed, JPEG baseline, JPEG 2000, RLE, JPEG-LS, multi-frame.
The viewer asks metadata and frames (WADO-RS, ``transfer-syntax=*``: the browser decodes) and the series
thumbnails (OHIF's shipped default, ``.../thumbnail``). A study counts as shown when the viewport's canvas
and the thumbnails are pictures, not blank, and no request failed (each failed one is named). Its Upload
button stores with STOW-RS.

One browser, one OHIF server and one dicomd server for the module; each study is opened once and the
tests read what that visit recorded."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import UID
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from support.browser import Browser, Picture, Request, require_chromium
from support.dicom_files import TEST_FILES, new_uid
from support.ohif import OhifServer, require_ohif
from support.server import Server, start_server, stop_server

RENDER_TIMEOUT = 45.0  # seconds for a study's image to appear (the first visit loads OHIF's code too)
VIEWPORT_CANVAS = '[data-cy="viewport-pane"] canvas.cornerstone-canvas'
THUMBNAIL_IMAGE = '[data-cy="study-browser-thumbnail"] img'


@dataclass(frozen=True)
class StudyKind:
    name: str
    file: str  # in pydicom's bundled test files

    @property
    def patient_id(self) -> str:
        return f"OHIF-{self.name.upper()}"


KINDS = [
    StudyKind("uncompressed", "CT_small.dcm"),  # CT, explicit VR little endian, 16 bit
    StudyKind("jpeg-baseline", "SC_rgb_jpeg_dcmtk.dcm"),  # colour, YBR_FULL
    StudyKind("jpeg-2000", "MR_small_jp2klossless.dcm"),
    StudyKind("rle", "MR_small_RLE.dcm"),
    StudyKind("jpeg-ls", "MR_small_jpeg_ls_lossless.dcm"),
    StudyKind("multi-frame", "examples_ybr_color.dcm"),  # ultrasound clip: 30 JPEG frames
]


@dataclass
class Visit:
    """What opening one study in the viewer showed."""

    viewport: Picture | None  # None: no viewport canvas appeared
    thumbnails: list[Picture]
    requests: list[Request]
    console: list[str]
    screenshot: Path  # the whole page, for a human looking at a failure
    seconds: float

    @property
    def failed(self) -> list[Request]:
        return [r for r in self.requests if r.failed]

    def details(self) -> str:
        console = "\n  ".join(line[:300] for line in self.console[-15:]) or "(none)"
        return (
            f"opened in {self.seconds:.1f} s; page: {self.screenshot}\n"
            f"browser console (last lines):\n  {console}"
        )


@dataclass
class Viewer:
    browser: Browser
    ohif: OhifServer
    dicomd: Server
    studies: dict[str, str]  # kind name -> StudyInstanceUID
    work_dir: Path
    visits: dict[str, Visit] = field(default_factory=dict)


def stored_copy(kind: StudyKind) -> tuple[str, bytes]:
    """The kind's file with UIDs and a patient of its own (several bundled files share a study), its
    pixel data untouched."""
    ds = pydicom.dcmread(TEST_FILES / kind.file)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = new_uid(), new_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid())
    ds.PatientID = kind.patient_id
    ds.PatientName = f"OHIF^{kind.name}"
    ds.StudyDescription = f"{kind.name} ({kind.file})"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.StudyInstanceUID), out.getvalue()


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    require_chromium()
    require_ohif()
    work_dir = tmp_path_factory.mktemp("ohif")
    ohif = OhifServer()
    dicomd: Server | None = None
    browser: Browser | None = None
    try:
        dicomd = start_server(work_dir / "data", "--cors-origins", ohif.origin, workers=1)
        ohif.use_dicomd(dicomd.v2)
        studies: dict[str, str] = {}
        for kind in KINDS:
            study, body = stored_copy(kind)
            response = httpx.post(
                dicomd.v2 + "/studies",
                content=body,
                headers={"Content-Type": "application/dicom"},
                timeout=30,
            )
            assert response.status_code == 200, f"storing {kind.file}: {response.status_code} {response.text}"
            studies[kind.name] = study
        browser = Browser(work_dir)
        yield Viewer(browser, ohif, dicomd, studies, work_dir)
    finally:
        if browser is not None:
            browser.quit()
        if dicomd is not None:
            stop_server(dicomd)
        ohif.stop()


def pictures(browser: Browser, selector: str) -> list[Picture]:
    found = []
    for element in browser.driver.find_elements(By.CSS_SELECTOR, selector):
        try:
            if element.is_displayed() and element.size["width"] > 0 and element.size["height"] > 0:
                found.append(browser.picture_of(element))
        except StaleElementReferenceException:
            continue  # React replaced it; the next round sees the new one
    return found


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.5)
    return check()


def visit(viewer: Viewer, kind: StudyKind) -> Visit:
    """Open the kind's study in the viewer (once per module) and record what it showed."""
    if kind.name in viewer.visits:
        return viewer.visits[kind.name]
    browser = viewer.browser
    browser.take_requests(timeout=5)  # what the previous page still had going belongs to it
    browser.take_console()
    started = time.monotonic()
    browser.get(f"{viewer.ohif.origin}/viewer?StudyInstanceUIDs={viewer.studies[kind.name]}")
    viewport: Picture | None = None
    thumbnails: list[Picture] = []

    def viewport_shown() -> bool:
        nonlocal viewport
        canvases = pictures(browser, VIEWPORT_CANVAS)
        viewport = canvases[0] if canvases else None
        return viewport is not None and not viewport.blank

    def thumbnails_shown() -> bool:
        nonlocal thumbnails
        thumbnails = pictures(browser, THUMBNAIL_IMAGE)
        return bool(thumbnails) and not any(t.blank for t in thumbnails)

    wait_for(viewport_shown, RENDER_TIMEOUT)
    wait_for(thumbnails_shown, 15)
    seconds = time.monotonic() - started
    requests = browser.take_requests()
    screenshot = viewer.work_dir / f"viewer-{kind.name}.png"
    browser.driver.save_screenshot(str(screenshot))
    result = Visit(viewport, thumbnails, requests, browser.take_console(), screenshot, seconds)
    viewer.visits[kind.name] = result
    return result


def test_study_list_shows_every_study(viewer: Viewer) -> None:
    browser = viewer.browser
    browser.take_requests(timeout=1)
    browser.get(viewer.ohif.origin + "/")
    body = browser.driver.find_element(By.TAG_NAME, "body")

    def listed() -> list[str]:
        text = body.text
        return [k.patient_id for k in KINDS if k.patient_id in text]

    wait_for(lambda: len(listed()) == len(KINDS), 30)
    screenshot = viewer.work_dir / "study-list.png"
    browser.driver.save_screenshot(str(screenshot))
    missing = sorted({k.patient_id for k in KINDS} - set(listed()))
    assert not missing, f"studies not in OHIF's study list: {missing} (page: {screenshot})"
    requests = browser.take_requests()
    assert any("/v2/studies?" in r.url and r.status == 200 for r in requests), "no QIDO-RS search seen"
    failed = [r for r in requests if r.failed]
    assert not failed, "requests that failed:\n" + "\n".join(map(str, failed))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_viewport_shows_the_image(viewer: Viewer, kind: StudyKind) -> None:
    seen = visit(viewer, kind)
    assert seen.viewport is not None, f"no viewport canvas after {RENDER_TIMEOUT} s\n{seen.details()}"
    assert not seen.viewport.blank, f"the viewport is blank: {seen.viewport}\n{seen.details()}"
    frames = [r for r in seen.requests if "/frames/" in r.url and r.status == 200]
    assert frames, "the image did not come from WADO-RS frames:\n" + "\n".join(map(str, seen.requests))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_thumbnails_show_the_series(viewer: Viewer, kind: StudyKind) -> None:
    seen = visit(viewer, kind)
    assert seen.thumbnails, f"no thumbnail in the study browser\n{seen.details()}"
    blank = [str(t) for t in seen.thumbnails if t.blank]
    assert not blank, f"blank thumbnails: {blank}\n{seen.details()}"
    # OHIF draws a thumbnail itself when the server's fails: the server's must have been used
    asked = [r for r in seen.requests if r.url.split("?")[0].endswith("/thumbnail")]
    assert asked, "OHIF did not ask dicomd for a thumbnail:\n" + "\n".join(map(str, seen.requests))
    not_given = [str(r) for r in asked if r.status != 200]
    assert not not_given, "thumbnails dicomd did not give:\n" + "\n".join(not_given)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_no_request_failed(viewer: Viewer, kind: StudyKind) -> None:
    seen = visit(viewer, kind)
    assert seen.failed == [], f"{len(seen.failed)} requests failed:\n" + "\n".join(map(str, seen.failed))


def test_upload_stores_the_files(viewer: Viewer) -> None:
    """OHIF's Upload button (``dicomUploadEnabled``) sends the chosen files with STOW-RS: a cross-origin
    POST, after its preflight."""
    browser = viewer.browser
    study, body = stored_copy(StudyKind("upload", "CT_small.dcm"))
    upload = viewer.work_dir / "upload.dcm"
    upload.write_bytes(body)
    browser.take_requests(timeout=5)
    browser.get(viewer.ohif.origin + "/")
    assert wait_for(lambda: bool(upload_buttons(browser)), 30), "no Upload button in the study list"
    upload_buttons(browser)[0].click()
    assert wait_for(lambda: bool(file_inputs(browser)), 10), "the upload dialog has no file input"
    file_inputs(browser)[0].send_keys(str(upload))

    def stored() -> bool:
        found = httpx.get(viewer.dicomd.v2 + "/studies", params={"StudyInstanceUID": study}, timeout=10)
        return found.status_code == 200 and found.content != b""

    assert wait_for(stored, 30), "the uploaded study is not in dicomd"
    requests = browser.take_requests()
    stows = [r for r in requests if r.url.endswith("/v2/studies") and r.method in ("OPTIONS", "POST")]
    seen = "STOW-RS requests:\n" + "\n".join(map(str, stows))
    assert {r.method for r in stows} == {"OPTIONS", "POST"}, seen
    assert all(r.status == 200 for r in stows), seen
    failed = [r for r in requests if r.failed]
    assert not failed, "requests that failed:\n" + "\n".join(map(str, failed))


def upload_buttons(browser: Browser) -> list[WebElement]:
    found = browser.driver.find_elements(By.XPATH, "//*[normalize-space(text())='Upload']")
    return [e for e in found if e.is_displayed()]


def file_inputs(browser: Browser) -> list[WebElement]:
    """The dialog's file input (not its folder input, ``webkitdirectory``)."""
    inputs = browser.driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
    return [i for i in inputs if i.get_dom_attribute("webkitdirectory") is None]


def test_a_study_without_its_frames_fails_these_checks(viewer: Viewer) -> None:
    """The checks above can fail: with the frame requests blocked, the viewport stays blank and the
    blocked requests are named."""
    browser = viewer.browser
    browser.take_requests(timeout=5)
    browser.block("*/frames/*")
    try:
        browser.get(f"{viewer.ohif.origin}/viewer?StudyInstanceUIDs={viewer.studies['uncompressed']}")

        def frames_refused() -> bool:
            browser.collect()
            return any("/frames/" in r.url and r.failed for r in browser.network.requests.values())

        refused = wait_for(frames_refused, 30)
        time.sleep(2)  # what OHIF would draw, had it anything to draw
        canvases = pictures(browser, VIEWPORT_CANVAS)
        browser.driver.save_screenshot(str(viewer.work_dir / "viewer-without-frames.png"))
        requests = browser.take_requests()
    finally:
        browser.block()
    assert refused, "no frame request seen:\n" + "\n".join(map(str, requests))
    assert canvases, "no viewport canvas"
    assert canvases[0].blank, f"the viewport shows something without frames: {canvases[0]}"
    blocked = [r for r in requests if r.failed and "/frames/" in r.url]
    assert all("(blocked: " in str(r) for r in blocked), "\n".join(map(str, blocked))
