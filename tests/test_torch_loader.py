"""emdata.torch on small volumes written in place: thread safety, epochs, sampler geometry,
foreground indices outside the store, intensity normalisation, label spaces, input checks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from emdata.store.writer import LabelLayerData, write_volume
from emdata.torch import IGNORE, Foreground, MinInstances, MixedPatchDataset, PatchDataset, make_loader
from emdata.torch.collate import collate_patches

MITO = [{"value": 0, "name": "background", "ontology": "background"},
        {"value": 1, "name": "mito", "ontology": "mitochondria"}]


def write_small(path: Path, shape: tuple[int, int, int] = (12, 48, 48),
                voxel: tuple[float, float, float] = (40, 10, 10), dtype: str = "uint8", *, dataset: str = "demo",
                split: str = "train", seed: int = 0,
                mito: bool = True, neurons: bool = False) -> Path:
    """A volume with random raw, a sparse ``mito`` semantic layer and optionally ``neurons`` instances."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    raw = rng.integers(0, top // 4, shape, dtype=dtype) + np.asarray(top // 2, dtype)
    labels = []
    if mito:
        sem = np.zeros(shape, np.uint8)
        sem[rng.random(shape) < 0.01] = 1
        labels.append(LabelLayerData("mito", sem, "semantic", classes=MITO))
    if neurons:
        ids = (rng.integers(1, 6, shape) * (rng.random(shape) < 0.5)).astype(np.uint32)
        labels.append(LabelLayerData("neurons", ids, "instance", instance_of="neuron"))
    return write_volume(path, raw, voxel, labels=labels,
                        meta={"dataset": dataset, "volume": path.name.split(".")[0], "split": split})


def _offsets(loader) -> list[tuple[float, ...]]:
    return [tuple(o) for batch in loader for o in batch["meta"]["offset_nm"].tolist()]


def test_each_new_iteration_draws_a_new_epoch_unless_set_epoch_is_called(tmp_path: Path) -> None:
    ds = PatchDataset([write_small(tmp_path / "a.ome.zarr")], (2, 8, 8), samples_per_epoch=8)
    loader = make_loader(ds, batch_size=4)
    first, second = _offsets(loader), _offsets(loader)
    assert first != second, "a plain loop must not repeat the same patches every epoch"
    assert second == [tuple(ds.sample(1, i)["meta"]["offset_nm"].tolist()) for i in range(8)]
    loader.sampler.set_epoch(0)  # an explicit epoch (Lightning's call) wins
    assert _offsets(loader) == first
    loader.sampler.set_epoch(0)
    assert _offsets(loader) == first
    workers = make_loader(ds, batch_size=4, num_workers=1, multiprocessing_context="fork")
    assert [_offsets(workers), _offsets(workers)] == [first, second]  # workers agree with the main process


def _edge_volume(path: Path, shape: tuple[int, int, int], voxel: tuple[float, float, float],
                 where: tuple[int, int, int] | None = None) -> Path:
    """Foreground (``mito`` = 1) only in the last three y rows and x columns (the last one lies outside
    the 10 nm grid; the first one is read by it), or at one voxel ``where``."""
    sem = np.zeros(shape, np.uint8)
    if where is None:
        sem[:, -3:, :] = 1
        sem[:, :, -3:] = 1
    else:
        sem[where] = 1
    raw = np.arange(np.prod(shape), dtype=np.uint64).reshape(shape).astype(np.uint8)
    return write_volume(path, raw, voxel, labels=[LabelLayerData("mito", sem, "semantic", classes=MITO)],
                        meta={"dataset": "demo", "volume": "edge", "split": "train"})


def test_foreground_near_the_edge_of_a_non_multiple_grid(tmp_path: Path) -> None:
    # 128 voxels of 6 nm = 768 nm hold 76 whole voxels of 10 nm: the last stored row is outside the target grid
    vol = _edge_volume(tmp_path / "edge.ome.zarr", (24, 128, 128), (30, 6, 6))
    ds = PatchDataset([vol], (8, 64, 64), voxel_size=(40, 10, 10), sampler=Foreground("mito"), targets=["semantic"],
                      samples_per_epoch=40)
    for i in range(40):
        s = ds.sample(0, i)
        origin = np.rint(s["meta"]["offset_nm"] / np.array([40, 10, 10])).astype(int)
        assert (origin >= 0).all() and (origin <= np.array([10, 12, 12])).all(), origin
        assert s["raw"].shape == (1, 8, 64, 64) and (s["semantic"] == 1).any()


# -- raw intensities of different bit depths -------------------------------------------------------


def _stored_intensity(path: Path) -> dict:
    from emdata.store.volume import open_volume

    return open_volume(path).meta["raw"]["intensity"]


def test_writer_records_raw_percentiles_from_the_histogram(tmp_path: Path) -> None:
    path = write_small(tmp_path / "deep.ome.zarr", dtype="uint16", seed=3)
    from emdata.store.volume import open_volume

    raw = np.asarray(open_volume(path).raw[...])
    stats = _stored_intensity(path)
    lo, hi = np.percentile(raw, [0.5, 99.5], method="inverted_cdf")
    assert (stats["min"], stats["max"]) == (int(raw.min()), int(raw.max()))
    assert (stats["percentiles"]["0.5"], stats["percentiles"]["99.5"]) == (lo, hi)


def test_mixing_bit_depths_without_float_output_is_refused(tmp_path: Path) -> None:
    u8 = write_small(tmp_path / "u8.ome.zarr")
    u16 = write_small(tmp_path / "u16.ome.zarr", dtype="uint16", dataset="other")
    with pytest.raises(ValueError, match=r"uint8.*uint16.*raw_dtype='float32'"):
        PatchDataset([u8, u16], (2, 8, 8))
    a, b = PatchDataset([u8], (2, 8, 8)), PatchDataset([u16], (2, 8, 8))
    with pytest.raises(ValueError, match=r"raw_dtype='float32'"):
        MixedPatchDataset({"a": (a, 1.0), "b": (b, 1.0)})


def test_float_raw_is_normalised_per_volume(tmp_path: Path) -> None:
    u8 = write_small(tmp_path / "u8.ome.zarr")
    u16 = write_small(tmp_path / "u16.ome.zarr", dtype="uint16", dataset="other", seed=1)
    ds = PatchDataset([u8, u16], (2, 16, 16), raw_dtype="float32", normalize="percentile", samples_per_epoch=40)
    means = {"u8": [], "u16": []}
    from emdata.store.volume import open_volume

    for i in range(40):
        s = ds.sample(0, i)
        assert s["raw"].dtype == np.float32 and s["raw"].min() >= 0.0 and s["raw"].max() <= 1.0
        means[s["meta"]["volume"]].append(float(s["raw"].mean()))
        vol = open_volume(tmp_path / f"{s['meta']['volume']}.ome.zarr")
        o = np.rint(s["meta"]["offset_nm"] / np.array(vol.voxel_size)).astype(int)
        native = np.asarray(vol.raw[o[0]:o[0] + 2, o[1]:o[1] + 16, o[2]:o[2] + 16]).astype(np.float64)
        p = vol.meta["raw"]["intensity"]["percentiles"]
        expected = np.clip((native - p["0.5"]) / (p["99.5"] - p["0.5"]), 0, 1)
        assert np.allclose(s["raw"][0], expected, atol=1e-6)
    assert abs(np.mean(means["u8"]) - np.mean(means["u16"])) < 0.05  # comparable despite 8 vs 16 bits
    by_range = PatchDataset([u16], (2, 16, 16), raw_dtype="float32", samples_per_epoch=2).sample(0, 0)
    vol = open_volume(u16)
    o = np.rint(by_range["meta"]["offset_nm"] / np.array(vol.voxel_size)).astype(int)
    native = np.asarray(vol.raw[o[0]:o[0] + 2, o[1]:o[1] + 16, o[2]:o[2] + 16])
    assert np.array_equal(by_range["raw"][0], (native / np.float32(65535)).astype(np.float32))  # "dtype" default


def test_volumes_without_stored_percentiles_fall_back_to_the_coarsest_level(tmp_path: Path) -> None:
    import json

    path = write_small(tmp_path / "old.ome.zarr", shape=(16, 96, 96), dtype="uint16")
    stored = _stored_intensity(path)
    doc = json.loads((path / "zarr.json").read_text())
    del doc["attributes"]["emdata"]["raw"]["intensity"]  # a volume written before percentiles were recorded
    (path / "zarr.json").write_text(json.dumps(doc))
    ds = PatchDataset([path], (2, 8, 8), normalize="percentile", samples_per_epoch=1)
    lo, hi = ds._plans[0].intensity
    span = stored["max"] - stored["min"]
    assert abs(lo - stored["percentiles"]["0.5"]) < 0.05 * span
    assert abs(hi - stored["percentiles"]["99.5"]) < 0.05 * span


# -- label spaces ----------------------------------------------------------------------------------


def test_mixing_datasets_unifies_their_label_spaces(tmp_path: Path) -> None:
    neurons = PatchDataset([write_small(tmp_path / "n.ome.zarr", mito=False, neurons=True, dataset="cells")],
                           (2, 8, 8), targets=["semantic", "classes"])
    mito = PatchDataset([write_small(tmp_path / "m.ome.zarr")], (2, 8, 8), targets=["semantic", "classes"])
    assert neurons.class_names == {0: "background", 1: "neuron"} and mito.class_names == {0: "background",
                                                                                            1: "mitochondria"}
    mixed = MixedPatchDataset({"cells": (neurons, 1.0), "mito": (mito, 1.0)}, samples_per_epoch=16)
    assert mixed.class_names == {0: "background", 1: "neuron", 2: "mitochondria"}
    batch = collate_patches([mixed.sample(0, i) for i in range(16)])
    assert set(batch["meta"]["source"]) == {"cells", "mito"}
    assert batch["classes"].shape == (16, 2, 2, 8, 8) and batch["annotated"].shape == (16, 3)
    semantic = batch["semantic"].numpy()
    for source, target in zip(batch["meta"]["source"], semantic):
        allowed = {IGNORE, 1} if source == "cells" else {IGNORE, 0, 2}  # neurons alone never know background
        assert set(np.unique(target)) <= allowed, (source, np.unique(target))


def test_mixing_explicit_label_spaces_that_differ_is_refused(tmp_path: Path) -> None:
    path = write_small(tmp_path / "m.ome.zarr")
    a = PatchDataset([path], (2, 8, 8), targets=["semantic"], label_space=["background", "mitochondria"])
    b = PatchDataset([path], (2, 8, 8), targets=["semantic"], label_space=["background", "mitochondria", "neuron"])
    with pytest.raises(ValueError, match=r"label spaces differ.*'a'.*'b'.*neuron"):
        MixedPatchDataset({"a": (a, 1.0), "b": (b, 1.0)})


def test_patch_dataset_repr_says_what_it_draws(tmp_path: Path) -> None:
    ds = PatchDataset([write_small(tmp_path / "m.ome.zarr")], (2, 8, 8), targets=["semantic"], samples_per_epoch=5)
    text = repr(ds)
    for part in ("PatchDataset", "1 volume", "demo/m", "(2, 8, 8)", "40.0, 10.0, 10.0", "semantic",
                 "background", "mitochondria", "Uniform", "samples_per_epoch=5", "uint8"):
        assert part in text, (part, text)


# -- inputs are checked at construction ------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"voxel_size": (0, 10, 10)}, "voxel_size"),
    ({"voxel_size": (40, -10, 10)}, "voxel_size"),
    ({"voxel_size": (40, float("nan"), 10)}, "voxel_size"),
    ({"patch_shape": (0, 8, 8)}, "patch"),
    ({"patch_shape": (2, -8, 8)}, "patch"),
    ({"patch_size_nm": (80, 0, 80), "patch_shape": None}, "patch"),
    ({"samples_per_epoch": 0}, "samples_per_epoch"),
    ({"volume_weights": [float("nan")]}, "volume_weights"),
    ({"volume_weights": [float("inf")]}, "volume_weights"),
    ({"volume_weights": [-1.0]}, "volume_weights"),
    ({"volume_weights": [1.0, 2.0]}, "volume_weights"),
    ({"raw_dtype": "float16"}, "raw_dtype"),
    ({"normalize": "zscore"}, "normalize"),
])
def test_patch_dataset_checks_its_inputs(tmp_path: Path, kwargs: dict, message: str) -> None:
    path = write_small(tmp_path / "m.ome.zarr")
    options = {"patch_shape": (2, 8, 8), **kwargs}
    with pytest.raises(ValueError, match=message):
        PatchDataset([path], options.pop("patch_shape"), **options)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0])
def test_mixed_dataset_checks_its_weights(tmp_path: Path, weight: float) -> None:
    ds = PatchDataset([write_small(tmp_path / "m.ome.zarr")], (2, 8, 8))
    with pytest.raises(ValueError, match="weight"):
        MixedPatchDataset({"a": (ds, 1.0), "b": (ds, weight)})
    with pytest.raises(ValueError, match="samples_per_epoch"):
        MixedPatchDataset({"a": (ds, 1.0)}, samples_per_epoch=0)


@pytest.mark.parametrize("make", [lambda: Foreground("mito", p_uniform=1.5), lambda: Foreground("mito", {1: -1.0}),
                                  lambda: Foreground("mito", {1: float("nan")}), lambda: MinInstances("ids", k=0),
                                  lambda: MinInstances("ids", max_tries=0)])
def test_samplers_check_their_inputs(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_threaded_loader_reading_from_disk_gives_the_serial_samples(tmp_path: Path) -> None:
    paths = [write_small(tmp_path / f"v{i}.ome.zarr", shape=(16, 96, 96), seed=i, neurons=True) for i in range(2)]
    ds = PatchDataset(paths, (4, 24, 24), targets=["semantic"], samples_per_epoch=48, memory_budget=0)  # no preload
    serial = [ds.sample(0, i) for i in range(48)]
    threaded = make_loader(ds, batch_size=4, num_workers=6, worker_type="thread")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        batches = list(threaded)
    finally:
        sys.setswitchinterval(old)
    raw = np.concatenate([b["raw"].numpy() for b in batches])
    assert np.array_equal(raw, np.stack([s["raw"] for s in serial]))
    assert not any(reader.cached("raw", 0) for reader in ds._readers.values())  # memory_budget=0 keeps nothing


def test_workers_read_the_version_the_dataset_was_built_on(tmp_path: Path) -> None:
    """A volume replaced (`prepare --force`) during training: a worker started afterwards reads the
    version the dataset was planned on, not a mix of old geometry and new voxels."""
    import pickle

    from emdata.store.volume import open_volume

    path = tmp_path / "v.ome.zarr"
    meta = {"dataset": "demo", "volume": "v", "split": "train"}
    write_volume(path, np.zeros((8, 64, 64), np.uint8), (30, 6, 6), meta=meta)
    volume = open_volume(path)
    ds = PatchDataset([volume], (4, 32, 32))
    write_volume(path, np.full((8, 64, 64), 200, np.uint8), (30, 6, 6), meta=meta)
    worker = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert not worker.sample(0, 0)["raw"].any()
