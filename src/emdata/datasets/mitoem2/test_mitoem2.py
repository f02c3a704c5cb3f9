"""MitoEM2 end to end through the loopback mirror: per-case volumes, both label encodings,
the jurkat_train02 reversed-axes defect, voxel sizes from the NIfTI header."""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import emdata
from emdata.datasets.mitoem2.replica import write_mitoem2_replica, zip_path
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe


def _expected_semantic_from_instances(ids: np.ndarray) -> np.ndarray:
    """The documented rule, written independently: 2 where an id face-touches another id."""
    sem = (ids > 0).astype(np.uint8)
    for axis in range(3):
        for shift in (1, -1):
            nb = np.roll(ids, shift, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = slice(0, 1) if shift == 1 else slice(-1, None)
            valid = np.ones(ids.shape, bool)
            valid[tuple(edge)] = False  # np.roll wraps around; the volume edge does not count
            sem[valid & (ids > 0) & (nb > 0) & (nb != ids)] = 2
    return sem


def _never_merged(components: np.ndarray, ids: np.ndarray) -> bool:
    """No component spans two ids (an id may be split where another overwrote it)."""
    pairs = np.unique(np.stack([components.ravel(), ids.ravel()]), axis=1)
    return len(pairs[0]) == len(np.unique(components))


def test_prepare_is_voxel_exact_in_both_encodings(mirror_root: Path, mirror) -> None:
    truth = write_mitoem2_replica(mirror_root, subsets=("beta", "jurkat", "mossy"))
    vols = {v.name: v for v in emdata.prepare("mitoem2", subset=["beta", "jurkat", "mossy"])}
    assert sorted(vols) == sorted(truth)
    for name, t in truth.items():
        vol = vols[name]
        assert vol.split == t["split"] and vol.meta["case"] == t["case"]
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], t["raw"]), name
        assert vol.voxel_size == t["spacing_zyx"] and vol.meta["voxel_size_source"] == "nifti_header"
        assert vol.meta["voxel_size_verified"] is False
        sem, inst = vol.labels["semantic"][...], vol.labels["instances"][...]
        assert vol.meta["label_encoding"] == t["encoding"]
        if t["encoding"] == "instances":
            assert vol.labels["instances"].dtype == t["label"].dtype == np.uint16
            assert np.array_equal(inst, t["label"])
            assert np.array_equal(sem, _expected_semantic_from_instances(t["label"]))
        else:
            assert np.array_equal(sem, t["label"]) and sem.dtype == np.uint8
            expected, _ = ndimage.label(t["label"] == 1)
            assert np.array_equal(inst, expected)
            assert set(vol.meta["label_values"]["values"]) == {0, 1, 2}
        # CC of class 1 separates the touching mitochondria the boundary was drawn for
        assert _never_merged(ndimage.label(sem == 1)[0][sem == 1], t["instances"][sem == 1])
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    assert vols["mossy-train01"].voxel_size == (30.0, 8.0, 8.0)
    assert vols["beta-train01"].voxel_size == (16.0, 16.0, 16.0)
    mapping = vols["jurkat-train01"].meta["labels"]["semantic"]["mapping"]
    assert mapping == {"0": {"name": "background", "id": 0}, "1": {"name": "mitochondria", "id": 3},
                       "2": {"name": "mito_boundary", "id": 4}}
    assert vols["beta-train01"].meta["labels"]["instances"]["mapping"] == {
        "0": {"name": "background", "id": 0}, "nonzero": {"name": "mitochondria", "id": 3}}
    assert vols["beta-train02"].meta["nnunet_split_role"] == "val"
    assert {v.name for v in emdata.volumes("mitoem2", split="test")} == {"beta-test01", "jurkat-test01",
                                                                          "mossy-test01"}


def test_jurkat_train02_reversed_label_axes_are_fixed(mirror_root: Path, mirror) -> None:
    truth = write_mitoem2_replica(mirror_root, subsets=("jurkat",))
    (vol,) = emdata.prepare("mitoem2", volumes=["jurkat-train02"])
    assert vol.meta["label_axes_reversed"] is True
    assert any("reversed" in n for n in vol.meta["notes"])
    assert np.array_equal(vol.labels["semantic"][...], truth["jurkat-train02"]["label"])
    (other,) = emdata.prepare("mitoem2", volumes=["jurkat-train01"])
    assert other.meta["label_axes_reversed"] is False


def test_rerun_reuses_and_selects_by_group(mirror_root: Path, mirror) -> None:
    write_mitoem2_replica(mirror_root, subsets=("mossy",))
    first = emdata.prepare("mitoem2", volumes=["mossy-train"])
    assert [v.name for v in first] == ["mossy-train01", "mossy-train02"]
    stamps = [(v.path / "zarr.json").stat().st_mtime_ns for v in first]
    again = emdata.prepare("mitoem2", volumes=["mossy-train"])
    assert [(v.path / "zarr.json").stat().st_mtime_ns for v in again] == stamps
    assert len(mirror.requests_for("Dataset004_ME2-Mossy.zip")) == 1
    forced = emdata.prepare("mitoem2", volumes=["mossy-train01"], force=True)
    assert [v.name for v in forced] == ["mossy-train01"]
    assert (forced[0].path / "zarr.json").stat().st_mtime_ns != stamps[0]


def test_header_without_spacing_falls_back_to_dataset_json(mirror_root: Path, mirror,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    write_mitoem2_replica(mirror_root, subsets=("stem",), n_train=1, n_test=0, no_header_spacing=("stem",))
    with caplog.at_level(logging.WARNING):
        (vol,) = emdata.prepare("mitoem2", subset="stem")
    assert vol.voxel_size == (30.0, 8.0, 8.0) and vol.meta["voxel_size_source"] == "dataset_json"
    assert vol.meta["voxel_size_candidates"]["nifti_header"] is None
    assert "carries no spacing" in caplog.text


def test_bad_options_and_bad_labels_are_clear(mirror_root: Path, mirror) -> None:
    with pytest.raises(ValueError, match=r"no subset\(s\) \['betta'\].*'beta'"):
        emdata.prepare("mitoem2", subset=["betta"])
    with pytest.raises(ValueError, match=r"no volume 'beta-valid01'"):
        emdata.prepare("mitoem2", volumes=["beta-valid01"])
    with pytest.raises(ValueError, match=r"subset 'mossy'.*excludes"):
        emdata.prepare("mitoem2", volumes=["mossy-train01"], subset="beta")

    write_mitoem2_replica(mirror_root, subsets=("podo",), n_train=1, n_test=0)
    target = zip_path(mirror_root, "podo")
    with zipfile.ZipFile(target) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    label = "Dataset005_ME2-Podo/labelsTr/me2-podo_train01.nii.gz"
    bad = nib.Nifti1Image(np.zeros((5, 9, 4), np.uint8), np.eye(4))
    members[label] = gzip.compress(bad.to_bytes())
    with zipfile.ZipFile(target, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ValueError, match=r"no volume\(s\) \['podo-train07'\].*podo-train01"):
        emdata.prepare("mitoem2", volumes=["podo-train07"])
    with pytest.raises(ValueError, match=r"me2-podo_train01.nii.gz: label shape \(4, 9, 5\).*image shape "
                                         r"\(6, 20, 26\).*not its reverse"):
        emdata.prepare("mitoem2", subset="podo")
    assert not (emdata.config.prepared_dir("mitoem2") / "podo-train01.ome.zarr").exists()


def test_dataset_json_spacing_is_xyz(mirror_root: Path, mirror) -> None:
    write_mitoem2_replica(mirror_root, subsets=("pyra",), n_train=1, n_test=0)
    with zipfile.ZipFile(zip_path(mirror_root, "pyra")) as zf:
        doc = json.loads(zf.read("Dataset006_ME2-Pyra/dataset.json"))
    assert doc["spacing"] == [8, 8, 30]
    (vol,) = emdata.prepare("mitoem2", subset="pyra")
    assert vol.meta["voxel_size_candidates"] == {"nifti_header": [30.0, 8.0, 8.0], "dataset_json": [30.0, 8.0, 8.0],
                                                 "card_subset": [30.0, 8.0, 8.0]}


def test_encoding_rule_and_boundary_rule_on_small_arrays() -> None:
    from emdata.datasets.mitoem2.recipe import detect_encoding, touching_boundary

    assert detect_encoding(np.array([[[0, 1, 2]]], np.uint8)) == ("classes", {"values": [0, 1, 2]})
    assert detect_encoding(np.array([[[0, 1, 1]]], np.uint8))[0] == "classes"  # binary mask, no boundary
    assert detect_encoding(np.array([[[0, 2, 2]]], np.uint8)) == ("instances", {"max_id": 2, "values": [0, 2]})
    assert detect_encoding(np.array([[[0, 7, 300]]], np.uint16)) == ("instances", {"max_id": 300})
    assert detect_encoding(np.zeros((1, 2, 2), np.uint8))[0] == "empty"
    ids = np.array([[[5, 5, 9, 9, 0, 4]]], np.uint32)
    # 5|9 touch → both sides marked; 9|0 and 0|4 touch background only; the volume edge does not count
    assert touching_boundary(ids).tolist() == [[[False, True, True, False, False, False]]]
    assert np.array_equal(_expected_semantic_from_instances(ids), np.array([[[1, 2, 2, 1, 0, 1]]]))


def test_header_unit_is_applied_only_when_it_explains_the_numbers() -> None:
    from emdata.datasets.mitoem2.recipe import _voxel_size
    from emdata.formats.nifti import read_nifti

    img = nib.Nifti1Image(np.zeros((2, 3, 4), np.uint8), np.diag([0.016, 0.016, 0.016, 1.0]))
    img.header.set_xyzt_units("micron")  # a header really in its declared unit: 0.016 µm = 16 nm
    vol = read_nifti(img.to_bytes())
    voxel, meta = _voxel_size(vol, (16.0, 16.0, 16.0), (16.0, 16.0, 16.0), "x.nii.gz")
    assert voxel == (16.0, 16.0, 16.0) and meta["voxel_size_source"] == "nifti_header"
    assert meta["nifti_header_spacing_as_stored"] == [0.016, 0.016, 0.016]
    img = nib.Nifti1Image(np.zeros((2, 3, 4), np.uint8), np.diag([8.0, 8.0, 30.0, 1.0]))
    img.header.set_xyzt_units("mm")  # nm numbers under an "mm" code: kept as nm
    voxel, meta = _voxel_size(read_nifti(img.to_bytes()), (30.0, 8.0, 8.0), None, "y.nii.gz")
    assert voxel == (30.0, 8.0, 8.0) and "nifti_header_spacing_as_stored" not in meta


def test_nifti_with_a_bad_gzip_crc_is_not_published(mirror_root: Path, mirror) -> None:
    write_mitoem2_replica(mirror_root, subsets=("podo",), n_train=1, n_test=0)
    target = zip_path(mirror_root, "podo")
    with zipfile.ZipFile(target) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    image = "Dataset005_ME2-Podo/imagesTr/me2-podo_train01_0000.nii.gz"
    blob = gzip.decompress(members[image])
    packed = bytearray(gzip.compress(blob, compresslevel=0))  # stored blocks: a flipped byte still inflates
    packed[packed.find(blob[-64:]) + 10] ^= 0x5A
    members[image] = bytes(packed)
    with zipfile.ZipFile(target, "w") as zf:  # the zip's own CRC is of the corrupt file, so it passes
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ValueError, match=r"me2-podo_train01_0000.nii.gz: the gzip data is corrupt or truncated "
                                         r"\(BadGzipFile: CRC check failed"):
        emdata.prepare("mitoem2", subset="podo")
    assert not (emdata.config.prepared_dir("mitoem2") / "podo-train01.ome.zarr").exists()


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("mitoem2", tmp_path, expected=lambda t: {
        name: {"raw": v["raw"], **({"instances": v["label"]} if v["encoding"] == "instances" else {})}
        for name, v in t.items()
    })
