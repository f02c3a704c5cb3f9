"""Damage a replica's published files on purpose, to test how a recipe refuses them.

Example:
    >>> import tempfile, zipfile
    >>> path = Path(tempfile.mkdtemp()) / "a.zip"
    >>> with zipfile.ZipFile(path, "w") as zf:
    ...     zf.writestr("x/1.png", b"one")
    ...     zf.writestr("x/2.png", b"two")
    >>> rewrite_zip(path, drop=("x/1.png",), replace={"x/3.png": b"three"})
    >>> sorted(zipfile.ZipFile(path).namelist())
    ['x/2.png', 'x/3.png']
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path


def rewrite_zip(path: Path, drop: tuple[str, ...] = (), replace: Mapping[str, bytes] | None = None) -> None:
    """Rewrite the zip at ``path`` without the members in ``drop`` and with ``replace``'s members
    added or replaced (same order otherwise)."""
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist() if i.filename not in drop}
    members.update(replace or {})
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
