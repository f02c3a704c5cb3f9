"""Numbered image slices inside an archive (``Train_In/mask0007.png``, ``im0123.png``):
finding a folder's members, ordering them by the number in the name, checking for gaps,
decoding them. Shared by the slice-stack recipes.

Example:
    >>> sorted(["10.png", "9.png", "0011.png"], key=natural_key)
    ['9.png', '10.png', '0011.png']
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path, PurePosixPath

import numpy as np

from emdata.formats.lazy import SliceStack
from emdata.formats.png import ImageFormatError, read_image
from emdata.sources.archive import list_members, read_member

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger(__name__)


def is_junk(member: str) -> bool:
    """Archive members that are never data: macOS resource forks, hidden files."""
    parts = PurePosixPath(member).parts
    return any(p == "__MACOSX" for p in parts) or PurePosixPath(member).name.startswith(".")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the digit runs in ``name`` by value: ``im9`` < ``im10`` < ``im0011``."""
    return tuple((1, int(part)) if part.isdigit() else (0, part.lower())
                 for part in re.split(r"(\d+)", PurePosixPath(name).name) if part)


def folder_members(archive: Path, top: str, folders: tuple[str, ...],
                   error: type[ValueError] = ValueError) -> dict[str, list[str]]:
    """PNG members of ``<top>/<folder>/`` for each folder (any prefix before ``top`` is allowed).

    Non-PNG files (``Thumbs.db``) and junk are skipped; a missing folder, or a folder found in
    two places, is an error that lists what the archive holds.
    """
    found: dict[str, dict[str, list[str]]] = {f: {} for f in folders}
    parents: set[str] = set()
    for member in list_members(archive):
        if is_junk(member):
            continue
        path = PurePosixPath(member)
        parents.add(str(path.parent))
        if len(path.parts) >= 3 and path.parts[-3] == top and path.parts[-2] in found:
            if path.suffix.lower() == ".png":
                found[path.parts[-2]].setdefault(str(path.parent), []).append(member)
            else:
                log.debug("%s: skipping %s (not a PNG slice)", archive.name, member)
    out = {}
    for folder, by_parent in found.items():
        if not by_parent:
            raise error(f"{archive}: no PNG slices in a folder {top}/{folder}/; the archive has the folders "
                        f"{sorted(parents)[:20]}. Expected {top}/{{{','.join(folders)}}}/ (delete the file "
                        "and fetch again if it is not the published archive)")
        if len(by_parent) > 1:
            raise error(f"{archive}: folder {top}/{folder}/ appears in several places {sorted(by_parent)}; "
                        "cannot tell which one holds the slices")
        out[folder] = next(iter(by_parent.values()))
    return out


def indexed(archive: Path, members: list[str], pattern: re.Pattern[str], expected: str,
            error: type[ValueError] = ValueError) -> dict[int, str]:
    """``{slice number: member}`` from names matching ``pattern`` (one group: the number)."""
    out: dict[int, str] = {}
    for member in members:
        match = pattern.match(PurePosixPath(member).name)
        if match is None:
            raise error(f"{archive.name}:{member}: unexpected file name; expected {expected}")
        z = int(match.group(1))
        if z in out:
            raise error(f"{archive.name}: {out[z]} and {member} both name slice {z}; remove one of them")
        out[z] = member
    return out


def check_contiguous(archive: Path, folder: str, numbers: list[int], error: type[ValueError] = ValueError) -> None:
    """Sorted slice numbers must have no gaps (a gap would silently join distant sections)."""
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise error(f"{archive.name}:{folder}: slice number(s) {missing[:10]} missing between {numbers[0]} and "
                    f"{numbers[-1]}; the archive is incomplete (delete it and fetch again)")


def read_png(archive: Path, member: str, error: type[ValueError] = ValueError) -> np.ndarray:
    """One PNG slice; palette PNGs are refused (their indices are not the colours)."""
    data = read_member(archive, member)
    where = f"{archive.name}:{member}"
    # IHDR colour type (byte 25): 3 = indexed. read_image returns palette indices for those.
    if data[:8] == PNG_SIGNATURE and len(data) > 25 and data[25] == 3:
        raise error(f"{where}: palette (indexed-colour) PNG; expected greyscale or RGB(A) pixels. "
                    "Convert it to RGB(A) or greyscale and place the archive by hand")
    try:
        return read_image(data, where)
    except ImageFormatError as exc:
        raise error(str(exc)) from exc


def read_grey_stack(archive: Path, members: list[str], error: type[ValueError] = ValueError) -> np.ndarray:
    """Greyscale integer slices → (z, y, x); all slices must share shape and dtype."""
    slices: list[np.ndarray] = []
    for member in members:
        img = read_png(archive, member, error)
        where = f"{archive.name}:{member}"
        if img.ndim != 2 or not np.issubdtype(img.dtype, np.integer):
            raise error(f"{where}: expected a single-channel greyscale integer image, got shape {img.shape} "
                        f"dtype {img.dtype}")
        if slices and (img.shape != slices[0].shape or img.dtype != slices[0].dtype):
            raise error(f"{where}: shape {img.shape} dtype {img.dtype} differs from {archive.name}:{members[0]} "
                        f"({slices[0].shape} {slices[0].dtype}); all slices of a stack must match")
        slices.append(img)
    return np.stack(slices)



def _grey_slice(archive: str, members: tuple[str, ...], error: type[ValueError], plane: tuple[int, ...],
                dtype: str, z: int) -> np.ndarray:
    img = read_png(Path(archive), members[z], error)
    where = f"{Path(archive).name}:{members[z]}"
    if img.ndim != 2 or not np.issubdtype(img.dtype, np.integer):
        raise error(f"{where}: expected a single-channel greyscale integer image, got shape {img.shape} "
                    f"dtype {img.dtype}")
    if img.shape != plane or img.dtype != np.dtype(dtype):
        raise error(f"{where}: shape {img.shape} dtype {img.dtype} differs from {Path(archive).name}:{members[0]} "
                    f"({plane} {np.dtype(dtype)}); all slices of a stack must match")
    return img


def stack_key(archive: Path, members: list[str], what: str) -> str:
    """A name for a stack of ``members`` of ``archive`` in the per-process cache of decoded slices
    (the archive's size and time are part of it: slices of a replaced archive are never reused)."""
    stat = Path(archive).stat()
    return f"{archive}:{stat.st_mtime_ns}:{stat.st_size}:{what}:{members[0]}..{members[-1]}:{len(members)}"


def grey_slice_stack(archive: Path, members: list[str], error: type[ValueError] = ValueError) -> SliceStack:
    """:func:`read_grey_stack` as an array source: only the first slice is decoded now, the
    others when a box needs them (the same checks, raised when the slice is read).

    Example:
        >>> import io, tempfile, zipfile
        >>> from PIL import Image
        >>> path = Path(tempfile.mkdtemp()) / "s.zip"
        >>> with zipfile.ZipFile(path, "w") as zf:
        ...     for z in range(3):
        ...         buf = io.BytesIO(); Image.fromarray(np.full((2, 4), z, np.uint8)).save(buf, "PNG")
        ...         zf.writestr(f"im{z}.png", buf.getvalue())
        >>> stack = grey_slice_stack(path, ["im0.png", "im1.png", "im2.png"])
        >>> stack.shape, stack.read((slice(1, 3), slice(0, 1), slice(0, 1))).ravel().tolist()
        ((3, 2, 4), [1, 2])
    """
    first = read_png(archive, members[0], error)
    if first.ndim != 2 or not np.issubdtype(first.dtype, np.integer):
        raise error(f"{archive.name}:{members[0]}: expected a single-channel greyscale integer image, got shape "
                    f"{first.shape} dtype {first.dtype}")
    read = functools.partial(_grey_slice, str(archive), tuple(members), error, first.shape, first.dtype.str)
    return SliceStack(read, len(members), first.shape, first.dtype, key=stack_key(archive, members, "grey"))
