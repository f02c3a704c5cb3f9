"""Bounded downloads and a cache that is re-checked: servers that ignore ``Range`` and drop the
connection, unasked-for ``Content-Encoding``, endless or oversized bodies, trickling and dead
servers, permanent HTTP errors, planted symbolic links, and checksums corrected after a file
was cached."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from emdata.sources import download
from emdata.sources.download import (
    CacheMismatchError,
    DownloadError,
    SizeLimitError,
    UnsafePathError,
    fetch,
    record_path,
)
from emdata.sources.http import PermanentError, RetryPolicy, TransientError
from emdata.testing import MirrorServer
from emdata.testing.faults import endless, gzip_encoded, ignore_range_then_drop, slow, status, stub, throttle

URL = "https://files.example.org/data/volume.bin"
MIRROR_URL = "https://mirror.example.net/copies/volume.bin"
SIZE = 1_500_000
FAST = RetryPolicy(tries=3, backoff_s=0.01, max_backoff_s=0.05, connect_timeout_s=2, read_timeout_s=2)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def gets(server: MirrorServer, suffix: str = "volume.bin") -> list:
    return [r for r in server.requests_for(suffix) if r.method == "GET"]


def no_sleep(seconds: float) -> None:
    pass


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists() and not record_path(dest).exists()
    assert not dest.with_name(dest.name + ".part").exists()


# -- progress is counted beyond the bytes already held ------------------------------------------

def test_server_ignoring_range_and_dropping_gives_up(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", ignore_range_then_drop(400_000), times=20)  # then it would serve the file
    with pytest.raises(TransientError, match=r"volume.bin.*gave up after"):
        fetch(URL, tmp_path / "v.bin", policy=FAST, sleep=no_sleep)
    # the first attempt brought new bytes; each later one restarts from 0 and never gets further
    assert len(gets(server)) == 1 + FAST.tries
    assert_nothing_left(tmp_path / "v.bin")


# -- bodies are capped -----------------------------------------------------------------------------

def test_unasked_content_encoding_is_refused_and_fails_over(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", gzip_encoded(), times=None)
    dest = tmp_path / "v.bin"
    with pytest.raises(PermanentError, match=r"volume.bin: the server sent Content-Encoding 'gzip'"):
        fetch(URL, dest, policy=FAST, sleep=no_sleep)
    assert len(gets(server)) == 1 and gets(server)[0].status == 200  # a permanent error: not retried
    assert_nothing_left(dest)
    result = fetch(URL, dest, mirrors=[MIRROR_URL], policy=FAST, sleep=no_sleep)
    assert "mirror.example.net" in result.fetched_from and dest.read_bytes() == payload


def test_endless_body_stops_at_the_expected_size(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", endless(stop_after=4 * SIZE), times=None)
    dest = tmp_path / "v.bin"
    with pytest.raises(SizeLimitError, match=rf"more than the expected {SIZE} bytes"):
        fetch(URL, dest, size=SIZE, policy=FAST, sleep=no_sleep)
    assert len(gets(server)) == 1
    assert_nothing_left(dest)


def test_endless_body_of_unknown_size_stops_at_the_limit(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _ = faulty
    faults.add("data/volume.bin", endless(stop_after=8_000_000), times=None)
    with pytest.raises(SizeLimitError, match=r"1000000-byte limit for a file of unknown size") as err:
        fetch(URL, tmp_path / "v.bin", max_bytes=1_000_000, policy=FAST, sleep=no_sleep)
    assert "\n" not in str(err.value) and str(tmp_path / "v.bin") in str(err.value)
    assert_nothing_left(tmp_path / "v.bin")


def test_announced_length_beyond_the_card_size_is_refused_before_reading(payload: bytes, faulty,
                                                                         tmp_path: Path) -> None:
    faults, _ = faulty
    faults.add("data/volume.bin", stub(payload + b"\0" * 5000), times=None)
    with pytest.raises(SizeLimitError, match=rf"offers {SIZE + 5000} bytes but the file is {SIZE} bytes"):
        fetch(URL, tmp_path / "v.bin", size=SIZE, policy=FAST, sleep=no_sleep)
    assert_nothing_left(tmp_path / "v.bin")


# -- deadlines ------------------------------------------------------------------------------------

def test_trickling_server_is_cut_at_the_attempt_deadline_and_resumed(payload: bytes, faulty, mirror_root: Path,
                                                                     tmp_path: Path) -> None:
    faults, server = faulty
    small = payload[:120_000]
    (mirror_root / "files.example.org" / "data" / "small.bin").write_bytes(small)
    faults.add("data/small.bin", throttle(2_000, 0.01), times=None)  # ~200 kB/s, chunk by chunk
    policy = RetryPolicy(tries=3, backoff_s=0.0, attempt_deadline_s=0.15)
    dest = tmp_path / "small.bin"
    fetch("https://files.example.org/data/small.bin", dest, checksum=sha(small), policy=policy, sleep=no_sleep)
    assert dest.read_bytes() == small
    log = gets(server, "small.bin")
    assert len(log) >= 3 and all(r.range and r.status == 206 for r in log[1:])


def test_dead_server_is_reported_within_the_give_up_time(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _ = faulty
    faults.add("data/volume.bin", slow(3.0), times=None)
    policy = RetryPolicy(tries=50, backoff_s=0.01, max_backoff_s=0.01, read_timeout_s=0.4, give_up_after_s=1.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"volume.bin.*no progress for 1 s") as err:
        fetch(URL, tmp_path / "v.bin", policy=policy)
    assert time.monotonic() - started < 2.0 and str(tmp_path / "v.bin") in str(err.value)


@pytest.mark.parametrize("code", [403, 404, 410])
def test_permanent_http_errors_are_not_retried(payload: bytes, faulty, tmp_path: Path, code: int) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", status(code), times=None)
    slept: list[float] = []
    with pytest.raises(PermanentError, match=rf"volume.bin: HTTP {code}"):
        fetch(URL, tmp_path / "v.bin", policy=FAST, sleep=slept.append)
    assert len(gets(server)) == 1 and slept == []


def test_error_names_the_cache_file(mirror, tmp_path: Path) -> None:
    dest = tmp_path / "named.bin"
    with pytest.raises(DownloadError) as err:
        fetch("https://oc.example.org/index.php/s/abc/download", dest, policy=FAST, sleep=no_sleep)
    assert str(dest) in str(err.value) and "HTTP 404" in str(err.value)


# -- the length the server states ---------------------------------------------------------------

def test_content_length_sizes_the_bar_and_is_recorded(payload: bytes, mirror, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.sources import progress

    bars: list[progress.Advance] = []
    real = progress.transfer_progress

    def spy(*args, **kwargs):
        cm = real(*args, **kwargs)

        class Spy:
            def __enter__(self):
                bars.append(cm.__enter__())
                return bars[-1]

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return Spy()

    monkeypatch.setattr(progress, "transfer_progress", spy)
    dest = tmp_path / "v.bin"
    fetch(URL, dest, policy=FAST)  # no size from a card
    assert bars[0].total == SIZE and bars[0].done == SIZE
    assert json.loads(record_path(dest).read_text())["announced_size"] == SIZE


# -- links are not followed out of the emdata home ----------------------------------------------

def test_planted_part_link_is_not_written_through(payload: bytes, mirror, tmp_path: Path,
                                                  emdata_home: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"do not touch")
    dest = emdata_home / "downloads" / "x" / "v.bin"
    dest.parent.mkdir(parents=True)
    dest.with_name("v.bin.part").symlink_to(outside)
    fetch(URL, dest, checksum=sha(payload), policy=FAST)
    assert outside.read_bytes() == b"do not touch" and dest.read_bytes() == payload
    assert not dest.is_symlink()


def test_cached_file_linked_outside_the_home_is_refused(payload: bytes, tmp_path: Path, emdata_home: Path) -> None:
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(payload)
    dest = emdata_home / "downloads" / "x" / "v.bin"
    dest.parent.mkdir(parents=True)
    dest.symlink_to(outside)
    with pytest.raises(UnsafePathError, match=r"v.bin is a symbolic link to .*elsewhere.bin, outside the emdata home"):
        fetch(URL, dest, checksum=sha(payload))
    assert not record_path(dest).exists()


# -- a cached file is checked against what is expected now ---------------------------------------

def test_cache_accepted_under_an_override_fails_once_the_override_is_gone(payload: bytes, mirror, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({URL: hashlib.sha256(payload).hexdigest()}))
    monkeypatch.setenv("EMDATA_CHECKSUMS", str(sums))
    card_checksum = "sha256:" + "ab" * 32  # what the card says; the override accepted another file
    dest = tmp_path / "v.bin"
    fetch(URL, dest, checksum=card_checksum, size=SIZE + 1)
    assert fetch(URL, dest, checksum=card_checksum).from_cache
    monkeypatch.delenv("EMDATA_CHECKSUMS")
    with pytest.raises(CacheMismatchError) as err:
        fetch(URL, dest, checksum=card_checksum)
    message = str(err.value)
    assert str(dest) in message and "ab" * 32 in message and "delete" in message and "\n" not in message
    assert len(mirror.requests_for("volume.bin")) == 1


def test_file_changed_after_its_record_is_hashed_again(payload: bytes, mirror, tmp_path: Path) -> None:
    dest = tmp_path / "v.bin"
    fetch(URL, dest)
    with open(dest, "r+b") as fh:  # same size, different bytes, newer than the record
        fh.write(b"\xff" * 16)
    later = record_path(dest).stat().st_mtime_ns + 5_000_000_000
    os.utime(dest, ns=(later, later))
    with pytest.raises(CacheMismatchError, match=r"v.bin: the file changed after it was verified"):
        fetch(URL, dest)


def test_unchanged_cache_is_not_hashed_again(payload: bytes, mirror, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "v.bin"
    fetch(URL, dest, checksum=sha(payload))
    calls: list[Path] = []
    monkeypatch.setattr(download, "hash_file", lambda p: calls.append(p) or ("", ""))
    assert fetch(URL, dest, checksum=sha(payload)).from_cache and calls == []
