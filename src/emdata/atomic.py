"""Publish a file or folder atomically: write it under a temporary name beside its destination,
then ``os.replace`` it into place; on failure the temporary is removed and the destination is
left as it was. Readers see the old version or the new one, never a half-written one.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_atomic(folder / "record.json", '{"done": true}')
    >>> (folder / "record.json").read_text(), [p.name for p in folder.iterdir()]
    ('{"done": true}', ['record.json'])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replacing", "unique_sibling", "write_atomic"]


def unique_sibling(dest: Path, suffix: str = "") -> Path:
    """A hidden name beside ``dest`` no other process uses: ``.<name>.tmp-<pid>-<random><suffix>``.

    Example:
        >>> name = unique_sibling(Path("/data/v.ome.zarr")).name
        >>> name.startswith(".v.ome.zarr.tmp-") and len(name.split("-")[-1]) == 8
        True
    """
    return dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def replacing(dest: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path (default :func:`unique_sibling`) to write a file, folder or link at;
    when the block ends normally it replaces ``dest`` in one step, when it raises it is removed.

    ``tmp`` names the temporary where others look for it by name (crash leftovers a clean-up
    recognises). A folder can only replace a missing or empty ``dest``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with replacing(folder / "out") as tmp:
        ...     tmp.mkdir()
        ...     _ = (tmp / "a.txt").write_text("a")
        >>> sorted(p.name for p in (folder / "out").iterdir())
        ['a.txt']
    """
    dest = Path(dest)
    tmp = unique_sibling(dest) if tmp is None else Path(tmp)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def write_atomic(dest: Path, data: str | bytes, *, tmp: Path | None = None) -> None:
    """Write ``data`` (text as UTF-8) to ``dest`` through :func:`replacing`; creates the parent folder.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "sub" / "block.bin"
        >>> write_atomic(path, b"\\x00\\x01")
        >>> path.read_bytes()
        b'\\x00\\x01'
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest, tmp) as path:
        if isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_bytes(data)
