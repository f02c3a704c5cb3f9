"""A multipage TIFF inside a zip, read while it is being extracted.

A deflated zip member cannot be read at an offset without inflating everything before it, so
a TIFF stack in a zip is copied out to disk first (:func:`emdata.sources.archive.extract_member`)
and then read page by page. :func:`zip_tiff_stack` overlaps the two for uncompressed stacks whose
pixel data lie contiguously in the file (what tifffile and ImageJ write): the layout is read from
the first MiB of the member, the copy runs in a background thread of this process, and a read
of slices ``z0:z1`` waits only until those slices are on disk — so writing a volume starts
while its members are still being inflated.

Integrity is kept as with the plain copy: the member's declared size, compression ratio and
CRC-32 are checked; a read that touches the last slice waits until the whole member is copied
and its CRC checked, so nothing built from the member can be completed from bytes that fail
it; a failed copy makes every later read raise :class:`~emdata.sources.archive.ArchiveError`
(and :meth:`ZipTiffStack.failed` tells a writer to discard what it built). The finished copy is
the one ``extract_member`` makes (same place, same completion record), so a later run reuses it.
Pickling (a dask worker) waits for the copy to be complete; other stacks, or a member whose
layout the first MiB does not tell, are copied out first as before.

Example:
    >>> import tempfile, tifffile, zipfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> tifffile.imwrite(folder / "s.tif", np.arange(3 * 64 * 64, dtype="u2").reshape(3, 64, 64) % 251,
    ...                  photometric="minisblack")
    >>> with zipfile.ZipFile(folder / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
    ...     zf.write(folder / "s.tif", "top/s.tif")
    >>> stack = zip_tiff_stack(folder / "a.zip", "s.tif")
    >>> type(stack).__name__, stack.shape, int(stack.read((slice(2, 3), slice(0, 1), slice(0, 2)))[0, 0, 1])
    ('ZipTiffStack', (3, 64, 64), 161)
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import math
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from emdata.atomic import write_atomic
from emdata.formats.lazy import Box, TiffStack, _span
from emdata.sources.archive import (
    COPY_CHUNK,
    ArchiveError,
    ExtractLimits,
    _check_limits,
    _Member,
    _safe_relpath,
    extract_member,
    find_member,
)

__all__ = ["HEAD_BYTES", "ZipTiffStack", "zip_tiff_stack"]

HEAD_BYTES = 1 << 20
"""Bytes of a member inflated to read its TIFF layout."""
log = logging.getLogger(__name__)


class _Copy:
    """Progress of one member's copy in this process: bytes on disk, done, or the error that stopped it."""

    def __init__(self) -> None:
        self.serial = next(_serials)
        self.cond = threading.Condition()
        self.written = 0
        self.done = False
        self.error: BaseException | None = None

    def advance(self, written: int) -> None:
        with self.cond:
            self.written = written
            self.cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.done, self.error = True, error
            self.cond.notify_all()

    def wait(self, need: int | None) -> None:
        """Until ``need`` bytes are on disk (None: the whole member, checked); raises the copy's error."""
        with self.cond:
            self.cond.wait_for(lambda: self.done or (need is not None and self.written >= need))
            if self.error is not None:
                raise ArchiveError(str(self.error)) from self.error


_serials = itertools.count()
_copies: dict[str, _Copy] = {}
_copies_lock = threading.Lock()


def _copy_member(archive: Path, member: str, target: Path, copy: _Copy) -> None:
    """Copy ``member`` to ``target`` as :func:`~emdata.sources.archive.extract_member` does (same
    checks, same completion record), reporting progress to ``copy``."""
    record = target.with_name(target.name + ".complete.json")
    fingerprint = {"archive": str(archive), "member": member, "size": archive.stat().st_size,
                   "mtime_ns": archive.stat().st_mtime_ns}
    error: BaseException | None = None
    try:
        with FileLock(str(target) + ".lock"):
            try:
                done = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
            except ValueError:
                done = {}
            if (target.is_file() and all(done.get(k) == v for k, v in fingerprint.items())
                    and done.get("bytes") == target.stat().st_size):
                copy.advance(target.stat().st_size)
                return
            record.unlink(missing_ok=True)
            limits = ExtractLimits()
            try:
                with zipfile.ZipFile(archive) as zf, open(target, "wb") as out:
                    info = zf.getinfo(member)
                    _check_limits(archive, [_Member(member, False, info.file_size, info.compress_size)], limits)
                    written = 0
                    with zf.open(info) as src:  # ZipExtFile checks the CRC when it reaches the end
                        while block := src.read(COPY_CHUNK):
                            written += len(block)
                            if written > info.file_size:
                                raise ArchiveError(f"{archive}: member {member!r} produced more bytes than its "
                                                   f"header declares ({info.file_size}); refusing to continue")
                            out.write(block)
                            out.flush()
                            copy.advance(written)
                    if written != info.file_size:
                        raise ArchiveError(f"{archive}: member {member!r} does not hold the {info.file_size} bytes "
                                           "its header declares; delete the archive and fetch it again")
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
                raise ArchiveError(f"{archive}: member {member!r} cannot be extracted ({type(exc).__name__}: "
                                   f"{exc}); delete the archive and fetch it again") from exc
            write_atomic(record, json.dumps({**fingerprint, "bytes": info.file_size}), tmp=record.with_suffix(".tmp"))
    except BaseException as exc:  # readers raise it; the partial copy has no record, so it is never reused
        error = exc
    finally:
        copy.finish(error)


class ZipTiffStack(TiffStack):
    """A :class:`~emdata.formats.lazy.TiffStack` whose file is still being copied out of a zip in
    this process (see the module docstring); built by :func:`zip_tiff_stack`."""

    archive: str
    member: str

    def read(self, box: Box) -> np.ndarray:
        z1 = _span(box[0], self.shape[0])[1]
        plane = math.prod(self.shape[1:]) * self.dtype.itemsize
        self._wait(None if z1 >= self.shape[0] else self.offset + z1 * plane)  # type: ignore[operator]
        return super().read(box)

    def _wait(self, need: int | None) -> None:
        copy = _copies.get(self.path)
        if copy is None:  # another process (a cluster worker): the complete copy, made or reused here
            extract_member(Path(self.archive), self.member)
            return
        copy.wait(need)

    def failed(self) -> bool:
        """Whether copying the member failed (what was built from it must be discarded)."""
        copy = _copies.get(self.path)
        return copy is not None and copy.done and copy.error is not None

    def __getstate__(self) -> dict[str, Any]:
        self._wait(None)  # a copy sent elsewhere reads the complete, checked file
        return self.__dict__


def _layout(archive: Path, member: str) -> dict[str, Any] | None:
    """Shape, dtype and pixel data offset of a contiguous uncompressed grey stack, from the first
    :data:`HEAD_BYTES` of the member; None when they cannot be told from there."""
    import tifffile

    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            with zf.open(info) as f:
                head = f.read(HEAD_BYTES)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError):
        return None  # the copy made first reports what is wrong
    quiet = logging.getLogger("tifffile")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # the IFDs past the head are "invalid page offsets" here: expected
    try:
        with tifffile.TiffFile(io.BytesIO(head)) as tif:
            series = tif.series[0]
            page = tif.pages.first
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            offset = series.dataoffset
            if (len(tif.series) != 1 or offset is None or page.compression.name != "NONE"
                    or page.samplesperpixel != 1 or len(shape) != 3 or page.shape != shape[1:]):
                return None
            facts = {"photometric": page.photometric.name, "compression": page.compression.name}
    except Exception:  # any parse failure: copy the member out first, as before
        return None
    finally:
        quiet.setLevel(level)
    if offset + math.prod(shape) * dtype.itemsize > info.file_size:
        return None
    return {"shape": shape, "dtype": dtype, "offset": int(offset), **facts}


def zip_tiff_stack(archive: str | Path, name: str, *, name_for_errors: str | None = None) -> TiffStack:
    """The TIFF stack member ``name`` of zip ``archive`` (matched by
    :func:`~emdata.sources.archive.find_member`): a :class:`ZipTiffStack` read while it is copied
    out when its layout allows (see the module docstring), else a :class:`TiffStack` of the
    copy made first."""
    archive = Path(archive)
    member = find_member(archive, name)
    label = name_for_errors or f"{archive.name}:{member}"
    layout = _layout(archive, member)
    if layout is None:
        return TiffStack(extract_member(archive, member), name=label)
    target = archive.with_name(archive.name + ".members").joinpath(*_safe_relpath(archive, member).parts)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _copies_lock:
        copy = _copies.get(str(target))
        if copy is None or copy.done:  # a finished copy is checked again (reused when still complete)
            copy = _copies[str(target)] = _Copy()
            threading.Thread(target=_copy_member, args=(archive, member, target, copy), daemon=True,
                             name=f"emdata-copy-{target.name}").start()
    stack = ZipTiffStack.__new__(ZipTiffStack)
    stack.archive, stack.member = str(archive), member
    stack.path, stack.name = str(target), label
    stack.layout, stack.offset = "pages", layout["offset"]
    stack.samples, stack.photometric, stack.compression = 1, layout["photometric"], layout["compression"]
    stack.shape, stack.dtype = layout["shape"], layout["dtype"]
    stack.pages, stack.contiguous = layout["shape"][0], True
    stack.stamp = ("copy", copy.serial)  # contiguous: read from the file, never through the page cache
    return stack
