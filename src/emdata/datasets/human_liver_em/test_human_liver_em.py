"""human-liver-em through the loopback mirror: voxel-exact boxes from strip TIFFs read by byte
range (request counts from the server log), PNG masks fetched once ever, unpublished classes
reported, clear errors, and --full built shard by shard on dask with resume."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

import emdata
from emdata.catalog import get_card
from emdata.datasets.human_liver_em import full, recipe
from emdata.datasets.human_liver_em import source as src
from emdata.datasets.human_liver_em.replica import mask_file, raw_file, write_human_liver_em_replica
from emdata.formats.tiff import TiffFormatError
from emdata.store.chunking import choose_chunks
from emdata.store.manifest import read_manifest
from emdata.store.sharded import BuildError, Region
from emdata.store.verify import verify_volume
from emdata.store.volume import open_volume
from emdata.testing import MirrorServer
from emdata.testing.harness import check_recipe

UNCONFIRMED_ABSENT = ["bile_duct", "cell_boundary", "cholangiocyte", "endothelial", "sinusoid"]
PRESENT = ["er", "hepatocyte", "mito", "nucleus"]


def _gets(mirror: MirrorServer, start: int = 0) -> list[Any]:
    return [r for r in mirror.log[start:] if r.method == "GET"]


def _by_file(requests: list[Any]) -> Counter[str]:
    return Counter(r.path.rsplit("/", 1)[-1] for r in requests)


def _strip_span(path: Path, y0: int, y1: int) -> str:
    """The Range header covering exactly the strips of rows y0..y1-1 (one row per strip)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    return f"bytes={offsets[y0]}-{offsets[y1 - 1] + counts[y1 - 1] - 1}"


def _check_box(vol: Any, truth: dict[str, Any], box: tuple[slice, slice, slice]) -> None:
    assert vol.raw.dtype == np.uint16 and np.array_equal(vol.raw[...], truth["raw"][box])
    assert sorted(vol.labels) == PRESENT
    for cls in PRESENT:
        assert vol.labels[cls].dtype == np.uint8
        assert np.array_equal(vol.labels[cls][...], truth["masks"][cls][box] // 255), cls


@pytest.fixture
def truth(mirror_root: Path) -> dict[str, Any]:
    return write_human_liver_em_replica(mirror_root)


def test_box_is_voxel_exact_with_strip_reads_and_masks_fetched_once(truth: dict[str, Any], mirror: MirrorServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(src, "LAYOUT_PROBE", 4096)  # the replica's 200 KB slices would otherwise come whole
    vol, = emdata.prepare("human-liver-em", bbox="1:5,20:200,30:300")
    assert vol.name == "z1-5_y20-200_x30-300" and vol.split == "all"
    _check_box(vol, truth, (slice(1, 5), slice(20, 200), slice(30, 300)))
    meta = vol.meta
    assert vol.voxel_size == (1.0, 1.0, 1.0)
    assert meta["voxel_size_placeholder"] is True and meta["voxel_size_verified"] is False
    assert "placeholder" in meta["voxel_size_note"] and any("placeholder" in n for n in meta["notes"])
    assert meta["bbox"] == "1:5,20:200,30:300" and meta["bbox_torch_em_order"] == [30, 300, 20, 200, 1, 5]
    assert {k: meta["raw_tiff"][k] for k in ("compression", "predictor", "rows_per_strip", "dtype")} == {
        "compression": 5, "predictor": 2, "rows_per_strip": 1, "dtype": "uint16"}
    assert meta["classes_missing"] == UNCONFIRMED_ABSENT
    assert {c: m["status"] for c, m in meta["masks"].items()} == {
        **{c: "not published" for c in UNCONFIRMED_ABSENT}, **{c: "stored" for c in PRESENT}}
    assert [(c["value"], c["name"], c["ontology"]) for c in vol.classes("mito")] == [
        (0, "background", "background"), (1, "mito", "mitochondria")]
    assert vol.meta["labels"]["hepatocyte"]["annotates"] == ["background", "hepatocyte"]
    assert verify_volume(vol.path, deep=True).ok
    assert "z1-5_y20-200_x30-300" in read_manifest(vol.path.parent)["volumes"]

    # raw: per slice one GET of the layout probe (its Content-Range gives the size: no HEAD) and one
    # GET of exactly the box's strips
    raw_gets = [r for r in _gets(mirror) if "humanliver_raw_" in r.path]
    assert not [r for r in mirror.log if r.method == "HEAD" and "humanliver_raw_" in r.path]
    for z in range(1, 5):
        name = f"humanliver_raw_{z:03d}.tif"
        ranges = [r.range for r in raw_gets if r.path.endswith(name)]
        assert ranges == ["bytes=0-4095", _strip_span(truth["files"]["raw"][z], 20, 200)]
    assert len(raw_gets) == 2 * 4
    # masks: each published file once; each unpublished folder: one GET and one HEAD, both 404
    mask_gets = [r for r in _gets(mirror) if r.path.endswith(".png")]
    assert all(r.range is None for r in mask_gets)
    assert _by_file([r for r in mask_gets if r.status == 200]) == Counter(
        {mask_file(c, z).rsplit("/", 1)[-1]: 1 for c in PRESENT for z in range(1, 5)})
    assert sorted(r.path.split("/")[-2] for r in mirror.log if r.status == 404) == sorted(
        f"humanliver_{c}_mask" for c in UNCONFIRMED_ABSENT for _ in ("GET", "HEAD"))

    # the same box again: no request at all, nothing rewritten
    before, stamp = len(mirror.log), (vol.path / "emdata-complete.json").stat().st_mtime_ns
    assert emdata.prepare("human-liver-em", bbox="1:5,20:200,30:300")[0].path == vol.path
    assert len(mirror.log) == before and (vol.path / "emdata-complete.json").stat().st_mtime_ns == stamp

    # an overlapping box: no mask of slices 1..4 again, only the missing strips, layouts from the cache
    second, = emdata.prepare("human-liver-em", bbox="0:6,100:250,0:320")
    _check_box(second, truth, (slice(0, 6), slice(100, 250), slice(0, 320)))
    new = _gets(mirror, before)
    assert _by_file([r for r in new if r.path.endswith(".png")]) == Counter(
        {mask_file(c, z).rsplit("/", 1)[-1]: 1 for c in PRESENT for z in (0, 5)})
    for z in range(1, 5):
        ranges = [r.range for r in new if r.path.endswith(f"humanliver_raw_{z:03d}.tif")]
        assert ranges == [_strip_span(truth["files"]["raw"][z], 200, 250)]  # rows 100..199 were cached
    for z in (0, 5):
        assert len([r for r in new if r.path.endswith(f"humanliver_raw_{z:03d}.tif")]) == 2
    assert not [r for r in mirror.log[before:] if r.status == 404]  # unpublished folders are remembered
    every_mask = [r for r in mirror.log if r.path.endswith(".png") and r.status == 200]
    assert max(_by_file(every_mask).values()) == 1  # every mask file fetched once, ever


def test_torch_em_order_boxes_and_open_ends(truth: dict[str, Any], mirror: MirrorServer) -> None:
    text = recipe.bbox_from_torch_em(x_min=30, x_max=300, y_min=20, y_max=200, z_min=1, z_max=5)
    assert text == "1:5,20:200,30:300"
    first, = emdata.prepare("human-liver-em", bbox=text)
    before = len(mirror.log)
    assert emdata.prepare("human-liver-em", bbox="1:5,20:200,30:300")[0].path == first.path
    assert len(mirror.log) == before
    tail, = emdata.prepare("human-liver-em", bbox="4:,:,200:")  # open ends: slice count and size from the server
    assert tail.name == "z4-6_y0-256_x200-320"
    _check_box(tail, truth, (slice(4, 6), slice(0, 256), slice(200, 320)))
    assert verify_volume(tail.path, deep=True).ok


def test_bad_boxes_and_options_are_clear_errors(truth: dict[str, Any], mirror: MirrorServer) -> None:
    with pytest.raises(ValueError, match=r"a bbox is required .*--bbox 290:306,9763:10275,9786:10298.*"
                                         r"0:597,469:19570,1195:18890.*--full"):
        emdata.prepare("human-liver-em")
    with pytest.raises(ValueError, match=r"either bbox='0:1,0:8,0:8' .* or full=True"):
        emdata.prepare("human-liver-em", bbox="0:1,0:8,0:8", full=True)
    with pytest.raises(ValueError, match=r"scheduler='tcp://x:1' applies to --full builds only"):
        emdata.prepare("human-liver-em", bbox="0:1,0:8,0:8", scheduler="tcp://x:1")
    with pytest.raises(ValueError, match=r"bbox '0:1,0:8' is not 'z0:z1,y0:y1,x0:x1'"):
        emdata.prepare("human-liver-em", bbox="0:1,0:8")
    with pytest.raises(ValueError, match=r"no volume\(s\) \['train'\]"):
        emdata.prepare("human-liver-em", volumes=["train"], bbox="0:1,0:8,0:8")
    with pytest.raises(ValueError, match=r"does not take option\(s\) subset"):
        emdata.prepare("human-liver-em", bbox="0:1,0:8,0:8", subset="x")
    assert mirror.log == []
    with pytest.raises(ValueError, match=r"outside the slices of 256 × 320 px .*humanliver_raw_000\.tif"):
        emdata.prepare("human-liver-em", bbox="0:2,0:300,0:10")
    with pytest.raises(src.MissingSliceError, match=r"humanliver_raw_009\.tif is not on the server"):
        emdata.prepare("human-liver-em", bbox="9:10,0:8,0:8")
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", "human-liver-em"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "a bbox is required" in run.stderr and "Traceback" not in run.stderr


def test_mask_and_tiff_problems_name_the_file(truth: dict[str, Any], mirror_root: Path, mirror: MirrorServer) -> None:
    bad = truth["masks"]["mito"][2].copy()
    bad[5, 5] = 128
    Image.fromarray(bad, mode="L").save(mirror_root / mask_file("mito", 2))
    with pytest.raises(TiffFormatError, match=r"humanliver_mito_mask_002\.png: mask values \[128\] found; .*0/255"):
        emdata.prepare("human-liver-em", bbox="2:3,0:16,0:16")
    (mirror_root / mask_file("hepatocyte", 4)).unlink()
    with pytest.raises(src.MissingSliceError, match=r"humanliver_hepatocyte_mask has slice 003 but not slice 004"):
        emdata.prepare("human-liver-em", bbox="3:5,0:16,0:16")
    (mirror_root / mask_file("hepatocyte", 0)).unlink()  # missing at the box start, present at its end
    with pytest.raises(src.MissingSliceError, match=r"has slice 001 but not slice 000 .*some slices only"):
        emdata.prepare("human-liver-em", bbox="0:2,0:16,0:16")
    (mirror_root / mask_file("er", 1)).unlink()
    with pytest.raises(src.MissingSliceError, match=r"humanliver_er_mask_001\.png is not on the server .*confirmed"):
        emdata.prepare("human-liver-em", bbox="1:2,0:16,0:16")
    tifffile.imwrite(mirror_root / raw_file(5), truth["raw"][5], compression="zlib", rowsperstrip=1)
    with pytest.raises(TiffFormatError, match=r"humanliver_raw_005\.tif: Compression \(259\) = 8 .*1 \(none\) or 5"):
        emdata.prepare("human-liver-em", bbox="5:6,0:16,0:16")


FILLED: list[tuple[int, int, int]] = []
_REAL_FILL = full.fill_from_staging


def counting_fill(staging: str, region: Region, name: str) -> np.ndarray:
    """``full.fill_from_staging`` that records which level-0 shards were written (picklable by name)."""
    if name == "raw":
        FILLED.append(region.index)
    return _REAL_FILL(staging, region, name)


def _small_shards(shape: tuple[int, ...], voxel: tuple[float, float, float], itemsize: int) -> tuple[Any, Any]:
    """Real shards on the small replica: chunks of at most 2×64×64, shards of 1×2×2 chunks."""
    chunks, _ = choose_chunks(shape, voxel, itemsize)
    chunks = tuple(min(c, m) for c, m in zip(chunks, (2, 64, 64)))
    return chunks, tuple(min(k * c, -(-n // c) * c) for c, k, n in zip(chunks, (1, 2, 2), shape))


def _rename_tissue_parameter(path: Path, old: str, new: str) -> None:
    doc = json.loads((path / "zarr.json").read_text())
    parameters = doc["attributes"]["emdata"]["provenance"]["parameters"]
    parameters[new] = parameters.pop(old)
    (path / "zarr.json").write_text(json.dumps(doc))


def test_full_builds_shard_by_shard_in_parallel_and_resumes(truth: dict[str, Any], mirror: MirrorServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import LocalCluster

    monkeypatch.setattr(full, "CHUNKING", _small_shards)
    monkeypatch.setattr(full, "LOCAL_CLUSTER", {"processes": False, "n_workers": 2})
    monkeypatch.setattr(full, "fill_from_staging", counting_fill)
    FILLED.clear()
    seen: list[Region] = []

    def interrupt(region: Region) -> None:
        seen.append(region)
        if len(seen) == 4:
            raise RuntimeError("interrupted after 4 shards")

    with pytest.raises(BuildError, match="interrupted after 4 shards"):
        full.build_full(get_card("human-liver-em"), on_region=interrupt)  # default: a LocalCluster (in-process)
    path = emdata.config.prepared_dir("human-liver-em") / "full.ome.zarr"
    building, staging = path.parent / ".full.ome.zarr.building", path.parent / ".full.ome.zarr.staging"
    with pytest.raises(FileNotFoundError):
        open_volume(path)
    assert len(list((staging / ".slices").glob("*.json"))) == 6  # every slice staged before the shards
    done = {tuple(int(v) for v in p.stem.split("_")) for p in (building / ".emdata-shards" / "0").glob("*.json")}
    grid = set(np.ndindex(6 // 2, 256 // 128, -(-320 // 128)))
    assert set(FILLED) == done and 4 <= len(done) < len(grid)
    FILLED.clear()
    before = len(mirror.log)
    with LocalCluster(n_workers=2, processes=False, threads_per_worker=1, dashboard_address=":0") as cluster:
        vol, = emdata.prepare("human-liver-em", full=True, scheduler=cluster.scheduler_address)
    assert len(mirror.log) == before  # nothing fetched again: staged slices, cached layouts and masks
    assert sorted(FILLED) == sorted(grid - done)  # only the missing shards were written
    assert not building.exists() and not staging.exists()

    assert vol.name == "full" and vol.shape == (6, 256, 320)
    _check_box(vol, truth, (slice(0, 6), slice(0, 256), slice(0, 320)))
    assert vol.meta["bbox"] == "0:6,0:256,0:320" and "whole image" in vol.meta["region_note"]
    assert vol.meta["classes_missing"] == UNCONFIRMED_ABSENT and vol.meta["voxel_size_placeholder"] is True
    assert vol.raw.shards == (2, 128, 128) and vol.labels["er"].shards == (2, 128, 128)
    assert verify_volume(vol.path, deep=True).ok
    box, = emdata.prepare("human-liver-em", bbox="0:6,0:256,0:320")  # the same region as a box
    assert box.n_levels == vol.n_levels
    for i in range(box.n_levels):
        assert np.array_equal(box.level(i)[...], vol.level(i)[...])
        for cls in PRESENT:
            assert np.array_equal(box.label_level(cls, i)[...], vol.label_level(cls, i)[...])
    assert box.meta["labels"]["er"]["classes"] == vol.meta["labels"]["er"]["classes"]
    before = len(mirror.log)
    assert emdata.prepare("human-liver-em", full=True)[0].path == vol.path  # reused: no cluster, no request
    assert len(mirror.log) == before
    _rename_tissue_parameter(path, full.TISSUE_KEY, full.LEGACY_TISSUE_KEY)  # as stores built before the rename
    assert emdata.prepare("human-liver-em", full=True)[0].path == vol.path  # still reused
    assert len(mirror.log) == before
    assert "full" in read_manifest(path.parent)["volumes"]


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    # the replica serves four of the nine mask folders (the others are left out with a warning)
    check_recipe("human-liver-em", tmp_path, expected=lambda t: {"z0-2_y0-32_x0-40": {
                     "raw": t["raw"], **{name: mask > 0 for name, mask in t["masks"].items()}}},
                 unwritten_layers=set(UNCONFIRMED_ABSENT))
