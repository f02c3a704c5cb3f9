"""Safe extraction: traversal, links, devices and bombs are refused; nothing half-extracted."""

from __future__ import annotations

import io
import os
import random
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import emdata
from emdata.sources.archive import ArchiveError, ExtractLimits, extract, read_member


def make_zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def make_tar(path: Path, members: dict[str, bytes], special: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if special is not None:
            tf.addfile(special)
    return path


def nothing_extracted(dest: Path) -> None:
    assert not dest.exists() and not dest.with_name(dest.name + ".complete.json").exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.tmp")]


def test_zip_and_tar_extract_and_are_recorded(tmp_path: Path) -> None:
    files = {"Lucchi++/Train_In/mask0000.png": b"a" * 10, "Lucchi++/Train_Out/0.png": b"b" * 20}
    for archive in (make_zip(tmp_path / "a.zip", files), make_tar(tmp_path / "a.tar.gz", files)):
        dest = tmp_path / f"out-{archive.name}"
        assert extract(archive, dest) == dest
        assert (dest / "Lucchi++/Train_Out/0.png").read_bytes() == b"b" * 20
        record = dest.with_name(dest.name + ".complete.json")
        assert record.exists()
        stamp = record.stat().st_mtime_ns
        extract(archive, dest)  # reused, not redone
        assert record.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil.txt", "C:/evil.txt", "a\\..\\evil"])
def test_zip_slip_is_refused(tmp_path: Path, name: str) -> None:
    archive = make_zip(tmp_path / "slip.zip", {"ok.txt": b"ok", name: b"evil"})
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="refusing to extract"):
        extract(archive, dest)
    nothing_extracted(dest)
    assert not (tmp_path / "evil.txt").exists()


def test_tar_slip_and_links_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"'\.\.'"):
        extract(make_tar(tmp_path / "slip.tar.gz", {"../../evil.txt": b"x"}), dest)
    symlink = tarfile.TarInfo("data/link")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(ArchiveError, match="is a link"):
        extract(make_tar(tmp_path / "sym.tar.gz", {"data/a": b"1"}, symlink), dest)
    hard = tarfile.TarInfo("data/hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "data/a"
    with pytest.raises(ArchiveError, match="is a link"):
        extract(make_tar(tmp_path / "hard.tar.gz", {"data/a": b"1"}, hard), dest)
    device = tarfile.TarInfo("data/dev")
    device.type = tarfile.CHRTYPE
    with pytest.raises(ArchiveError, match="device"):
        extract(make_tar(tmp_path / "dev.tar.gz", {}, device), dest)
    with pytest.raises(ArchiveError, match="link or special"):
        extract(make_zip(tmp_path / "sym.zip", {"a": b"1"}, link="data/link"), dest)
    nothing_extracted(dest)


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros.bin": b"\0" * (100 << 20)})  # 100 MiB → ~100 KB, 1029×
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="decompression bomb"):
        extract(bomb, dest)
    nothing_extracted(dest)
    many = make_zip(tmp_path / "many.zip", {f"f{i}": b"" for i in range(50)})
    with pytest.raises(ArchiveError, match="50 members, over the limit of 10"):
        extract(many, dest, ExtractLimits(max_members=10))
    big = make_tar(tmp_path / "big.tar.gz", {"a": b"x" * 5000, "b": b"y" * 5000})
    with pytest.raises(ArchiveError, match="over the limit of 8000"):
        extract(big, dest, ExtractLimits(max_total_bytes=8000))
    nothing_extracted(dest)


def test_lying_zip_header_is_caught_while_copying(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "lie.zip", {"data.bin": b"z" * 100_000})
    raw = bytearray(archive.read_bytes())
    # shrink the declared uncompressed size in the central directory (and local header)
    for sig, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        at = raw.find(sig)
        raw[at + offset: at + offset + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError):
        extract(archive, dest)
    nothing_extracted(dest)


def test_corrupt_archive_names_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match=r"junk.zip: neither a zip nor a tar"):
        extract(junk, tmp_path / "out")


# -- reading one member: bounded memory, bombs refused, CRC checked ------------------------------------

RSS_PROBE = """
import resource, sys
from pathlib import Path
from emdata.sources.archive import ArchiveError, read_member
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    outcome = f"read {len(read_member(Path(sys.argv[1]), 'zeros.bin'))}"
except ArchiveError as exc:
    outcome = f"refused {exc}"
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grew * 1024 if sys.platform != "darwin" else grew, outcome)
"""


def zeros_zip(path: Path, mib: int, level: int) -> Path:
    """A zip whose one member ``zeros.bin`` is ``mib`` MiB of zeros, written without holding it in memory."""
    with (zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf,
          zf.open("zeros.bin", "w", force_zip64=True) as fh):
        for _ in range(mib):
            fh.write(bytes(1 << 20))
    return path


def peak_rss_of_read(archive: Path) -> tuple[int, str]:
    """Peak RSS growth (bytes) of one read_member call in a fresh interpreter, and its outcome."""
    run = subprocess.run([sys.executable, "-c", RSS_PROBE, str(archive)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(emdata.__file__).parents[1])})
    assert run.returncode == 0, run.stderr
    grew, outcome = run.stdout.split(" ", 1)
    return int(grew), outcome.strip()


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is POSIX")
def test_read_member_refuses_a_zip_bomb_before_allocating(tmp_path: Path) -> None:
    bomb = zeros_zip(tmp_path / "bomb.zip", 200, level=9)  # 200 MiB → ~200 KB (1029×)
    assert bomb.stat().st_size < 300_000
    grew, outcome = peak_rss_of_read(bomb)
    assert outcome.startswith(f"refused {bomb}: member 'zeros.bin' expands 1029×") and "decompression bomb" in outcome
    assert grew < 30 << 20  # before: the 200 MiB member was read, twice over (~400 MiB)


@pytest.mark.skipif(sys.platform == "win32", reason="resource.getrusage is POSIX")
def test_read_member_holds_one_copy_of_the_member(tmp_path: Path) -> None:
    archive = zeros_zip(tmp_path / "ok.zip", 64, level=1)  # 229×: under the ratio limit
    grew, outcome = peak_rss_of_read(archive)
    assert outcome == f"read {64 << 20}"
    assert grew < (64 << 20) * 1.3  # one buffer of the member's size (before: two)


def test_read_member_ratio_limit_is_adjustable_and_small_members_pass(tmp_path: Path) -> None:
    big = random.Random(0).randbytes(1 << 20) + bytes(1 << 20)  # expands ~2×
    archive = make_zip(tmp_path / "a.zip", {"top/small.bin": bytes(4096), "top/big.bin": big})
    assert read_member(archive, "small.bin", ExtractLimits(max_ratio=1.5)) == bytes(4096)  # under 1 MiB: no check
    with pytest.raises(ArchiveError, match=r"'top/big.bin' expands 2×.* over the ratio limit 1.5×"):
        read_member(archive, "big.bin", ExtractLimits(max_ratio=1.5))
    assert read_member(archive, "big.bin") == big


def test_zip_member_with_a_bad_crc_is_refused_naming_the_member(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("stack/labels.tif", data)
    raw = bytearray(archive.read_bytes())
    at = raw.find(data)
    raw[at + 1000] ^= 0xFF  # one flipped byte in the stored data: only the CRC can tell
    archive.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError, match=r"crc.zip: member 'stack/labels.tif' cannot be read \(BadZipFile: "
                                           r"Bad CRC-32.*delete the archive and fetch it again"):
        read_member(archive, "labels.tif")
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"crc.zip: extraction failed \(BadZipFile: Bad CRC-32"):
        extract(archive, dest)
    nothing_extracted(dest)


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in pieces (a tar member body that is never in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_tar_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=9) as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 200 << 20
        tf.addfile(info, io.BufferedReader(_Zeros(info.size)))
    assert bomb.stat().st_size < 300_000
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"bomb.tar.gz: expands 10\d\d× \(\d+ → 209715200 bytes\), over the ratio "
                                           r"limit 1000× \(a decompression bomb\?\)"):
        extract(bomb, dest)
    nothing_extracted(dest)
    small = make_tar(tmp_path / "small.tar.gz", {"a": bytes(2 << 20)})  # ~500×: under the default limit
    with pytest.raises(ArchiveError, match=r"small.tar.gz: expands \d+×.* over the ratio limit 100×"):
        extract(small, dest, ExtractLimits(max_ratio=100))
    assert (extract(small, dest) / "a").stat().st_size == 2 << 20


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_tar_whose_stream_checksum_fails_is_refused(tmp_path: Path, compression: str) -> None:
    data = bytes(range(256)) * 400
    archive = tmp_path / f"stack.tar.{compression}"
    options = {"compresslevel": 0} if compression == "gz" else {}  # stored gzip blocks: a flipped byte still inflates
    with tarfile.open(archive, f"w:{compression}", **options) as tf:
        info = tarfile.TarInfo("stack/labels.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    raw = bytearray(archive.read_bytes())
    if compression == "gz":
        raw[raw.find(data[:256]) + 1000] ^= 0xFF  # a voxel byte: only the gzip CRC-32 tells
    else:
        raw[-5 if compression == "bz2" else -20] ^= 0xFF  # the stream's own check
    archive.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match=rf"stack.tar.{compression}: extraction failed \(\w+: .*\); delete the "
                                           "archive and fetch again"):
        extract(archive, dest)
    nothing_extracted(dest)
