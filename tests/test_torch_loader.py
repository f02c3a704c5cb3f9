"""emdata.torch on small volumes written in place: thread safety, epochs, sampler geometry,
foreground indices outside the store, intensity normalisation, label spaces, input checks."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from emdata.store.writer import LabelLayerData, write_volume  # noqa: E402
from emdata.torch import PatchDataset, make_loader  # noqa: E402
from emdata.torch.reader import ChunkCache  # noqa: E402

MITO = [{"value": 0, "name": "background", "ontology": "background"},
        {"value": 1, "name": "mito", "ontology": "mitochondria"}]


def write_small(path: Path, shape: tuple[int, int, int] = (12, 48, 48), voxel: tuple[float, float, float] = (40, 10, 10),
                dtype: str = "uint8", *, dataset: str = "demo", split: str = "train", seed: int = 0,
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


def test_chunk_cache_is_thread_safe_and_keeps_its_byte_count() -> None:
    cache = ChunkCache(max_bytes=8 * 1024)
    errors: list[BaseException] = []

    def load(key: int) -> np.ndarray:
        return np.full(1024, key, np.uint8)  # 1 KiB: the cache holds 8 of 64 keys

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for key in rng.integers(0, 64, 3000):
                k = int(key)
                assert cache.get((k,), lambda k=k: load(k))[0] == k % 256
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    assert cache.nbytes == sum(a.nbytes for a in cache._items.values()) <= cache.max_bytes
