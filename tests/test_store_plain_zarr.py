"""A published volume opened with plain zarr-python lists its hierarchy without warnings.

zarr-python 3 lists a group's folder and warns about every entry that is not a zarr node
("Object at emdata-complete.json is not recognized as a component of a Zarr hierarchy", the same
for ``indices``). The volume's root ``zarr.json`` carries consolidated metadata, so plain zarr
lists the hierarchy from it; volumes published before that still open and read."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import zarr

from emdata.store.publish import COMPLETE_MARKER, resolve
from emdata.store.volume import open_volume
from emdata.store.writer import LabelLayerData, write_volume


def _volume(tmp_path: Path) -> Path:
    cells = np.zeros((4, 32, 32), "u4")
    cells[1:3, 4:20, 4:20] = 5
    return write_volume(tmp_path / "v.ome.zarr", np.full((4, 32, 32), 7, "u1"), (30, 6, 6),
                        labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
                        meta={"dataset": "demo", "volume": "v", "split": "train"})


def test_plain_zarr_lists_a_volume_without_warnings(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    assert (path / COMPLETE_MARKER).is_file() and (path / "indices").is_dir()  # emdata's own files are there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(path), mode="r")
        assert sorted(group.keys()) == ["0", "labels"]
        members = dict(group.members(max_depth=None))
        group.tree()
    assert sorted(members) == ["0", "labels", "labels/cells", "labels/cells/0"]
    assert members["labels/cells/0"].attrs["emdata"]["checksum"] == json.loads(
        (path / "labels" / "cells" / "0" / "zarr.json").read_text())["attributes"]["emdata"]["checksum"]
    assert int(np.asarray(members["labels/cells/0"][1, 10, 10])) == 5


def test_volumes_published_without_consolidated_metadata_still_read(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    root_meta = resolve(path) / "zarr.json"
    doc = json.loads(root_meta.read_text())
    doc.pop("consolidated_metadata", None)  # as an older emdata published it
    root_meta.write_text(json.dumps(doc))
    vol = open_volume(path)
    assert int(np.asarray(vol.labels["cells"][1, 10, 10])) == 5 and vol.meta["volume"] == "v"
