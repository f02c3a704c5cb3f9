"""Archives: read one member in memory, or extract safely.

Nothing trusts member names or declared sizes. Reading one member (:func:`read_member`)
checks its compression ratio first (zip bombs), fills one buffer of the declared size and
fails if the member yields more or fewer bytes; the zip CRC is checked at the end.
Extraction rejects absolute paths, ``..`` components, links, devices and FIFOs before
anything is written; member count, total size and compression ratio are bounded (zip and
tar bombs), and bytes are counted while copying, so a lying header cannot exceed the limits;
every zip member's CRC-32 and a compressed tar's stream checksum (gzip, bzip2, xz) are checked.
Members are copied by hand (no ``extractall``, whose tar filter differs between Python
releases) into a temporary folder that is renamed into place; the record
``<dest>.complete.json`` is written last, so a half-extracted archive is never mistaken for a
complete one.

Example:
    >>> import io, zipfile, tempfile
    >>> archive = Path(tempfile.mkdtemp()) / "stack.zip"
    >>> with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
    ...     zf.writestr("top/image/train-input.tif", b"II*\\0" + bytes(60))
    >>> len(read_member(archive, "image/train-input.tif"))
    64
    >>> sorted(p.name for p in extract(archive, archive.with_suffix("")).rglob("*.tif"))
    ['train-input.tif']
"""

from __future__ import annotations

import io
import json
import lzma
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from filelock import FileLock

from emdata.atomic import replacing, write_atomic

MAX_MEMBER_BYTES = 16 << 30
COPY_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive is unreadable, unsafe, or lacks an expected member."""


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds that stop archive bombs; generous for real EM archives."""

    max_members: int = 200_000
    max_total_bytes: int = 2 << 40
    max_ratio: float = 1000.0  # uncompressed / compressed: per zip member, per tar archive, above 1 MiB


def list_members(archive: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            return [i.filename for i in zf.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{archive}: not a readable zip archive ({exc}); delete it and fetch again") from exc


def find_member(archive: Path, name: str) -> str:
    """The member whose path ends with ``name`` (archives often add a top folder)."""
    members = list_members(archive)
    if name in members:
        return name
    hits = [m for m in members if m.endswith("/" + name)]
    if len(hits) == 1:
        return hits[0]
    shown = ", ".join(members[:20]) + (" …" if len(members) > 20 else "")
    if not hits:
        raise ArchiveError(f"{archive}: no member {name!r}; the archive holds: {shown}")
    raise ArchiveError(f"{archive}: {name!r} is ambiguous: {hits}")


def read_member(archive: Path, name: str, limits: ExtractLimits | None = None) -> bytes:
    """The bytes of member ``name`` (matched by :func:`find_member`), read into one buffer.

    Refused before reading: a member declaring more than :data:`MAX_MEMBER_BYTES`, or one
    larger than 1 MiB that expands more than ``limits.max_ratio`` (a decompression bomb).
    A member that yields a different number of bytes than it declares, or fails its CRC, is
    an :class:`ArchiveError` naming the archive and the member.
    """
    limits = limits or ExtractLimits()
    archive = Path(archive)
    member = find_member(archive, name)
    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            _check_limits(archive, [_Member(member, False, info.file_size, info.compress_size)], limits)
            if info.file_size > MAX_MEMBER_BYTES:
                raise ArchiveError(f"{archive}: member {member!r} claims {info.file_size} bytes, over the "
                                   f"{MAX_MEMBER_BYTES} byte limit for in-memory reads")
            buffer = io.BytesIO()  # sized up front; getvalue() then hands over its bytes without a copy
            if info.file_size:
                buffer.seek(info.file_size - 1)
                buffer.write(b"\0")
                buffer.seek(0)
            with zf.open(info) as src:  # ZipExtFile checks the CRC when it reaches the end
                while (block := src.read(COPY_CHUNK)) and buffer.tell() + len(block) <= info.file_size:
                    buffer.write(block)
                if block or buffer.tell() != info.file_size:
                    raise ArchiveError(f"{archive}: member {member!r} does not hold the {info.file_size} bytes its "
                                       "header declares; delete the archive and fetch it again")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise ArchiveError(f"{archive}: member {member!r} cannot be read ({type(exc).__name__}: {exc}); delete the "
                           "archive and fetch it again") from exc
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# safe extraction


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    size: int
    compressed: int | None


def _safe_relpath(archive: Path, name: str) -> PurePosixPath:
    """A member name as a relative path that stays inside the destination."""
    if "\\" in name or "\x00" in name:
        raise ArchiveError(f"{archive}: member {name!r} has a backslash or NUL in its name; refusing to extract")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise ArchiveError(f"{archive}: member {name!r} is an absolute path; refusing to extract")
    if ".." in path.parts:
        raise ArchiveError(f"{archive}: member {name!r} climbs out of the destination with '..'; refusing to extract")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise ArchiveError(f"{archive}: member {name!r} has an empty path")
    return PurePosixPath(*parts)


def _zip_members(archive: Path, zf: zipfile.ZipFile) -> list[_Member]:
    out = []
    for info in zf.infolist():
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the writer stored no Unix type
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError(f"{archive}: member {info.filename!r} is a link or special file; refusing to extract")
        out.append(_Member(info.filename, info.is_dir(), info.file_size, info.compress_size))
    return out


def _tar_members(archive: Path, tf: tarfile.TarFile) -> list[_Member]:
    out = []
    for info in tf.getmembers():
        if not (info.isreg() or info.isdir()):
            kind = "link" if info.issym() or info.islnk() else "device, FIFO or other special file"
            raise ArchiveError(f"{archive}: member {info.name!r} is a {kind}; refusing to extract")
        out.append(_Member(info.name, info.isdir(), info.size, None))
    return out


def _check_limits(archive: Path, members: list[_Member], limits: ExtractLimits, packed: int | None = None) -> None:
    """Member count, total size and ratio; ``packed`` is a compressed tar's size (one stream for all members)."""
    if len(members) > limits.max_members:
        raise ArchiveError(f"{archive}: {len(members)} members, over the limit of {limits.max_members}")
    total = sum(m.size for m in members)
    if total > limits.max_total_bytes:
        raise ArchiveError(f"{archive}: would expand to {total} bytes, over the limit of {limits.max_total_bytes}")
    if packed and total > (1 << 20) and total / packed > limits.max_ratio:
        raise ArchiveError(f"{archive}: expands {total / packed:.0f}× ({packed} → {total} bytes), over the ratio "
                           f"limit {limits.max_ratio:g}× (a decompression bomb?)")
    for m in members:
        if m.compressed and m.size > (1 << 20) and m.size / m.compressed > limits.max_ratio:
            raise ArchiveError(f"{archive}: member {m.name!r} expands {m.size / m.compressed:.0f}× "
                               f"({m.compressed} → {m.size} bytes), over the ratio limit {limits.max_ratio:g}× "
                               "(a decompression bomb?)")


def _copy_bounded(archive: Path, name: str, src: IO[bytes], dst: Path, declared: int, budget: list[int]) -> None:
    written = 0
    with open(dst, "wb") as out:
        while block := src.read(COPY_CHUNK):
            written += len(block)
            budget[0] -= len(block)
            if written > declared or budget[0] < 0:
                raise ArchiveError(f"{archive}: member {name!r} produced more bytes than its header declares "
                                   f"({declared}); refusing to continue")
            out.write(block)


@contextmanager
def _open_archive(archive: Path) -> Iterator[tuple[str, zipfile.ZipFile | tarfile.TarFile]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield "zip", zf
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            yield "tar", tf
    else:
        raise ArchiveError(f"{archive}: neither a zip nor a tar archive; delete it and fetch again")


def extract(archive: Path, dest: Path, limits: ExtractLimits = ExtractLimits()) -> Path:
    """Extract ``archive`` (zip, tar, tar.gz/bz2/xz) into folder ``dest``; returns ``dest``.

    Idempotent: a completed extraction of the same archive (size and mtime) is reused.
    """
    archive, dest = Path(archive), Path(dest)
    record = dest.with_name(dest.name + ".complete.json")
    fingerprint = {"archive": str(archive), "size": archive.stat().st_size, "mtime_ns": archive.stat().st_mtime_ns}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if record.is_file() and dest.is_dir():
            done = json.loads(record.read_text(encoding="utf-8"))
            if all(done.get(k) == v for k, v in fingerprint.items()):
                return dest
        try:
            with replacing(dest) as tmp, _open_archive(archive) as (kind, handle):
                members = (_zip_members(archive, handle) if kind == "zip"  # type: ignore[arg-type]
                           else _tar_members(archive, handle))  # type: ignore[arg-type]
                _check_limits(archive, members, limits, packed=archive.stat().st_size if kind == "tar" else None)
                targets = [(m, _safe_relpath(archive, m.name)) for m in members]
                budget = [limits.max_total_bytes]
                tmp.mkdir()
                for m, rel in targets:
                    target = tmp.joinpath(*rel.parts)
                    if m.is_dir:
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if target.exists():
                        raise ArchiveError(f"{archive}: member {m.name!r} appears twice; refusing to extract")
                    src = handle.open(m.name) if kind == "zip" else handle.extractfile(m.name)  # type: ignore[union-attr]
                    if src is None:
                        raise ArchiveError(f"{archive}: member {m.name!r} cannot be read")
                    with src:
                        _copy_bounded(archive, m.name, src, target, m.size, budget)
                if kind == "tar":  # read the compressed stream to its end: the gzip/bz2/xz checksums are there
                    while handle.fileobj.read(COPY_CHUNK):  # type: ignore[union-attr]
                        pass
                record.unlink(missing_ok=True)
                if dest.exists():
                    shutil.rmtree(dest)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            raise ArchiveError(f"{archive}: extraction failed ({type(exc).__name__}: {exc}); "
                               "delete the archive and fetch again") from exc
        fingerprint.update({"members": len(members), "bytes": sum(m.size for m in members),
                            "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        write_atomic(record, json.dumps(fingerprint, indent=1), tmp=record.with_suffix(".tmp"))
    return dest


def extract_member(archive: Path, name: str, dest: Path | None = None, limits: ExtractLimits | None = None) -> Path:
    """Member ``name`` of a zip (matched by :func:`find_member`) as a file on disk; returns its path.

    For readers that need a file they can seek and memory-map (a TIFF stack read page by page)
    instead of one buffer in memory: the member is copied in :data:`COPY_CHUNK` pieces, so memory
    stays bounded whatever its size (a deflated member cannot be read at an offset without
    inflating everything before it, so it takes this disk copy). ``dest`` defaults to
    ``<archive>.members/<member>``. The same checks as :func:`read_member` apply (declared size,
    ratio, CRC); a copy made from the same archive (size and mtime) is reused.

    Example:
        >>> import zipfile, tempfile
        >>> archive = Path(tempfile.mkdtemp()) / "a.zip"
        >>> with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        ...     zf.writestr("top/x.bin", bytes(10))
        >>> path = extract_member(archive, "x.bin")
        >>> path.relative_to(archive.parent).as_posix(), path.stat().st_size
        ('a.zip.members/top/x.bin', 10)
    """
    limits = limits or ExtractLimits()
    archive = Path(archive)
    member = find_member(archive, name)
    rel = _safe_relpath(archive, member)
    target = Path(dest) if dest is not None else archive.with_name(archive.name + ".members").joinpath(*rel.parts)
    record = target.with_name(target.name + ".complete.json")
    fingerprint = {"archive": str(archive), "member": member, "size": archive.stat().st_size,
                   "mtime_ns": archive.stat().st_mtime_ns}
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if record.is_file() and target.is_file():
            try:
                done = json.loads(record.read_text(encoding="utf-8"))
            except ValueError:
                done = {}
            if all(done.get(k) == v for k, v in fingerprint.items()) and done.get("bytes") == target.stat().st_size:
                return target
        record.unlink(missing_ok=True)
        try:
            with zipfile.ZipFile(archive) as zf, replacing(target) as tmp:
                info = zf.getinfo(member)
                _check_limits(archive, [_Member(member, False, info.file_size, info.compress_size)], limits)
                with zf.open(info) as src:  # ZipExtFile checks the CRC when it reaches the end
                    _copy_bounded(archive, member, src, tmp, info.file_size, [limits.max_total_bytes])
                if tmp.stat().st_size != info.file_size:
                    raise ArchiveError(f"{archive}: member {member!r} does not hold the {info.file_size} bytes its "
                                       "header declares; delete the archive and fetch it again")
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
            raise ArchiveError(f"{archive}: member {member!r} cannot be extracted ({type(exc).__name__}: {exc}); "
                               "delete the archive and fetch it again") from exc
        write_atomic(record, json.dumps({**fingerprint, "bytes": info.file_size}), tmp=record.with_suffix(".tmp"))
    return target
