"""Compact samples on the wire: semantic uint8, ids in the smallest dtype, and after
``widen``/``to_device`` exactly the int64 arrays of ``compact=False``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emdata.store.writer import LabelLayerData, write_volume  # noqa: E402
from emdata.torch import MixedPatchDataset, PatchDataset, make_loader, to_device, widen  # noqa: E402
from emdata.torch.augment import Compose, Warp  # noqa: E402
from emdata.torch.collate import collate_patches  # noqa: E402
from emdata.torch.targets import compact_ids, compact_semantic  # noqa: E402

ALL = ["semantic", "classes", "instances", "foreground", "boundaries", "affinities"]


def write(path: Path, ids: np.ndarray, dtype: str, mito: bool = False) -> Path:
    shape = ids.shape
    raw = np.random.default_rng(0).integers(50, 200, shape, dtype=np.uint8)
    layers = [LabelLayerData("cells", ids.astype(dtype), "instance", instance_of="neuron")]
    if mito:
        sem = np.zeros(shape, np.uint8)
        sem[:, 10:30, 10:30] = 1
        sem[:, 40:44, :] = 2  # an ignore region
        layers.append(LabelLayerData("mito", sem, "semantic", [
            {"value": 0, "name": "background", "ontology": "background"},
            {"value": 1, "name": "mito", "ontology": "mitochondrion"},
            {"value": 2, "name": "unknown", "ontology": "ignore"}]))
    return write_volume(path, raw, (30, 6, 6), labels=layers,
                        meta={"dataset": "demo", "volume": path.name.split(".")[0], "split": "train"})


def cells(shape: tuple[int, int, int], base: int) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((x // 9 + 7 * (y // 11) + 3 * (z // 3)) % 40 * ((x + y) % 13 != 0)).astype(np.uint64) * np.uint64(
        max(base, 1)) + np.uint64(base)


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key == "meta":
            continue
        other = b[key]
        assert value.dtype == other.dtype, (key, value.dtype, other.dtype)
        assert np.array_equal(np.asarray(value), np.asarray(other)), key


@pytest.mark.parametrize(("dtype", "base", "wire"), [("uint32", 0, np.uint8), ("uint64", 1000, np.uint16),
                                                     ("uint64", 2**63 + 5, np.int64)])
@pytest.mark.parametrize("augment", [False, "em", "edge"])
def test_widened_compact_samples_equal_the_int64_samples(tmp_path: Path, dtype: str, base: int, wire: type,
                                                        augment: object) -> None:
    path = write(tmp_path / "v.ome.zarr", cells((6, 64, 64), base), dtype, mito=True)
    edge_case = augment == "edge"
    if edge_case:  # a turn reaching past the volume's edge: invalid voxels every sample
        augment = Compose([Warp(rotation_deg=45, scale=0, elastic_sigma_nm=0)])
    kw = dict(labels=["cells", "mito"], targets=ALL, augment=augment, samples_per_epoch=6)
    patch = (4, 64, 64) if edge_case else (4, 48, 48)  # as wide as the volume: every turn reaches out
    compact, legacy = (PatchDataset([path], patch, compact=c, **kw) for c in (True, False))
    edges = 0
    for i in range(6):
        small, wide = compact.sample(1, i), legacy.sample(1, i)
        assert small["semantic"].dtype == np.uint8 and small["labels/mito"].dtype == np.uint8
        assert small["labels/cells"].dtype.itemsize <= np.dtype(wire).itemsize
        assert wide["semantic"].dtype == np.int64 and wide["labels/cells"].dtype == np.int64
        edges += "valid" in small and not small["valid"].all()
        same(widen(small, compact.space.ignore_value), wide)
    assert edges >= 3 if edge_case else True  # most turns of a volume-wide patch reach past its edge


def test_loader_batches_travel_small_and_widen_on_the_device(tmp_path: Path) -> None:
    path = write(tmp_path / "v.ome.zarr", cells((6, 64, 64), 0), "uint32", mito=True)
    kw = dict(labels=["cells"], targets=["semantic", "instances"], augment="em", samples_per_epoch=8)
    compact, legacy = (PatchDataset([path], (4, 32, 32), compact=c, **kw) for c in (True, False))
    for small, wide in zip(make_loader(compact, batch_size=4, num_workers=2, multiprocessing_context="fork"),
                           make_loader(legacy, batch_size=4), strict=True):
        assert small["semantic"].dtype == torch.uint8 and small["labels/cells"].element_size() == 1
        moved = to_device(small, "cpu", compact.space.ignore_value)
        for key in ("raw", "semantic", "instances", "labels/cells", "valid"):
            assert moved[key].dtype == wide[key].dtype and torch.equal(moved[key], wide[key]), key


def test_mixed_parts_of_different_id_widths_stack_and_widen(tmp_path: Path) -> None:
    small = write(tmp_path / "a.ome.zarr", cells((4, 40, 40), 0), "uint32")
    big = write(tmp_path / "b.ome.zarr", cells((4, 40, 40), 2**40), "uint64")
    parts = {name: PatchDataset([p], (2, 16, 16), labels=["cells"], targets=["instances"])
             for name, p in (("a", small), ("b", big))}
    legacy = {name: PatchDataset([p], (2, 16, 16), labels=["cells"], targets=["instances"], compact=False)
              for name, p in (("a", small), ("b", big))}
    mixed = MixedPatchDataset({k: (v, 1.0) for k, v in parts.items()}, samples_per_epoch=12)
    wide = MixedPatchDataset({k: (v, 1.0) for k, v in legacy.items()}, samples_per_epoch=12)
    batch = collate_patches([mixed.sample(0, i) for i in range(12)])
    assert set(batch["meta"]["source"]) == {"a", "b"} and batch["labels/cells"].dtype == torch.int64
    expected = collate_patches([wide.sample(0, i) for i in range(12)])
    assert torch.equal(widen(batch)["labels/cells"], expected["labels/cells"])


def test_compact_helpers() -> None:
    assert compact_ids(np.array([[0, 255]], np.uint32)).dtype == np.uint8
    assert compact_ids(np.array([[0, 70000]], np.uint64)).dtype == np.uint32
    assert compact_ids(np.array([[-1, 5]], np.int64)).dtype == np.int64
    assert compact_ids(np.array([2**63], np.uint64)).tolist() == [-(2**63)]  # bits kept, never relabelled
    sem = np.array([0, 3, -100, 254])
    assert compact_semantic(sem, -100, 255).tolist() == [0, 3, 255, 254]
    assert compact_semantic(sem, -100, 300) is sem  # too many classes for uint8: as it is
    assert widen({"semantic": compact_semantic(sem, -100, 255)})["semantic"].tolist() == sem.tolist()


def test_datamodules_widen_after_the_transfer(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from emdata.lightning import EMDataModule

    path = write(tmp_path / "v.ome.zarr", cells((6, 64, 64), 0), "uint32", mito=True)
    dm = EMDataModule(dataset_id="demo")
    dm.train_set = PatchDataset([path], (4, 32, 32), labels=["cells"], targets=["semantic"], augment="em",
                                ignore_value=-1, samples_per_epoch=4)
    legacy = PatchDataset([path], (4, 32, 32), labels=["cells"], targets=["semantic"], augment="em",
                          ignore_value=-1, samples_per_epoch=4, compact=False)
    batch = collate_patches([dm.train_set.sample(0, i) for i in range(4)])
    assert batch["semantic"].dtype == torch.uint8
    wide = dm.on_after_batch_transfer(batch, 0)
    expected = collate_patches([legacy.sample(0, i) for i in range(4)])
    assert (wide["semantic"] == -1).any()  # the ignore region of the mito layer, in this dataset's ignore value
    for key in ("semantic", "labels/cells"):
        assert wide[key].dtype == torch.int64 and torch.equal(wide[key], expected[key]), key
