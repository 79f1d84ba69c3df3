"""OHIF v3 for viewer tests: the prebuilt ``dist/`` of ``npm pack @ohif/app``, served at ``/`` with
``/dicom-web/`` forwarded to a real Orthanc (DICOMweb plugin), so the viewer and its data share one
origin. The pinned version is the one these tests were written against."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OHIF_VERSION = "3.12.10"
CACHE = Path(os.environ.get("PACSNODE_OHIF_CACHE", Path.home() / ".cache" / "pacsnode-ohif"))

APP_CONFIG = """window.config = {
  routerBasename: '/', extensions: [], modes: [], showStudyList: true,
  showWarningMessageForCrossOrigin: false, showCPUFallbackMessage: false,
  maxNumberOfWebWorkers: 1, defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb', sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'Orthanc', name: 'orthanc', wadoUriRoot: '/dicom-web',
      qidoRoot: '/dicom-web', wadoRoot: '/dicom-web', qidoSupportsIncludeField: false,
      imageRendering: 'wadors', thumbnailRendering: 'wadors', enableStudyLazyLoad: true,
      supportsFuzzyMatching: false, supportsWildcard: true,
      omitQuotationForMultipartRequest: true, bulkDataURI: { enabled: true },
    },
  }],
};
"""


def ohif_dist() -> Path | None:
    """The unpacked ``dist/`` (downloaded once with ``npm pack``); None when npm cannot get it."""
    dist = CACHE / OHIF_VERSION / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        return None
    target = CACHE / OHIF_VERSION
    target.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [npm, "pack", f"@ohif/app@{OHIF_VERSION}"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=600,
    )
    packed = sorted(target.glob("ohif-app-*.tgz"))
    if run.returncode != 0 or not packed:
        return None
    with tarfile.open(packed[0]) as archive:
        archive.extractall(target, filter="data")
    return dist if (dist / "index.html").is_file() else None


def _handler(dist: Path, orthanc_url: str) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(dist), **kwargs)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?")[0]
            if self.path.startswith("/dicom-web/"):
                # Orthanc writes absolute BulkDataURIs from the request's Host: the viewer's own
                # origin, so bulk data (a PDF's document, say) comes through here too and not
                # from Orthanc's port, which the browser refuses as cross-origin
                headers = {
                    "Accept": self.headers.get("Accept", "*/*"),
                    "Host": self.headers.get("Host", ""),
                }
                request = urllib.request.Request(orthanc_url + self.path, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        kind = answer.headers.get("Content-Type", "application/octet-stream")
                        self._send(answer.status, answer.read(), kind)
                except urllib.error.HTTPError as exc:
                    self._send(exc.code, exc.read(), "text/plain")
                return
            if path == "/app-config.js":
                self._send(200, APP_CONFIG.encode(), "application/javascript")
                return
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"  # the single-page app's own routes
            super().do_GET()

    return Handler


@contextmanager
def serving_ohif(dist: Path, orthanc_url: str, port: int) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _handler(dist, orthanc_url))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
