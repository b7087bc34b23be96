"""Headless Chromium for browser end-to-end tests (tests/e2e/test_ohif.py), driven by selenium through
Debian's chromium + chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver; scripts/test-services.sh
installs them). Every request the page makes is captured from Chromium's performance log (its DevTools
Network events), so a test can name each request that failed: an HTTP status >= 400, or a load that failed
(refused, reset, blocked by CORS). Missing Chromium skips, except in CI (CI=true), where it fails.

WebGL (cornerstone3D draws with it) comes from SwiftShader, Chromium's software renderer: the machine has
no GPU. Headless Chromium 156 picks SwiftShader by itself; the flags ask for it, so that every machine
(one with a GPU, a Chromium that stops falling back to it) draws the same way."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-dev-shm-usage",
    # software WebGL: ANGLE on SwiftShader
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    # the machine's network is closed: no calls home, which would fail by the dozen at every start
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--window-size=1600,1000",
)


def require_chromium() -> None:
    """Skip the calling test when Chromium or ChromeDriver is missing; fail it in CI."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not missing:
        return
    message = f"{' and '.join(missing)} not installed: run scripts/test-services.sh (as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Request:
    """One request the page made, as the DevTools Network events told it."""

    url: str
    method: str
    resource_type: str = ""
    status: int | None = None  # None: no response (failed, or still loading)
    error: str = ""  # net::ERR_... of a failed load, with the CORS reason when there is one
    canceled: bool = False  # the page gave it up (navigation away, an aborted fetch): not a failure
    from_cache: bool = False  # answered from the browser's cache

    @property
    def failed(self) -> bool:
        if self.status is not None and self.status >= 400:
            return True
        return bool(self.error) and not self.canceled

    @property
    def finished(self) -> bool:
        return self.status is not None or bool(self.error) or self.from_cache

    def __str__(self) -> str:
        outcome = str(self.status) if self.status is not None else ""
        if self.error:
            outcome = f"{outcome} {self.error}".strip()
        url = self.url if len(self.url) <= 300 else self.url[:300] + "..."
        return f"{self.method} {url} -> {outcome or 'no answer'}"


@dataclass
class NetworkLog:
    """Requests by DevTools request id, fed with performance log entries."""

    requests: dict[str, Request] = field(default_factory=dict)
    # statuses told before their request (the "ExtraInfo" events come in no fixed order)
    early_statuses: dict[str, int] = field(default_factory=dict)

    def feed(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            method, params = message.get("method", ""), message.get("params", {})
            request_id = params.get("requestId", "")
            if method == "Network.requestWillBeSent":
                request = params["request"]
                if not request["url"].startswith(("http:", "https:")):
                    continue  # data:, blob: and the browser's own chrome:// pages
                # a redirect reuses the request id: the new URL replaces the old one
                self.requests[request_id] = Request(
                    request["url"],
                    request["method"],
                    params.get("type", ""),
                    self.early_statuses.pop(request_id, None),
                )
            elif method == "Network.responseReceived" and request_id in self.requests:
                self.requests[request_id].status = int(params["response"]["status"])
            elif method == "Network.responseReceivedExtraInfo":
                # the only answer the page sees of a worker's script: its responseReceived goes to the worker
                if request_id in self.requests:
                    self.requests[request_id].status = int(params["statusCode"])
                else:
                    self.early_statuses[request_id] = int(params["statusCode"])
            elif method == "Network.requestServedFromCache" and request_id in self.requests:
                # also a worker's script, whose answer (from the cache) the page is not told otherwise
                self.requests[request_id].from_cache = True
            elif method == "Network.loadingFailed" and request_id in self.requests:
                error = params.get("errorText") or "failed"
                if params.get("blockedReason"):
                    error += f" (blocked: {params['blockedReason']})"
                if params.get("corsErrorStatus"):
                    error += f" (CORS: {params['corsErrorStatus']})"
                self.requests[request_id].error = error
                self.requests[request_id].canceled = bool(params.get("canceled"))


# every element over the target's box, other than the target, its ancestors and descendants: made
# invisible at once (no transition), its own style attribute kept to be put back
_HIDE_WHAT_COVERS = """
const target = arguments[0], box = target.getBoundingClientRect(), hidden = [];
for (const element of document.body.querySelectorAll('*')) {
  if (element === target || element.contains(target) || target.contains(element)) continue;
  const r = element.getBoundingClientRect();
  if (r.right <= box.left || r.left >= box.right || r.bottom <= box.top || r.top >= box.bottom) continue;
  hidden.push([element, element.getAttribute('style')]);
  for (const [name, value] of [['transition', 'none'], ['opacity', '0'], ['visibility', 'hidden']])
    element.style.setProperty(name, value, 'important');
}
window.__hiddenForPicture = hidden;
"""
_SHOW_AGAIN = """
for (const [element, style] of window.__hiddenForPicture || []) {
  if (style === null) element.removeAttribute('style'); else element.setAttribute('style', style);
}
window.__hiddenForPicture = [];
"""


@dataclass(frozen=True)
class Picture:
    """What a screenshot shows: enough to tell an image from an empty (or uniformly filled) area."""

    width: int
    height: int
    gray_levels: int  # distinct gray levels
    lit_fraction: float  # share of pixels that differ from the most common gray level (the background)

    MIN_GRAY_LEVELS = 16
    MIN_LIT_FRACTION = 0.05  # overlaid text (dates, frame numbers) covers far less of a viewport

    @classmethod
    def of(cls, png: bytes) -> Picture:
        gray = np.asarray(PIL.Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)
        levels, counts = np.unique(gray, return_counts=True)
        background = levels[np.argmax(counts)]
        lit = np.abs(gray - background) > 16
        return cls(gray.shape[1], gray.shape[0], len(levels), float(lit.mean()) if gray.size else 0.0)

    @property
    def blank(self) -> bool:
        return self.gray_levels < self.MIN_GRAY_LEVELS or self.lit_fraction < self.MIN_LIT_FRACTION

    def __str__(self) -> str:
        return (
            f"{self.width}x{self.height} px, {self.gray_levels} gray levels, "
            f"{self.lit_fraction:.1%} differing from the background"
        )


class Browser:
    """A headless Chromium with its own empty profile; ``quit`` ends it and removes the profile."""

    def __init__(self, work_dir: Path) -> None:
        require_chromium()
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=work_dir))
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        options.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
        self.driver_log = work_dir / "chromedriver.log"
        service = Service(executable_path=str(CHROMEDRIVER), log_output=str(self.driver_log))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.network = NetworkLog()
        self.console: list[str] = []

    def get(self, url: str) -> None:
        self.driver.get(url)

    def collect(self) -> None:
        """Move the browser's buffered network events and console messages into ``network`` and
        ``console`` (Chromium keeps them until read)."""
        self.network.feed(self.driver.get_log("performance"))
        self.console += [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]

    def take_requests(self, quiet_for: float = 1.0, timeout: float = 15.0) -> list[Request]:
        """Every request made since the last call, once none has been pending for ``quiet_for`` seconds
        (or ``timeout`` passed: the ones still pending are returned unfinished); and forget them."""
        quiet_since = time.monotonic()
        deadline = quiet_since + timeout
        self.collect()
        while time.monotonic() < deadline:
            if any(not r.finished for r in self.network.requests.values()):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_for:
                break
            time.sleep(0.2)
            self.collect()
        requests = list(self.network.requests.values())
        self.network.requests.clear()
        self.network.early_statuses.clear()
        return requests

    def take_console(self) -> list[str]:
        self.collect()
        console, self.console = self.console, []
        return console

    def picture_of(self, element: WebElement) -> Picture:
        """A screenshot of the element alone: whatever the page lays over it (texts, menus, banners,
        messages) is made transparent for the moment of the screenshot."""
        self.driver.execute_script(_HIDE_WHAT_COVERS, element)
        try:
            return Picture.of(element.screenshot_as_png)
        finally:
            self.driver.execute_script(_SHOW_AGAIN)

    def block(self, *url_patterns: str) -> None:
        """Make requests to URLs matching the patterns (``*`` wildcards) fail, as if the server could not
        be reached (their error says "blocked: inspector"); no pattern lifts the block."""
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": list(url_patterns)})

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
