"""Parlakgul liver (EMPIAR-10791) end to end through the loopback mirror: bbox cut-outs of two
samples (1857 without Plasma Membrane), voxel-exact raw and per-class layers, strip-TIFF range
reads vs whole-file fallback, natural slice order, verified, idempotent, clear errors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import emdata
from emdata.config import downloads_dir, prepared_dir
from emdata.datasets.parlakgul_liver.recipe import ParlakgulFormatError
from emdata.datasets.parlakgul_liver.replica import (
    classes,
    host_path,
    member_name,
    raw_url,
    write_parlakgul_liver_replica,
    zip_url,
)
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe

ID = "parlakgul-liver"


def _raw_requests(mirror, sample_stem: str) -> list:  # type: ignore[no-untyped-def]
    return [r for r in mirror.log if sample_stem in r.path and r.path.endswith(".tif")]


def test_two_samples_voxel_exact_per_class_layers_and_verified(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    truth = write_parlakgul_liver_replica(mirror_root, samples=("6461", "1857"))
    vols = emdata.prepare(ID, sample=["6461", "1857"], bbox="1:5,13:45,7:70")  # crosses strips of 8 rows
    box = np.s_[1:5, 13:45, 7:70]
    assert [v.name for v in vols] == ["6461-z1-5_y13-45_x7-70", "1857-z1-5_y13-45_x7-70"]
    for vol, sample in zip(vols, ("6461", "1857")):
        want = truth[sample]
        assert vol.split == "all" and vol.voxel_size == (8.0, 8.0, 8.0)
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], want["raw"][box])
        assert sorted(vol.labels) == sorted(classes(sample))
        for name, mask in want["labels"].items():
            got = vol.labels[name]
            assert got.dtype == np.uint8 and np.array_equal(got[...], mask[box]), name
        assert vol.meta["sample"] == sample and vol.meta["bbox"] == "1:5,13:45,7:70"
        assert vol.meta["sample_shape"] == [6, 64, 80]
        assert vol.meta["raw_source"]["reader"] == ["strip-ranges"]
        for name, union in (("er", "er"), ("er_sheets", "er_sheets"), ("mito", "mitochondria"),
                            ("nuclear_membrane", "nuclear_membrane")):
            mapping = vol.meta["labels"][name]["mapping"]
            assert (mapping["0"]["name"], mapping["1"]["name"]) == ("background", union)
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    six, climp = vols
    # ER and ER sheets overlap: both layers hold the same voxel, nothing collides
    both = (six.labels["er"][...] == 1) & (six.labels["er_sheets"][...] == 1)
    assert both.any()
    assert "plasma_membrane" not in climp.labels and "plasma_membrane" in six.labels
    assert any("no Plasma Membrane" in n and "1857 Obese Climp63 Plasma Membrane.zip" in n for n in climp.meta["notes"])
    sources = six.meta["provenance"]["sources"]
    assert sources[0]["url"] == zip_url("6461", "er") and sources[0]["fetched_from"].startswith(mirror.url)
    assert sources[-1] == {"url": raw_url("6461", 0).replace(".0000.tif", ".{z:04d}.tif"), "streamed": True}
    # only the box's raw slices, only by ranges; each ZIP fetched whole, once
    raw = _raw_requests(mirror, "Gunes_WT1")
    assert {r.path.rsplit(".", 2)[-2] for r in raw} == {"0001", "0002", "0003", "0004"}
    assert all(r.method == "HEAD" or r.range for r in raw)
    assert len(mirror.requests_for("6461 Lean ER.zip")) == 1


def test_range_reads_fetch_only_the_rows_and_keep_the_dtype(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    truth = write_parlakgul_liver_replica(mirror_root, samples=("6461",), raw_dtype="uint16", raw_layout="lzw",
                                          slices=4, shape=(512, 256))
    (vol,) = emdata.prepare(ID, sample="6461", bbox="2:4,400:404,10:30")
    assert vol.raw.dtype == np.uint16 and np.array_equal(vol.raw[...], truth["6461"]["raw"][2:4, 400:404, 10:30])
    assert vol.meta["raw_source"] == {"url_pattern": raw_url("6461", 0).replace(".0000.tif", ".{z:04d}.tif"),
                                      "dtype": "uint16", "reader": ["strip-ranges"]}
    size = host_path(mirror_root, raw_url("6461", 2)).stat().st_size
    gets = [r for r in _raw_requests(mirror, ".0002.tif") if r.method == "GET"]
    assert gets and all(r.range for r in gets)
    assert gets[0].range == "bytes=0-65535" and int(gets[-1].range[6:].split("-")[0]) > 65535
    assert size > 128 * 1024 and sum(r.content_length or 0 for r in gets) < size / 2  # header probe + 4 rows


def test_tiled_slices_are_fetched_whole(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    truth = write_parlakgul_liver_replica(mirror_root, samples=("1857",), raw_layout="tiled")
    (vol,) = emdata.prepare(ID, sample="1857", bbox="4:6,3:40,17:33")
    assert np.array_equal(vol.raw[...], truth["1857"]["raw"][4:6, 3:40, 17:33])
    assert vol.meta["raw_source"]["reader"] == ["whole-file"]
    assert (downloads_dir(ID) / "1857-raw" / "Gunes_CLIMP63_8x8x8nm_3MHz.0004.tif").is_file()
    assert not _raw_requests(mirror, ".0003.tif")


def test_open_bbox_label_encoding_255_and_volume_alias(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    truth = write_parlakgul_liver_replica(mirror_root, samples=("6461",), label_max=255)
    (vol,) = emdata.prepare(ID, volumes=["6461"], bbox="3:,:,40:")
    assert vol.name == "6461-z3-6_y0-64_x40-80"
    assert np.array_equal(vol.labels["mito"][...], truth["6461"]["labels"]["mito"][3:, :, 40:])
    assert vol.meta["label_sources"]["mito"]["encoding"] == "0/255"
    assert any("0/255" in n for n in vol.meta["notes"])
    requests = len(mirror.log)
    assert emdata.prepare(ID, sample="6461", bbox="3:,:,40:")[0].name == vol.name  # open ends: all from caches
    assert len(mirror.log) == requests


def test_natural_slice_order_of_unpadded_members(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    truth = write_parlakgul_liver_replica(mirror_root, samples=("6461",), slices=12, member_names="unpadded",
                                          shape=(32, 40))
    (vol,) = emdata.prepare(ID, sample="6461", bbox="8:12,:,:")  # slice_10 and slice_11 sort before slice_2 as text
    for name, mask in truth["6461"]["labels"].items():
        assert np.array_equal(vol.labels[name][...], mask[8:12]), name
    assert vol.meta["label_sources"]["er"]["members"] == ["6461 Lean ER/slice_8.tif", "6461 Lean ER/slice_11.tif"]
    assert any("unpadded numbers" in n for n in vol.meta["notes"])


def _snapshot(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in root.rglob("*") if p.is_file()}


def test_rerun_makes_no_request_and_force_rebuilds(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    write_parlakgul_liver_replica(mirror_root, samples=("1857",))
    (first,) = emdata.prepare(ID, sample="1857", bbox="0:3,0:20,0:20")
    before, requests = _snapshot(prepared_dir(ID), downloads_dir(ID)), len(mirror.log)
    (again,) = emdata.prepare(ID, sample=["1857"], bbox="0:3,0:20,0:20")
    assert again.path == first.path and len(mirror.log) == requests
    assert _snapshot(prepared_dir(ID), downloads_dir(ID)) == before
    (rebuilt,) = emdata.prepare(ID, sample="1857", bbox="0:3,0:20,0:20", force=True)
    assert rebuilt.path == first.path and verify_volume(rebuilt.path, deep=True).ok
    assert len(mirror.requests_for("1857 Obese Climp63 ER.zip")) == 1  # the ZIP stays cached


def test_missing_or_bad_options_fail_before_any_request(mirror) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"a bbox is required .*6461 \(lean\): 5638×8000×12000 voxels \(z, y, x\)"
                                         r".*--sample 6461 --bbox 2811:2827,3872:4128,5872:6128"):
        emdata.prepare(ID, sample="6461")
    with pytest.raises(ValueError, match=r"choose a sample with --sample .*1857 \(obese Climp63\): 3629×9650×9700"):
        emdata.prepare(ID, bbox="0:4,0:8,0:8")
    with pytest.raises(ValueError, match=r"no sample\(s\) \['1234'\]; choose from \['6461', '6464', '9430', '1857'\]"):
        emdata.prepare(ID, sample=["6461", "1234"], bbox="0:4,0:8,0:8")
    with pytest.raises(ValueError, match=r"lies outside sample 1857 \(published shape\) of shape \(3629, 9650, 9700\)"):
        emdata.prepare(ID, sample="1857", bbox="0:4,0:8,9000:9701")
    with pytest.raises(ValueError, match=r"--sample \['6461'\] and --volume \['6464'\] disagree"):
        emdata.prepare(ID, sample="6461", volumes=["6464"], bbox="0:4,0:8,0:8")
    with pytest.raises(ValueError, match=r"bbox '0:4,0:8' is not 'z0:z1,y0:y1,x0:x1'"):
        emdata.prepare(ID, sample="6461", bbox="0:4,0:8")
    assert mirror.log == []


def test_box_outside_the_real_volume(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    write_parlakgul_liver_replica(mirror_root, samples=("6461",))
    with pytest.raises(ValueError, match=r"lies outside sample 6461 \(6 slices in its class ZIPs\)"):
        emdata.prepare(ID, sample="6461", bbox="4:8,0:8,0:8")
    with pytest.raises(ValueError, match=r"lies outside sample 6461 of shape \(6, 64, 80\).*e.g. --bbox 0:6,0:64,0:80"):
        emdata.prepare(ID, sample="6461", bbox="0:2,0:8,70:90")


def _replace_member(root: Path, sample: str, layer: str, z: int, mask: np.ndarray) -> None:
    path = host_path(root, zip_url(sample, layer))
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    buf = io.BytesIO()
    tifffile.imwrite(buf, mask, photometric="minisblack")
    members[member_name(sample, layer, z)] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _drop_member(root: Path, sample: str, layer: str, z: int) -> None:
    path = host_path(root, zip_url(sample, layer))
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != member_name(sample, layer, z)}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _value(value: int, shape: tuple[int, int] = (64, 80)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[5, 9] = value
    return mask


@pytest.mark.parametrize(("corrupt", "message"), [
    (lambda root: _replace_member(root, "6461", "mito", 2, _value(7)),
     r"6461 Lean Mitochondria.zip:6461 Lean Mitochondria/6461 Lean Mitochondria 0002.tif \(slice 2\): value\(s\) "
     r"\[7\] in a binary mask; expected \{0, 1\} or \{0, 255\}"),
    (lambda root: _replace_member(root, "6461", "er", 3, _value(255)),
     r"6461 Lean ER.zip:6461 Lean ER/6461 Lean ER 0003.tif \(slice 3\): foreground value 255, but .* uses 1"),
    (lambda root: _replace_member(root, "6461", "lipid_droplet", 1, _value(1, (64, 81))),
     r"6461 Lean Lipid Droplet 0001.tif \(slice 1\): mask shape \(64, 81\) \(y, x\) differs from the raw slices' "
     r"\(64, 80\)"),
    (lambda root: _drop_member(root, "6461", "er_tubules", 5),
     r"class ZIPs hold different numbers of TIFF slices \(.*6461 Lean ER Tubules.zip: 5"),
])
def test_bad_segmentation_is_refused_with_member_and_value(mirror_root: Path, mirror, corrupt, message: str) -> None:  # type: ignore[no-untyped-def]
    write_parlakgul_liver_replica(mirror_root, samples=("6461",))
    corrupt(mirror_root)
    with pytest.raises(ParlakgulFormatError, match=message):
        emdata.prepare(ID, sample="6461", bbox="1:4,0:64,0:80")
    assert not (prepared_dir(ID) / "6461-z1-4_y0-64_x0-80.ome.zarr").exists()


def test_raw_slices_must_match(mirror_root: Path, mirror) -> None:  # type: ignore[no-untyped-def]
    write_parlakgul_liver_replica(mirror_root, samples=("6461",))
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((64, 80), np.uint16), photometric="minisblack")
    host_path(mirror_root, raw_url("6461", 3)).write_bytes(buf.getvalue())
    with pytest.raises(ParlakgulFormatError, match=r"Gunes_WT1_8x8x8nm_3MHz.0003.tif: slice of shape \(64, 80\) dtype "
                                                   r"uint16 differs from .*Gunes_WT1_8x8x8nm_3MHz.0002.tif"):
        emdata.prepare(ID, sample="6461", bbox="2:5,0:8,0:8")


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("parlakgul-liver", tmp_path, expected=lambda t: {
        f"{s}-z0-6_y0-64_x0-80": {"raw": v["raw"], **v["labels"]} for s, v in t.items()
    })
