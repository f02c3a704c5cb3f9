"""What is on disk under ``EMDATA_HOME``: cached downloads and prepared volumes, per dataset.

Example:
    >>> report = cache_report()  # doctest: +SKIP
    >>> report["datasets"]["snemi3d"]["downloads"][0]["complete"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from emdata.config import downloads_dir, emdata_home, prepared_dir

SIDE_FILES = (".complete.json", ".lock", ".part", ".part.json")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _downloads(dataset: str) -> list[dict[str, Any]]:
    root = downloads_dir(dataset)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.endswith(SIDE_FILES):
            continue
        complete = path.with_name(path.name + ".complete.json").is_file()
        out.append({"file": str(path.relative_to(root)), "bytes": path.stat().st_size, "complete": complete})
    for part in sorted(root.rglob("*.part")):
        out.append({"file": str(part.relative_to(root)), "bytes": part.stat().st_size, "complete": False,
                    "partial": True})
    return out


def _prepared(dataset: str) -> list[dict[str, Any]]:
    root = prepared_dir(dataset)
    if not root.is_dir():
        return []
    return [{"volume": p.name.removesuffix(".ome.zarr"), "bytes": _size(p),
             "complete": (p / "emdata-complete.json").is_file()} for p in sorted(root.glob("*.ome.zarr"))]


def cache_report() -> dict[str, Any]:
    """Every dataset with something on disk: downloads (complete or partial) and volumes."""
    home = emdata_home()
    names = set()
    for sub in ("downloads", "prepared"):
        if (home / sub).is_dir():
            names.update(p.name for p in (home / sub).iterdir() if p.is_dir())
    datasets = {}
    for name in sorted(names):
        downloads, prepared = _downloads(name), _prepared(name)
        datasets[name] = {"downloads": downloads, "prepared": prepared,
                          "bytes": sum(d["bytes"] for d in downloads) + sum(v["bytes"] for v in prepared)}
    return {"home": str(home), "datasets": datasets, "bytes": sum(d["bytes"] for d in datasets.values())}


def clean(dataset: str, prepared: bool = False) -> dict[str, Any]:
    """Remove a dataset's downloads (and with ``prepared`` its volumes); returns what was freed."""
    freed = {"dataset": dataset, "downloads_bytes": 0, "prepared_bytes": 0}
    targets = [("downloads_bytes", downloads_dir(dataset))]
    if prepared:
        targets.append(("prepared_bytes", prepared_dir(dataset)))
    for key, path in targets:
        if path.is_dir():
            freed[key] = _size(path)
            shutil.rmtree(path)
    return freed
