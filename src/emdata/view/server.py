"""A loopback static file server for viewers: folders and in-memory documents under URL prefixes,
with HTTP Range (206/416) and CORS, so a browser viewer (neuroglancer, a web page) can read a
prepared volume straight from its store.

Example:
    >>> import tempfile, urllib.request
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.bin").write_bytes(b"0123456789")
    >>> with StaticServer({"/data/": root}, documents={"/hello.json": b"{}"}) as server:
    ...     request = urllib.request.Request(server.url + "/data/a.bin", headers={"Range": "bytes=2-4"})
    ...     with urllib.request.urlopen(request) as reply:
    ...         reply.status, reply.read(), reply.headers["Access-Control-Allow-Origin"]
    (206, b'234', '*')
"""

from __future__ import annotations

import mimetypes
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TYPES = {".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
          ".css": "text/css", ".html": "text/html; charset=utf-8", ".map": "application/json"}


def _content_type(path: str) -> str:
    suffix = Path(path).suffix
    return _TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(first, last)`` a ``Range`` header asks of a ``size``-byte body;
    None when it cannot be satisfied (416). One range only (what viewers send).

    Example:
        >>> parse_range("bytes=2-4", 10), parse_range("bytes=7-", 10), parse_range("bytes=-3", 10)
        ((2, 4), (7, 9), (7, 9))
        >>> parse_range("bytes=12-", 10) is None
        True
    """
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last n bytes
        n = int(m.group(2))
        return (max(size - n, 0), size - 1) if n and size else None
    first = int(m.group(1))
    last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (first, last) if first <= last and first < size else None


class StaticServer:
    """Serve ``folders`` (``{"/url/prefix/": folder}``) and ``documents`` (``{"/url/path": bytes}``) on
    ``127.0.0.1:port`` (0: any free port) in a background thread; a context manager.

    Only files inside a folder are served (no ``..``, no listing); ``/`` maps to ``index.html`` of
    the folder mounted at ``/``. Every reply carries ``Access-Control-Allow-Origin: *`` and
    ``Accept-Ranges: bytes``.
    """

    def __init__(self, folders: Mapping[str, Path], documents: Mapping[str, bytes] | None = None,
                 port: int = 0) -> None:
        self.folders = sorted(((p if p.endswith("/") else p + "/", Path(f).resolve()) for p, f in folders.items()),
                              key=lambda item: -len(item[0]))  # longest prefix first
        self.documents = dict(documents or {})
        self.port = port
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (the bound port once started)."""
        return f"http://127.0.0.1:{self.port}"

    def resolve(self, url_path: str) -> Path | bytes | None:
        """The file (or in-memory document) a URL path names, or None."""
        path = url_path.split("?", 1)[0].split("#", 1)[0]
        if path in self.documents:
            return self.documents[path]
        for prefix, folder in self.folders:
            if path == prefix.rstrip("/") or path.startswith(prefix):
                rest = path[len(prefix):]
                if not rest or rest.endswith("/"):
                    rest += "index.html"
                target = (folder / rest).resolve()
                if target.is_relative_to(folder) and target.is_file():
                    return target
                return None
        return None

    def start(self) -> StaticServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
                pass

            def _common(self) -> None:
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "Range, Content-Type")
                self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")
                self.send_header("Accept-Ranges", "bytes")

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self._common()
                self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                found = server.resolve(self.path)
                if found is None:
                    self._reply(404, b"not found\n", "text/plain", body)
                    return
                data = found if isinstance(found, bytes) else found.read_bytes()
                kind = _content_type(self.path.split("?", 1)[0] if isinstance(found, bytes) else found.name)
                header = self.headers.get("Range")
                if header is None:
                    self._reply(200, data, kind, body)
                    return
                span = parse_range(header, len(data))
                if span is None:
                    self._reply(416, b"", kind, body, extra={"Content-Range": f"bytes */{len(data)}"})
                    return
                first, last = span
                self._reply(206, data[first:last + 1], kind, body,
                            extra={"Content-Range": f"bytes {first}-{last}/{len(data)}"})

            def _reply(self, status: int, data: bytes, kind: str, body: bool,
                       extra: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                self._common()
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="emdata-view-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StaticServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
