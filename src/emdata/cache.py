"""What is on disk under ``EMDATA_HOME``: cached downloads and prepared volumes, per dataset,
and the leftovers of interrupted runs; removing them.

Cleaning takes the same locks as the writers (a download's ``<file>.lock``, an extraction's
``<folder>.lock``, a volume's ``<volume>.ome.zarr.lock``, the manifest's lock), one at a
time, so it waits for a running ``fetch`` or ``prepare`` of the same file and never removes
part of something being written. Lock files themselves stay (removing a lock someone waits
on would let two writers in).

Example:
    >>> import tempfile
    >>> from unittest import mock
    >>> with mock.patch.dict("os.environ", EMDATA_HOME=tempfile.mkdtemp()):
    ...     cache_report()["datasets"]
    {}
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from emdata.config import downloads_dir, emdata_home, prepared_dir
from emdata.store import decoded_cache, publish
from emdata.store.manifest import MANIFEST

SIDE_FILES = (".complete.json", ".complete.tmp", ".lock", ".part", ".part.json")
_HIDDEN_TMP = re.compile(r"^\.(?P<base>.+)\.tmp-\d+-[0-9a-f]+$")


def _size(path: Path) -> int:
    if path.is_symlink():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _download_base(name: str) -> str:
    """The download (or extraction folder) a cache entry belongs to: ``x.part.json`` -> ``x``."""
    m = _HIDDEN_TMP.match(name)
    if m:
        return m.group("base")
    for suffix in SIDE_FILES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _download_litter(root: Path) -> list[Path]:
    """Extraction temp folders, half-written records and sidecars whose partial file is gone (a sidecar
    next to a published file that has no record yet names where that file came from: it is kept)."""
    def stray(path: Path) -> bool:
        name = path.name
        if name.endswith(".part.json"):
            base = path.with_name(name.removesuffix(".part.json"))
            unrecorded = base.is_file() and not base.with_name(base.name + ".complete.json").is_file()
            return not path.with_name(name.removesuffix(".json")).exists() and not unrecorded
        return (bool(_HIDDEN_TMP.match(name)) and path.is_dir()) or name.endswith(".complete.tmp")

    out: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not any(p in out for p in path.parents) and stray(path):
            out.append(path)
    return out


def _downloads(dataset: str) -> list[dict[str, Any]]:
    root = downloads_dir(dataset)
    if not root.is_dir():
        return []
    litter = _download_litter(root)
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(SIDE_FILES) or any(p in litter for p in path.parents):
            continue
        complete = path.with_name(path.name + ".complete.json").is_file()
        entry = {"file": str(path.relative_to(root)), "bytes": path.stat().st_size, "complete": complete}
        source = next((p for p in path.parents if p.name.endswith(".members")), None)
        if source is not None:  # a member copied out of an archive for reading out of core (reused, cleaned with it)
            entry["extracted_from"] = str(source.relative_to(root)).removesuffix(".members")
        out.append(entry)
    for part in sorted(root.rglob("*.part")):
        out.append({"file": str(part.relative_to(root)), "bytes": part.stat().st_size, "complete": False,
                    "partial": True})
    return out


def _volume_of(name: str) -> str | None:
    """The volume (``x.ome.zarr``) a prepared-folder entry belongs to, else None."""
    if ".ome.zarr" not in name:
        return None
    return name.lstrip(".").split(".ome.zarr")[0] + ".ome.zarr"


def _volume_paths(root: Path) -> list[Path]:
    return sorted({root / v for e in root.iterdir() if (v := _volume_of(e.name))}) if root.is_dir() else []


def _prepared(dataset: str) -> list[dict[str, Any]]:
    root = prepared_dir(dataset)
    out = []
    for p in _volume_paths(root):
        if p.is_symlink() or p.is_dir():
            out.append({"volume": p.name.removesuffix(".ome.zarr"), "bytes": _size(publish.resolve(p)),
                        "complete": (p / publish.COMPLETE_MARKER).is_file()})
    return out


def _prepared_litter(dataset: str) -> list[Path]:
    root = prepared_dir(dataset)
    found = [e for p in _volume_paths(root) for e in publish.litter(p)]
    return sorted(found + (list(root.glob(MANIFEST + ".tmp-*")) if root.is_dir() else []))


def leftovers(dataset: str) -> list[dict[str, Any]]:
    """Leftovers of interrupted runs of ``dataset`` (temporary folders, replaced versions, stray sidecars).

    ``prepare`` of the dataset removes those of its volumes once their writer is gone
    (a replaced version only once no reader holds it); ``emdata cache clean`` removes all.
    """
    home = emdata_home()
    paths = _download_litter(downloads_dir(dataset)) if downloads_dir(dataset).is_dir() else []
    return [{"path": str(p.relative_to(home)), "bytes": _size(p)} for p in paths + _prepared_litter(dataset)]


def tidy_downloads(dataset: str) -> list[Path]:
    """Remove the dataset's download leftovers whose writer is gone; returns what was removed.

    Each leftover belongs to one download or extraction, whose writer holds ``<base>.lock``
    while it exists; a leftover whose lock is free has no living owner. Never waits.
    """
    root = downloads_dir(dataset)
    removed: list[Path] = []
    for entry in _download_litter(root) if root.is_dir() else []:
        lock = FileLock(str(entry.parent / (_download_base(entry.name) + ".lock")))
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):
            continue
        try:
            _delete([entry])
            removed.append(entry)
        finally:
            lock.release()
    return removed


def _decoded_bytes() -> dict[str, int]:
    """Disk blocks held by the shared decoded cache per dataset (its files are sparse: only filled
    chunks take space)."""
    held: dict[str, int] = {}
    for folder, info in decoded_cache.entries():
        used = sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        held[info.get("dataset") or "?"] = held.get(info.get("dataset") or "?", 0) + used
    return held


def cache_report() -> dict[str, Any]:
    """Every dataset with something on disk: downloads (complete or partial), volumes, decoded
    chunks kept for the loaders and leftovers (lock files, which ``clean`` keeps, do not count)."""
    home = emdata_home()
    datasets = {}
    decoded = _decoded_bytes()
    for name in cached_datasets():
        downloads, prepared, litter = _downloads(name), _prepared(name), leftovers(name)
        if not (downloads or prepared or litter or decoded.get(name)):  # only lock files left: nothing cached
            continue
        datasets[name] = {"downloads": downloads, "prepared": prepared, "leftovers": litter,
                          "leftover_bytes": sum(x["bytes"] for x in litter), "decoded_bytes": decoded.get(name, 0),
                          "bytes": sum(d["bytes"] for d in downloads) + sum(v["bytes"] for v in prepared)
                          + sum(x["bytes"] for x in litter) + decoded.get(name, 0)}
    return {"home": str(home), "datasets": datasets, "bytes": sum(d["bytes"] for d in datasets.values())}


def _delete(entries: Iterable[Path]) -> int:
    freed = 0
    for entry in entries:
        if entry.name.endswith(".lock") or not (entry.exists() or entry.is_symlink()):
            continue
        freed += _size(entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return freed


def _clean_downloads(root: Path) -> int:
    """Delete everything under ``root`` but lock files, each group under its writer's lock."""
    groups: dict[str, list[Path]] = {}
    for entry in root.iterdir():
        groups.setdefault(_download_base(entry.name), []).append(entry)
    freed = 0
    for base, entries in sorted(groups.items()):
        lock = root / (base + ".lock")
        plain_dir = [e for e in entries if e.name == base and e.is_dir() and not e.is_symlink()]
        if plain_dir and not lock.exists():  # a folder of downloads, not an extraction: each file has its lock
            freed += _clean_downloads(plain_dir[0])
            entries = [e for e in entries if e not in plain_dir]
            with contextlib.suppress(OSError):  # kept when a lock file (or a new download) is in it
                plain_dir[0].rmdir()
        with FileLock(str(lock)):
            freed += _delete(entries)
    return freed


def _clean_prepared(root: Path) -> int:
    """Delete every volume (all versions and leftovers) under its writer lock, then the manifest."""
    freed = 0
    for path in _volume_paths(root):
        with publish.volume_lock(path):
            freed += publish.remove(path)
    with FileLock(str(root / (MANIFEST + ".lock"))):
        freed += _delete([root / MANIFEST, *root.glob(MANIFEST + ".tmp-*")])
    return freed


def clean(dataset: str, prepared: bool = False) -> dict[str, Any]:
    """Remove a dataset's downloads (and with ``prepared`` its volumes); returns what was freed.

    Waits for a writer of the same file or volume to finish (see the module notes).
    """
    freed = {"dataset": dataset, "downloads_bytes": 0, "prepared_bytes": 0}
    if downloads_dir(dataset).is_dir():
        freed["downloads_bytes"] = _clean_downloads(downloads_dir(dataset))
    if prepared and prepared_dir(dataset).is_dir():
        freed["prepared_bytes"] = _clean_prepared(prepared_dir(dataset))
    freed["decoded_bytes"] = decoded_cache.clean(dataset=dataset)  # decoded chunks no process has open
    return freed


DERIVED = ("stats", "fgindex")  # per-version summaries under <EMDATA_HOME>/cache, recomputed when missing


def clean_derived() -> int:
    """Remove the recomputable summaries under ``<EMDATA_HOME>/cache`` (statistics, foreground
    indices of volumes that do not store their own); returns the bytes freed. Their names are
    hashes of volume versions, so they cannot be told apart by dataset: ``emdata cache clean
    --all`` removes them all, and a reader that needs one computes it again.

    Example:
        >>> (emdata_home() / "cache" / "stats").mkdir(parents=True, exist_ok=True)
        >>> _ = (emdata_home() / "cache" / "stats" / "0f.json").write_text("{}")
        >>> clean_derived(), (emdata_home() / "cache" / "stats").exists()
        (2, False)
    """
    folders = [emdata_home() / "cache" / name for name in DERIVED]
    freed = sum(_size(f) for f in folders if f.exists())
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return freed


def cached_datasets() -> list[str]:
    """Every dataset with a folder under downloads or prepared, or decoded chunks in the shared cache."""
    home = emdata_home()
    return sorted({p.name for sub in ("downloads", "prepared") if (home / sub).is_dir()
                   for p in (home / sub).iterdir() if p.is_dir()}
                  | {info["dataset"] for _, info in decoded_cache.entries() if info.get("dataset")})
