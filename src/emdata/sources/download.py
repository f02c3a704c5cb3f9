"""Resumable, checksummed, atomic, locked downloads into the emdata cache.

A file is fetched into ``<name>.part`` (with a ``<name>.part.json`` sidecar naming the URL
and its validator). An interrupted transfer continues with ``Range`` + ``If-Range``; bytes
are appended only on ``206``, a ``200`` restarts from zero, ``416`` means the part is already
whole (or stale). Transient failures (resets, timeouts, truncated bodies, 429/5xx) are
retried with backoff and jitter, honouring ``Retry-After``; an attempt that received bytes
does not use up a try. When a URL keeps failing, or answers with an error page, the next
mirror is tried. Size and checksum are checked, the file is ``os.replace``-d into place,
and the completion record ``<name>.complete.json`` is written last; a cached file is checked
against the checksum expected now every time it is used. Bodies are bounded: never beyond the
expected size, never an unasked-for ``Content-Encoding``, never past a per-attempt deadline.
Links planted at the cache's files are not followed out of the emdata home. A file lock makes
one process download while others wait and reuse the result; the lock dies with its holder. A
complete cached copy is reused without taking (or creating) the lock, so read-only caches work.
:func:`fetch` has a running example.

Why one module of this size: one download's lifecycle (part file, attempts, bounds, failover,
verification, record, lock) holds invariants across its steps (what counts as progress, when
bytes are appended, when a file is trusted) that are easier to check in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from emdata import config
from emdata.atomic import write_atomic
from emdata.sources.errors import (
    CacheMismatchError,
    ChecksumError,
    DownloadError,
    ErrorPageError,
    OfflineError,
    SizeLimitError,
    TLSError,
    UnsafePathError,
)
from emdata.sources.http import (
    DEFAULT_POLICY,
    PermanentError,
    RetryPolicy,
    TransientError,
    classify_status,
    session,
    transient_from,
)
from emdata.sources.urls import mirror_url

__all__ = ["CacheMismatchError", "ChecksumError", "DownloadError", "ErrorPageError", "FetchResult", "OfflineError",
           "SizeLimitError", "TLSError", "UnsafePathError", "cached", "fetch", "hash_file", "record_path"]

CHUNK = 1 << 20
NET_CHUNK = 64 << 10  # a dropped connection loses at most one network chunk
HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<?xml version")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
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
    announced_size: int | None = None  # the length the server stated (Content-Length / Content-Range)


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
    tmp = record_path(path).with_suffix(".tmp")  # a known name: `cache clean` finds a crash's leftover
    _drop_link(tmp)
    write_atomic(record_path(path), json.dumps(data, indent=1), tmp=tmp)


def _drop_link(path: Path) -> None:
    """Remove a symbolic link planted where emdata keeps a scratch file; never write through it."""
    if path.is_symlink():
        log.warning("%s is a symbolic link (to %s); removing the link instead of following it", path,
                    os.readlink(path))
        path.unlink()


def _refuse_outside_link(path: Path) -> None:
    """A cached file or record that is a link leading out of the emdata home is refused, not trusted."""
    if not path.is_symlink():
        return
    home = config.emdata_home().resolve()
    target = path.resolve()
    if not target.is_relative_to(home):
        raise UnsafePathError(f"{path} is a symbolic link to {target}, outside the emdata home {home}; emdata "
                              "does not follow it: remove the link (or copy the file there) and fetch again")


def _reuse(url: str, dest: Path, size: int | None, algo: str | None, value: str | None) -> FetchResult | None:
    """The cached copy of ``dest``, checked against what is expected now; None when there is none."""
    _refuse_outside_link(dest)
    _refuse_outside_link(record_path(dest))
    record = cached(dest)
    if record is None:
        return None
    _reverify(url, dest, record, size, algo, value)
    return FetchResult(dest, url, record["fetched_from"], record["size"], record["sha256"], record["md5"],
                       from_cache=True, announced_size=record.get("announced_size"))


def _reverify(url: str, dest: Path, record: dict[str, Any], size: int | None, algo: str | None,
              value: str | None) -> None:
    """Check a cached file against what is expected *now*; re-hash it if it changed after its record.

    Comparing the recorded hash is cheap and catches a corrected card checksum or a removed
    ``EMDATA_CHECKSUMS`` entry; a file modified after it was verified is hashed again.
    """
    rec = record_path(dest)
    refetch = f"delete {dest} and {rec.name} to fetch it again"
    sha, md5 = record.get("sha256"), record.get("md5")
    if rec.stat().st_mtime_ns < dest.stat().st_mtime_ns:
        sha, md5 = hash_file(dest)
        if sha != record.get("sha256"):
            raise CacheMismatchError(f"{dest}: the file changed after it was verified (sha256 now {sha}, recorded "
                                     f"{record.get('sha256')}); {refetch}")
        os.utime(rec)  # verified again: no re-hash next time
    if size is not None and record.get("size") != size:
        raise CacheMismatchError(f"{dest}: the cached copy of {url} has {record.get('size')} bytes but {size} are "
                                 f"expected now; {refetch}")
    if algo is not None:
        got = sha if algo == "sha256" else md5
        if got != value:
            raise CacheMismatchError(f"{dest}: the cached copy of {url} has {algo} {got} but {value} is expected now "
                                     f"(card or EMDATA_CHECKSUMS); {refetch}")


class _Part:
    """``<dest>.part`` with its sidecar (source URL, validator) and running hashes."""

    def __init__(self, dest: Path) -> None:
        self.path = dest.with_name(dest.name + ".part")
        self.meta_path = dest.with_name(dest.name + ".part.json")
        _drop_link(self.path)
        _drop_link(self.meta_path)
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
        _drop_link(self.meta_path)
        self.meta_path.write_text(json.dumps({"source": source, "validator": validator, "total": total}),
                                  encoding="utf-8")

    def open_append(self) -> Any:
        """The part opened for appending; a symbolic link planted there is never followed."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
        return os.fdopen(fd, "ab")

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o644))
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
                 progress: Any, verify_tls: bool = True, max_bytes: int | None = None,
                 remaining_s: float | None = None) -> None:
        self.url, self.source, self.part, self.expected_size = url, source, part, expected_size
        self.policy, self.progress, self.verify_tls = policy, progress, verify_tls
        self.max_bytes = max_bytes if max_bytes is not None else policy.max_unknown_size_bytes
        self.remaining_s = policy.give_up_after_s if remaining_s is None else remaining_s
        self.received = 0
        self.announced: int | None = None  # the complete length the server stated

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

    def _check_length(self, total: int | None) -> None:
        if total is None:
            return
        if self.expected_size is not None and total > self.expected_size:
            raise SizeLimitError(f"{self.url}: the server offers {total} bytes but the file is {self.expected_size} "
                                 f"bytes (from {self.source}); not downloading a different file")
        if self.expected_size is None and total > self.max_bytes:
            raise SizeLimitError(f"{self.url}: the server offers {total} bytes, more than the {self.max_bytes}-byte "
                                 f"limit for a file of unknown size (from {self.source}); give the source a "
                                 "size_bytes or a larger max_bytes")

    def _check_encoding(self, response: Any) -> None:
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise PermanentError(f"{self.url}: the server sent Content-Encoding {encoding!r} although emdata asked "
                                 f"for the file as stored (identity); refusing to decode it (from {self.source})")

    def run(self) -> None:
        """Raise Transient/Permanent errors; return when ``part`` holds the whole body."""
        headers = self._headers()
        have = self.part.size
        with warnings.catch_warnings():
            if not self.verify_tls:  # already logged once, with the reason it is acceptable
                warnings.simplefilter("ignore", category=Warning)
            self._get(headers, have)

    def _limit(self) -> tuple[int, str]:
        if self.expected_size is not None:
            return self.expected_size, f"the expected {self.expected_size} bytes"
        if self.announced is not None:
            return self.announced, f"the {self.announced} bytes the server announced"
        return self.max_bytes, f"the {self.max_bytes}-byte limit for a file of unknown size (give the source a " \
                               "size_bytes or a larger max_bytes)"

    def _get(self, headers: dict[str, str], have: int) -> None:
        import requests
        import urllib3

        deadline = time.monotonic() + self.policy.attempt_deadline_s
        try:
            with session().get(self.source, headers=headers, stream=True, verify=self.verify_tls,
                               timeout=self.policy.timeout_within(self.remaining_s)) as response:
                classify_status(self.url, response)
                self._check_encoding(response)
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
                self.announced = total
                self._check_length(total)
                if total is not None and self.expected_size is None:
                    self.progress.set_total(total)
                blocks = _raw_blocks(response.raw)
                first = _first_block(blocks)
                if have == 0:
                    self._check_page(response, total, first)
                self.part.save_meta(self.source, response.headers.get("ETag") or response.headers.get("Last-Modified"),
                                    total)
                self.part.sync_hashes()
                limit, limit_text = self._limit()
                held = self.part.size
                with self.part.open_append() as fh:
                    for block in _chain(first, blocks):
                        if held + len(block) > limit:
                            raise SizeLimitError(f"{self.url}: the server sent more than {limit_text} "
                                                 f"(from {self.source}); stopped at byte {held}")
                        self.part.append(fh, block)
                        held += len(block)
                        self.received += len(block)
                        self.progress(len(block))
                        if time.monotonic() > deadline and held != total:
                            raise TransientError(f"{self.url}: the request ran past its "
                                                 f"{self.policy.attempt_deadline_s:g} s deadline at byte "
                                                 f"{held} (a trickling server); resuming")
                    fh.flush()
                    os.fsync(fh.fileno())
                if total is not None and self.part.size != total:
                    raise TransientError(f"{self.url}: body ended at byte {self.part.size} of {total}")
        except requests.exceptions.SSLError as exc:
            raise TLSError(f"{self.url}: TLS certificate of {self.source.split('/')[2]} failed verification "
                           f"({_first_line(exc)})") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            # network failures only: a full disk (another OSError) is not retried
            raise transient_from(self.url, exc, progressed=False) from exc


def _raw_blocks(raw: Any) -> Iterator[bytes]:
    """The body as stored (no decoding), one socket read at a time, so deadlines are checked often."""
    while block := raw.read1(NET_CHUNK, decode_content=False):
        yield block


def _first_block(blocks: Iterator[bytes]) -> bytes:
    """At least the first 512 bytes (or the whole body), enough to recognise a web page."""
    first = b""
    for block in blocks:
        first += block
        if len(first) >= 512:
            break
    return first


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _chain(first: bytes, rest: Any) -> Any:
    if first:
        yield first
    yield from rest


def _download_from(url: str, source: str, part: _Part, expected_size: int | None, policy: RetryPolicy,
                   sleep: Callable[[float], None], progress: Any, pinned: bool,
                   max_bytes: int | None = None) -> tuple[int, int, int | None]:
    """Retry one source until the part is whole; returns (attempts, bytes received, announced size).

    An attempt made progress only when it carried the part beyond the most bytes it ever held
    (a server that ignores ``Range`` and drops the connection restarts from zero every time).
    The source is given up after ``policy.tries`` attempts without progress, or after
    ``policy.give_up_after_s`` seconds without progress, whichever comes first.

    A failed TLS certificate check is retried without verification only when the file's
    checksum is ``pinned`` (integrity then rests on the checksum, as for cremi.org, whose
    certificate expired); otherwise it is an error that says how to proceed.
    """
    failures = attempts = received = 0
    verify_tls = True
    best = part.size
    last_progress = time.monotonic()
    while True:
        attempts += 1
        remaining = policy.give_up_after_s - (time.monotonic() - last_progress)
        attempt = _Attempt(url, source, part, expected_size, policy, progress, verify_tls, max_bytes, remaining)
        try:
            attempt.run()
            return attempts, received + attempt.received, attempt.announced
        except TLSError as exc:
            if not (pinned and verify_tls):
                raise TLSError(f"{exc}; no checksum is pinned for this file, so emdata will not fetch it over an "
                               "unverified connection: put its sha256 in EMDATA_CHECKSUMS or use a mirror"
                               if not pinned else str(exc)) from exc
            log.warning("%s; retrying without certificate verification because its checksum is pinned", exc)
            verify_tls = False
        except TransientError as exc:
            received += attempt.received
            if part.size > best:
                best, failures, last_progress = part.size, 0, time.monotonic()
            else:
                failures += 1
            wait = policy.delay(max(failures, 1), exc.retry_after)
            idle = time.monotonic() - last_progress
            if failures >= policy.tries:
                raise TransientError(f"{exc} (gave up after {attempts} attempts)") from exc
            if exc.retry_after is None and idle + wait >= policy.give_up_after_s:
                raise TransientError(f"{exc} (gave up after {attempts} attempts: no progress for "
                                     f"{idle:.0f} s)") from exc
            log.info("%s; retrying in %.1f s", exc, wait)
            sleep(wait)


def _lock(dest: Path, timeout_s: float | None) -> FileLock:
    """The per-file lock (an OS lock: it dies with a holder that crashed or was killed)."""
    path = Path(str(dest) + ".lock")
    _drop_link(path)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0.2)
    except Timeout:
        log.warning("waiting for another emdata process that is fetching %s", dest.name)
        try:
            lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
        except Timeout as exc:
            raise DownloadError(f"{dest}: another process still holds {path.name} after {timeout_s:g} s") from exc
    return lock


def fetch(url: str, dest: Path, *, checksum: str | None = None, size: int | None = None,
          mirrors: Sequence[str] = (), description: str | None = None, policy: RetryPolicy = DEFAULT_POLICY,
          sleep: Callable[[float], None] = time.sleep, max_bytes: int | None = None,
          lock_timeout_s: float | None = None) -> FetchResult:
    """Download ``url`` (failing over to ``mirrors``) to ``dest``, or reuse the cached copy.

    ``checksum`` is ``"sha256:<hex>"``, ``"md5:<hex>"``, ``"none published"`` or None; an
    ``EMDATA_CHECKSUMS`` entry replaces it (and the expected ``size``). A cached copy is
    checked against the checksum expected *now* on every call. A file placed at ``dest`` by
    hand is verified and adopted, also offline. Every URL goes through ``EMDATA_MIRROR``
    rewriting. The body is capped at ``size`` (or, unknown, at the server's length, else
    ``max_bytes``, default ``policy.max_unknown_size_bytes``). ``lock_timeout_s`` bounds the
    wait for another process fetching the same file (default: wait). Raises a
    :class:`DownloadError` whose message names the URL and the file.

    Example (a file placed by hand, verified and adopted without any network):
        >>> import hashlib, tempfile
        >>> dest = Path(tempfile.mkdtemp()) / "tiny.bin"
        >>> _ = dest.write_bytes(b"emdata")
        >>> digest = hashlib.sha256(b"emdata").hexdigest()
        >>> result = fetch("https://example.org/tiny.bin", dest, checksum=f"sha256:{digest}")
        >>> result.from_cache, result.size, result.sha256 == digest
        (True, 6, True)
    """
    from emdata.sources.progress import transfer_progress

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algo, value = _expected(url, checksum)
    if url in config.checksum_overrides():
        size = None  # the card's size describes the original file, not the repackaged one
    finished = _reuse(url, dest, size, algo, value)  # no lock file for a complete copy (read-only caches)
    if finished is not None:
        return finished
    lock = _lock(dest, lock_timeout_s)
    try:
        finished = _reuse(url, dest, size, algo, value)
        if finished is not None:
            return finished
        if dest.is_file():  # placed by hand, or published by a download killed before its record: verify, adopt
            sha, md5 = hash_file(dest)
            _check(url, f"file placed at {dest}", dest.stat().st_size, sha, md5, size, algo, value)
            part = _Part(dest)
            origin = part.meta().get("source") or str(dest)
            result = FetchResult(dest, url, origin, dest.stat().st_size, sha, md5, from_cache=True)
            _publish_record(dest, result)
            part.meta_path.unlink(missing_ok=True)
            return result
        if config.offline():
            expect = f"{algo} {value}" if algo else "no published checksum"
            raise OfflineError(f"EMDATA_OFFLINE=1 and {dest.name} is not cached: download {url} "
                               f"({expect}) and put it at {dest}")
        return _fetch_sources(url, dest, mirrors, size, algo, value, description, policy, sleep, max_bytes,
                              transfer_progress)
    finally:
        lock.release()


def _fetch_sources(url: str, dest: Path, mirrors: Sequence[str], size: int | None, algo: str | None,
                   value: str | None, description: str | None, policy: RetryPolicy,
                   sleep: Callable[[float], None], max_bytes: int | None, transfer_progress: Any) -> FetchResult:
    """Try the URL, then each mirror; publish the first verified copy."""
    part = _Part(dest)
    failures: list[str] = []
    attempts = received = 0
    candidates = list(dict.fromkeys(mirror_url(u) for u in (url, *mirrors)))
    for source in candidates:
        try:
            with transfer_progress(description or dest.name, size, start=part.size) as progress:
                n, got, announced = _download_from(url, source, part, size, policy, sleep, progress,
                                                   pinned=algo is not None, max_bytes=max_bytes)
            attempts += n
            received += got
            part.sync_hashes()
            sha, md5 = part.digests()
            _check(url, f"fetched from {source}", part.size, sha, md5, size, algo, value)
        except DownloadError as exc:
            failures.append(f"{source}: {exc}")
            if isinstance(exc, (ChecksumError, SizeLimitError)):
                part.discard()
            if source != candidates[-1]:
                log.warning("%s failed (%s); trying the next mirror", source, exc)
                continue
            part.discard()
            if len(candidates) == 1:
                raise type(exc)(f"{exc} (cache file {dest})") from exc
            raise type(exc)(f"{url}: all {len(candidates)} sources failed for {dest}: " + "; ".join(failures)) from exc
        os.replace(part.path, dest)  # the sidecar names the source until the record is written
        result = FetchResult(dest, url, source, dest.stat().st_size, sha, md5, from_cache=False,
                             attempts=attempts, bytes_transferred=received, failures=tuple(failures),
                             announced_size=announced)
        _publish_record(dest, result)
        part.meta_path.unlink(missing_ok=True)
        return result
    raise DownloadError(f"{url}: no source to fetch {dest} from")  # unreachable: candidates is never empty
