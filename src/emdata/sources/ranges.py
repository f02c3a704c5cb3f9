"""Byte ranges of large remote files: coalesced ``Range`` GETs, an on-disk block cache,
a metadata cache for parsed headers, concurrency across files, and request accounting.

Knows no dataset and no file format. Every URL is the *upstream* URL; it is rewritten with
:func:`~emdata.sources.urls.mirror_url` just before the network, and cache keys never
contain the mirror.

Reads: the requested ``(start, length)`` pairs are first served from the cache; the bytes
still missing are merged when they overlap, touch or lie at most ``gap`` bytes apart, and
each merged span is fetched with one single-range ``GET`` (``Range: bytes=a-b``). A ``206``
must carry exactly the requested ``Content-Range``; a server that ignores ``Range`` and
answers ``200`` is read only up to the end of the span, sliced, and counted in
``stats.ignored_range``; ``416`` raises :class:`RangeNotSatisfiableError`. Transient
failures (resets, timeouts, truncated bodies, 429/5xx) are retried per the
:class:`~emdata.sources.http.RetryPolicy`.

Cache layout (``cache_dir`` defaults to ``<EMDATA_HOME>/range-cache``)::

    <cache_dir>/<sha256(url)[:32]>/          one folder per upstream URL
        info.json                            {"url", "validator", "size", "checked"}
        <sha256(validator)[:16]>/            one folder per version of the remote file
            spans/<start>-<stop>             bytes [start, stop) exactly as served
            meta/<key>.json                  {"url", "key", "value"} from metadata()

The *validator* is the server's ``ETag`` (else ``Last-Modified``, else ``none``) seen on the
last response for that URL. Cached bytes of the version named in ``info.json`` are served
without any request. When a response shows a different validator the remote file has
changed: ``info.json`` moves to the new version, the old folder is deleted and bytes that
were about to be served from it are fetched again. ``refresh(url)`` (one ``HEAD``) checks
explicitly, and ``max_age`` seconds makes reads revalidate automatically. Every file is
written to a unique temporary name and ``os.replace``-d into place, so concurrent readers
(threads or processes) see whole files or none; two writers of the same span write the same
bytes. ``EMDATA_OFFLINE=1`` serves only what is cached.

Why one module of this size: planning, fetching and the versioned on-disk cache share the cache's
invariants (a span is served only from the version its validator names); split, they would each
need the others' private state.

Example (a file served on loopback, read twice: the second read is served from the cache, 4 bytes):
    >>> import tempfile
    >>> from emdata import config
    >>> from emdata.testing import MirrorServer
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "example.org").mkdir()
    >>> _ = (root / "example.org" / "blob.bin").write_bytes(bytes(range(256)) * 32)
    >>> url = "https://example.org/blob.bin"
    >>> with MirrorServer(root) as server, config.using(mirror=server.url), RangeReader(root / "cache") as reader:
    ...     head, tail = reader.read_ranges(url, [(0, 4), (4096, 4)])  # one request: bytes=0-4099
    ...     again = reader.read(url, 0, 4)
    ...     (head.hex(), tail.hex(), again == head, reader.stats.requests, reader.stats.cache_hits)
    ('00010203', '00010203', True, 1, 4)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from emdata import config
from emdata.atomic import write_atomic
from emdata.sources.errors import DownloadError, ErrorPageError, OfflineError
from emdata.sources.http import (
    DEFAULT_POLICY,
    RetryPolicy,
    TransientError,
    classify_status,
    session,
    transient_from,
)
from emdata.sources.urls import mirror_url

__all__ = ["RangeNotSatisfiableError", "RangeReader", "RangeStats", "RemoteFile", "coalesce"]

Range = tuple[int, int]  # (start, length)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_SPAN_NAME = re.compile(r"^(\d+)-(\d+)$")
_STREAM_CHUNK = 1 << 20
_MAX_REREADS = 2
_META_MEMO = 32  # metadata values kept in memory per reader (a 20000-row strip table is ~40000 ints)
log = logging.getLogger(__name__)


class RangeNotSatisfiableError(DownloadError):
    """The server answered ``416``: the range starts at or past the end of the file."""


@dataclass
class RangeStats:
    """What a :class:`RangeReader` cost: every HTTP request (HEAD and GET, retries included),
    body bytes received, bytes served from the cache, ``200`` answers to a ``Range`` request,
    and requests per upstream URL."""

    requests: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    ignored_range: int = 0
    per_url: dict[str, int] = field(default_factory=dict)


def coalesce(spans: Sequence[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Merge ``[start, stop)`` spans that overlap, touch or lie at most ``gap`` bytes apart.

    Example:
        >>> coalesce([(0, 10), (12, 20), (100, 110), (5, 8)], gap=2)
        [(0, 20), (100, 110)]
    """
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(s for s in spans if s[1] > s[0]):
        if merged and start - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
        else:
            merged.append((start, stop))
    return merged


def _hash(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _fmt(ranges: Sequence[tuple[int, int]]) -> str:
    """``[start, stop)`` spans as HTTP-style inclusive ``bytes=a-b`` text for messages."""
    text = ", ".join(f"{a}-{b - 1}" for a, b in ranges[:4])
    return f"bytes={text}" + (f" (+{len(ranges) - 4} more)" if len(ranges) > 4 else "")


@dataclass
class _Fetched:
    start: int
    data: bytes
    validator: str | None
    size: int | None


@dataclass
class _Plan:
    """One read of one URL: the merged needed spans, filled partly from the cache."""

    url: str
    ranges: list[Range]
    validator: str | None  # the version the cached bytes came from (None: no info yet)
    buffers: dict[tuple[int, int], bytearray]
    missing: list[tuple[int, int]]
    requests: list[tuple[int, int]]
    from_cache: int


class RangeReader:
    """Read byte ranges of remote files with coalescing, caching and retries.

    ``cache_dir`` holds fetched bytes and metadata (default ``<EMDATA_HOME>/range-cache``);
    ``max_workers`` bounds concurrent requests; missing spans at most ``gap`` bytes apart are
    fetched in one request; ``max_age`` (seconds, None = never) makes a read check with one
    ``HEAD`` that cached bytes are still current. Use as a context manager or call
    :meth:`close` to stop the worker threads.
    """

    def __init__(self, cache_dir: Path | None = None, *, max_workers: int = 8, gap: int = 64 * 1024,
                 policy: RetryPolicy = DEFAULT_POLICY, max_age: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if gap < 0:
            raise ValueError(f"gap must be >= 0 bytes, got {gap}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else config.emdata_home() / "range-cache"
        self.max_workers = max_workers
        self.gap = gap
        self.policy = policy
        self.max_age = max_age
        self._sleep = sleep
        self._lock = threading.Lock()
        self._stats = RangeStats()
        self._pool: ThreadPoolExecutor | None = None
        self._meta_memo: OrderedDict[tuple[str, str, str], Any] = OrderedDict()  # small LRU of parsed values

    # -- lifecycle and accounting -------------------------------------------------------------

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker threads (the cache stays on disk)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    @property
    def stats(self) -> RangeStats:
        """A snapshot of the accounting since creation or :meth:`reset_stats`."""
        with self._lock:
            return replace(self._stats, per_url=dict(self._stats.per_url))

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = RangeStats()

    def _count(self, url: str, *, requests: int = 0, fetched: int = 0, hits: int = 0, ignored: int = 0) -> None:
        with self._lock:
            s = self._stats
            s.requests += requests
            s.bytes_fetched += fetched
            s.cache_hits += hits
            s.ignored_range += ignored
            if requests:
                s.per_url[url] = s.per_url.get(url, 0) + requests

    def file(self, url: str) -> RemoteFile:
        """A ``fetch(ranges) -> list[bytes]`` callable bound to ``url`` (for ``emdata.formats``)."""
        return RemoteFile(self, url)

    # -- public reads --------------------------------------------------------------------------

    def size(self, url: str) -> int:
        """Size of the remote file in bytes: from the cache, else ``HEAD`` (else a 1-byte GET)."""
        info = self._read_info(url)
        if info is not None and info.get("size") is not None:
            return int(info["size"])
        if config.offline():
            raise OfflineError(f"{url}: EMDATA_OFFLINE=1 and its size is not in the range cache "
                               f"{self._url_dir(url)}; unset EMDATA_OFFLINE to fetch it")
        size = self.refresh(url)
        if size is None:
            probe = self._fetch_span(url, 0, 1)
            self._observe(url, probe.validator, probe.size)
            if probe.size is None:
                raise DownloadError(f"{url}: the server reports no size (no Content-Length on HEAD, no total in "
                                    f"Content-Range); cannot read it by ranges")
            size = probe.size
        return size

    def refresh(self, url: str) -> int | None:
        """Ask the server (one ``HEAD``) whether ``url`` changed; drop stale cached bytes if so.

        Returns the size from ``Content-Length`` (None if the server sends none).
        """
        import requests

        if config.offline():
            raise OfflineError(f"{url}: EMDATA_OFFLINE=1; cannot check whether the remote file changed")
        target = mirror_url(url)
        failures = 0
        while True:
            self._count(url, requests=1)
            try:
                response = session().head(target, headers={"Accept-Encoding": "identity"},
                                          timeout=self.policy.timeout, allow_redirects=True)
                classify_status(self._label(url, target), response)
                break
            except TransientError as exc:
                error = exc
            except requests.RequestException as exc:
                error = transient_from(self._label(url, target), exc, progressed=False)
            failures += 1
            if failures >= self.policy.tries:
                raise error
            self._sleep(self.policy.delay(failures, error.retry_after))
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        self._observe(url, _validator(response.headers), size)
        return size

    def read(self, url: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``url`` from offset ``start``."""
        return self.read_ranges(url, [(start, length)])[0]

    def read_ranges(self, url: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(start, length)`` of ``url``, in order, in as few requests as possible."""
        return self.read_many({url: ranges})[url]

    def read_many(self, requests: Mapping[str, Sequence[tuple[int, int]]]) -> dict[str, list[bytes]]:
        """``read_ranges`` for several files at once; all requests run concurrently."""
        plans = {url: self._plan(url, ranges) for url, ranges in requests.items()}
        jobs = [(plan, start, stop) for plan in plans.values() for start, stop in plan.requests]
        if len(jobs) == 1:
            results = [self._fetch_span(jobs[0][0].url, jobs[0][1], jobs[0][2])]
        elif jobs:
            pool = self._executor()
            results = list(pool.map(lambda job: self._fetch_span(job[0].url, job[1], job[2]), jobs))
        else:
            results = []
        fetched: dict[str, list[_Fetched]] = {url: [] for url in plans}
        for (plan, _, _), result in zip(jobs, results):
            fetched[plan.url].append(result)
        return {url: self._complete(plan, fetched[url], requests[url]) for url, plan in plans.items()}

    def metadata(self, url: str, key: str, compute: Callable[[], Any]) -> Any:
        """A JSON-able value derived from ``url`` (e.g. a parsed header), computed once per file version.

        Stored next to the cached bytes of the current version, so a changed remote file
        recomputes it, and a new process gets it without any request.
        """
        info = self._read_info(url)
        if info is not None:
            version = _hash(str(info.get("validator")), 16)
            memo_key = (url, version, key)
            with self._lock:
                if memo_key in self._meta_memo:
                    self._meta_memo.move_to_end(memo_key)
                    return self._meta_memo[memo_key]
            try:
                value = json.loads(self._meta_path(url, version, key).read_text(encoding="utf-8"))["value"]
            except (OSError, ValueError, KeyError, TypeError):
                pass
            else:
                self._remember(memo_key, value)
                return value
        value = compute()
        text = json.dumps({"url": url, "key": key, "value": value})  # fails early if not JSON-able
        info = self._read_info(url)  # compute() usually fetched bytes and so learned the validator
        version = _hash(str(info.get("validator") if info else None), 16)
        write_atomic(self._meta_path(url, version, key), text.encode("utf-8"))
        value = json.loads(text)["value"]  # hand back exactly what a cache hit would return
        self._remember((url, version, key), value)
        return value

    def _remember(self, memo_key: tuple[str, str, str], value: Any) -> None:
        with self._lock:
            self._meta_memo[memo_key] = value
            self._meta_memo.move_to_end(memo_key)
            while len(self._meta_memo) > _META_MEMO:
                self._meta_memo.popitem(last=False)

    # -- planning and completing a read ----------------------------------------------------------

    def _plan(self, url: str, ranges: Sequence[tuple[int, int]]) -> _Plan:
        checked: list[Range] = []
        for item in ranges:
            start, length = int(item[0]), int(item[1])
            if start < 0 or length < 0:
                raise ValueError(f"{url}: invalid byte range (start={start}, length={length}); "
                                 f"start and length must be >= 0")
            checked.append((start, length))
        info = self._read_info(url)
        if (self.max_age is not None and info is not None and not config.offline()
                and time.time() - float(info.get("checked", 0)) > self.max_age):
            self.refresh(url)
            info = self._read_info(url)
        validator = info.get("validator") if info is not None else None
        needed = coalesce([(s, s + n) for s, n in checked], gap=0)
        buffers = {span: bytearray(span[1] - span[0]) for span in needed}
        missing: list[tuple[int, int]] = []
        from_cache = 0
        spans = self._spans(url, validator) if info is not None else []
        for span in needed:
            holes, hit = self._fill(url, validator, spans, span, buffers[span])
            missing.extend(holes)
            from_cache += hit
        if missing and config.offline():
            raise OfflineError(f"{url}: EMDATA_OFFLINE=1 and {_fmt(missing)} are not in the range cache "
                               f"{self._url_dir(url)}; unset EMDATA_OFFLINE to fetch them")
        requests = coalesce(missing, gap=self.gap)
        return _Plan(url, checked, validator, buffers, missing, requests, from_cache)

    def _fill(self, url: str, validator: str | None, spans: list[tuple[int, int]], span: tuple[int, int],
              buffer: bytearray) -> tuple[list[tuple[int, int]], int]:
        """Copy cached bytes into ``buffer`` (holding ``span``); return the holes and bytes copied."""
        holes = [span]
        copied = 0
        folder = self._span_dir(url, validator)
        for c_start, c_stop in spans:
            if not holes:
                break
            if c_stop <= span[0] or c_start >= span[1]:
                continue
            remaining: list[tuple[int, int]] = []
            for h_start, h_stop in holes:
                a, b = max(h_start, c_start), min(h_stop, c_stop)
                if a >= b:
                    remaining.append((h_start, h_stop))
                    continue
                try:
                    with open(folder / f"{c_start}-{c_stop}", "rb") as fh:
                        fh.seek(a - c_start)
                        data = fh.read(b - a)
                except OSError:  # removed meanwhile (the file changed): fetch instead
                    remaining.append((h_start, h_stop))
                    continue
                if len(data) != b - a:  # truncated by something outside emdata: ignore it
                    remaining.append((h_start, h_stop))
                    continue
                buffer[a - span[0]:b - span[0]] = data
                copied += b - a
                if h_start < a:
                    remaining.append((h_start, a))
                if b < h_stop:
                    remaining.append((b, h_stop))
            holes = remaining
        return sorted(holes), copied

    def _complete(self, plan: _Plan, fetched: list[_Fetched], ranges: Sequence[tuple[int, int]],
                  rereads: int = 0) -> list[bytes]:
        validators = {f.validator for f in fetched}
        changed = len(validators) > 1 or (fetched and plan.from_cache and validators != {plan.validator})
        for result in fetched:
            self._store(plan.url, result)
        if fetched:
            last = fetched[-1]
            self._observe(plan.url, last.validator, last.size)
        if changed:  # the remote file changed under us: read everything again from the new version
            if rereads >= _MAX_REREADS:
                raise DownloadError(f"{plan.url}: the remote file keeps changing while it is read "
                                    f"(validators {sorted(map(str, validators))}); try again later")
            again = self._plan(plan.url, ranges)
            results = [self._fetch_span(plan.url, a, b) for a, b in again.requests]
            return self._complete(again, results, ranges, rereads + 1)
        self._count(plan.url, hits=plan.from_cache)
        spans = list(plan.buffers)  # sorted, disjoint
        starts = [a for a, _ in spans]
        for result in fetched:
            r_start, r_stop = result.start, result.start + len(result.data)
            for i in range(max(bisect.bisect_right(starts, r_start) - 1, 0), len(spans)):
                s_start, s_stop = spans[i]
                if s_start >= r_stop:
                    break
                a, b = max(r_start, s_start), min(r_stop, s_stop)
                if a < b:
                    plan.buffers[spans[i]][a - s_start:b - s_start] = result.data[a - r_start:b - r_start]
        out: list[bytes] = []
        for start, length in plan.ranges:
            i = bisect.bisect_right(starts, start) - 1
            if length == 0 or i < 0:
                out.append(b"")
                continue
            s_start = spans[i][0]
            out.append(bytes(plan.buffers[spans[i]][start - s_start:start - s_start + length]))
        return out

    # -- the network ---------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = config.thread_pool(self.max_workers, "emdata-range")
            return self._pool

    @staticmethod
    def _label(url: str, target: str) -> str:
        return url if url == target else f"{url} (via {target})"

    def _fetch_span(self, url: str, start: int, stop: int) -> _Fetched:
        """GET ``[start, stop)`` of ``url`` with retries; verify what came back."""
        import requests

        target = mirror_url(url)
        label = self._label(url, target)
        header = f"bytes={start}-{stop - 1}"
        failures = 0
        while True:
            try:
                return self._attempt(url, target, label, header, start, stop)
            except TransientError as exc:
                error = exc
            except requests.RequestException as exc:
                error = transient_from(f"{label} [{header}]", exc, progressed=False)
            failures += 1
            if failures >= self.policy.tries:
                raise error
            self._sleep(self.policy.delay(failures, error.retry_after))

    def _attempt(self, url: str, target: str, label: str, header: str, start: int, stop: int) -> _Fetched:
        self._count(url, requests=1)
        headers = {"Range": header, "Accept-Encoding": "identity"}
        with session().get(target, headers=headers, timeout=self.policy.timeout, stream=True) as response:
            classify_status(f"{label} [{header}]", response)
            validator = _validator(response.headers)
            if response.status_code == 416:
                total = _total(response.headers.get("Content-Range"))
                where = f"the file is {total} bytes" if total is not None else "the server did not say its size"
                raise RangeNotSatisfiableError(
                    f"{label}: HTTP 416 range not satisfiable for {header} ({where}); the range starts past the "
                    f"end of the file: check the offsets against RangeReader.size(url)")
            if response.status_code == 206:
                return self._partial(url, label, header, response, start, stop, validator)
            if response.status_code != 200:
                raise DownloadError(f"{label}: unexpected HTTP {response.status_code} for {header}; "
                                    f"expected 206 Partial Content (or 200 with the whole file)")
            content_type = response.headers.get("Content-Type", "")
            if content_type.lower().startswith(("text/html", "application/xhtml")):
                raise ErrorPageError(f"{label}: the server answered {header} with a web page (HTTP 200, "
                                     f"{content_type}) instead of the file's bytes; check the URL or the mirror")
            # The server ignored Range: read the body up to ``stop`` and drop the connection.
            body = bytearray()
            for chunk in response.iter_content(_STREAM_CHUNK):
                body += chunk
                if len(body) >= stop:
                    break
            self._count(url, fetched=len(body), ignored=1)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if len(body) < stop:
                if total is not None and len(body) < total:
                    raise TransientError(f"{label}: body cut at {len(body)} of {total} bytes (server ignored "
                                         f"{header})", progressed=bool(body))
                raise RangeNotSatisfiableError(
                    f"{label}: {header} lies past the end of the file ({len(body)} bytes; the server ignored "
                    f"Range and sent the whole file); check the offsets against RangeReader.size(url)")
            return _Fetched(0, bytes(body), validator, total)

    def _partial(self, url: str, label: str, header: str, response: Any, start: int, stop: int,
                 validator: str | None) -> _Fetched:
        content_range = response.headers.get("Content-Range", "")
        match = _CONTENT_RANGE.match(content_range)
        if match is None:
            raise DownloadError(f"{label}: 206 for {header} without a usable Content-Range "
                                f"({content_range!r}); expected 'bytes {start}-{stop - 1}/<size>'")
        first, last, total_text = int(match[1]), int(match[2]), match[3]
        total = None if total_text == "*" else int(total_text)
        if first != start or last != stop - 1:
            if first == start and total is not None and last == total - 1 < stop - 1:
                raise RangeNotSatisfiableError(
                    f"{label}: {header} runs past the end of the file ({total} bytes); the server sent "
                    f"{content_range!r}; check the offsets against RangeReader.size(url)")
            raise DownloadError(f"{label}: asked for {header}, server sent Content-Range {content_range!r}; "
                                f"the server or a proxy mangles ranges (try another mirror)")
        data = response.content  # a reset or timeout mid-body raises requests' errors: retried by the caller
        self._count(url, fetched=len(data))
        if len(data) != stop - start:
            raise TransientError(f"{label}: {header} returned {len(data)} bytes, expected {stop - start} "
                                 f"(truncated body)", progressed=bool(data))
        return _Fetched(start, data, validator, total)

    # -- the cache on disk -----------------------------------------------------------------------

    def _url_dir(self, url: str) -> Path:
        return self.cache_dir / _hash(url, 32)

    def _span_dir(self, url: str, validator: str | None) -> Path:
        return self._url_dir(url) / _hash(str(validator), 16) / "spans"

    def _meta_path(self, url: str, version: str, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:64]
        return self._url_dir(url) / version / "meta" / f"{safe}-{_hash(key, 8)}.json"

    def _read_info(self, url: str) -> dict[str, Any] | None:
        try:
            info = json.loads((self._url_dir(url) / "info.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and info.get("url") == url else None

    def _spans(self, url: str, validator: str | None) -> list[tuple[int, int]]:
        try:
            names = os.listdir(self._span_dir(url, validator))
        except OSError:
            return []
        spans = [(int(m[1]), int(m[2])) for m in map(_SPAN_NAME.match, names) if m]
        return sorted(spans, key=lambda s: s[0] - s[1])  # longest first: fewest file reads

    def _store(self, url: str, result: _Fetched) -> None:
        if not result.data:
            return
        path = self._span_dir(url, result.validator) / f"{result.start}-{result.start + len(result.data)}"
        try:
            write_atomic(path, result.data)
        except OSError as exc:  # the cache is an optimisation: the read itself still succeeds
            log.warning("range cache: cannot store %s (%s); the bytes will be fetched again next time", path, exc)

    def _observe(self, url: str, validator: str | None, size: int | None) -> None:
        """Record what a response said about the file; a new validator retires the old version."""
        old = self._read_info(url)
        if old is not None and old.get("validator") != validator:
            shutil.rmtree(self._url_dir(url) / _hash(str(old.get("validator")), 16), ignore_errors=True)
            old = None
        if size is None and old is not None:
            size = old.get("size")
        info = {"url": url, "validator": validator, "size": size, "checked": time.time()}
        write_atomic(self._url_dir(url) / "info.json", json.dumps(info).encode("utf-8"))


@dataclass(frozen=True)
class RemoteFile:
    """One remote file as a byte source: ``fetch(ranges) -> list[bytes]``, plus ``size()`` and
    ``metadata()``; the protocol ``emdata.formats.strip_tiff`` reads through.
    """

    reader: RangeReader
    url: str

    def __call__(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return self.reader.read_ranges(self.url, ranges)

    def size(self) -> int:
        return self.reader.size(self.url)

    def metadata(self, key: str, compute: Callable[[], Any]) -> Any:
        return self.reader.metadata(self.url, key, compute)


def _validator(headers: Mapping[str, str]) -> str | None:
    etag = headers.get("ETag")
    if etag:
        return f"etag:{etag}"
    modified = headers.get("Last-Modified")
    return f"modified:{modified}" if modified else None


def _total(content_range: str | None) -> int | None:
    match = re.search(r"/(\d+)\s*$", content_range or "")
    return int(match[1]) if match else None
