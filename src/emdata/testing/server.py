"""A loopback HTTP mirror for tests and the demo: serves a directory laid out like the
upstream hosts (``<root>/<host>/<path>``), with HEAD, Range (206/416), ETag/If-Range, and
a request log for asserting what was fetched.

Set ``EMDATA_MIRROR`` to :attr:`MirrorServer.url` and the real download code fetches from it.

Example:
    >>> import tempfile
    >>> import requests
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "example.org").mkdir()
    >>> _ = (root / "example.org" / "a.bin").write_bytes(b"0123456789")
    >>> with MirrorServer(root) as server:
    ...     requests.get(server.url + "/example.org/a.bin", headers={"Range": "bytes=2-4"}).content
    b'234'
    >>> [(r.method, r.status) for r in server.requests_for("a.bin")]
    [('GET', 206)]
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.security import safe_join
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

Hook = Callable[[Request], Response | None]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the request log is :attr:`MirrorServer.log`."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None
    if_range: str | None
    status: int
    content_length: int | None


class MirrorServer:
    """Serve ``root`` on ``127.0.0.1`` in a background thread.

    ``hook`` (optional) sees every request first and may return a response of its own
    (fault injection); returning None serves the file normally. ``ssl_context`` (an
    ``ssl.SSLContext`` or a (cert, key) pair of paths) serves HTTPS instead. ``latency_s``
    delays every response by that many seconds (a remote store's round trip; requests are
    served in parallel threads, so concurrent requests wait concurrently, as over a network).
    """

    def __init__(self, root: Path, hook: Hook | None = None, port: int = 0, ssl_context: Any = None,
                 latency_s: float = 0.0) -> None:
        self.root = Path(root).resolve()
        self.hook = hook
        self.latency_s = float(latency_s)
        self.log: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._scheme = "https" if ssl_context is not None else "http"
        self._server = make_server("127.0.0.1", port, self._app, threaded=True,
                                   request_handler=_QuietHandler, ssl_context=ssl_context)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self._server.server_port}"

    def _respond(self, request: Request) -> Response:
        if self.hook is not None:
            custom = self.hook(request)
            if custom is not None:
                return custom
        if request.method not in ("GET", "HEAD"):
            return Response("method not allowed", status=405)
        target = safe_join(str(self.root), request.path.lstrip("/"))
        if target is None or not Path(target).is_file():
            raise NotFound()
        return send_file(target, request.environ, conditional=True, etag=True, max_age=None)

    def _app(self, environ: dict, start_response: Callable) -> object:
        request = Request(environ)
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        try:
            response = self._respond(request)
        except HTTPException as exc:  # 404, 416, …
            response = exc.get_response(environ)  # type: ignore[assignment]
        with self._lock:
            self.log.append(LoggedRequest(request.method, request.path, request.headers.get("Range"),
                                          request.headers.get("If-Range"), response.status_code,
                                          response.content_length))
        return response(environ, start_response)

    def requests_for(self, suffix: str) -> list[LoggedRequest]:
        """Logged requests whose path ends with ``suffix``."""
        with self._lock:
            return [r for r in self.log if r.path.endswith(suffix)]

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="emdata-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
