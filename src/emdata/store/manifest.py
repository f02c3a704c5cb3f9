"""The dataset manifest ``<EMDATA_HOME>/prepared/<dataset>/dataset.json``: its volumes,
their splits and paths. Updated atomically under a lock after each volume is published.

Example:
    >>> read_manifest(Path("prepared/snemi3d"))["volumes"]["train"]["split"]  # doctest: +SKIP
    'train'
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from emdata.store.volume import Volume

MANIFEST = "dataset.json"


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        return {"volumes": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def record_volume(volume: Volume) -> None:
    """Add or replace ``volume`` in its dataset's manifest."""
    dataset_dir = volume.path.parent
    with FileLock(str(dataset_dir / (MANIFEST + ".lock"))):
        manifest = read_manifest(dataset_dir)
        manifest["dataset"] = volume.dataset
        manifest["volumes"][volume.name] = {
            "split": volume.split, "path": volume.path.name, "shape": list(volume.shape),
            "voxel_size_nm": list(volume.voxel_size), "labels": list(volume.meta["labels"]),
        }
        manifest["volumes"] = dict(sorted(manifest["volumes"].items()))
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tmp = dataset_dir / (MANIFEST + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, dataset_dir / MANIFEST)
