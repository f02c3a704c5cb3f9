"""Download basics: mirror rewriting, checksums, atomic publish, cache, offline mode."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from emdata.sources.download import ChecksumError, DownloadError, OfflineError, fetch, record_path
from emdata.sources.urls import mirror_url

URL = "https://data.example.org/files/volume.bin"
PAYLOAD = bytes(range(256)) * 4000


@pytest.fixture
def served(mirror_root: Path) -> bytes:
    target = mirror_root / "data.example.org" / "files" / "volume.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    return PAYLOAD


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_mirror_rewriting() -> None:
    m = "http://127.0.0.1:9"
    assert mirror_url("https://cremi.org/static/data/sample_A%2B_20160601.hdf", m) == (
        "http://127.0.0.1:9/cremi.org/static/data/sample_A%2B_20160601.hdf")
    assert mirror_url("https://www.dropbox.com/s/abc/x.zip?dl=1", m) == "http://127.0.0.1:9/www.dropbox.com/s/abc/x.zip?dl=1"
    assert mirror_url("gs://h01-release/data/c3", m) == "http://127.0.0.1:9/storage.googleapis.com/h01-release/data/c3"
    assert mirror_url("precomputed://https://bossdb-open-data.s3.amazonaws.com/a/em", m) == (
        "precomputed://http://127.0.0.1:9/bossdb-open-data.s3.amazonaws.com/a/em")
    assert mirror_url("gs://b/p", "") == "https://storage.googleapis.com/b/p"


def test_fetch_verifies_publishes_and_caches(served: bytes, mirror, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "volume.bin"
    result = fetch(URL, dest, checksum=f"sha256:{sha(served)}", size=len(served))
    assert dest.read_bytes() == served and not result.from_cache
    record = json.loads(record_path(dest).read_text())
    assert record["sha256"] == sha(served) and record["url"] == URL and record["size"] == len(served)
    assert not dest.with_name("volume.bin.part").exists()
    again = fetch(URL, dest, checksum=f"sha256:{sha(served)}")
    assert again.from_cache and len(mirror.requests_for("volume.bin")) == 1


def test_kill_between_publish_and_record_keeps_the_source(served: bytes, mirror, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A download killed after the file is in place but before its record is written is adopted on the
    next run (after its leftover clean-up) with the URL it came from, not as a file placed by hand."""
    from emdata.cache import tidy_downloads
    from emdata.config import downloads_dir
    from emdata.sources import download

    dest = downloads_dir("snemi3d") / "volume.bin"
    real = download._publish_record

    def killed(path: Path, result: object) -> None:
        raise KeyboardInterrupt("killed before the record")

    monkeypatch.setattr(download, "_publish_record", killed)
    with pytest.raises(KeyboardInterrupt):
        fetch(URL, dest, checksum=f"sha256:{sha(served)}")
    assert dest.read_bytes() == served and not record_path(dest).exists()
    monkeypatch.setattr(download, "_publish_record", real)
    assert tidy_downloads("snemi3d") == []  # the next run's clean-up keeps the sidecar naming the source
    again = fetch(URL, dest, checksum=f"sha256:{sha(served)}")
    assert again.fetched_from == mirror_url(URL) and again.fetched_from.startswith(mirror.url)
    assert json.loads(record_path(dest).read_text())["fetched_from"] == again.fetched_from
    assert not dest.with_name("volume.bin.part.json").exists()
    assert len(mirror.requests_for("volume.bin")) == 1


def test_md5_checksums_are_accepted(served: bytes, mirror, tmp_path: Path) -> None:
    md5 = hashlib.md5(served).hexdigest()
    assert fetch(URL, tmp_path / "v.bin", checksum=f"md5:{md5}").md5 == md5


def test_wrong_checksum_publishes_nothing(served: bytes, mirror, tmp_path: Path) -> None:
    dest = tmp_path / "volume.bin"
    with pytest.raises(ChecksumError, match=r"sha256 mismatch.*volume\.bin"):
        fetch(URL, dest, checksum="sha256:" + "0" * 64)
    assert not dest.exists() and not record_path(dest).exists()
    assert not dest.with_name("volume.bin.part").exists()


def test_wrong_size_publishes_nothing(served: bytes, mirror, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match=f"expected {len(served) + 1} bytes"):
        fetch(URL, tmp_path / "volume.bin", size=len(served) + 1)
    assert not (tmp_path / "volume.bin").exists()


def test_checksum_override_file(served: bytes, mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = tmp_path / "sums.json"
    overrides.write_text(json.dumps({URL: sha(served)}))
    monkeypatch.setenv("EMDATA_CHECKSUMS", str(overrides))
    result = fetch(URL, tmp_path / "volume.bin", checksum="sha256:" + "f" * 64)  # card value is overridden
    assert result.sha256 == sha(served)
    overrides.write_text(json.dumps({URL: "0" * 64}))
    with pytest.raises(ChecksumError):
        fetch(URL, tmp_path / "other.bin", checksum=f"sha256:{sha(served)}")


def test_http_error_names_the_url(mirror, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"missing\.bin: HTTP 404"):
        fetch("https://data.example.org/missing.bin", tmp_path / "missing.bin")
    assert not (tmp_path / "missing.bin").exists()


def test_offline_error_names_file_checksum_and_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_OFFLINE", "1")
    dest = tmp_path / "cache" / "volume.bin"
    digest = "ab" * 32
    with pytest.raises(OfflineError) as err:
        fetch(URL, dest, checksum=f"sha256:{digest}")
    message = str(err.value)
    assert "volume.bin" in message and digest in message and str(dest) in message and URL in message


def test_offline_adopts_a_file_placed_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_OFFLINE", "1")
    dest = tmp_path / "volume.bin"
    dest.write_bytes(PAYLOAD)
    result = fetch(URL, dest, checksum=f"sha256:{sha(PAYLOAD)}")
    assert result.from_cache and record_path(dest).exists()
    dest2 = tmp_path / "bad.bin"
    dest2.write_bytes(PAYLOAD[:-1])
    with pytest.raises(ChecksumError, match="placed at"):
        fetch(URL, dest2, checksum=f"sha256:{sha(PAYLOAD)}")


def test_get_with_retries_reports_a_missing_object_only_when_asked(mirror_root: Path, mirror) -> None:
    from emdata.sources.http import PermanentError, get_with_retries

    (mirror_root / "bucket.example.org").mkdir()
    (mirror_root / "bucket.example.org" / "here").write_bytes(b"chunk")
    url = mirror_url("https://bucket.example.org/here")
    assert get_with_retries(url, missing_ok=True) == b"chunk"
    assert get_with_retries(mirror_url("https://bucket.example.org/gone"), missing_ok=True) is None
    with pytest.raises(PermanentError, match="404"):
        get_with_retries(mirror_url("https://bucket.example.org/gone"))
