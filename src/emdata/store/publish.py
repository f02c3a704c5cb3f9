"""How a volume folder is published, replaced, pinned by readers and tidied after a crash.

A volume named ``<name>.ome.zarr`` in a dataset folder is laid out as::

    <name>.ome.zarr            symlink (relative) -> .<name>.ome.zarr.v<N>
    .<name>.ome.zarr.v<N>/     version N: the OME-Zarr hierarchy, emdata-complete.json written last
    <name>.ome.zarr.lock       the writer lock (one writer, or `emdata cache clean`, at a time)

and, only while something is being written or after a crash::

    .<name>.ome.zarr.tmp-<pid>-<hex>/   a write in progress (write_volume)
    .<name>.ome.zarr.building/          a resumable region-by-region build (sharded writer)
    .<name>.ome.zarr.old-<hex>/         a version being deleted

Publishing a version (:func:`commit`) renames the finished folder to the next ``.v<N>``,
writes the completion marker inside it and switches the link with one ``os.replace``. So a
reader opening ``<name>.ome.zarr`` sees either the old complete version or the new one, never
a mix. :class:`~emdata.store.volume.Volume` reads the version the link pointed to when it was
opened and holds a shared ``flock`` on that version's marker (:func:`pin`); a replaced version
is deleted only once no reader holds it (:func:`retire`), otherwise the next writer or
:func:`tidy` deletes it later. A reader whose version was deleted anyway (``cache clean``)
gets a :class:`VolumeReplacedError`, never fill values. Viewers and plain zarr follow the
link like a folder; a plain folder (a volume written before versions existed, or copied
elsewhere) is read and verified as before, and is turned into a version on its next replace.

Every function that changes a volume's folders runs under :func:`volume_lock`; holding it
proves that no other writer is alive, so :func:`tidy` may delete any temporary folder of that
volume (a crashed writer's) and roll forward a version that was complete but not yet linked.

Example:
    >>> import tempfile, zarr
    >>> tmp = Path(tempfile.mkdtemp())
    >>> built = tmp / ".v.ome.zarr.tmp-1-demo"
    >>> _ = zarr.open_group(str(built), mode="w", zarr_format=3)
    >>> with volume_lock(tmp / "v.ome.zarr"):
    ...     version = commit(tmp / "v.ome.zarr", built, {"arrays": 0, "levels": 0})
    >>> version.name, resolve(tmp / "v.ome.zarr") == version, (tmp / "v.ome.zarr" / COMPLETE_MARKER).is_file()
    ('.v.ome.zarr.v1', True, True)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock

from emdata.atomic import replacing, write_atomic

COMPLETE_MARKER = "emdata-complete.json"
SCHEMA = "emdata-volume/1"
_VERSION = re.compile(r"\.v(\d+)$")


class VolumeReplacedError(RuntimeError):
    """The version of a volume a reader opened was deleted while it was being read."""


def volume_lock(path: Path) -> FileLock:
    """The writer lock of the volume at ``path`` (re-entrant within a thread of this process).

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> volume_lock(tmp / "a.ome.zarr") is volume_lock(tmp / "a.ome.zarr")
        True
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", is_singleton=True)


def _prefix(path: Path) -> str:
    return f".{Path(path).name}."


def resolve(path: Path) -> Path:
    """The folder holding the data of the volume at ``path``: its linked version, or ``path`` itself."""
    path = Path(path)
    if path.is_symlink():
        return path.parent / os.readlink(path)
    return path


def version_number(folder: Path) -> int | None:
    """N of a ``.<name>.ome.zarr.v<N>`` folder, else None."""
    m = _VERSION.search(Path(folder).name)
    return int(m.group(1)) if m and Path(folder).name.startswith(".") else None


def versions(path: Path) -> list[tuple[int, Path]]:
    """Every ``.v<N>`` folder of the volume at ``path``, oldest first."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = []
    for entry in path.parent.iterdir():
        if entry.name.startswith(_prefix(path) + "v") and (n := version_number(entry)) is not None:
            found.append((n, entry))
    return sorted(found)


def generation(path: Path) -> str | None:
    """An id of the version now published at ``path`` (None when nothing complete is there).

    Example:
        >>> generation(Path("/nonexistent/nothing.ome.zarr")) is None
        True
    """
    folder = resolve(path)
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return f"{folder.name}:{marker.get('id', marker.get('completed'))}" if isinstance(marker, dict) else None


def _remove_tree(folder: Path) -> None:
    """Rename ``folder`` aside (one atomic step), then delete it."""
    if not folder.exists() and not folder.is_symlink():
        return
    trash = folder.parent / f"{folder.name.split('.ome.zarr')[0]}.ome.zarr.old-{uuid.uuid4().hex[:8]}"
    if not trash.name.startswith("."):
        trash = trash.with_name("." + trash.name)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def commit(path: Path, built: Path, marker: dict[str, Any]) -> Path:
    """Publish the finished folder ``built`` as the next version of ``path``; returns the version folder.

    The caller holds :func:`volume_lock`. The metadata is consolidated first (:func:`consolidate`).
    ``marker`` (arrays, levels) goes into the completion marker with the time, schema and a
    unique id. Replaced versions are retired (deleted once no reader holds them).
    """
    path = Path(path)
    consolidate(built)
    if path.exists() and not path.is_symlink():  # a plain folder from before versions: version 0
        number = (versions(path)[-1][0] if versions(path) else 0) + 1
        os.replace(path, path.parent / f"{_prefix(path)}v{number}")
    number = (versions(path)[-1][0] if versions(path) else 0) + 1
    version = path.parent / f"{_prefix(path)}v{number}"
    os.replace(built, version)
    doc = {"completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "schema": SCHEMA, **marker,
           "id": uuid.uuid4().hex}
    write_atomic(version / COMPLETE_MARKER, json.dumps(doc))
    _link(path, version)
    for _, old in versions(path)[:-1]:
        retire(old)
    return version


def consolidate(folder: Path) -> None:
    """Record the metadata of every group and array under ``folder`` in its root ``zarr.json``
    (zarr-python's consolidated metadata), so plain zarr lists the hierarchy from there.

    Listing the folders instead, zarr-python 3 warns about every entry that is not a zarr node:
    the completion marker and ``indices/`` are emdata's own. Done by :func:`commit`, before the
    marker; volumes published without it read as before.
    """
    import warnings

    import zarr
    from zarr.errors import ZarrUserWarning

    with warnings.catch_warnings():  # the listing done here meets emdata's files; v3 consolidation is "unstable"
        warnings.simplefilter("ignore", ZarrUserWarning)
        zarr.consolidate_metadata(str(folder))


def _link(path: Path, version: Path) -> None:
    with replacing(path, path.parent / f"{_prefix(path)}link-{uuid.uuid4().hex[:8]}") as tmp:
        os.symlink(version.name, tmp)


def pin(folder: Path) -> int | None:
    """Hold a shared lock on version ``folder`` for as long as the returned descriptor is open.

    None when the version has no marker (gone, or a plain folder being replaced) or the file
    system refuses locks; :func:`retire` never deletes a version while one is held.
    """
    try:
        fd = os.open(Path(folder) / COMPLETE_MARKER, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_ino != os.stat(Path(folder) / COMPLETE_MARKER).st_ino:
            raise FileNotFoundError(folder)  # retired between open and lock
    except OSError:
        os.close(fd)
        return None
    return fd


def retire(folder: Path) -> bool:
    """Delete an unpublished version unless a reader pins it; True when it was deleted."""
    marker = Path(folder) / COMPLETE_MARKER
    try:
        fd = os.open(marker, os.O_RDONLY)
    except OSError:
        _remove_tree(folder)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        marker.unlink()  # readers that opened the marker but not yet locked it see it is gone
        _remove_tree(folder)
        return True
    finally:
        os.close(fd)


_LITTER = re.compile(r"\.(tmp-.+|(?:[a-z]+\.)?old-.+|link-.+|v\d+)$")


def litter(path: Path) -> list[Path]:
    """Folders and files of the volume at ``path`` that no published state needs (crash leftovers:
    ``.tmp-*``, ``.old-*``, a half-made link; replaced versions): what :func:`tidy` removes. Other
    hidden folders of the volume (a resumable ``.building`` or staging folder) are not litter."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    current = resolve(path) if path.is_symlink() else None
    out = []
    for entry in path.parent.iterdir():
        name = entry.name
        if not name.startswith(_prefix(path)) or not _LITTER.fullmatch(name[len(_prefix(path)) - 1:]):
            continue
        if current is not None and name == current.name:
            continue
        out.append(entry)
    return sorted(out)


def tidy(path: Path) -> list[Path]:
    """Under :func:`volume_lock`: finish or undo what a crashed writer left; returns what was removed.

    A complete version newer than the linked one (the writer died between its marker and the
    link switch) is linked; temporary and half-deleted folders are deleted; older versions are
    retired unless a reader pins them.
    """
    path = Path(path)
    current = version_number(resolve(path)) if path.is_symlink() and resolve(path).is_dir() else None
    complete = [(n, v) for n, v in versions(path) if (v / COMPLETE_MARKER).is_file()]
    dangling = current is None and not path.exists()
    if complete and (dangling or (current is not None and complete[-1][0] > current)):
        _link(path, complete[-1][1])
    removed = []
    for entry in litter(path):
        if version_number(entry) is not None:
            if retire(entry):
                removed.append(entry)
        elif entry.is_dir() and not entry.is_symlink():
            if entry.name.startswith(_prefix(path) + "old-"):
                shutil.rmtree(entry, ignore_errors=True)
            else:
                _remove_tree(entry)
            removed.append(entry)
        else:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    if path.is_symlink() and not resolve(path).is_dir():  # link to nothing: drop it
        path.unlink()
    return removed


def remove(path: Path) -> int:
    """Under :func:`volume_lock`: delete the volume at ``path`` and all its folders; returns bytes freed."""
    path = Path(path)
    freed = 0
    entries = [path] if path.is_symlink() or path.exists() else []
    entries += [e for e in path.parent.iterdir() if e.name.startswith(_prefix(path))] if path.parent.is_dir() else []
    for entry in entries:
        if entry.is_symlink():
            entry.unlink()
        elif entry.is_dir():
            freed += sum(p.stat().st_size for p in entry.rglob("*") if p.is_file() and not p.is_symlink())
            with contextlib.suppress(FileNotFoundError):
                (entry / COMPLETE_MARKER).unlink()  # readers of this version fail clearly from now on
            _remove_tree(entry)
        elif entry.exists():
            freed += entry.stat().st_size
            entry.unlink()
    return freed


def promise_problems(path: Path) -> list[str]:
    """What the completion marker of ``path`` promises but is missing (cheap: metadata files only).

    Example:
        >>> promise_problems(Path("/nonexistent/nothing.ome.zarr"))
        ['/nonexistent/nothing.ome.zarr: no emdata-complete.json']
    """
    folder = resolve(path)
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{path}: no {COMPLETE_MARKER}"]
    except (OSError, ValueError) as exc:
        return [f"{folder / COMPLETE_MARKER}: unreadable marker ({exc})"]
    try:
        em = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))["attributes"]["emdata"]
        arrays = [lv["path"] for lv in em["raw"]["levels"]] + [
            f"labels/{name}/{lv['path']}" for name, layer in em["labels"].items() for lv in layer["levels"]]
        predictions = em.get("predictions", {})  # layers added by `emdata predict`
        arrays += [f"{p['path']}/{lv['path']}" for p in predictions.values() for lv in p["levels"]]
        levels = len(em["raw"]["levels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{folder / 'zarr.json'}: no readable emdata block ({type(exc).__name__}: {exc})"]
    problems = []
    n_arrays = 1 + len(em["labels"]) + len(predictions)
    if not isinstance(marker, dict) or marker.get("levels") != levels or marker.get("arrays") != n_arrays:
        problems.append(f"{folder / COMPLETE_MARKER}: promises {marker!r}, the volume records {levels} level(s) "
                        f"and {n_arrays} array(s)")
    problems += [f"{folder / a}: array missing (no zarr.json)" for a in arrays
                 if not (folder / a / "zarr.json").is_file()]
    return problems
