"""Fault injection for the loopback mirror: rules that make a path misbehave a number of
times (or always), the way real hosts do.

Example (the first request fails with 503, the next is served):
    >>> import tempfile, requests
    >>> from emdata.testing.server import MirrorServer
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "f.bin").write_bytes(b"x" * 10)
    >>> faults = Faults(root).add("f.bin", status(503), times=1)
    >>> with MirrorServer(root, hook=faults) as server:
    ...     codes = [requests.get(f"{server.url}/f.bin").status_code for _ in range(2)]
    >>> codes, faults.fired
    ([503, 200], ['f.bin'])
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from werkzeug.security import safe_join
from werkzeug.utils import send_file
from werkzeug.wrappers import Request, Response

Behaviour = Callable[[Request, Path], Response]


class InjectedReset(ConnectionResetError):
    """Raised inside a response body to drop the connection mid-transfer."""


def _served(request: Request, path: Path) -> Response:
    return send_file(str(path), request.environ, conditional=True, etag=True, max_age=None)


def _relay(inner: Response, body: Iterator[bytes], close: bool = True) -> Response:
    response = Response(body, status=inner.status_code, headers=dict(inner.headers), direct_passthrough=True)
    if close:
        response.headers["Connection"] = "close"
    return response


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Behaviour:
    """Answer with ``code`` (e.g. 500, or 429 with ``{"Retry-After": "2"}``)."""
    return lambda request, path: Response(body, status=code, headers=headers or {})


def _first_bytes(inner: Response, n_bytes: int, then_reset: bool) -> Iterator[bytes]:
    """The first ``n_bytes`` of a served body; then end cleanly or drop the connection."""
    sent = 0
    for chunk in inner.response:
        take = chunk[: max(n_bytes - sent, 0)]
        if take:
            yield take
            sent += len(take)
        if sent >= n_bytes:
            break
    if then_reset and sent >= n_bytes:
        raise InjectedReset(f"injected reset after {sent} bytes")


def reset_after(n_bytes: int) -> Behaviour:
    """Serve normally (Range honoured) but drop the connection after ``n_bytes`` of body."""

    def behaviour(request: Request, path: Path) -> Response:
        inner = _served(request, path)
        return _relay(inner, _first_bytes(inner, n_bytes, then_reset=True))

    return behaviour


def truncate_after(n_bytes: int) -> Behaviour:
    """Correct headers (full Content-Length) but the body ends cleanly after ``n_bytes``."""

    def behaviour(request: Request, path: Path) -> Response:
        inner = _served(request, path)
        return _relay(inner, _first_bytes(inner, n_bytes, then_reset=False))

    return behaviour


def ignore_range() -> Behaviour:
    """Answer every request with 200 and the whole file, as servers without Range support do."""

    def behaviour(request: Request, path: Path) -> Response:
        return Response(path.read_bytes(), status=200, headers={"Content-Type": "application/octet-stream"})

    return behaviour


def ignore_range_then_drop(n_bytes: int) -> Behaviour:
    """Ignore ``Range`` (200, whole file from byte 0) and drop the connection after ``n_bytes``."""

    def behaviour(request: Request, path: Path) -> Response:
        data = path.read_bytes()
        body = _first_bytes(Response([data]), n_bytes, then_reset=True)
        return Response(body, status=200, direct_passthrough=True,
                        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                                 "Connection": "close"})

    return behaviour


def gzip_encoded() -> Behaviour:
    """The file gzip-compressed with ``Content-Encoding: gzip``, whatever the client asked for."""

    def behaviour(request: Request, path: Path) -> Response:
        import gzip

        body = gzip.compress(path.read_bytes(), compresslevel=1)
        return Response(body, status=200, headers={"Content-Type": "application/octet-stream",
                                                   "Content-Encoding": "gzip"})

    return behaviour


def endless(block: bytes = b"\0" * 65536, stop_after: int = 64 << 20) -> Behaviour:
    """200 with no ``Content-Length`` and a body that goes on (until ``stop_after`` bytes, a safety net)."""

    def behaviour(request: Request, path: Path) -> Response:
        def body() -> Iterator[bytes]:
            sent = 0
            while sent < stop_after:
                yield block
                sent += len(block)

        return Response(body(), status=200, direct_passthrough=True,
                        headers={"Content-Type": "application/octet-stream", "Connection": "close"})

    return behaviour


def html_page(title: str = "Google Drive - Virus scan warning", extra: str = "") -> Behaviour:
    """A 200 text/html page instead of the file (Drive/Dropbox interstitials, login walls)."""
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{extra}</body></html>".encode()
    return lambda request, path: Response(page, status=200, headers={"Content-Type": "text/html; charset=utf-8"})


def stub(body: bytes) -> Behaviour:
    """A 200 binary body far smaller than the real file (e.g. a quota notice)."""
    return lambda request, path: Response(body, status=200, headers={"Content-Type": "application/octet-stream"})


def slow(first_byte_delay_s: float) -> Behaviour:
    """Wait before answering (past the client's read timeout), then serve normally."""

    def behaviour(request: Request, path: Path) -> Response:
        time.sleep(first_byte_delay_s)
        return _served(request, path)

    return behaviour


def throttle(bytes_per_chunk: int, delay_s: float) -> Behaviour:
    """Serve normally (Range honoured) but slowly: ``bytes_per_chunk`` then a pause."""

    def behaviour(request: Request, path: Path) -> Response:
        inner = _served(request, path)

        def body() -> Iterator[bytes]:
            for chunk in inner.response:
                for i in range(0, len(chunk), bytes_per_chunk):
                    yield chunk[i: i + bytes_per_chunk]
                    time.sleep(delay_s)

        return _relay(inner, body())

    return behaviour


@dataclass
class _Rule:
    suffix: str
    behaviour: Behaviour
    remaining: int | None


class Faults:
    """A :class:`~emdata.testing.server.MirrorServer` hook applying rules in order.

    A rule matches request paths ending with ``suffix`` and fires ``times`` times
    (``None``: always); when no rule fires the file is served normally.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.fired: list[str] = []

    def add(self, suffix: str, behaviour: Behaviour, times: int | None = 1) -> Faults:
        with self._lock:
            self._rules.append(_Rule(suffix, behaviour, times))
        return self

    def __call__(self, request: Request) -> Response | None:
        target = safe_join(str(self.root), request.path.lstrip("/"))
        with self._lock:
            for rule in self._rules:
                if request.path.endswith(rule.suffix) and (rule.remaining is None or rule.remaining > 0):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    self.fired.append(rule.suffix)
                    break
            else:
                return None
        return rule.behaviour(request, Path(target) if target else self.root)
