"""Reading members of downloaded archives without extracting them.

Safe extraction (limits, path checks, atomic publish) comes with the download engine; here
members are read into memory by exact name, so nothing is ever written outside the cache.

Example:
    >>> data = read_member(Path("snemi.zip"), "image/train-input.tif")  # doctest: +SKIP
"""

from __future__ import annotations

import zipfile
from pathlib import Path

MAX_MEMBER_BYTES = 16 << 30


class ArchiveError(ValueError):
    """An archive is unreadable or lacks an expected member."""


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


def read_member(archive: Path, name: str) -> bytes:
    """The bytes of member ``name`` (matched by :func:`find_member`)."""
    member = find_member(archive, name)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
        if info.file_size > MAX_MEMBER_BYTES:
            raise ArchiveError(f"{archive}: member {member} claims {info.file_size} bytes, over the "
                               f"{MAX_MEMBER_BYTES} byte limit for in-memory reads")
        return zf.read(member)
