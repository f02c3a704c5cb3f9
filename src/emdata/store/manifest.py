"""The dataset manifest ``<EMDATA_HOME>/prepared/<dataset>/dataset.json``: its volumes,
their splits and paths, for people and tools that read JSON.

It is a summary, not the truth: what is prepared is what is complete on disk
(:func:`complete_volumes`), which is what ``emdata.volumes()`` lists; a volume published by a
run that died before updating the manifest is recorded again when it is next reused.

Example:
    >>> import tempfile
    >>> complete_volumes(Path(tempfile.mkdtemp()))
    []
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from emdata.atomic import write_atomic
from emdata.store.publish import COMPLETE_MARKER
from emdata.store.volume import Volume

MANIFEST = "dataset.json"


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of ``dataset_dir`` (``{"volumes": {}}`` when there is none or it is unreadable)."""
    path = Path(dataset_dir) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"volumes": {}}
    return doc if isinstance(doc, dict) and isinstance(doc.get("volumes"), dict) else {"volumes": {}}


def complete_volumes(dataset_dir: Path) -> list[Path]:
    """Every ``*.ome.zarr`` in ``dataset_dir`` with a published complete version, by name."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        return []
    return sorted(p for p in dataset_dir.glob("*.ome.zarr") if (p / COMPLETE_MARKER).is_file())


def entry(volume: Volume) -> dict[str, Any]:
    """The manifest entry of ``volume``."""
    return {"split": volume.split, "path": volume.path.name, "shape": list(volume.shape),
            "voxel_size_nm": list(volume.voxel_size), "labels": list(volume.meta["labels"])}


def is_recorded(volume: Volume) -> bool:
    """Whether the manifest lists ``volume`` as it is."""
    return read_manifest(volume.path.parent)["volumes"].get(volume.name) == entry(volume)


def record_volume(volume: Volume) -> None:
    """Add or replace ``volume`` in its dataset's manifest (atomically; stale temporary files are removed)."""
    dataset_dir = volume.path.parent
    with FileLock(str(dataset_dir / (MANIFEST + ".lock"))):
        for stale in dataset_dir.glob(MANIFEST + ".tmp-*"):  # every writer holds this lock: the owner is dead
            stale.unlink(missing_ok=True)
        manifest = read_manifest(dataset_dir)
        manifest["dataset"] = volume.dataset
        manifest["volumes"][volume.name] = entry(volume)
        manifest["volumes"] = dict(sorted(manifest["volumes"].items()))
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_atomic(dataset_dir / MANIFEST, json.dumps(manifest, indent=1),
                     tmp=dataset_dir / (MANIFEST + f".tmp-{os.getpid()}"))  # the name the stale sweep above finds
