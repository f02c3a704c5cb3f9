"""ISBI 2012 end to end through the loopback mirror: membrane value detected from the data,
derived instances kept bit-identical, verified, idempotent, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import emdata
from emdata.datasets.isbi2012.replica import write_isbi2012_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe

Pin = Callable[[dict[str, Path]], Path]  # the `pin` fixture of emdata.testing.fixtures


def test_prepare_detects_membranes_and_is_voxel_exact(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_isbi2012_replica(mirror_root)  # 0 = membrane, 255 = interior (challenge convention)
    pin({truth["url"]: truth["path"]})
    (train,) = emdata.prepare("isbi2012")
    assert (train.name, train.split, train.voxel_size) == ("train", "train", (50.0, 4.0, 4.0))
    assert train.raw.dtype == np.uint8 and np.array_equal(train.raw[...], truth["raw"])
    membranes = train.labels["membranes"]
    assert membranes.dtype == np.uint8
    assert np.array_equal(membranes[...], truth["membrane_mask"].astype(np.uint8))
    enc = train.meta["membranes_encoding"]
    assert (enc["status"], enc["membrane_value"], enc["native_values"]) == ("detected", 0, [0, 255])
    assert enc["evidence"]["0"]["mean_raw"] < enc["evidence"]["255"]["mean_raw"]
    assert enc["evidence"]["0"]["fraction"] < 0.5
    assert train.meta["labels"]["membranes"]["mapping"] == {"0": {"name": "background", "id": 0},
                                                           "1": {"name": "membrane", "id": 6}}
    seg = train.labels["gt_segmentation"]
    assert seg.dtype == np.uint64 and np.array_equal(seg[...], truth["gt_segmentation"])
    assert int(seg[...].max()) > 2**32
    assert train.meta["labels"]["gt_segmentation"]["mapping"] == {"nonzero": {"name": "neuron", "id": 1}}
    assert train.meta["gt_segmentation_origin"]["official"] is False
    assert any("torch-em" in n for n in train.meta["notes"])
    assert train.meta["provenance"]["sources"][0]["fetched_from"].startswith(mirror.url)
    report = verify_volume(train.path, deep=True)
    assert report.ok, report.problems


def test_inverted_zero_one_encoding_is_detected(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_isbi2012_replica(mirror_root, membrane_value=1, other_value=0, segmentation_dtype="int64")
    pin({truth["url"]: truth["path"]})
    (train,) = emdata.prepare("isbi2012")
    enc = train.meta["membranes_encoding"]
    assert (enc["membrane_value"], enc["stored_as"]) == (1, {"1": 1, "0": 0})
    assert np.array_equal(train.labels["membranes"][...], truth["membrane_mask"].astype(np.uint8))
    assert train.labels["gt_segmentation"].dtype == np.int64


def test_ambiguous_encoding_keeps_native_values(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_isbi2012_replica(mirror_root)
    with h5py.File(truth["path"], "a") as f:  # membranes made bright: darkness and rarity disagree
        raw = f["raw"][()]
        f["raw"][()] = np.where(truth["membrane_mask"], 250, raw).astype(np.uint8)
    pin({truth["url"]: truth["path"]})
    (train,) = emdata.prepare("isbi2012")
    enc = train.meta["membranes_encoding"]
    assert enc["status"] == "undetermined" and enc["membrane_value"] is None
    assert np.array_equal(train.labels["membranes"][...], truth["membranes"])
    assert train.meta["labels"]["membranes"]["mapping"] == {} and train.meta["labels"]["membranes"]["annotates"] == []


def test_rerun_makes_no_request_and_rewrites_nothing(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_isbi2012_replica(mirror_root, shape=(3, 32, 32))
    pin({truth["url"]: truth["path"]})
    (first,) = emdata.prepare("isbi2012")
    stamp = (first.path / "zarr.json").stat().st_mtime_ns
    (second,) = emdata.prepare("isbi2012")
    assert (second.path / "zarr.json").stat().st_mtime_ns == stamp
    assert len(mirror.log) == 1 and len(mirror.requests_for("/download")) == 1


def test_non_binary_membranes_are_refused(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_isbi2012_replica(mirror_root, shape=(3, 32, 32))
    with h5py.File(truth["path"], "a") as f:
        f["labels/membranes"][0, 0, :3] = [0, 128, 255]
    pin({truth["url"]: truth["path"]})
    with pytest.raises(ValueError, match=r"isbi\.h5:labels/membranes: expected a binary membrane mask .* "
                                         r"found 3: \[0, 128, 255\]"):
        emdata.prepare("isbi2012")
    assert not (emdata.config.prepared_dir("isbi2012") / "train.ome.zarr").exists()


def test_missing_key_names_file_and_key(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_isbi2012_replica(mirror_root, shape=(3, 32, 32))
    with h5py.File(truth["path"], "a") as f:
        del f["labels/gt_segmentation"]
    pin({truth["url"]: truth["path"]})
    with pytest.raises(ValueError, match=r"isbi\.h5: no dataset 'labels/gt_segmentation'; the file holds"):
        emdata.prepare("isbi2012")
    with pytest.raises(ValueError, match=r"no volume\(s\) \['test'\]; choose from \['train'\]"):
        emdata.prepare("isbi2012", volumes=["test"])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("isbi2012", tmp_path, expected=lambda t: {
        "train": {"raw": t["raw"], "gt_segmentation": t["gt_segmentation"]}
    })
