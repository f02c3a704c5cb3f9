"""Fault injection on the loopback mirror: every mode ends in the right bytes or in a
one-line error naming the URL, and never leaves a published or partial file behind."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from emdata.sources.download import ChecksumError, DownloadError, ErrorPageError, fetch, record_path
from emdata.sources.http import RetryPolicy, TransientError
from emdata.testing import MirrorServer
from emdata.testing.faults import (
    html_page,
    ignore_range,
    reset_after,
    slow,
    status,
    stub,
    throttle,
    truncate_after,
)

URL = "https://files.example.org/data/volume.bin"
MIRROR_URL = "https://mirror.example.net/copies/volume.bin"
SIZE = 3_000_000
FAST = RetryPolicy(tries=3, backoff_s=0.01, max_backoff_s=0.05, connect_timeout_s=2, read_timeout_s=2)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists() and not record_path(dest).exists()
    assert not dest.with_name(dest.name + ".part").exists()
    assert not dest.with_name(dest.name + ".part.json").exists()


def gets(server: MirrorServer, suffix: str = "volume.bin"):
    return [r for r in server.requests_for(suffix) if r.method == "GET"]


def test_three_cuts_resume_from_the_byte_reached(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", reset_after(700_000), times=3)
    result = fetch(URL, tmp_path / "volume.bin", checksum=sha(payload), size=SIZE, policy=FAST, sleep=Sleeps())
    assert (tmp_path / "volume.bin").read_bytes() == payload
    log = gets(server)
    assert len(log) == 4 and log[0].range is None
    starts = [int(r.range.split("=")[1].rstrip("-")) for r in log[1:]]
    assert starts == sorted(starts) and starts[0] > 500_000 and starts[-1] > 1_500_000
    assert all(r.if_range for r in log[1:]), "resumes are conditional on the validator"
    assert SIZE <= result.bytes_transferred <= SIZE * 1.01  # each byte fetched about once
    assert result.attempts == 4


def test_500_then_success(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", status(500, b"oops"), times=2)
    sleeps = Sleeps()
    fetch(URL, tmp_path / "v.bin", checksum=sha(payload), policy=FAST, sleep=sleeps)
    assert (tmp_path / "v.bin").read_bytes() == payload
    assert [r.status for r in gets(server)] == [500, 500, 200] and len(sleeps) == 2


def test_429_honours_retry_after(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", status(429, headers={"Retry-After": "7"}))
    sleeps = Sleeps()
    fetch(URL, tmp_path / "v.bin", checksum=sha(payload), policy=FAST, sleep=sleeps)
    assert sleeps == [7.0] and [r.status for r in gets(server)] == [429, 200]


def test_truncated_body_with_correct_headers_resumes(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", truncate_after(1_234_567))
    fetch(URL, tmp_path / "v.bin", checksum=sha(payload), size=SIZE, policy=FAST, sleep=Sleeps())
    assert (tmp_path / "v.bin").read_bytes() == payload
    log = gets(server)
    assert len(log) == 2 and log[1].status == 206 and int(log[1].range.split("=")[1].rstrip("-")) > 1_100_000


def test_server_ignoring_range_restarts_cleanly(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", reset_after(1_000_000)).add("data/volume.bin", ignore_range())
    result = fetch(URL, tmp_path / "v.bin", checksum=sha(payload), policy=FAST, sleep=Sleeps())
    assert (tmp_path / "v.bin").read_bytes() == payload
    log = gets(server)
    assert log[1].range is not None and log[1].status == 200  # asked to resume, got the whole file
    assert result.bytes_transferred < 2 * SIZE


def test_html_page_is_named_not_a_checksum_riddle(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _ = faulty
    faults.add("data/volume.bin", html_page(), times=None)
    dest = tmp_path / "v.bin"
    with pytest.raises(ErrorPageError) as err:
        fetch(URL, dest, checksum=sha(payload), policy=FAST, sleep=Sleeps())
    message = str(err.value)
    assert URL in message and "Google Drive" in message and "Virus scan warning" in message
    assert "\n" not in message
    assert_nothing_left(dest)


def test_html_page_fails_over_to_the_mirror(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _server = faulty
    faults.add("data/volume.bin", html_page("Dropbox - Error"), times=None)
    result = fetch(URL, tmp_path / "v.bin", checksum=sha(payload), mirrors=[MIRROR_URL], policy=FAST,
                   sleep=Sleeps())
    assert result.fetched_from.endswith("mirror.example.net/copies/volume.bin")
    assert "Dropbox" in result.failures[0] and (tmp_path / "v.bin").read_bytes() == payload


def test_stub_far_smaller_than_the_file(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _ = faulty
    faults.add("data/volume.bin", stub(b"quota exceeded for this file"), times=None)
    with pytest.raises(ErrorPageError, match=r"offers 28 bytes but the file is 3000000 bytes"):
        fetch(URL, tmp_path / "v.bin", size=SIZE, policy=FAST, sleep=Sleeps())
    assert_nothing_left(tmp_path / "v.bin")


def test_slow_server_times_out_then_fails_over(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _server = faulty
    faults.add("data/volume.bin", slow(1.5), times=None)
    policy = RetryPolicy(tries=2, backoff_s=0.01, connect_timeout_s=1, read_timeout_s=0.4)
    dest = tmp_path / "v.bin"
    with pytest.raises(TransientError, match=r"volume.bin.*(ReadTimeout|timed out).*gave up after 2 attempts"):
        fetch(URL, dest, policy=policy, sleep=Sleeps())
    assert_nothing_left(dest)
    result = fetch(URL, dest, checksum=sha(payload), mirrors=[MIRROR_URL], policy=policy, sleep=Sleeps())
    assert "mirror.example.net" in result.fetched_from and dest.read_bytes() == payload


def test_persistent_5xx_fails_over_then_reports_every_source(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, _ = faulty
    faults.add("volume.bin", status(503), times=None)
    with pytest.raises(DownloadError) as err:
        fetch(URL, tmp_path / "v.bin", mirrors=[MIRROR_URL], policy=FAST, sleep=Sleeps())
    message = str(err.value)
    assert "all 2 sources failed" in message and "files.example.org" in message and "mirror.example.net" in message
    assert "\n" not in message
    assert_nothing_left(tmp_path / "v.bin")


def test_wrong_checksum_fails_over_and_publishes_nothing(payload: bytes, faulty, mirror_root: Path,
                                                         tmp_path: Path) -> None:
    _faults, _ = faulty
    corrupt = mirror_root / "files.example.org" / "data" / "volume.bin"
    corrupt.write_bytes(payload[:-1] + b"\x00")
    result = fetch(URL, tmp_path / "v.bin", checksum=sha(payload), mirrors=[MIRROR_URL], policy=FAST,
                   sleep=Sleeps())
    assert "mirror.example.net" in result.fetched_from and "sha256 mismatch" in result.failures[0]
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        fetch(URL, tmp_path / "w.bin", checksum=sha(payload), policy=FAST, sleep=Sleeps())
    assert_nothing_left(tmp_path / "w.bin")


def test_killed_process_resumes_from_its_part(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", throttle(64 * 1024, 0.02))  # ~3 MB/s for the first request only
    dest = tmp_path / "v.bin"
    part = dest.with_name("v.bin.part")
    child = mp.get_context("spawn").Process(
        target=_fetch_in_child, args=(URL, str(dest), sha(payload), server.url, str(tmp_path)))
    child.start()
    deadline = time.monotonic() + 30
    while (not part.exists() or part.stat().st_size < 600_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    kept = part.stat().st_size
    assert 600_000 <= kept < SIZE and not dest.exists()
    result = fetch(URL, dest, checksum=sha(payload), policy=FAST)
    assert dest.read_bytes() == payload
    resume = gets(server)[-1]
    assert resume.range == f"bytes={kept}-" and resume.status == 206
    assert result.bytes_transferred == SIZE - kept


def _fetch_in_child(url: str, dest: str, checksum: str, mirror: str, home: str) -> None:
    os.environ["EMDATA_MIRROR"], os.environ["EMDATA_HOME"] = mirror, home
    fetch(url, Path(dest), checksum=checksum)


def test_two_processes_one_download(payload: bytes, faulty, tmp_path: Path) -> None:
    faults, server = faulty
    faults.add("data/volume.bin", slow(0.5))  # hold the first download open a moment
    ctx = mp.get_context("spawn")
    dest = tmp_path / "shared.bin"
    procs = [ctx.Process(target=_fetch_in_child, args=(URL, str(dest), sha(payload), server.url, str(tmp_path)))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert dest.read_bytes() == payload and len(gets(server)) == 1


def _hold_lock(path: str, ready) -> None:  # type: ignore[no-untyped-def]
    from filelock import FileLock

    lock = FileLock(path)  # kept referenced: a collected FileLock releases itself
    lock.acquire()
    ready.send("locked")
    time.sleep(60)
    lock.release()


def test_lock_of_a_killed_holder_does_not_block(payload: bytes, faulty, tmp_path: Path) -> None:
    """A process that took the download lock is SIGKILLed while holding it; fetch must go on."""
    from filelock import FileLock, Timeout

    dest = tmp_path / "v.bin"
    lock_path = str(dest) + ".lock"
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    holder = ctx.Process(target=_hold_lock, args=(lock_path, child_end))
    holder.start()
    try:
        assert parent_end.poll(30) and parent_end.recv() == "locked"
        with pytest.raises(Timeout):  # the lock really is held by the child
            FileLock(lock_path).acquire(timeout=0.1)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
    assert holder.exitcode == -signal.SIGKILL and Path(lock_path).exists()  # the lock file outlives its holder
    started = time.monotonic()
    fetch(URL, dest, checksum=sha(payload), policy=FAST, lock_timeout_s=5)
    assert dest.read_bytes() == payload and time.monotonic() - started < 5


def _self_signed(tmp_path: Path) -> tuple[str, str]:
    """An expired self-signed certificate for 127.0.0.1 (like cremi.org's)."""
    import datetime

    cryptography = pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    assert cryptography
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=400))
            .not_valid_after(now - datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_expired_certificate_needs_a_pinned_checksum(payload: bytes, mirror_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.sources.download import TLSError

    with MirrorServer(mirror_root, ssl_context=_self_signed(tmp_path)) as server:
        monkeypatch.setenv("EMDATA_MIRROR", server.url)
        assert server.url.startswith("https://")
        with pytest.raises(TLSError, match=r"volume.bin: TLS certificate.*no checksum is pinned.*EMDATA_CHECKSUMS"):
            fetch(URL, tmp_path / "v.bin", policy=FAST, sleep=Sleeps())
        assert_nothing_left(tmp_path / "v.bin")
        result = fetch(URL, tmp_path / "v.bin", checksum=sha(payload), policy=FAST, sleep=Sleeps())
        assert (tmp_path / "v.bin").read_bytes() == payload and result.fetched_from.startswith("https://")
