"""AxonEM end to end through the loopback mirror: pairs by name, unpaired files, ids kept wide."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import emdata
from emdata.datasets.axonem.replica import URLS, write_axonem_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe

Pin = Callable[[dict[str, Path]], Path]  # the `pin` fixture of emdata.testing.fixtures


def test_prepare_is_voxel_exact_and_verified(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_axonem_replica(mirror_root)
    pin({URLS[s]: p for s, p in truth["zips"].items()})
    vols = {v.name: v for v in emdata.prepare("axonem")}
    assert sorted(vols) == ["human-train-0-0-0_pad", "human-train-200-0-0_pad",
                            "mouse-train-0-0-0_pad", "mouse-train-200-0-0_pad"]
    for subset, voxel, dtype in (("human", (30.0, 8.0, 8.0), np.uint64), ("mouse", (40.0, 7.0, 7.0), np.uint32)):
        for name, (raw, seg) in truth[subset].items():
            vol = vols[f"{subset}-train-{name}"]
            assert vol.split == "train" and vol.voxel_size == voxel and vol.meta["voxel_size_verified"] is False
            assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], raw)
            axons = vol.labels["axons"]
            assert axons.dtype == dtype and np.array_equal(axons[...], seg)
            assert vol.meta["labels"]["axons"]["mapping"] == {"nonzero": {"name": "axon", "id": 7}}
            report = verify_volume(vol.path, deep=True)
            assert report.ok, report.problems
    mouse = vols["mouse-train-0-0-0_pad"]
    assert mouse.meta["skipped"] == ["im_675-800-800_pad.h5 has no matching seg_675-800-800_pad.h5: skipped"]
    (mask,) = mouse.meta["unpaired_files"]
    assert (mask["file"], mask["shape"], mask["dtype"], mask["values"]) == ("valid_mask.h5", [10, 16, 16],
                                                                             "uint8", [0, 1])
    assert "valid_mask" not in mouse.labels
    assert vols["human-train-0-0-0_pad"].meta["skipped"] == []
    prov = mouse.meta["provenance"]["sources"][0]
    assert prov["url"] == URLS["mouse"] and prov["fetched_from"].startswith(mirror.url)


def test_rerun_reuses_and_subset_selects(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_axonem_replica(mirror_root)
    pin({URLS[s]: p for s, p in truth["zips"].items()})
    first = emdata.prepare("axonem", subset="human")
    assert [v.name for v in first] == ["human-train-0-0-0_pad", "human-train-200-0-0_pad"]
    stamps = [(v.path / "zarr.json").stat().st_mtime_ns for v in first]
    again = emdata.prepare("axonem", volumes=["human-train"])
    assert [(v.path / "zarr.json").stat().st_mtime_ns for v in again] == stamps
    assert len(mirror.requests_for("EM30-H-train-9vol-pad-20-512-512.zip")) == 1
    assert mirror.requests_for("EM30-M-train-9vol-pad-20-512-512.zip") == []
    (one,) = emdata.prepare("axonem", volumes=["mouse-train-200-0-0_pad"])
    assert np.array_equal(one.labels["axons"][...], truth["mouse"]["200-0-0_pad"][1])


def test_bad_input_is_clear(mirror_root: Path, mirror, pin: Pin) -> None:
    with pytest.raises(ValueError, match=r"no subset\(s\) \['rat'\].*'human', 'mouse'"):
        emdata.prepare("axonem", subset="rat")
    with pytest.raises(ValueError, match=r"no volume 'human-test'"):
        emdata.prepare("axonem", volumes=["human-test"])
    truth = write_axonem_replica(mirror_root, subsets=("human",))
    target = truth["zips"]["human"]
    with zipfile.ZipFile(target) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("labels", data=np.zeros((8, 24, 20), np.uint64))
    members["seg_0-0-0_pad.h5"] = buf.getvalue()
    with zipfile.ZipFile(target, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    pin({URLS[s]: p for s, p in truth["zips"].items()})
    with pytest.raises(ValueError, match=r"seg_0-0-0_pad.h5: no dataset 'main'; the file holds \['labels'\]"):
        emdata.prepare("axonem", subset="human")
    assert not (emdata.config.prepared_dir("axonem") / "human-train-0-0-0_pad.ome.zarr").exists()
    with pytest.raises(ValueError, match=r"no volume\(s\) \['human-train-9'\]"):
        emdata.prepare("axonem", volumes=["human-train-9"])


def test_card_checksum_is_enforced_without_override(mirror_root: Path, mirror) -> None:
    write_axonem_replica(mirror_root, subsets=("human",))
    with pytest.raises(Exception, match=r"sha256 mismatch.*EMDATA_CHECKSUMS"):
        emdata.prepare("axonem", subset="human")


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("axonem", tmp_path, expected=lambda t: {
        f"{subset}-train-{key}": {"raw": raw, "axons": ids}
        for subset in ("human", "mouse") for key, (raw, ids) in t[subset].items()
    })
