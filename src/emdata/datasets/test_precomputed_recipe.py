"""The precomputed bbox recipes (microns-minnie65, microns-layer23, h01, j0126, hemibrain, kasthuri) end to end:
CloudVolume-written replica layers at the cards' paths, served by the loopback mirror."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import emdata
from emdata.boxes import BoxTooLargeError
from emdata.catalog import get_card
from emdata.config import prepared_dir
from emdata.datasets.h01 import replica as h01
from emdata.datasets.hemibrain import replica as hemibrain
from emdata.datasets.j0126 import replica as j0126
from emdata.datasets.kasthuri import replica as kasthuri
from emdata.datasets.microns_layer23 import replica as layer23
from emdata.datasets.microns_minnie65 import replica as minnie65
from emdata.sources.precomputed import BoxOutOfBoundsError, MissingChunksError
from emdata.store.verify import verify_volume
from emdata.testing.precomputed import ReplicaLayer, write_precomputed_layer

pytestmark = pytest.mark.skipif(find_spec("cloudvolume") is None, reason="needs emdata[precomputed]")

Box = tuple[slice, slice, slice]


@pytest.fixture(autouse=True)
def tmp_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing cloudvolume creates ~/.cloudvolume: keep it out of the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def box_of(text: str) -> Box:
    return tuple(slice(*map(int, part.split(":"))) for part in text.split(","))  # type: ignore[return-value]


def repeat(data: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    for axis, f in enumerate(factor):
        data = np.repeat(data, f, axis=axis)
    return data


def coarse_at(layer: ReplicaLayer, box: Box, factor: tuple[int, int, int]) -> np.ndarray:
    """The labels of a layer ``factor`` times coarser than the EM, for an EM ``box`` (nearest)."""
    fine = repeat(layer.data, factor)
    return fine[tuple(slice(s.start - o * f, s.stop - o * f) for s, o, f in zip(box, layer.offset, factor))]


def assert_verified_and_reused(dataset: str, vol: emdata.Volume, mirror, **options: str) -> None:
    report = verify_volume(vol.path, deep=True)
    assert report.ok, report.problems
    stamp = (vol.path / "zarr.json").stat().st_mtime_ns
    mirror.log.clear()
    (again,) = emdata.prepare(dataset, **options)
    assert again.path == vol.path and mirror.log == []  # reused without a single request
    assert (vol.path / "zarr.json").stat().st_mtime_ns == stamp


def chunk_paths(mirror) -> set[str]:
    return {r.path.rsplit("/", 2)[0] for r in mirror.log if not r.path.endswith("/info")}


# -- one case per dataset: voxel-exact raw and labels, dtypes, voxel size, verify, rerun ---------------------

BBOX = {  # each crosses chunk edges (chunks of 8 × 16 × 16 voxels from each layer's offset)
    "microns-minnie65": "22:35,100:130,170:200",
    "microns-layer23": "3:14,101:141,119:157",  # odd starts: the half-resolution segmentation is cut mid-voxel
    "h01": "6:15,130:170,70:100",
    "j0126": "5:14,20:50,35:70",
    "hemibrain": "33:50,65:100,97:130",
    "kasthuri": "9:18,40:70,20:50",
}
CASES: dict[str, tuple[Callable[..., dict[str, ReplicaLayer]], tuple[float, float, float]]] = {
    "microns-minnie65": (minnie65.write_microns_minnie65_replica, (40.0, 8.0, 8.0)),
    "microns-layer23": (layer23.write_microns_layer23_replica, (40.0, 4.0, 4.0)),
    "h01": (h01.write_h01_replica, (33.0, 4.0, 4.0)),
    "j0126": (j0126.write_j0126_replica, (20.0, 10.0, 10.0)),
    "hemibrain": (hemibrain.write_hemibrain_replica, (8.0, 8.0, 8.0)),
    "kasthuri": (kasthuri.write_kasthuri_replica, (30.0, 6.0, 6.0)),
}


NOMINAL_FRAME = {"microns-layer23": (40.0, 3.58, 3.58)}
"""Datasets whose layers' info states a nominal voxel frame, not the card's physical voxel size."""


def expected_labels(dataset: str, layers: dict[str, ReplicaLayer], box: Box) -> dict[str, np.ndarray]:
    if dataset == "microns-minnie65":
        return {"segmentation": layers["seg_v1300"].at(box)}
    if dataset == "h01":
        return {"c3": coarse_at(layers["c3"], box, (1, 2, 2))}
    if dataset == "microns-layer23":
        return {"segmentation": coarse_at(layers["segmentation"], box, (1, 2, 2))}
    if dataset == "hemibrain":
        return {"segmentation": layers["segmentation"].at(box), "mito": coarse_at(layers["mito"], box, (2, 2, 2))}
    name = next(k for k in layers if k != "em")
    return {name: layers[name].at(box)}


@pytest.mark.parametrize("dataset", list(CASES))
def test_bbox_is_voxel_exact_verified_and_reused(dataset: str, mirror_root: Path, mirror,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    writer, voxel = CASES[dataset]
    layers = writer(mirror_root)
    box = box_of(BBOX[dataset])
    card = get_card(dataset)
    with caplog.at_level(logging.WARNING, logger="emdata"):
        (vol,) = emdata.prepare(dataset, bbox=BBOX[dataset])
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("emdata")]
    if dataset in NOMINAL_FRAME:  # the info states the layers' frame; the card the physical voxel, listing the frame
        physical = NOMINAL_FRAME[dataset]
        assert card.voxel_size_nm == physical and [40, 4, 4] in [a["nm"] for a in card.voxel_size.alternatives]
        assert len(warnings) == 1 and "gives 40×4×4 nm" in warnings[0] and "card records 40×3.58×3.58" in warnings[0]
        assert any("lists 40×4×4 as an alternative" in n for n in vol.meta["notes"])
        assert vol.meta["voxel_size_card_nm"] == list(physical)
    else:
        assert voxel == card.voxel_size_nm  # the replicas use the cards' voxel sizes
        assert not warnings  # info agrees with the card
    suffix = "_v1300" if dataset == "microns-minnie65" else ""
    assert vol.name == "z{}-{}_y{}-{}_x{}-{}".format(*(v for s in box for v in (s.start, s.stop))) + suffix
    assert vol.split == "all" and vol.voxel_size == voxel and vol.shape == tuple(s.stop - s.start for s in box)
    assert vol.raw.dtype == np.uint8
    if dataset == "hemibrain":  # lossy JPEG: exact against CloudVolume's decoding, close to what was encoded
        np.testing.assert_array_equal(vol.raw[...], layers["em"].at(box, decoded=True))
        diff = np.abs(vol.raw[...].astype(int) - layers["em"].at(box))
        assert diff.mean() < 5 and diff.max() < 48
        assert vol.meta["precomputed"]["image"]["encoding"] == "jpeg"
    else:
        np.testing.assert_array_equal(vol.raw[...], layers["em"].at(box))
    expected = expected_labels(dataset, layers, box)
    assert sorted(vol.labels) == sorted(expected)
    for name, want in expected.items():
        got = vol.labels[name][...]
        assert got.dtype == np.uint64, name  # never narrowed
        np.testing.assert_array_equal(got, want, err_msg=name)
    prov = vol.meta["provenance"]
    assert prov["parameters"]["bbox"] == BBOX[dataset] and prov["parameters"]["mip"] == 0
    read = ["em", "seg_v1300"] if dataset == "microns-minnie65" else list(layers)
    assert [s["url"] for s in prov["sources"]] == [layers[k].url for k in read]
    assert all(s["streamed"] for s in prov["sources"])
    assert_verified_and_reused(dataset, vol, mirror, bbox=BBOX[dataset])


def test_microns_root_ids_version_and_provenance(mirror_root: Path, mirror) -> None:
    layers = minnie65.write_microns_minnie65_replica(mirror_root)
    (vol,) = emdata.prepare("microns-minnie65", bbox=BBOX["microns-minnie65"])
    ids = np.unique(vol.labels["segmentation"][...])
    assert ids.dtype == np.uint64 and 0 in ids
    assert all(len(str(i)) == 18 and str(i).startswith("8646911") for i in ids[ids > 0].tolist())
    assert int(ids[-1]) > 2**32 and vol.meta["labels"]["segmentation"]["dtype"] == "uint64"
    assert vol.meta["provenance"]["parameters"] == {"bbox": "22:35,100:130,170:200", "mip": 0, "version": "1300"}
    assert [s["url"] for s in vol.meta["provenance"]["sources"]] == [
        "precomputed://https://bossdb-open-data.s3.amazonaws.com/iarpa_microns/minnie/minnie65/em",
        "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m1300/"]
    assert vol.meta["version"] == "1300"
    assert vol.meta["labels"]["segmentation"]["mapping"]["nonzero"]["name"] == "neuron"
    for version, name in (("117", "seg"), ("943", "seg_m943")):
        mirror.log.clear()
        (other,) = emdata.prepare("microns-minnie65", bbox=BBOX["microns-minnie65"], version=version)
        assert other.name.endswith(f"_v{version}") and other.path != vol.path
        np.testing.assert_array_equal(other.labels["segmentation"][...],
                                      layers[f"seg_v{version}"].at(box_of(BBOX["microns-minnie65"])))
        assert any(p.endswith(f"/minnie65/{name}") for p in chunk_paths(mirror))


def test_microns_version_343_at_4nm_is_read_at_the_matching_mip(mirror_root: Path, mirror) -> None:
    layers = minnie65.write_microns_minnie65_replica(mirror_root, versions=("343", "1300"),
                                                     seg_voxel_nm={"343": (40.0, 4.0, 4.0)})
    mirror.log.clear()
    (vol,) = emdata.prepare("microns-minnie65", bbox=BBOX["microns-minnie65"], version="343")
    seg = layers["seg_v343"]
    assert seg.voxel_size_nm == (40.0, 4.0, 4.0) and seg.offset == (20, 192, 320)
    box = box_of(BBOX["microns-minnie65"])
    fine_box = (box[0], slice(box[1].start * 2, box[1].stop * 2), slice(box[2].start * 2, box[2].stop * 2))
    np.testing.assert_array_equal(vol.labels["segmentation"][...], seg.at(fine_box)[:, ::2, ::2])
    assert vol.voxel_size == (40.0, 8.0, 8.0)
    read = vol.meta["precomputed"]["labels"]["segmentation"]
    assert (read["mip"], read["voxel_size_nm"], read["box"]) == (1, [40.0, 8.0, 8.0], "22:35,100:130,170:200")
    # the 343 layer's 8 nm mip was read; v1300 was never touched
    paths = {r.path for r in mirror.log}
    assert any("/seg_m343/8.0_8.0_40.0/" in p for p in paths) and not any("seg_m1300" in p for p in paths)


def test_microns_bad_version_and_unaligned_segmentation(mirror_root: Path, mirror) -> None:
    with pytest.raises(ValueError, match=r"unknown segmentation version '999'; choose one of 117, 343, 943, 1300"):
        emdata.prepare("microns-minnie65", bbox="22:35,100:130,170:200", version="999")
    assert mirror.log == []
    minnie65.write_microns_minnie65_replica(mirror_root, versions=("1300",))
    ids = np.full((20, 32, 40), 864691136617970907, np.uint64)  # 12 nm: neither 8 nm nor a multiple of it
    write_precomputed_layer(mirror_root, minnie65.MICRONS_SEG["943"], ids, (40.0, 12.0, 12.0),
                            layer_type="segmentation", encoding="compressed_segmentation",
                            voxel_offset_zyx=(20, 64, 106))
    with pytest.raises(ValueError, match=r"seg_m943/ has no mip on the EM grid of 40×8×8 nm .*mip 0: 40×12×12"):
        emdata.prepare("microns-minnie65", bbox="22:35,100:130,170:200", version="v943")
    assert not list(prepared_dir("microns-minnie65").glob("*.ome.zarr"))


def test_voxel_size_is_read_from_info_and_card_difference_logged(mirror_root: Path, mirror,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    layers = j0126.write_j0126_replica(mirror_root, voxel_size_nm=(20.0, 9.0, 9.0))  # the card's alternative
    with caplog.at_level(logging.WARNING, logger="emdata"):
        (vol,) = emdata.prepare("j0126", bbox=BBOX["j0126"])
    assert vol.voxel_size == (20.0, 9.0, 9.0) and vol.meta["voxel_size_card_nm"] == [20.0, 10.0, 10.0]
    assert any("gives 20×9×9 nm" in r.getMessage() and "card records 20×10×10" in r.getMessage()
               for r in caplog.records)
    alternative = next(a for a in get_card("j0126").voxel_size.alternatives if a.get("nm") == [20, 9, 9])
    assert any(f"lists 20×9×9 as an alternative ({alternative['source']})" in n for n in vol.meta["notes"])
    np.testing.assert_array_equal(vol.labels["ffn_segmentation"][...],
                                  layers["ffn_segmentation"].at(box_of(BBOX["j0126"])))


def test_hemibrain_mito_classes_and_ignore_value(mirror_root: Path, mirror) -> None:
    hemibrain.write_hemibrain_replica(mirror_root)
    (vol,) = emdata.prepare("hemibrain", bbox=BBOX["hemibrain"])
    mito = vol.meta["labels"]["mito"]
    assert mito["kind"] == "semantic" and mito["ignore_value"] == 4
    assert mito["mapping"]["1"]["name"] == "mitochondria" and mito["mapping"]["3"]["name"] == "background"
    assert set(np.unique(vol.labels["mito"][...]).tolist()) <= {1, 2, 3, 4}
    read = vol.meta["precomputed"]["labels"]["mito"]
    assert (read["mip"], read["voxel_size_nm"], read["upsampled"]) == (0, [16.0, 16.0, 16.0], [2, 2, 2])
    assert any("mask_normalized_round6" in n for n in vol.meta["notes"])


# -- errors ----------------------------------------------------------------------------------------------------

def test_missing_bbox_names_the_bounds_and_an_example(mirror_root: Path, mirror) -> None:
    h01.write_h01_replica(mirror_root)
    with pytest.raises(ValueError, match=r"h01: a bbox is required") as err:
        emdata.prepare("h01")
    message = str(err.value)
    assert "gs://h01-release/data/20210601/4nm_raw spans z 5:17, y 128:192, x 64:144" in message
    assert "33×4×4 nm" in message and "emdata prepare h01 --bbox 5:17,128:192,64:144" in message
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", "h01"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "a bbox is required" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr


def test_missing_bbox_offline_still_says_a_bbox_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"kasthuri: a bbox is required .*--bbox z0:z1,y0:y1,x0:x1 .*"
                                         r"image_color_corrected \(its bounds could not be read: EMDATA_OFFLINE=1"):
        emdata.prepare("kasthuri")


def test_out_of_bounds_and_malformed_bbox(mirror_root: Path, mirror) -> None:
    h01.write_h01_replica(mirror_root)
    with pytest.raises(BoxOutOfBoundsError, match=r"h01: bbox '0:8,130:170,70:100' .*4nm_raw.*bounds at mip 0 are "
                                                  r"z 5:17, y 128:192, x 64:144"):
        emdata.prepare("h01", bbox="0:8,130:170,70:100")
    with pytest.raises(ValueError, match=r"h01: bbox '6:15,130:170' is not 'z0:z1,y0:y1,x0:x1'"):
        emdata.prepare("h01", bbox="6:15,130:170")
    with pytest.raises(ValueError, match=r"no volume\(s\) \['train'\].*\['full'\]"):
        emdata.prepare("h01", bbox="6:15,130:170,70:100", volumes=["train"])
    with pytest.raises(ValueError, match=r"h01 does not take option\(s\) version"):
        emdata.prepare("h01", bbox="6:15,130:170,70:100", version="2")
    (vol,) = emdata.prepare("h01", bbox="6:,:140,70:100")  # open ends are the EM bounds
    assert vol.name == "z6-17_y128-140_x70-100"


def test_labels_not_covering_the_bbox_are_an_error(mirror_root: Path, mirror) -> None:
    layers = kasthuri.write_kasthuri_replica(mirror_root)
    gt = layers["ground_truth"]
    write_precomputed_layer(mirror_root, kasthuri.KASTHURI_GT, gt.data[:, :20], gt.voxel_size_nm,
                            layer_type="segmentation", encoding="compressed_segmentation", voxel_offset_zyx=gt.offset)
    with pytest.raises(BoxOutOfBoundsError, match=r"kasthuri: .*ground_truth, which is not inside .*y 32:52"):
        emdata.prepare("kasthuri", bbox=BBOX["kasthuri"])


def test_deleted_chunk_is_a_missing_chunks_error_not_zeros(mirror_root: Path, mirror) -> None:
    layers = h01.write_h01_replica(mirror_root)
    c3 = layers["c3"]
    c3.chunk_file((13, 80, 48)).unlink()  # c3 chunk z 13:17, y 80:96, x 48:64 ↔ EM z 13:17, y 160:192, x 96:128
    with pytest.raises(MissingChunksError) as err:
        emdata.prepare("h01", bbox="6:15,130:170,70:100")
    message = str(err.value)
    assert message.startswith("h01: the bbox needs 1 chunk(s) of the label layer 'c3' gs://h01-release/data/20210601/c3")
    assert "z 13:17, y 80:96, x 48:64" in message and "not read as zeros" in message and "choose a bbox" in message
    assert err.value.url == c3.url and err.value.mip == 0 and len(err.value.missing) == 1
    assert not list(prepared_dir("h01").glob("*.ome.zarr"))
    (vol,) = emdata.prepare("h01", bbox="6:15,130:160,70:100")  # a box clear of the hole works
    assert vol.shape == (9, 30, 30)


def test_layer23_bbox_errors_and_missing_chunks(mirror_root: Path, mirror) -> None:
    layers = layer23.write_microns_layer23_replica(mirror_root)
    with pytest.raises(ValueError, match=r"microns-layer23: a bbox is required") as err:
        emdata.prepare("microns-layer23")
    assert ("son_of_alignment_v15_rechunked spans z 1:17, y 96:160, x 112:176 (voxels at mip 0, 40×4×4 nm"
            in str(err.value))
    with pytest.raises(BoxOutOfBoundsError, match=r"microns-layer23: bbox '0:8,101:141,119:157' .*bounds at mip 0 "
                                                  r"are z 1:17, y 96:160, x 112:176"):
        emdata.prepare("microns-layer23", bbox="0:8,101:141,119:157")
    layers["em"].chunk_file((9, 128, 144)).unlink()  # EM chunk z 9:17, y 128:144, x 144:160
    with pytest.raises(MissingChunksError, match=r"^microns-layer23: the bbox needs 1 chunk\(s\) of the EM "
                                                 r"precomputed://.*son_of_alignment_v15_rechunked at mip 0 .*"
                                                 r"first: z 9:17, y 128:144, x 144:160.*not read as zeros"):
        emdata.prepare("microns-layer23", bbox=BBOX["microns-layer23"])
    layers = layer23.write_microns_layer23_replica(mirror_root)  # the EM whole again
    layers["segmentation"].chunk_file((9, 64, 56)).unlink()  # seg z 9:17, y 64:80, x 56:72 ↔ EM y 128:160, x 112:144
    with pytest.raises(MissingChunksError) as missing:
        emdata.prepare("microns-layer23", bbox=BBOX["microns-layer23"])
    assert str(missing.value).startswith("microns-layer23: the bbox needs 1 chunk(s) of the label layer 'segmentation' "
                                         "precomputed://https://storage.googleapis.com/microns_public_datasets/"
                                         "pinky100_v185/seg at mip 0")
    assert "first: z 9:17, y 64:80, x 56:72" in str(missing.value)
    assert not list(prepared_dir("microns-layer23").glob("*.ome.zarr"))
    (vol,) = emdata.prepare("microns-layer23", bbox="3:14,101:127,119:157")  # clear of the hole
    box = box_of("3:14,101:127,119:157")
    np.testing.assert_array_equal(vol.labels["segmentation"][...], coarse_at(layers["segmentation"], box, (1, 2, 2)))
    read = vol.meta["precomputed"]["labels"]["segmentation"]
    assert (read["mip"], read["voxel_size_nm"], read["upsampled"], read["box"]) == (0, [40.0, 8.0, 8.0], [1, 2, 2],
                                                                                     "3:14,50:64,59:79")


def test_replica_urls_are_the_cards(mirror_root: Path) -> None:
    cards = {"microns-minnie65": [minnie65.MICRONS_EM, *minnie65.MICRONS_SEG.values()],
             "microns-layer23": [layer23.LAYER23_EM, layer23.LAYER23_SEG],
             "h01": [h01.H01_EM, h01.H01_C3], "j0126": [j0126.J0126_RAW, j0126.J0126_SEG],
             "hemibrain": [hemibrain.HEMIBRAIN_EM, hemibrain.HEMIBRAIN_SEG, hemibrain.HEMIBRAIN_MITO],
             "kasthuri": [kasthuri.KASTHURI_IMAGE, kasthuri.KASTHURI_GT]}
    for dataset, urls in cards.items():
        assert set(urls) <= {s.url for s in get_card(dataset).sources}, dataset
    assert json.loads((kasthuri.write_kasthuri_replica(mirror_root)["em"].path / "info").read_text())["scales"][0][
        "resolution"] == [6, 6, 30]


# -- size guard and region-by-region writing of large boxes -------------------------------------------


def test_box_over_the_size_limit_is_refused_before_any_chunk_request(mirror_root: Path, mirror,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    h01.write_h01_replica(mirror_root)  # uint8 EM + uint64 c3: 9 bytes per voxel
    monkeypatch.setenv("EMDATA_MAX_BOX_GB", "0.00005")  # 50 kB
    with pytest.raises(BoxTooLargeError) as err:  # 9 × 40 × 30 voxels × 9 bytes = 97 kB
        emdata.prepare("h01", bbox="6:15,130:170,70:100")
    message = str(err.value)
    assert message.startswith("h01: the bbox (EM and label layers at mip 0) z 6:15, y 130:170, x 70:100 "
                              "(9×40×30 voxels) would read 97.2 kB, over the limit of 50.0 kB")
    assert "set EMDATA_MAX_BOX_GB=1 to allow it" in message and "\n" not in message
    assert chunk_paths(mirror) == set()  # only info files were read
    assert not list(prepared_dir("h01").glob("*.ome.zarr"))
    monkeypatch.setenv("EMDATA_MAX_BOX_GB", "1")  # the override the message names
    (vol,) = emdata.prepare("h01", bbox="6:15,130:170,70:100")
    assert vol.shape == (9, 40, 30)


def _small_shards(shape: tuple[int, ...], voxel: tuple[float, float, float], itemsize: int) -> tuple[Any, Any]:
    """Chunks of at most 4×16×16 and shards of 1×2×2 chunks, so a small box has many regions."""
    from emdata.store.chunking import choose_chunks

    chunks, _ = choose_chunks(shape, voxel, itemsize)
    chunks = tuple(min(c, m) for c, m in zip(chunks, (4, 16, 16)))
    return chunks, tuple(min(k * c, -(-n // c) * c) for c, k, n in zip(chunks, (1, 2, 2), shape))


def test_large_box_is_streamed_region_by_region_with_the_same_result(mirror_root: Path, mirror,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.datasets import _precomputed_recipe as recipe
    from emdata.store import sharded

    layers = hemibrain.write_hemibrain_replica(mirror_root)  # two label layers, mito upsampled ×2
    bbox = BBOX["hemibrain"]
    (whole,) = emdata.prepare("hemibrain", bbox=bbox)
    expected = {"raw": whole.raw[...], **{k: whole.labels[k][...] for k in whole.labels}}
    meta = {k: v for k, v in whole.meta.items() if k not in ("created", "raw", "labels")}

    regions: list[tuple[int, ...]] = []
    written = sharded.ShardedVolumeWriter.write_region

    def spy(self, region, fill):  # the regions written at level 0, and how big each read is
        regions.append(region.shape)
        return written(self, region, fill)

    monkeypatch.setattr(sharded.ShardedVolumeWriter, "write_region", spy)
    monkeypatch.setattr(recipe, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(recipe, "CHUNKING", _small_shards)
    (streamed,) = emdata.prepare("hemibrain", bbox=bbox, force=True)
    assert len(regions) > 4 and all(math.prod(r) < math.prod(streamed.shape) // 4 for r in regions)
    assert streamed.path == whole.path and streamed.shape == whole.shape
    np.testing.assert_array_equal(streamed.raw[...], expected["raw"])
    np.testing.assert_array_equal(streamed.raw[...], layers["em"].at(box_of(bbox), decoded=True))
    assert sorted(streamed.labels) == sorted(whole.labels) == ["mito", "segmentation"]
    for name in whole.labels:
        got = streamed.labels[name][...]
        assert got.dtype == expected[name].dtype == np.uint64
        np.testing.assert_array_equal(got, expected[name], err_msg=name)
    assert {k: v for k, v in streamed.meta.items() if k not in ("created", "raw", "labels")} == meta
    assert streamed.meta["labels"]["mito"]["classes"] == whole.meta["labels"]["mito"]["classes"]
    assert streamed.meta["labels"]["mito"]["ignore_value"] == whole.meta["labels"]["mito"]["ignore_value"]
    assert_verified_and_reused("hemibrain", streamed, mirror, bbox=bbox)


def test_interrupted_streamed_box_resumes_where_it_stopped(mirror_root: Path, mirror,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.datasets import _precomputed_recipe as recipe
    from emdata.store import sharded

    layers = hemibrain.write_hemibrain_replica(mirror_root)
    monkeypatch.setattr(recipe, "STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(recipe, "CHUNKING", _small_shards)
    written: list[tuple[int, ...]] = []
    write_region = sharded.ShardedVolumeWriter.write_region

    def interrupt_after_five(self, region, fill):
        if len(written) == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        write_region(self, region, fill)
        written.append(region.index)

    monkeypatch.setattr(sharded.ShardedVolumeWriter, "write_region", interrupt_after_five)
    with pytest.raises(KeyboardInterrupt):
        emdata.prepare("hemibrain", bbox=BBOX["hemibrain"])
    assert not list(prepared_dir("hemibrain").glob("*.ome.zarr"))  # nothing published half-done
    first = list(written)

    def count(self, region, fill):
        write_region(self, region, fill)
        written.append(region.index)

    monkeypatch.setattr(sharded.ShardedVolumeWriter, "write_region", count)
    (vol,) = emdata.prepare("hemibrain", bbox=BBOX["hemibrain"])
    again = written[len(first):]
    assert not set(first) & set(again) and len(first) + len(again) == len(set(first) | set(again)) > 4
    box = box_of(BBOX["hemibrain"])
    np.testing.assert_array_equal(vol.raw[...], layers["em"].at(box, decoded=True))
    np.testing.assert_array_equal(vol.labels["segmentation"][...], layers["segmentation"].at(box))
    assert verify_volume(vol.path, deep=True).ok
