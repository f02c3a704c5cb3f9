"""Checksummed, atomic, locked downloads into the emdata cache.

A file is published in three steps: stream into ``<name>.part`` while hashing, check size
and checksum, ``os.replace`` into ``<name>``; then the completion record
``<name>.complete.json`` (url, size, sha256, md5, time) is written last. Only a file with
its record counts as cached. A file lock serialises concurrent fetches of one file.

Example:
    >>> from emdata.sources.download import fetch
    >>> result = fetch("https://example.org/data.zip", dest, checksum="sha256:...")  # doctest: +SKIP
    >>> result.path, result.sha256  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from emdata import config
from emdata.sources.urls import mirror_url

CHUNK = 1 << 20
TIMEOUT_S = 60.0


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and what went wrong."""


class ChecksumError(DownloadError):
    """The bytes that arrived do not match the expected size or checksum."""


class OfflineError(DownloadError):
    """``EMDATA_OFFLINE=1`` and the file is not in the cache."""


@dataclass(frozen=True)
class FetchResult:
    path: Path
    url: str
    fetched_from: str
    size: int
    sha256: str
    md5: str
    from_cache: bool


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


def cached(path: Path) -> dict | None:
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


def fetch(url: str, dest: Path, *, checksum: str | None = None, size: int | None = None,
          description: str | None = None) -> FetchResult:
    """Download ``url`` to ``dest`` (or reuse the cached copy) and verify it.

    ``checksum`` is ``"sha256:<hex>"``, ``"md5:<hex>"``, ``"none published"`` or None.
    A file placed at ``dest`` by hand is verified and adopted, also offline.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algo, value = _expected(url, checksum)
    with FileLock(str(dest) + ".lock"):
        record = cached(dest)
        if record is not None:
            return FetchResult(dest, url, record["fetched_from"], record["size"], record["sha256"],
                               record["md5"], from_cache=True)
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
        source = mirror_url(url)
        sha, md5, got = _stream(url, source, dest, description or dest.name)
        part = dest.with_name(dest.name + ".part")
        try:
            _check(url, f"fetched from {source}", got, sha, md5, size, algo, value)
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        result = FetchResult(dest, url, source, got, sha, md5, from_cache=False)
        _publish_record(dest, result)
        return result


def _stream(url: str, source: str, dest: Path, description: str) -> tuple[str, str, int]:
    """GET ``source`` (``url`` or its mirror) into ``dest.part``; returns (sha256, md5, bytes)."""
    import requests

    from emdata.sources.progress import transfer_progress

    part = dest.with_name(dest.name + ".part")
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    got = 0
    try:
        with requests.get(source, stream=True, timeout=TIMEOUT_S) as response:
            if response.status_code != 200:
                via = "" if source == url else f" (via {source})"
                raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}{via}")
            total = int(response.headers.get("Content-Length", 0)) or None
            with open(part, "wb") as fh, transfer_progress(description, total) as advance:
                for block in response.iter_content(CHUNK):
                    fh.write(block)
                    sha.update(block)
                    md5.update(block)
                    got += len(block)
                    advance(len(block))
                fh.flush()
                os.fsync(fh.fileno())
    except requests.RequestException as exc:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {type(exc).__name__}: {exc} (fetching {source})") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return sha.hexdigest(), md5.hexdigest(), got
