"""TEM-NeutroStruct: a hand-placed dataset folder (no downloadable source) → one 2D volume per image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import emdata
from emdata.config import downloads_dir, prepared_dir
from emdata.datasets.tem_neutrostruct.replica import write_tem_neutrostruct_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe

ID = "tem-neutrostruct"
NAMES_7 = ["Specific granules", "Non-specific primary granules", "Non-specific tertiary granules",
           "Non-specific secondary granules", "Empty vesicles", "Emptying vesicles", "Vacuoles"]


def _place(truth: dict[str, Any], wrapper: bool = False) -> Path:
    """Copy the replica folder into the download folder, as a user would after downloading it."""
    dest = downloads_dir(ID) / ("TEM-NeutroStruct" if wrapper else "")
    shutil.copytree(truth["folder"], dest, dirs_exist_ok=True)
    return dest


def _assert_exact(vols: list, truth: dict[str, Any], semantic: str) -> None:
    assert sorted(v.name for v in vols) == sorted(truth["volumes"])
    for vol in vols:
        t = truth["volumes"][vol.name]
        assert vol.split == t["split"]
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], t["raw"])
        inst, sem = vol.labels["instances"], vol.labels["semantic"]
        assert inst.dtype == np.uint32 and np.array_equal(inst[...], t["instances"])
        assert sem.dtype == np.uint8 and np.array_equal(sem[...], t[semantic])


def test_missing_files_say_what_to_place_where(tmp_path: Path, mirror) -> None:
    root = downloads_dir(ID)
    with pytest.raises(FileNotFoundError) as info:
        emdata.prepare(ID)
    text = str(info.value)
    assert "\n" not in text and str(root) in text and "Zenodo" in text
    for part in ("7classes_version/<split>/images/", "7classes_version/<split>/annotations/annotations_7classes.json",
                 "annotations_4classes.json", "metadata/<split>_images_statistics.xlsx",
                 "missing: 7classes_version/train/annotations/annotations_7classes.json"):
        assert part in text
    truth = write_tem_neutrostruct_replica(tmp_path / "src")
    folder = _place(truth)
    (folder / "7classes_version" / "test" / "images" / "CNT050_002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"test: image 'CNT050_002.jpg' named in 7classes_version/test/"
                                                r"annotations/annotations_7classes.json is not in 7classes_version/"
                                                r"test/images/ or 7classes_version/test/"):
        emdata.prepare(ID, volumes=["test"])
    shutil.rmtree(folder / "7classes_version" / "test")
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", ID, "--classes", "4"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "missing: 7classes_version/test/annotations/annotations_4classes.json" in run.stderr
    assert mirror.log == []


def test_prepare_is_voxel_exact_and_keeps_the_coco(tmp_path: Path, mirror) -> None:
    truth = write_tem_neutrostruct_replica(tmp_path / "src")
    _place(truth)
    vols = emdata.prepare(ID)
    _assert_exact(vols, truth, "semantic7")
    by_name = {v.name: v for v in vols}
    for vol in vols:
        t = truth["volumes"][vol.name]
        xy = 1000.0 / t["px_per_um"]
        assert vol.voxel_size == (70.0, xy, xy) and vol.shape[0] == 1
        meta = vol.meta
        assert meta["voxel_size_verified"] is False and meta["section_thickness_placeholder"] is True
        assert meta["px_per_um"] == t["px_per_um"] and meta["classes"] == 7
        assert meta["derivation"] == "shipped 7-class annotation" and meta["overlaps"] == "later annotations on top"
        assert [a["id"] for a in meta["annotations"]] == t["annotation_ids"]
        assert [a["category_id"] for a in meta["annotations"]] == t["ids7"]
        assert [a["bbox"] for a in meta["annotations"]] == t["bboxes"]
        assert [a["instance"] for a in meta["annotations"]] == list(range(1, len(t["ids7"]) + 1))
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    assert by_name["train-ASD027--003"].meta["px_per_um_source"].startswith("default 375 px/µm")
    assert by_name["train-CNT042_001"].meta["px_per_um_source"] == "metadata/train_images_statistics.xlsx"
    a = by_name["train-CNT042_001"]
    assert a.meta["annotations"][1]["ellipse"] == [
        a.meta["annotations"][1]["bbox"][0] + a.meta["annotations"][1]["bbox"][2] / 2,
        a.meta["annotations"][1]["bbox"][1] + a.meta["annotations"][1]["bbox"][3] / 2,
        a.meta["annotations"][1]["bbox"][2] / 2, a.meta["annotations"][1]["bbox"][3] / 2]
    classes = a.classes("semantic")
    assert [c["name"] for c in classes] == NAMES_7 and classes[0]["color"] == [230, 159, 0]
    assert a.meta["labels"]["semantic"]["mapping"]["7"] == {"name": "vacuole", "id": 35}
    assert a.meta["labels"]["instances"]["mapping"]["nonzero"]["name"] == "organelle"
    kept = prepared_dir(ID) / a.meta["coco_file"]
    coco = json.loads(kept.read_text())
    assert a.meta["coco_file"] == "coco/train_7classes.json"
    assert [x["category_id"] for x in coco["annotations"]] == [x["category_id"] for x in
                                                                truth["coco7"]["train"]["annotations"]]
    assert [c["name"] for c in coco["categories"]] == NAMES_7
    assert [v.name for v in emdata.volumes(ID, split="test")] == ["test-CNT050_002"]
    stamps = {v.name: (v.path / "zarr.json").stat().st_mtime_ns for v in vols}
    coco_stamp = kept.stat().st_mtime_ns
    again = emdata.prepare(ID)
    assert {v.name: (v.path / "zarr.json").stat().st_mtime_ns for v in again} == stamps
    assert kept.stat().st_mtime_ns == coco_stamp
    (one,) = emdata.prepare(ID, volumes=["train-CNT042_001"])
    assert one.name == "train-CNT042_001" and (one.path / "zarr.json").stat().st_mtime_ns == stamps[one.name]
    assert mirror.log == []


def test_four_classes_shipped_or_merged_from_seven(tmp_path: Path, mirror) -> None:
    truth = write_tem_neutrostruct_replica(tmp_path / "src")
    folder = _place(truth)
    seven = {v.name: (v.path / "zarr.json").stat().st_mtime_ns for v in emdata.prepare(ID, volumes=["train"])}
    vols = emdata.prepare(ID, classes=4)
    _assert_exact(vols, {"volumes": truth["volumes"]}, "semantic4")
    train = next(v for v in vols if v.name == "train-CNT042_001")
    assert (train.path / "zarr.json").stat().st_mtime_ns != seven[train.name], "another class scheme rebuilds"
    assert train.meta["derivation"] == "shipped 4-class annotation" and train.meta["coco_file"] == \
        "coco/train_4classes.json"
    assert [c["name"] for c in train.classes("semantic")] == ["Primary granules", "Secondary granules",
                                                              "Empty vesicles", "Emptying vesicles"]
    assert train.meta["labels"]["semantic"]["mapping"]["3"]["name"] == "vesicle"
    for split in ("train", "test"):
        (folder / "7classes_version" / split / "annotations" / "annotations_4classes.json").unlink()
    merged = emdata.prepare(ID, classes=4)
    _assert_exact(merged, {"volumes": truth["volumes"]}, "semantic4")
    assert merged[0].meta["derivation"].startswith("merged from the shipped 7-class annotation")
    assert mirror.log == []


def test_four_class_only_variant_derives_the_seven_classes(tmp_path: Path, mirror) -> None:
    truth = write_tem_neutrostruct_replica(tmp_path / "src", with_7classes=False)
    folder = _place(truth, wrapper=True)
    (folder / "7classes_version").rename(folder / "4classes_version")
    vols = emdata.prepare(ID)
    _assert_exact(vols, truth, "semantic7")
    meta = vols[0].meta
    assert meta["derivation"].startswith("derived from the 4-class annotation by emdata's reclassification")
    assert meta["coco_source"] == "4classes_version/train/annotations/annotations_4classes.json"
    assert meta["provenance"]["parameters"]["reclassify"] == {
        "default_px_per_um": 375.0, "empty_threshold": "mean-of-class-means", "emptying_id": 4}
    for vol in vols:
        assert [a["category_id"] for a in vol.meta["annotations"]] == truth["volumes"][vol.name]["ids7"]
        assert verify_volume(vol.path, deep=True).ok
    assert mirror.log == []


def test_the_scripts_intermediate_ids_are_renumbered_by_name(tmp_path: Path) -> None:
    truth = write_tem_neutrostruct_replica(tmp_path / "src", seven_class_ids="intermediate")
    folder = _place(truth)
    shipped = json.loads((folder / "7classes_version/train/annotations/annotations_7classes.json").read_text())
    assert {a["category_id"] for a in shipped["annotations"]} <= {4, 5, 6, 7, 8, 9, 10}
    _assert_exact(emdata.prepare(ID), truth, "semantic7")


def test_bad_input_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"classes=5 is not a class scheme; choose from \[4, 7\]"):
        emdata.prepare(ID, classes=5)
    with pytest.raises(ValueError, match=r"has no volume 'val'.*\['train', 'test'\]"):
        emdata.prepare(ID, volumes=["val"])
    with pytest.raises(ValueError, match=r"does not take option\(s\) bbox \(it takes: classes\)"):
        emdata.prepare(ID, bbox="0:1,0:1,0:1")
    truth = write_tem_neutrostruct_replica(tmp_path / "src")
    folder = _place(truth)
    with pytest.raises(ValueError, match=r"no volume\(s\) \['train-nope'\] in 7classes_version/train/annotations/"
                                         r"annotations_7classes.json; it holds \['train-ASD027--003'"):
        emdata.prepare(ID, volumes=["train-nope"])
    image = folder / "7classes_version/train/images/CNT042_001.png"
    Image.fromarray(np.zeros((64, 66), np.uint8)).save(image)
    with pytest.raises(ValueError, match=r"7classes_version/train/images/CNT042_001.png: image is 66×64 \(W×H\) "
                                         r"but the COCO file says width 64 height 66"):
        emdata.prepare(ID, volumes=["train-CNT042_001"])
    grey = truth["volumes"]["train-CNT042_001"]["raw"][0]
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(image)  # RGB with equal channels: exact
    (vol,) = emdata.prepare(ID, volumes=["train-CNT042_001"])
    assert np.array_equal(vol.raw[0], grey) and "read as greyscale (first channel)" in vol.meta["notes"][0]
    rgb = np.stack([grey, grey // 2, grey], axis=2)
    Image.fromarray(rgb).save(image)  # channels differ: PIL's luma
    (vol,) = emdata.prepare(ID, volumes=["train-CNT042_001"])
    assert np.array_equal(vol.raw[0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert "converted to greyscale with PIL's ITU-R 601-2 luma" in vol.meta["notes"][0]
    coco4 = folder / "7classes_version/train/annotations/annotations_4classes.json"
    doc = json.loads(coco4.read_text())
    doc["annotations"][2]["category_id"] = 0
    coco4.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"annotations_4classes.json: annotation 3 \(image 1\) has category_id 0"):
        emdata.prepare(ID, volumes=["train"], classes=4)
    coco7 = folder / "7classes_version/train/annotations/annotations_7classes.json"
    doc = json.loads(coco7.read_text())
    doc["categories"][6]["name"] = "Lysosomes"
    coco7.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"annotations_7classes.json: category 7 'Lysosomes' is not one of the "
                                         r"seven classes"):
        emdata.prepare(ID, volumes=["train"])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("tem-neutrostruct", tmp_path, expected=lambda t: {
        name: {"raw": v["raw"], "instances": v["instances"]} for name, v in t["volumes"].items()
    })
