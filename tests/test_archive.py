"""Safe extraction: traversal, links, devices and bombs are refused; nothing half-extracted."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from emdata.sources.archive import ArchiveError, ExtractLimits, extract


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
