"""Foreground indices and raw intensity statistics are written while preparing (both writers),
and a published volume is never written to afterwards."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emdata.store.chunking import choose_chunks
from emdata.store.fgindex import INDEX_DIR, cache_dir, compute_index, foreground_index
from emdata.store.sharded import LabelSpec, ShardedVolumeWriter, build_volume
from emdata.store.volume import open_volume
from emdata.store.writer import COMPLETE_MARKER, LabelLayerData, write_volume

MITO = [{"value": 0, "name": "background", "ontology": "background"},
        {"value": 1, "name": "mito", "ontology": "mitochondria"}]
META = {"dataset": "demo", "volume": "v", "split": "train"}


def _data(shape: tuple[int, int, int] = (10, 70, 66), dtype: str = "uint16") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    raw = (rng.random(shape) * 1000).astype(dtype)
    mito = (rng.random(shape) > 0.9).astype(np.uint8)
    cells = rng.integers(0, 4, shape).astype(np.uint32)
    return {"raw": raw, "mito": mito, "cells": cells}


def _write(path: Path, data: dict[str, np.ndarray]) -> Path:
    return write_volume(path, data["raw"], (30, 6, 6), meta=META, labels=[
        LabelLayerData("mito", data["mito"], "semantic", MITO),
        LabelLayerData("cells", data["cells"], "instance", instance_of="neuron")])


def _small_shards(shape: tuple[int, ...], voxel: tuple[float, float, float], itemsize: int) -> tuple[Any, Any]:
    chunks, _ = choose_chunks(shape, voxel, itemsize)
    chunks = tuple(min(c, m) for c, m in zip(chunks, (4, 32, 32)))
    return chunks, tuple(min(2 * c, -(-n // c) * c) for c, n in zip(chunks, shape))


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


def test_writer_stores_indices_before_marking_the_volume_complete(tmp_path: Path) -> None:
    data = _data()
    path = _write(tmp_path / "v.ome.zarr", data)
    index_files = sorted((path / INDEX_DIR).glob("*.npz"))
    assert [p.name for p in index_files] == ["cells.npz", "mito.npz"]
    assert all(p.stat().st_mtime_ns <= (path / COMPLETE_MARKER).stat().st_mtime_ns for p in index_files)
    vol = open_volume(path)
    index = foreground_index(vol, "mito")
    assert index.counts.sum() == data["mito"].size and index.value_counts(1).sum() == int(data["mito"].sum())
    assert not cache_dir().exists(), "an index stored with the volume is used as it is"


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_sharded_writer_records_the_same_indices_and_intensity(tmp_path: Path, dtype: str) -> None:
    data = _data(dtype=dtype)
    ref = _write(tmp_path / "ref.ome.zarr", data)
    specs = [LabelSpec("mito", "uint8", "semantic", MITO), LabelSpec("cells", "uint32", "instance",
                                                                      instance_of="neuron")]
    writer = ShardedVolumeWriter(tmp_path / "v.ome.zarr", data["raw"].shape, dtype, (30, 6, 6), labels=specs,
                                 meta=META, chunking=_small_shards)
    assert len(writer.regions(0)) > 1
    path = build_volume(writer, lambda region, name: data[name][region.slices])
    mine, theirs = open_volume(path).meta["raw"]["intensity"], open_volume(ref).meta["raw"]["intensity"]
    if dtype == "uint16":
        assert mine == theirs
    else:  # float raw: percentiles of a subsample, min and max exact
        assert (mine["min"], mine["max"]) == (theirs["min"], theirs["max"]) == (
            float(data["raw"].min()), float(data["raw"].max()))
        assert abs(mine["percentiles"]["99.5"] - theirs["percentiles"]["99.5"]) < 10
    for layer in ("mito", "cells"):
        a, b = foreground_index(open_volume(path), layer), foreground_index(open_volume(ref), layer)
        assert (path / INDEX_DIR / f"{layer}.npz").is_file()
        if a.block_shape == b.block_shape:
            assert np.array_equal(a.counts, b.counts)
        expected = compute_index(data[layer], a.kind, layer, a.block_shape)
        assert np.array_equal(a.counts, expected.counts) and np.array_equal(a.values, expected.values)


def test_a_read_only_volume_without_indices_is_never_written(tmp_path: Path, emdata_home: Path) -> None:
    torch_dataset = pytest.importorskip("emdata.torch")
    path = _write(tmp_path / "v.ome.zarr", _data())
    shutil.rmtree(path / INDEX_DIR, ignore_errors=True)  # as a volume written before indices were prepared
    before = _tree(path)
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))  # chmod -R a-w
    try:
        ds = torch_dataset.PatchDataset([path], (2, 16, 16), sampler=torch_dataset.Foreground("mito"),
                                        samples_per_epoch=5)
        assert all((ds.sample(0, i)["raw"].shape == (1, 2, 16, 16)) for i in range(5))
        torch_dataset.PatchDataset([path], (2, 16, 16), sampler=torch_dataset.Foreground("cells"))
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert _tree(path) == before, "the published volume was modified"
    cached = sorted(p.name for p in cache_dir().glob("*.npz"))
    assert len(cached) == 2 and str(cache_dir()).startswith(str(emdata_home))
    # the cached copy is used next time, whatever the process
    vol = open_volume(path)
    index = foreground_index(vol, "mito")
    assert index.value_counts(1).sum() == int(np.asarray(vol.labels["mito"][...]).sum())
    assert json.loads((path / "zarr.json").read_text())["attributes"]["emdata"]["dataset"] == "demo"
    assert os.access(path, os.R_OK)


def test_min_instances_reads_its_layer_even_when_no_labels_are_asked_for(tmp_path: Path) -> None:
    torch_dataset = pytest.importorskip("emdata.torch")
    path = _write(tmp_path / "v.ome.zarr", _data())
    ds = torch_dataset.PatchDataset([path], (2, 16, 16), sampler=torch_dataset.MinInstances("cells", k=3),
                                    samples_per_epoch=3)
    assert all(ds.sample(0, i)["meta"]["sampler_ok"] for i in range(3))


def test_index_read_in_small_pieces_equals_one_read() -> None:
    data = _data((9, 40, 70))
    for layer, kind in (("mito", "semantic"), ("cells", "instance")):
        whole = compute_index(data[layer], kind, layer, (4, 16, 16))
        pieces = compute_index(data[layer], kind, layer, (4, 16, 16), max_voxels=2 * 4 * 16 * 16)
        assert np.array_equal(whole.counts, pieces.counts) and np.array_equal(whole.values, pieces.values)
        assert kind == "semantic" or np.array_equal(whole.instances, pieces.instances)
        assert whole.counts.sum() == data[layer].size
