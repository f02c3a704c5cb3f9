"""FIB-25 end to end through the loopback mirror: supervoxels → bodies via 'transforms'
(uint64, unlisted → 0), splits from the card, verified, idempotent, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import emdata
from emdata.datasets.fib25.replica import BUCKET, write_fib25_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe

Pin = Callable[[dict[str, Path]], Path]  # the `pin` fixture of emdata.testing.fixtures


def test_prepare_maps_supervoxels_to_bodies(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_fib25_replica(mirror_root)
    pin(truth["files"])
    vols = emdata.prepare("fib25")
    assert [(v.name, v.split) for v in vols] == [("training_sample2", "train"), ("validation_sample", "val"),
                                                 ("tstvol-520-1", "test")]
    for vol in vols:
        sample = truth[vol.name]
        assert vol.voxel_size == (8.0, 8.0, 8.0)
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], sample["raw"])
        neurons = vol.labels["neurons"]
        assert neurons.dtype == np.uint64 and np.array_equal(neurons[...], sample["neurons"])
        assert 2**63 + 99 in set(np.unique(neurons[...]).tolist())
        summary = vol.meta["supervoxel_mapping"]
        assert summary["pairs"] == len(sample["transforms"])
        assert summary["unmapped_supervoxels"] == len(sample["unlisted"]) == 2
        assert summary["unmapped_examples"] == sample["unlisted"]
        unlisted = np.isin(sample["stack"], sample["unlisted"])
        assert summary["unmapped_voxels"] == int(unlisted.sum()) and not neurons[...][unlisted].any()
        assert vol.meta["labels"]["neurons"]["mapping"] == {"0": {"name": "background", "id": 0},
                                                           "nonzero": {"name": "neuron", "id": 1}}
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    sources = [s["url"] for s in vols[2].meta["provenance"]["sources"]]
    assert sources == [f"https://{BUCKET}/tstvol-520-1/raw.h5", f"https://{BUCKET}/tstvol-520-1/groundtruth.h5"]
    assert [v.name for v in emdata.volumes("fib25", split="val")] == ["validation_sample"]


def test_narrow_supervoxel_ids_give_uint64_bodies(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_fib25_replica(mirror_root, stack_dtype="uint32", samples=("validation_sample",))
    pin(truth["files"])
    (val,) = emdata.prepare("fib25", volumes=["validation_sample"])
    assert val.labels["neurons"].dtype == np.uint64
    assert np.array_equal(val.labels["neurons"][...], truth["validation_sample"]["neurons"])


def test_rerun_makes_no_request_and_rewrites_nothing(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_fib25_replica(mirror_root, samples=("tstvol-520-1",))
    pin(truth["files"])
    (first,) = emdata.prepare("fib25", volumes=["tstvol-520-1"])
    stamp = (first.path / "zarr.json").stat().st_mtime_ns
    n_requests = len(mirror.log)
    (second,) = emdata.prepare("fib25", volumes=["tstvol-520-1"])
    assert (second.path / "zarr.json").stat().st_mtime_ns == stamp and len(mirror.log) == n_requests
    assert len(mirror.requests_for("tstvol-520-1/raw.h5")) == 1


def test_missing_transforms_names_file_and_key(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_fib25_replica(mirror_root, samples=("training_sample2",))
    with h5py.File(mirror_root / BUCKET / "training_sample2" / "groundtruth.h5", "a") as f:
        del f["transforms"]
    pin(truth["files"])
    with pytest.raises(ValueError, match=r"groundtruth\.h5: no dataset 'transforms'; the file holds \['stack'\]"):
        emdata.prepare("fib25", volumes=["training_sample2"])
    assert not (emdata.config.prepared_dir("fib25") / "training_sample2.ome.zarr").exists()


def test_conflicting_transforms_are_refused(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_fib25_replica(mirror_root, samples=("training_sample2",))
    pairs = truth["training_sample2"]["transforms"]
    sv = int(pairs[0, 0])
    bad = np.concatenate([pairs, np.array([[sv, int(pairs[0, 1]) + 1]], dtype=np.uint64)])
    with h5py.File(mirror_root / BUCKET / "training_sample2" / "groundtruth.h5", "a") as f:
        del f["transforms"]
        f.create_dataset("transforms", data=bad)
    pin(truth["files"])
    with pytest.raises(ValueError, match=rf"training_sample2/groundtruth\.h5:transforms: supervoxel {sv} is mapped "
                                         "to two bodies"):
        emdata.prepare("fib25", volumes=["training_sample2"])
    with pytest.raises(ValueError, match=r"no volume\(s\) \['train'\]; choose from \['training_sample2'"):
        emdata.prepare("fib25", volumes=["train"])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("fib25", tmp_path, expected=lambda t: {
        name: {"raw": t[name]["raw"], "neurons": t[name]["neurons"]} for name in t if name != "files"
    })
