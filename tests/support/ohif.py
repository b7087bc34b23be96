"""OHIF Viewer 3 for browser end-to-end tests: the built viewer of npm's `@ohif/app` (its `dist/`, unpacked
into .tools/ohif-app/ by scripts/test-services.sh), served on an ephemeral port by a small static server
with the single-page app's fallback to index.html. Its `app-config.js` is OHIF's shipped one with the data
sources replaced by one dicomd server (``dicomd_data_source``): OHIF's other defaults stay, the shipped
``thumbnailRendering: 'thumbnail'`` included. A missing dist skips, except in CI (CI=true), where it
fails."""

from __future__ import annotations

import json
import os
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
OHIF_DIST = REPOSITORY / ".tools" / "ohif-app" / "dist"


def dicomd_data_source(v2_root: str) -> dict[str, Any]:
    """OHIF's DICOMweb data source for a dicomd server (``v2_root``: http://host:port/v2); README.md
    "Viewing with OHIF" documents the same settings."""
    return {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomd",
        "configuration": {
            "friendlyName": "dicomd",
            "name": "dicomd",
            "qidoRoot": v2_root,
            "wadoRoot": v2_root,
            "wadoUriRoot": v2_root,
            "qidoSupportsIncludeField": True,
            "supportsFuzzyMatching": True,
            "supportsWildcard": True,
            "imageRendering": "wadors",
            # OHIF's shipped defaults: the series thumbnail from .../thumbnail, fetched
            "thumbnailRendering": "thumbnail",
            "thumbnailRequestStrategy": "fetch",
            "enableStudyLazyLoad": True,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
            "dicomUploadEnabled": True,
        },
    }


def require_ohif(dist: Path | None = None) -> None:
    """Skip the calling test when OHIF's dist is missing; fail it in CI."""
    dist = dist or OHIF_DIST
    if (dist / "index.html").is_file() and (dist / "app-config.js").is_file():
        return
    message = f"OHIF's dist is not installed in {dist}: run scripts/test-services.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class _Handler(SimpleHTTPRequestHandler):
    server: OhifServer

    def __init__(self, request: Any, client_address: Any, server: OhifServer) -> None:
        super().__init__(request, client_address, server, directory=str(server.dist))

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/app-config.js":
            self._send(200, "text/javascript", self.server.app_config().encode())
            return
        # the single-page app: a path that is no file is one of its routes (/viewer, /...), its page
        if not Path(self.translate_path(path)).is_file():
            self.path = "/index.html"
        super().do_GET()

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        # nothing from the browser's cache: a web worker's script answered from there shows in the
        # page's network log as a request that never finished
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the browser test reads requests from the browser's side."""


class OhifServer(ThreadingHTTPServer):
    """OHIF's dist on 127.0.0.1, an ephemeral port, served from a thread of the test process."""

    daemon_threads = True

    def __init__(self, dist: Path | None = None) -> None:
        self.dist = dist or OHIF_DIST
        require_ohif(self.dist)
        super().__init__(("127.0.0.1", 0), _Handler)
        self.shipped_config = (self.dist / "app-config.js").read_text()
        self.data_sources: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self.serve_forever, name="ohif-static", daemon=True)
        self._thread.start()

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def use_dicomd(self, v2_root: str) -> None:
        self.data_sources = [dicomd_data_source(v2_root)]

    def app_config(self) -> str:
        """OHIF's shipped configuration, then its data sources replaced by ours."""
        sources = json.dumps(self.data_sources, indent=2)
        default = json.dumps(self.data_sources[0]["sourceName"]) if self.data_sources else "null"
        return (
            f"{self.shipped_config}\n\n// the tests' data source: dicomd\n"
            f"window.config.dataSources = {sources};\n"
            f"window.config.defaultDataSourceName = {default};\n"
        )

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)
