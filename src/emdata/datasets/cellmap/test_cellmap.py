"""CellMap crops end to end through the loopback mirror: the shared recipe checks, then voxel-exact
raw and semantic layer, a 1.74 nm z crop, unannotated vs empty classes kept apart, only needed chunks fetched, reuse
without requests, a raw-only test crop, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import emdata
from emdata.datasets.cellmap.classes import CLASSES, paint_order
from emdata.datasets.cellmap.replica import BUCKET_HOST, write_cellmap_replica
from emdata.sources.errors import DownloadError
from emdata.testing.harness import check_recipe

Pin = Callable[[dict[str, Path]], Path]


def expected_semantic(classes: dict[str, np.ndarray]) -> np.ndarray:
    """The documented rule, from the stored arrays: finest present class wins, 255 where unknown."""
    shape = next(iter(classes.values())).shape
    out = np.zeros(shape, np.uint8)
    painted = np.zeros(shape, bool)
    unknown = np.zeros(shape, bool)
    for name in paint_order(list(classes)):
        data = classes[name]
        present = (data != 0) & (data != 255) if data.dtype == np.uint8 else data != 0
        out[present] = CLASSES[name].id
        painted |= present
        unknown |= (data == 255) if data.dtype == np.uint8 else False
    out[~painted & unknown] = 255
    return out


def expected_arrays(truth: dict) -> dict[str, dict[str, np.ndarray]]:
    """``{crop<N>: {"raw", "semantic", "instances_mito"}}`` as the recipe must store them, from the replica."""
    out = {}
    for crop_id, crop in truth["crops"].items():
        at = crop.get("read_at", {"classes": crop["classes"]})
        arrays = {"raw": crop["raw"]}
        if crop["split"] == "train":
            arrays["semantic"] = expected_semantic(at["classes"])
            if "mito" in at["classes"]:
                arrays["instances_mito"] = at["classes"]["mito"]
        out[f"crop{crop_id}"] = arrays
    return out


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness;
    the replica's crops hold mito as their only instance class, so the other instance layers stay unwritten."""
    unwritten = {f"instances_{name}" for name in ("nuc", "vim", "ves", "endo", "lyso", "ld", "perox", "np", "mt",
                                                  "cell")}
    check_recipe("cellmap", tmp_path, expected=expected_arrays, unwritten_layers=unwritten)


@pytest.fixture
def truth(mirror_root: Path, mirror, pin: Pin) -> dict:
    written = write_cellmap_replica(mirror_root)
    pin(written["files"])
    return written


def test_crops_voxel_exact_with_needed_chunks_only(truth: dict, mirror) -> None:
    vols = []
    for crop_id in (101, 102, 103, 104):
        before = len(mirror.log)
        (vol,) = emdata.prepare("cellmap", crop=crop_id)
        vols.append(vol)
        crop = truth["crops"][crop_id]
        at = crop.get("read_at", {"voxel": crop["voxel"], "classes": crop["classes"]})
        assert (vol.name, vol.split) == (f"crop{crop_id}", crop["split"])
        assert vol.voxel_size == pytest.approx(at["voxel"])
        assert np.array_equal(vol.raw[...], crop["raw"])
        raw_path = f"/{BUCKET_HOST}/{crop['dataset']}/{crop['dataset']}.zarr/recon-1/em/fibsem-uint8/{crop['level']}/"
        fetched = sorted(r.path.removeprefix(raw_path) for r in mirror.log[before:]
                         if r.path.startswith(raw_path) and not r.path.endswith((".zarray", ".zattrs")))
        assert fetched == crop["raw_chunks"], vol.name  # exactly the chunks the box touches, each once
        if crop["split"] == "test":
            assert vol.labels == {}
            continue
        semantic = vol.labels["semantic"][...]
        assert np.array_equal(semantic, expected_semantic(at["classes"]))
        if "mito" in crop["classes"]:  # object ids kept, uint64 included
            ids = vol.labels["instances_mito"]
            assert ids.dtype == np.uint64 and np.array_equal(ids[...], crop["classes"]["mito"])
            assert vol.meta["labels"]["instances_mito"]["annotates"] == ["mitochondria"]
        else:
            assert set(vol.labels) == {"semantic"}
    # the 1.74 nm z crop: group-only voxels of er keep the group id, parts win elsewhere
    er_crop = vols[1].labels["semantic"][...]
    assert vols[1].voxel_size[0] == pytest.approx(1.74)
    assert (er_crop[0, 0, :] == CLASSES["er"].id).all() and (er_crop[2:6, 2, 2:6] == CLASSES["er_mem"].id).all()
    assert not (er_crop == 255).any()
    # manifest and group metadata agree: the only notes are the all-absent chunks zarr did not store
    assert vols[1].meta["notes"] and all("missing on the server" in n for n in vols[1].meta["notes"])
    # labels finer than the raw: read at their own 2 nm level, and the volume says so
    assert any("1×1×1 nm is not shared" in n and "raw level s0 (2×2×2 nm)" in n for n in vols[3].meta["notes"])
    assert vols[3].meta["cellmap"]["classes"]["nucpl"]["level"] == "s1"


def test_unannotated_and_empty_classes_kept_apart(truth: dict) -> None:
    (vol,) = emdata.prepare("cellmap", crop=101)
    meta = vol.meta["cellmap"]
    layer = vol.meta["labels"]["semantic"]
    annotates = set(layer["annotates"])
    assert annotates == {"background", "mitochondria", "mito_membrane", "extracellular_space"}
    assert "er" not in annotates and "er" in meta["unannotated"]  # never annotated: not background
    assert meta["classes"]["ecs"]["state"] == "empty" and meta["classes"]["ecs"]["voxels"] == 0
    assert meta["classes"]["mito"]["state"] == "present"
    # ecs's all-absent chunks are not stored upstream: read as fill_value and listed, not silent
    assert len(meta["classes"]["ecs"]["missing_chunks"]) == meta["classes"]["ecs"]["chunks_read"] > 0
    assert any("ecs" in n and "fill_value" in n for n in vol.meta["notes"])
    semantic = vol.labels["semantic"][...]
    assert layer["ignore_value"] == 255 and (semantic[5] == 255).sum() > 0  # the unknown slab
    assert layer["mapping"]["255"]["name"] == "unannotated"


def test_rerun_reuses_without_requests_and_dataset_selection(truth: dict, mirror) -> None:
    several = emdata.prepare("cellmap", crop=["crop104", "101", 103])
    assert [(v.name, v.split) for v in several] == [("crop101", "train"), ("crop103", "test"), ("crop104", "train")]
    assert [v.name for v in emdata.prepare("cellmap", dataset="jrc_rep-1")] == ["crop101", "crop103", "crop104"]
    first = emdata.prepare("cellmap", dataset="jrc_rep-2")
    assert [v.name for v in first] == ["crop102"]
    before = len(mirror.log)
    again = emdata.prepare("cellmap", dataset="jrc_rep-2")
    assert [v.name for v in again] == ["crop102"] and len(mirror.log) == before


def test_classes_option_limits_what_is_annotated(truth: dict) -> None:
    (vol,) = emdata.prepare("cellmap", crop=101, classes=["mito_mem"])
    assert set(vol.labels) == {"semantic"} and vol.meta["cellmap"]["annotated"] == ["mito_mem"]
    assert set(vol.meta["labels"]["semantic"]["annotates"]) == {"background", "mito_membrane"}
    expected = expected_semantic({"mito_mem": truth["crops"][101]["classes"]["mito_mem"]})
    assert np.array_equal(vol.labels["semantic"][...], expected)


def test_missing_raw_chunk_is_an_error(truth: dict, mirror_root: Path) -> None:
    crop = truth["crops"][102]
    key = crop["raw_chunks"][0]
    (mirror_root / BUCKET_HOST / "jrc_rep-2/jrc_rep-2.zarr/recon-1/em/fibsem-uint8/s0" / key).unlink()
    with pytest.raises(DownloadError, match=rf"crop 102 needs 1 raw chunk.*first: {key}.*never invented"):
        emdata.prepare("cellmap", crop=102)


def test_clear_errors(truth: dict) -> None:
    with pytest.raises(ValueError, match=r"no crop\(s\) \[999\]"):
        emdata.prepare("cellmap", crop=999)
    with pytest.raises(ValueError, match=r"no dataset\(s\) \['jrc_nope'\].*jrc_rep-1"):
        emdata.prepare("cellmap", dataset="jrc_nope")
    with pytest.raises(ValueError, match="--crop"):
        emdata.prepare("cellmap")
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['mitochondrion'\]"):
        emdata.prepare("cellmap", crop=101, classes="mitochondrion")
    with pytest.raises(ValueError, match=r"crop 101 annotates none of the classes \['er'\]; it annotates mito"):
        emdata.prepare("cellmap", crop=101, classes="er")
    with pytest.raises(ValueError, match=r"not in dataset\(s\)"):
        emdata.prepare("cellmap", crop=101, dataset="jrc_rep-2")


def test_cli_crop_and_dataset_options(truth: dict) -> None:
    from typer.testing import CliRunner

    from emdata.cli import app

    result = CliRunner().invoke(app, ["prepare", "cellmap", "--crop", "101", "--crop", "103", "--json"])
    assert result.exit_code == 0, result.output
    assert '"crop101"' in result.output and '"crop103"' in result.output
    refused = CliRunner().invoke(app, ["prepare", "cellmap", "--dataset", "jrc_nope"])
    assert refused.exit_code != 0 and "jrc_nope" in str(refused.exception)
