"""NucMM: files placed by hand (the source is a Drive folder), placeholder voxel size, no network."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import emdata
from emdata.config import downloads_dir
from emdata.datasets.nucmm.replica import write_nucmm_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe


def _place(truth: dict, subset: str, name: str | None = None) -> Path:
    """Copy a replica folder into the download folder, as a user would after a Drive download."""
    src = truth["folders"][subset]
    dest = downloads_dir("nucmm") / (name or src.name)
    shutil.copytree(src, dest)
    return dest


def test_missing_files_name_the_folder_and_what_goes_in_it(tmp_path: Path, mirror) -> None:
    root = downloads_dir("nucmm")
    with pytest.raises(FileNotFoundError) as info:
        emdata.prepare("nucmm")
    text = str(info.value)
    assert "\n" not in text and "Google Drive folder" in text and str(root) in text
    assert "'Zebrafish (NucMM-Z)/'" in text and "'Mouse (NucMM-M)/'" in text
    assert "Image/<split>/*.h5" in text and "Label/<split>/*.h5" in text and "'main'" in text
    truth = write_nucmm_replica(tmp_path / "drive")
    folder = _place(truth, "zebrafish")
    shutil.rmtree(folder / "Label" / "val")
    with pytest.raises(FileNotFoundError, match=r"'Zebrafish \(NucMM-Z\)/Label/val/'"):
        emdata.prepare("nucmm", subset="zebrafish")
    assert mirror.log == []
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", "nucmm", "--subset", "mouse"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "'Mouse (NucMM-M)/'" in run.stderr and "Traceback" not in run.stderr


def test_placed_files_are_voxel_exact_with_a_placeholder_voxel_size(tmp_path: Path, mirror) -> None:
    truth = write_nucmm_replica(tmp_path / "drive")
    _place(truth, "zebrafish")
    _place(truth, "mouse", name="NucMM-M")  # pytc's short folder name works too
    vols = {v.name: v for v in emdata.prepare("nucmm")}
    assert sorted(vols) == sorted(truth["volumes"])
    for name, (raw, seg) in truth["volumes"].items():
        vol = vols[name]
        assert vol.split == name.split("-")[1]
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], raw)
        nuclei = vol.labels["nuclei"]
        assert nuclei.dtype == seg.dtype and np.array_equal(nuclei[...], seg)
        assert vol.voxel_size == (1.0, 1.0, 1.0)
        assert vol.meta["voxel_size_placeholder"] is True and vol.meta["voxel_size_verified"] is False
        assert "placeholder" in vol.meta["voxel_size_note"] and vol.meta["pairing"] == "by name"
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    assert vols["mouse-train-000"].labels["nuclei"].dtype == np.uint64
    assert vols["zebrafish-val-000"].meta["labels"]["nuclei"]["mapping"] == {
        "0": {"name": "background", "id": 0}, "nonzero": {"name": "nucleus", "id": 8}}
    src = vols["zebrafish-train-000"].meta["provenance"]["sources"][0]
    assert src["url"].startswith("https://drive.google.com/") and src["fetched_from"].startswith("placed by hand")
    assert [v.name for v in emdata.volumes("nucmm", split="val")] == ["mouse-val-000", "zebrafish-val-000"]
    assert mirror.log == []


def test_rerun_reuses_and_a_replaced_file_rebuilds(tmp_path: Path, mirror) -> None:
    truth = write_nucmm_replica(tmp_path / "drive", subsets=("zebrafish",))
    folder = _place(truth, "zebrafish")
    first = {v.name: v for v in emdata.prepare("nucmm", volumes=["zebrafish-train"])}
    assert sorted(first) == ["zebrafish-train-000", "zebrafish-train-001"]
    stamps = {n: (v.path / "zarr.json").stat().st_mtime_ns for n, v in first.items()}
    again = {v.name: v for v in emdata.prepare("nucmm", volumes=["zebrafish-train"])}
    assert {n: (v.path / "zarr.json").stat().st_mtime_ns for n, v in again.items()} == stamps
    with h5py.File(folder / "Image" / "train" / "img_001.h5", "r+") as f:
        f["main"][0, 0, 0] = 7
        f["main"].attrs["element_size_um"] = [0.03, 0.004, 0.004]
    (rebuilt,) = emdata.prepare("nucmm", volumes=["zebrafish-train-001"])
    assert (rebuilt.path / "zarr.json").stat().st_mtime_ns != stamps["zebrafish-train-001"]
    assert rebuilt.raw[0, 0, 0] == 7 and rebuilt.voxel_size == (30.0, 4.0, 4.0)
    assert rebuilt.meta["voxel_size_placeholder"] is False
    assert mirror.log == []


def test_bad_input_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no subset\(s\) \['human'\].*'zebrafish', 'mouse'"):
        emdata.prepare("nucmm", subset="human")
    with pytest.raises(ValueError, match=r"no volume 'zebrafish-test'"):
        emdata.prepare("nucmm", volumes=["zebrafish-test"])
    truth = write_nucmm_replica(tmp_path / "drive", subsets=("mouse",))
    folder = _place(truth, "mouse")
    with h5py.File(folder / "Label" / "train" / "seg_000.h5", "w") as f:
        f.create_dataset("main", data=np.zeros((3, 4, 5), np.uint64))
    with pytest.raises(ValueError, match=r"Label/train/seg_000.h5: label shape \(3, 4, 5\) differs from the image "
                                         r"shape \(7, 18, 22\)"):
        emdata.prepare("nucmm", volumes=["mouse-train-000"])
    with pytest.raises(ValueError, match=r"no volume\(s\) \['mouse-val-042'\].*mouse-val-000"):
        emdata.prepare("nucmm", volumes=["mouse-val-042"])


def test_unmatched_names_pair_in_sorted_order(tmp_path: Path) -> None:
    truth = write_nucmm_replica(tmp_path / "drive", subsets=("mouse",), n_train=1, n_val=0)
    folder = _place(truth, "mouse")
    (folder / "Label" / "train" / "seg_000.h5").rename(folder / "Label" / "train" / "mask_a.h5")
    (vol,) = emdata.prepare("nucmm", volumes=["mouse-train"])
    assert vol.meta["pairing"] == "sorted order"
    assert np.array_equal(vol.labels["nuclei"][...], truth["volumes"]["mouse-train-000"][1])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("nucmm", tmp_path, expected=lambda t: {
        name: {"raw": raw, "nuclei": ids} for name, (raw, ids) in t["volumes"].items()
    })
