"""`emdata stats` and `emdata preview` on every dataset's prepared replica: the numbers equal counts
taken straight from the stored arrays, and the sheet's overlay pixels equal the stored labels at the
slice, blended as documented; grey elsewhere."""

from __future__ import annotations

import json
import math
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image
from typer.testing import CliRunner

from emdata.cli import app
from emdata.datasets import preparable
from emdata.labels.ontology import ontology
from emdata.look import volume_paths
from emdata.look.preview import ALPHA, render_sheet, write_preview
from emdata.look.stats import cache_dir, record_stats, volume_stats
from emdata.store.ome import default_color
from emdata.store.volume import open_volume
from emdata.store.writer import LabelLayerData, write_volume
from emdata.testing import prepared_replicas

PRECOMPUTED = {"microns-minnie65", "microns-layer23", "h01", "j0126", "hemibrain", "kasthuri"}
DATASETS = [d for d in preparable() if d not in PRECOMPUTED or find_spec("cloudvolume") is not None]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Every dataset's small replica, prepared once into one home: ``{dataset: [volume path, ...]}``."""
    home = tmp_path_factory.mktemp("look")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home / "user"))  # cloudvolume writes ~/.cloudvolume
        with prepared_replicas(home / "kit", DATASETS, small=True) as vols:
            paths = {d: [Path(v.path) for v in vs] for d, vs in vols.items()}
    return paths  # the tests run under their own settings, not the kit's


def _listed_colors(path: Path, layer: str) -> dict[int, list[int]]:
    """The layer's stored OME image-label colours, read with plain zarr."""
    attrs = zarr.open_group(str(path / "labels" / layer), mode="r").attrs["ome"]["image-label"]
    return {int(c["label-value"]): list(c["rgba"]) for c in attrs["colors"]}


def _expected_rgb(grey: np.ndarray, labels: np.ndarray, listed: dict[int, list[int]]) -> np.ndarray:
    """The documented overlay rule, written out again: listed colour unless absent or achromatic."""
    out = np.repeat(grey[..., None].astype(np.float64), 3, axis=-1)
    for value in np.unique(labels):
        if value == 0:
            continue
        rgba = listed.get(int(value))
        if rgba is None or len(set(rgba[:3])) == 1:
            rgba = default_color(int(value))
        a = ALPHA * rgba[3] / 255
        hit = labels == value
        out[hit] = (1 - a) * out[hit] + a * np.array(rgba[:3], np.float64)
    return np.rint(out).astype(np.uint8)


def _plane(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    return {"xy": lambda: array[index], "zy": lambda: array[:, :, index].T, "xz": lambda: array[:, index, :]}[plane]()


@pytest.mark.parametrize("dataset", DATASETS)
def test_preview_overlay_is_the_stored_labels(dataset: str, prepared: dict[str, list[Path]], tmp_path: Path) -> None:
    first = prepared[dataset][0]
    result = CliRunner().invoke(app, ["preview", str(first.parent), "--volume", first.name, "-o",
                                      str(tmp_path / "sheet.png"), "--json"])
    assert result.exit_code == 0, result.output
    written = [Path(p) for p in json.loads(result.output)]
    assert written == [tmp_path / "sheet.png"]
    for path, png in zip([first], written):
        vol = open_volume(path)
        sheet = render_sheet(vol)
        image = np.asarray(Image.open(png).convert("RGB"))
        assert image.shape[:2] == (sheet.image.height, sheet.image.width)
        pct = vol.meta["raw"]["intensity"]["percentiles"]
        lo, hi = float(pct["0.5"]), float(pct["99.5"])
        raw = np.asarray(vol.level(sheet.level))
        shown_foreground = dict.fromkeys(vol.meta["labels"], 0)
        for panel in sheet.panels:
            left, top, right, bottom = panel.box
            pixels = image[top:bottom, left:right]
            ix = np.ix_(panel.rows, panel.cols)
            grey = np.clip(np.rint((_plane(raw, panel.plane, panel.index)[ix] - lo) / (hi - lo) * 255), 0, 255)
            if panel.layer is None:
                assert (pixels == grey.astype(np.uint8)[..., None]).all()
                continue
            labels = _plane(np.asarray(vol.label_level(panel.layer, sheet.level)), panel.plane, panel.index)[ix]
            on = labels != 0
            expected = _expected_rgb(grey, labels, _listed_colors(path, panel.layer))
            assert (pixels == expected).all(), (dataset, path.name, panel.layer, panel.plane)
            assert (pixels[~on] == grey[~on].astype(np.uint8)[:, None]).all()  # grey where there is no label
            coloured = pixels[on]
            assert not ((coloured[:, 0] == coloured[:, 1]) & (coloured[:, 1] == coloured[:, 2])).any()
            shown_foreground[panel.layer] += int(on.sum())
        stats = volume_stats(vol)
        for layer, n in shown_foreground.items():  # the default point shows a layer's foreground when it has any
            assert n > 0 or stats["labels"][layer]["foreground_voxels"] == 0, (dataset, path.name, layer)


def _direct_layer_stats(vol: Any, layer: str) -> dict[str, Any]:
    meta = vol.meta["labels"][layer]
    data = np.asarray(vol.labels[layer])
    values, counts = np.unique(data, return_counts=True)
    found = {int(v): int(c) for v, c in zip(values, counts)}
    ignore = meta.get("ignore_value")
    onto = ontology()

    def unknown(v: int) -> bool:
        name = meta["mapping"].get(str(v), {}).get("name")
        return v == ignore or (name is not None and onto.resolve(name).role == "ignore")

    known_fg = np.isin(data, [v for v in found if v != 0 and not unknown(v)])
    chunk = meta["levels"][0]["chunks"]
    grid = [range(0, n, c) for n, c in zip(data.shape, chunk)]
    blocks = [known_fg[z:z + chunk[0], y:y + chunk[1], x:x + chunk[2]].any()
              for z in grid[0] for y in grid[1] for x in grid[2]]
    ids = {v: c for v, c in found.items() if v != 0 and v != ignore}
    return {"found": found, "annotated": data.size - sum(c for v, c in found.items() if unknown(v)),
            "foreground": int(known_fg.sum()), "chunks": (sum(blocks), len(blocks)), "ids": ids}


@pytest.mark.parametrize("dataset", DATASETS)
def test_stats_json_equals_counts_from_the_arrays(dataset: str, prepared: dict[str, list[Path]]) -> None:
    result = CliRunner().invoke(app, ["stats", str(prepared[dataset][0].parent), "--json"])
    assert result.exit_code == 0, result.output
    docs = json.loads(result.output)
    assert [d["volume"] for d in docs] == [open_volume(p).name for p in volume_paths(str(prepared[dataset][0].parent))]
    for doc in docs:
        vol = open_volume(doc["path"])
        assert doc["shape"] == list(vol.shape) and doc["voxel_size_nm"] == list(vol.voxel_size)
        assert doc["extent_um"] == pytest.approx([n * v / 1000 for n, v in zip(vol.shape, vol.voxel_size)])
        raw = np.asarray(vol.level(doc["raw"]["level"]))
        sat = doc["raw"]["saturation"]
        assert sat["low_fraction"] == np.count_nonzero(raw == sat["low_value"]) / raw.size
        assert sat["high_fraction"] == np.count_nonzero(raw == sat["high_value"]) / raw.size
        assert sum(doc["raw"]["histogram"]["counts"]) == raw.size
        level0 = np.asarray(vol.raw)
        assert (doc["raw"]["min"], doc["raw"]["max"]) == (level0.min(), level0.max())
        for layer, got in doc["labels"].items():
            want = _direct_layer_stats(vol, layer)
            assert got["voxels"] == math.prod(vol.shape)
            for row in got["values"]:
                assert row["voxels"] == want["found"].get(row["value"], 0), (layer, row)
            if got["kind"] == "semantic":
                assert {r["value"] for r in got["values"] if r["voxels"]} == set(want["found"])
            else:
                inst = got["instances"]
                sizes = np.array(sorted(want["ids"].values()))
                assert inst["count"] == len(want["ids"]), layer
                if sizes.size:
                    assert (inst["size_voxels"]["min"], inst["size_voxels"]["max"]) == (sizes.min(), sizes.max())
                    assert inst["size_voxels"]["median"] == pytest.approx(float(np.median(sizes)))
            assert got["annotated_voxels"] == want["annotated"], layer
            assert got["foreground_voxels"] == want["foreground"], layer
            assert (got["chunks"]["with_foreground"], got["chunks"]["total"]) == want["chunks"], layer
            assert set(got["ontology"]["present"]) | set(got["ontology"]["absent"]) == set(
                vol.meta["labels"][layer]["annotates"])


def _volume(tmp_path: Path, name: str = "v", voxel: tuple[float, float, float] = (40, 4, 4)) -> Path:
    cells = np.zeros((6, 40, 48), "u8")
    cells[1:4, 5:15, 10:30] = 11
    cells[2:6, 25:35, 30:45] = 2 ** 40 + 3  # ids above 32 bits
    cells[0, 0, 0] = 7
    mito = np.zeros((6, 40, 48), "u1")
    mito[3, 30:38, 2:12] = 1
    mito[:, :, 46:] = 255  # unknown
    raw = np.random.default_rng(1).integers(0, 256, (6, 40, 48), dtype="u1")
    return write_volume(tmp_path / f"{name}.ome.zarr", raw, voxel,
                        labels=[LabelLayerData("cells", cells, "instance", instance_of="cell"),
                                LabelLayerData("mito", mito, "semantic",
                                               [{"value": 0, "name": "background", "ontology": "background"},
                                                {"value": 1, "name": "mito", "ontology": "mitochondria",
                                                 "color": [255, 255, 255]},
                                                {"value": 255, "name": "unknown", "ontology": "unannotated"}],
                                               ignore_value=255)],
                        meta={"dataset": "demo", "volume": name, "split": "train"})


def test_stats_of_instances_ignore_values_and_ontology(tmp_path: Path) -> None:
    s = volume_stats(_volume(tmp_path))
    cells, mito = s["labels"]["cells"], s["labels"]["mito"]
    assert cells["instances"]["count"] == 3 and cells["instances"]["by_class"] == {"cell": 3}
    assert cells["instances"]["size_voxels"]["max"] == 4 * 10 * 15 and cells["instances"]["size_voxels"]["min"] == 1
    assert mito["annotated_voxels"] == 6 * 40 * 46 and mito["foreground_voxels"] == 80
    assert [(r["value"], r["voxels"]) for r in mito["values"]] == [(0, 6 * 40 * 46 - 80), (1, 80), (255, 480)]
    assert mito["ontology_voxels"] == {"background": 6 * 40 * 46 - 80, "mitochondria": 80, "unannotated": 480}
    assert s["ontology"]["present"] == ["background", "mitochondria", "cell"]
    assert "nucleus" in s["ontology"]["unannotated"] and "unannotated" not in s["ontology"]["unannotated"]


def test_stats_are_cached_per_published_version_and_stored_by_the_writer_hook(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    first = volume_stats(path)
    assert first["source"] == "computed" and len(list(cache_dir().glob("*.json"))) == 1
    again = volume_stats(path)
    assert again["source"] == "cache" and {**again, "source": ""} == {**first, "source": ""}
    raw = np.asarray(open_volume(path).raw)
    write_volume(path, raw, (40, 4, 4), meta={"dataset": "demo", "volume": "v", "split": "train"})  # a new version
    replaced = volume_stats(path)
    assert replaced["source"] == "computed" and replaced["labels"] == {}
    stored = record_stats(open_volume(path).folder)  # what a writer calls before publishing
    assert volume_stats(path)["source"] == "volume" and {**volume_stats(path), "source": "", "path": ""} == {
        **stored, "source": "", "path": ""}


def test_preview_slices_at_a_section_or_depth_and_keeps_physical_aspect(tmp_path: Path) -> None:
    vol = open_volume(_volume(tmp_path))
    sheet = render_sheet(vol, z=4, layers=["mito"])
    assert {p.layer for p in sheet.panels} == {"mito"} and len(sheet.panels) == 3
    xy, zy, xz = sheet.panels
    assert xy.index == 4 and zy.point[0] == 4 and xz.point == xy.point
    assert render_sheet(vol, z_nm=4 * 40 + 39.9).panels[0].index == 4  # depth in nm, first section edge at 0
    # 40×4×4 nm voxels: each section is 10 pixel rows high, like 10 voxels in x
    assert len(xz.rows) / len(xz.cols) == pytest.approx(6 * 40 / (48 * 4), abs=0.01)
    assert (np.bincount(xz.rows) == 10 * len(xz.cols) // 48).all()
    with pytest.raises(ValueError, match="outside the volume's 6 sections"):
        render_sheet(vol, z=6)
    with pytest.raises(ValueError, match=r"depth \[0, 240\) nm"):
        render_sheet(vol, z_nm=240)
    with pytest.raises(ValueError, match="no label layer 'nope'; layers: cells, mito"):
        render_sheet(vol, layers=["nope"])


def test_preview_of_a_volume_without_labels_and_default_file_names(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_volume(tmp_path / "bare.ome.zarr", np.arange(4 * 16 * 16, dtype="u2").reshape(4, 16, 16),
                        (8, 8, 8), meta={"dataset": "demo", "volume": "bare", "split": "test"})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["preview", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "bare.png" and Image.open(tmp_path / "bare.png").format == "PNG"
    sheet = render_sheet(path)
    assert [p.layer for p in sheet.panels] == [None] * 3 and sheet.panels[0].point == (2, 8, 8)


def test_augmented_preview_grid(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    path = _volume(tmp_path)
    result = CliRunner().invoke(app, ["preview", str(path), "--augment", "--samples", "6", "--layer", "cells",
                                      "-o", str(tmp_path / "aug.png")])
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open(tmp_path / "aug.png"))
    assert grid.shape == (2 * 40, 4 * 48, 3)  # 16×128×128 cut to the volume: one tile per sample, 4 a row
    assert (grid.std(axis=-1) > 0).any()  # labels are overlaid in colour


def test_write_preview_matches_render(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    png = write_preview(path, tmp_path / "out" / "v.png", layers=["cells"])
    assert (np.asarray(Image.open(png).convert("RGB")) == np.asarray(render_sheet(path, layers=["cells"]).image)).all()


def test_raw_saturation_on_a_coarser_level_or_exact_from_the_writers_histogram(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.look import stats as look_stats
    from emdata.store.intensity import IntensityHistogram

    raw = np.random.default_rng(2).integers(0, 200, (8, 128, 128), dtype="u1")
    raw[2:5, 10:40, 10:41] = 255  # blown out
    raw[0, 0, 0] = 255  # a lone saturated voxel, averaged away on level 1
    path = write_volume(tmp_path / "v.ome.zarr", raw, (30, 6, 6), meta={"dataset": "d", "volume": "v", "split": "s"})
    vol = open_volume(path)
    monkeypatch.setattr(look_stats, "RAW_LEVEL_VOXELS", 8 * 64 * 64)
    coarse = look_stats.compute_stats(vol)["raw"]
    level1 = np.asarray(vol.level(1))
    assert coarse["level"] == 1
    assert coarse["saturation"]["high_fraction"] == np.count_nonzero(level1 == 255) / level1.size
    hist = IntensityHistogram("uint8")
    hist.add(raw)
    exact = record_stats(vol.folder, raw_histogram=hist)["raw"]  # what a writer passes before publishing
    assert exact["level"] == 0 and exact["saturation"]["high_fraction"] == np.count_nonzero(raw == 255) / raw.size
    assert sum(exact["histogram"]["counts"]) == raw.size and exact["histogram"]["counts"][-1] == np.count_nonzero(
        raw >= exact["histogram"]["edges"][-2])


def test_float_raw_saturation_is_at_the_observed_extremes(tmp_path: Path) -> None:
    raw = np.linspace(-1, 3, 4 * 16 * 16, dtype="f4").reshape(4, 16, 16)
    raw[1, :2] = 3.0
    s = volume_stats(write_volume(tmp_path / "f.ome.zarr", raw, (8, 8, 8),
                                  meta={"dataset": "d", "volume": "f", "split": "s"}))["raw"]
    assert s["dtype"] == "float32" and (s["min"], s["max"]) == (-1.0, 3.0)
    assert s["saturation"]["high_fraction"] == np.count_nonzero(raw == 3.0) / raw.size
    assert s["saturation"]["low_fraction"] == 1 / raw.size and sum(s["histogram"]["counts"]) == raw.size


def test_stats_and_preview_by_dataset_id(prepared: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    home = prepared["snemi3d"][0].parents[2]  # <home>/prepared/snemi3d/<volume>.ome.zarr
    monkeypatch.setenv("EMDATA_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["stats", "snemi3d", "--volume", "train", "--json"])
    assert result.exit_code == 0, result.output
    assert [d["volume"] for d in json.loads(result.output)] == ["train"]
    result = CliRunner().invoke(app, ["preview", "snemi3d"])
    assert result.exit_code == 0, result.output
    assert sorted(result.output.split()) == ["snemi3d-test.png", "snemi3d-train.png"]
    result = CliRunner().invoke(app, ["stats", "snemi3d", "--volume", "nope"])
    assert result.exit_code != 0 and "no volume 'nope'; volumes: test, train" in str(result.exception)
