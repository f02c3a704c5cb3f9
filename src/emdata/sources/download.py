"""Resumable, checksummed, atomic, locked downloads into the emdata cache.

A file is fetched into ``<name>.part`` (with a ``<name>.part.json`` sidecar naming the URL
and its validator). An interrupted transfer continues with ``Range`` + ``If-Range``; bytes
are appended only on ``206``, a ``200`` restarts from zero, ``416`` means the part is already
whole (or stale). Transient failures (resets, timeouts, truncated bodies, 429/5xx) are
retried with backoff and jitter, honouring ``Retry-After``; an attempt that received bytes
does not use up a try. When a URL keeps failing, or answers with an error page, the next
mirror is tried. Size and checksum are checked, the file is ``os.replace``-d into place,
and the completion record ``<name>.complete.json`` is written last. A file lock makes one
process download while others wait and reuse the result; the lock dies with its holder.

Example:
    >>> from emdata.sources.download import fetch
    >>> result = fetch("https://example.org/data.zip", dest, checksum="sha256:...",
    ...                mirrors=["https://mirror.example.org/data.zip"])  # doctest: +SKIP
    >>> result.path, result.sha256, result.fetched_from  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from emdata import config
from emdata.sources.errors import ChecksumError, DownloadError, ErrorPageError, OfflineError, TLSError
from emdata.sources.http import DEFAULT_POLICY, RetryPolicy, TransientError, classify_status, session, transient_from
from emdata.sources.urls import mirror_url

__all__ = ["ChecksumError", "DownloadError", "ErrorPageError", "FetchResult", "OfflineError", "TLSError", "cached",
           "fetch", "hash_file", "record_path"]

CHUNK = 1 << 20
NET_CHUNK = 64 << 10  # a dropped connection loses at most one network chunk
HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<?xml version")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchResult:
    path: Path
    url: str
    fetched_from: str
    size: int
    sha256: str
    md5: str
    from_cache: bool
    attempts: int = 0
    bytes_transferred: int = 0
    failures: tuple[str, ...] = field(default_factory=tuple)


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".complete.json")


def hash_file(path: Path) -> tuple[str, str]:
    """(sha256, md5) of a file, streamed."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _expected(url: str, checksum: str | None) -> tuple[str | None, str | None]:
    """(algorithm, hex) to check, with ``EMDATA_CHECKSUMS`` taking precedence."""
    override = config.checksum_overrides().get(url)
    if override:
        return "sha256", override
    if checksum and checksum != "none published":
        algo, _, value = checksum.partition(":")
        if algo not in ("sha256", "md5") or not value:
            raise ValueError(f"checksum for {url} must be 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
        return algo, value.lower()
    return None, None


def _check(url: str, where: str, size: int, sha256: str, md5: str,
           expected_size: int | None, algo: str | None, value: str | None) -> None:
    if expected_size is not None and size != expected_size:
        raise ChecksumError(f"{url}: expected {expected_size} bytes, got {size} ({where})")
    if algo is not None:
        got = sha256 if algo == "sha256" else md5
        if got != value:
            raise ChecksumError(f"{url}: {algo} mismatch ({where}): expected {value}, got {got}. "
                                "If a mirror repackages this file, list its sha256 in EMDATA_CHECKSUMS.")


def cached(path: Path) -> dict[str, Any] | None:
    """The completion record of ``path`` if the file is complete, else None."""
    rec = record_path(path)
    if not (rec.is_file() and path.is_file()):
        return None
    try:
        record = json.loads(rec.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("size") == path.stat().st_size else None


def _publish_record(path: Path, result: FetchResult) -> None:
    data = asdict(result)
    data["path"] = str(result.path)
    data["completed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = record_path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, record_path(path))


class _Part:
    """``<dest>.part`` with its sidecar (source URL, validator) and running hashes."""

    def __init__(self, dest: Path) -> None:
        self.path = dest.with_name(dest.name + ".part")
        self.meta_path = dest.with_name(dest.name + ".part.json")
        self._sha = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._hashed = 0

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return {}

    def save_meta(self, source: str, validator: str | None, total: int | None) -> None:
        self.meta_path.write_text(json.dumps({"source": source, "validator": validator, "total": total}),
                                  encoding="utf-8")

    def reset(self) -> None:
        self.path.write_bytes(b"")
        self.meta_path.unlink(missing_ok=True)
        self._sha, self._md5, self._hashed = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0

    def sync_hashes(self) -> None:
        """Bring the running hashes up to the bytes on disk (after a restart or another process)."""
        if self._hashed == self.size:
            return
        self._sha, self._md5, self._hashed = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
        if self.path.exists():
            with open(self.path, "rb") as fh:
                while block := fh.read(CHUNK):
                    self._sha.update(block)
                    self._md5.update(block)
                    self._hashed += len(block)

    def append(self, fh: Any, block: bytes) -> None:
        fh.write(block)
        self._sha.update(block)
        self._md5.update(block)
        self._hashed += len(block)

    def digests(self) -> tuple[str, str]:
        return self._sha.hexdigest(), self._md5.hexdigest()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)


_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, complete length) of a ``Content-Range`` header."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _describe_page(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    low = text.lower()
    if "drive.google.com" in low or "google drive" in low:
        what = "a Google Drive interstitial page (large-file virus-scan warning or quota notice)"
    elif "dropbox" in low:
        what = "a Dropbox web page (shared link without ?dl=1, removed file, or rate limit)"
    else:
        what = "a web page"
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
    return what + (f" titled {title.group(1).strip()[:80]!r}" if title else "")


def _looks_like_html(block: bytes) -> bool:
    return block[:512].lstrip().lower().startswith(HTML_SNIFF)


class _Attempt:
    """One GET against one source URL, continuing ``part`` when the server allows it."""

    def __init__(self, url: str, source: str, part: _Part, expected_size: int | None, policy: RetryPolicy,
                 advance: Callable[[int], None], verify_tls: bool = True) -> None:
        self.url, self.source, self.part, self.expected_size = url, source, part, expected_size
        self.policy, self.advance, self.verify_tls = policy, advance, verify_tls
        self.received = 0

    def _headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity"}
        have, meta = self.part.size, self.part.meta()
        if have and meta.get("source") == self.source:
            headers["Range"] = f"bytes={have}-"
            if meta.get("validator"):
                headers["If-Range"] = meta["validator"]
        elif have:
            self.part.reset()  # bytes from another URL are not ours to continue
        return headers

    def _check_page(self, response: Any, total: int | None, first: bytes) -> None:
        wants_html = self.url.lower().split("?")[0].endswith((".html", ".htm"))
        ctype = response.headers.get("Content-Type", "").lower()
        if not wants_html and ("text/html" in ctype or _looks_like_html(first)):
            raise ErrorPageError(f"{self.url}: the server sent {_describe_page(first)} instead of the file "
                                 f"(from {self.source}, HTTP {response.status_code})")
        if self.expected_size and total is not None and total < self.expected_size // 2:
            raise ErrorPageError(f"{self.url}: the server offers {total} bytes but the file is "
                                 f"{self.expected_size} bytes (from {self.source}); it begins "
                                 f"{first[:60]!r}")

    def run(self) -> None:
        """Raise Transient/Permanent errors; return when ``part`` holds the whole body."""
        headers = self._headers()
        have = self.part.size
        with warnings.catch_warnings():
            if not self.verify_tls:  # already logged once, with the reason it is acceptable
                warnings.simplefilter("ignore", category=Warning)
            self._get(headers, have)

    def _get(self, headers: dict[str, str], have: int) -> None:
        import requests

        try:
            with session().get(self.source, headers=headers, stream=True, timeout=self.policy.timeout,
                               verify=self.verify_tls) as response:
                classify_status(self.url, response)
                start, total = _content_range(response.headers.get("Content-Range"))
                if response.status_code == 416:
                    if have and total == have:
                        return  # the part is already complete
                    self.part.reset()
                    raise TransientError(f"{self.url}: HTTP 416 for bytes {have}- (file changed?); restarting")
                if response.status_code == 206:
                    if start != have:
                        self.part.reset()
                        raise TransientError(f"{self.url}: server resumed at byte {start}, expected {have}")
                else:
                    if have:
                        log.info("%s: server ignored the range request (HTTP 200); restarting", self.url)
                        self.part.reset()
                    have = 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                blocks = response.iter_content(NET_CHUNK)
                first = next(blocks, b"")
                if have == 0:
                    self._check_page(response, total, first)
                self.part.save_meta(self.source, response.headers.get("ETag") or response.headers.get("Last-Modified"),
                                    total)
                self.part.sync_hashes()
                with open(self.part.path, "ab") as fh:
                    for block in _chain(first, blocks):
                        self.part.append(fh, block)
                        self.received += len(block)
                        self.advance(len(block))
                    fh.flush()
                    os.fsync(fh.fileno())
                if total is not None and self.part.size != total:
                    raise TransientError(f"{self.url}: body ended at byte {self.part.size} of {total}",
                                         progressed=self.received > 0)
        except requests.exceptions.SSLError as exc:
            raise TLSError(f"{self.url}: TLS certificate of {self.source.split('/')[2]} failed verification "
                           f"({_first_line(exc)})") from exc
        except requests.RequestException as exc:
            raise transient_from(self.url, exc, progressed=self.received > 0) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _chain(first: bytes, rest: Any) -> Any:
    if first:
        yield first
    yield from rest


def _download_from(url: str, source: str, part: _Part, expected_size: int | None, policy: RetryPolicy,
                   sleep: Callable[[float], None], advance: Callable[[int], None],
                   pinned: bool) -> tuple[int, int]:
    """Retry one source until the part is whole; returns (attempts, bytes received).

    A failed TLS certificate check is retried without verification only when the file's
    checksum is ``pinned`` (integrity then rests on the checksum, as for cremi.org, whose
    certificate expired); otherwise it is an error that says how to proceed.
    """
    failures = attempts = received = 0
    verify_tls = True
    while True:
        attempts += 1
        attempt = _Attempt(url, source, part, expected_size, policy, advance, verify_tls)
        try:
            attempt.run()
            return attempts, received + attempt.received
        except TLSError as exc:
            if not (pinned and verify_tls):
                raise TLSError(f"{exc}; no checksum is pinned for this file, so emdata will not fetch it over an "
                               "unverified connection: put its sha256 in EMDATA_CHECKSUMS or use a mirror"
                               if not pinned else str(exc)) from exc
            log.warning("%s; retrying without certificate verification because its checksum is pinned", exc)
            verify_tls = False
        except TransientError as exc:
            received += attempt.received
            failures = 0 if exc.progressed else failures + 1
            if failures >= policy.tries:
                raise TransientError(f"{exc} (gave up after {attempts} attempts)") from exc
            wait = policy.delay(max(failures, 1), exc.retry_after)
            log.info("%s; retrying in %.1f s", exc, wait)
            sleep(wait)


def _lock(dest: Path) -> FileLock:
    lock = FileLock(str(dest) + ".lock")
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        log.warning("waiting for another emdata process that is fetching %s", dest.name)
        lock.acquire()
    return lock


def fetch(url: str, dest: Path, *, checksum: str | None = None, size: int | None = None,
          mirrors: Sequence[str] = (), description: str | None = None, policy: RetryPolicy = DEFAULT_POLICY,
          sleep: Callable[[float], None] = time.sleep) -> FetchResult:
    """Download ``url`` (failing over to ``mirrors``) to ``dest``, or reuse the cached copy.

    ``checksum`` is ``"sha256:<hex>"``, ``"md5:<hex>"``, ``"none published"`` or None; an
    ``EMDATA_CHECKSUMS`` entry replaces it (and the expected ``size``). A file placed at
    ``dest`` by hand is verified and adopted, also offline. Every URL goes through
    ``EMDATA_MIRROR`` rewriting. Raises a :class:`DownloadError` whose message names the URL.
    """
    from emdata.sources.progress import transfer_progress

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algo, value = _expected(url, checksum)
    if url in config.checksum_overrides():
        size = None  # the card's size describes the original file, not the repackaged one
    lock = _lock(dest)
    try:
        record = cached(dest)
        if record is not None:
            return FetchResult(dest, url, record["fetched_from"], record["size"], record["sha256"], record["md5"],
                               from_cache=True)
        if dest.is_file():  # placed by hand: verify, then adopt
            sha, md5 = hash_file(dest)
            _check(url, f"file placed at {dest}", dest.stat().st_size, sha, md5, size, algo, value)
            result = FetchResult(dest, url, str(dest), dest.stat().st_size, sha, md5, from_cache=True)
            _publish_record(dest, result)
            return result
        if config.offline():
            expect = f"{algo} {value}" if algo else "no published checksum"
            raise OfflineError(f"EMDATA_OFFLINE=1 and {dest.name} is not cached: download {url} "
                               f"({expect}) and put it at {dest}")
        part = _Part(dest)
        failures: list[str] = []
        attempts = received = 0
        candidates = list(dict.fromkeys(mirror_url(u) for u in (url, *mirrors)))
        for source in candidates:
            try:
                with transfer_progress(description or dest.name, size, start=part.size) as advance:
                    n, got = _download_from(url, source, part, size, policy, sleep, advance, pinned=algo is not None)
                attempts += n
                received += got
                part.sync_hashes()
                sha, md5 = part.digests()
                _check(url, f"fetched from {source}", part.size, sha, md5, size, algo, value)
            except DownloadError as exc:
                failures.append(f"{source}: {exc}")
                if isinstance(exc, ChecksumError):
                    part.discard()
                if source != candidates[-1]:
                    log.warning("%s failed (%s); trying the next mirror", source, exc)
                    continue
                part.discard()
                if len(candidates) == 1:
                    raise
                raise type(exc)(f"{url}: all {len(candidates)} sources failed: " + "; ".join(failures)) from exc
            os.replace(part.path, dest)
            part.meta_path.unlink(missing_ok=True)
            result = FetchResult(dest, url, source, dest.stat().st_size, sha, md5, from_cache=False,
                                 attempts=attempts, bytes_transferred=received, failures=tuple(failures))
            _publish_record(dest, result)
            return result
        raise DownloadError(f"{url}: no source to fetch from")  # unreachable: candidates is never empty
    finally:
        lock.release()
