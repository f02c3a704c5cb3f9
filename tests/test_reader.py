"""The volume reader and the shared decoded cache: the same samples from disk, from the shared
cache and held whole, with 0 workers, fork and spawn; the cache stays within its budget, is
shared by processes filling it at once, never serves a replaced version, and is cleaned."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from emdata.store import chunking, decoded_cache, layout
from emdata.store.decoded_cache import DecodedCache, cache_root, entries
from emdata.store.verify import verify_volume
from emdata.store.writer import LabelLayerData, write_volume
from emdata.torch import PatchDataset, make_loader
from emdata.torch import reader as reader_module
from emdata.torch.reader import VolumeReader

META = {"dataset": "demo", "volume": "v", "split": "train"}
SHAPE = (20, 70, 90)  # with 2**10-voxel chunks: (4, 16, 16), partial edge chunks on every axis


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small chunks on a small volume (the writer reads the target size when it writes)."""
    monkeypatch.setattr(chunking, "TARGET_VOXELS", 1 << 10)


def _volume(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    ids = (rng.integers(1, 9, (SHAPE[0], SHAPE[1] // 5, SHAPE[2] // 5)).repeat(5, 1).repeat(5, 2)).astype(np.uint32)
    return write_volume(path, raw, (30, 6, 6), meta=META,
                        labels=[LabelLayerData("cells", ids, "instance", instance_of="neuron")])


def _samples(ds: PatchDataset, n: int = 12) -> list[dict]:
    return [ds.sample(0, i) for i in range(n)]


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("raw", "labels/cells", "semantic"):
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)


def _dataset(path: Path, budget: int) -> PatchDataset:
    return PatchDataset([path], (6, 24, 24), labels=["cells"], targets=["semantic"], samples_per_epoch=12,
                        memory_budget=budget)


def test_reads_match_the_array_from_disk_from_the_cache_and_held_whole(tmp_path: Path) -> None:
    path = _volume(tmp_path / "v.ome.zarr")
    import zarr

    truth = np.asarray(zarr.open_group(str(path), mode="r")["labels/cells/0"][...])
    disk = VolumeReader(path, memory_budget=0)
    shared = VolumeReader(path, memory_budget=64 << 20)
    rng = np.random.default_rng(3)
    for _ in range(30):
        lo = [int(rng.integers(0, s - 1)) for s in SHAPE]
        box = tuple(slice(a, int(rng.integers(a + 1, s + 1))) for a, s in zip(lo, SHAPE))
        for reader in (disk, shared, shared):  # the second shared read comes from the cache
            np.testing.assert_array_equal(reader.read("cells", 0, box), truth[box])
    assert shared.cached("cells", 0).filled > 0 and disk.cached("cells", 0) is None
    assert VolumeReader(path, memory_budget=64 << 20).preload("cells", 0)  # the rest of the level, once
    whole = VolumeReader(path, memory_budget=64 << 20)
    assert whole.cached("cells", 0).filled == whole.cached("cells", 0).n_chunks
    np.testing.assert_array_equal(whole.read("cells", 0, tuple(slice(0, s) for s in SHAPE)), truth)


def test_samples_are_identical_from_disk_from_the_shared_cache_and_held_whole(tmp_path: Path) -> None:
    path = _volume(tmp_path / "v.ome.zarr")
    from_disk = _samples(_dataset(path, 0))
    filling = _samples(_dataset(path, 64 << 20))  # chunks decoded into the cache on first touch
    held = _dataset(path, 64 << 20)
    for layer in ("raw", "cells"):
        assert VolumeReader(path, memory_budget=64 << 20).preload(layer, 0)
    _same(from_disk, filling)
    _same(from_disk, _samples(held))  # every chunk from the cache now


def test_samples_are_identical_with_0_workers_fork_and_spawn(tmp_path: Path) -> None:
    path = _volume(tmp_path / "v.ome.zarr")
    ds = _dataset(path, 64 << 20)
    runs = {}
    for context, workers in (("fork", 2), ("spawn", 1), (None, 0)):
        runs[context] = [b["raw"].numpy() for b in make_loader(ds, batch_size=4, num_workers=workers,
                                                               multiprocessing_context=context)]
        if context == "fork":  # the workers decoded into the shared cache; this process read nothing yet
            assert VolumeReader(path, memory_budget=64 << 20).cached("raw", 0).filled > 0
    assert all(np.array_equal(a, b) for a, b in zip(runs[None], runs["fork"]))
    assert all(np.array_equal(a, b) for a, b in zip(runs[None], runs["spawn"]))
    assert len([e for e in entries() if e[1]["label"] == "demo/v/raw/0"]) == 1  # one entry for every process


def _fill_in_child(path: str, cache_dir: str, boxes: list, queue: object) -> None:
    reader = VolumeReader(path, memory_budget=64 << 20, cache_dir=cache_dir)
    queue.put([reader.read("raw", 0, box).tobytes() for box in boxes])  # type: ignore[attr-defined]


def test_two_processes_filling_the_same_chunks_agree(tmp_path: Path) -> None:
    path = _volume(tmp_path / "v.ome.zarr")
    boxes = [(slice(0, 20), slice(0, 70), slice(0, 90))] * 3 + [(slice(3, 9), slice(10, 50), slice(20, 80))]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fill_in_child, args=(str(path), str(cache_root()), boxes, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    truth = [VolumeReader(path, memory_budget=0).read("raw", 0, box).tobytes() for box in boxes]
    assert results == [truth, truth]
    cached = VolumeReader(path, memory_budget=64 << 20).cached("raw", 0)
    assert cached.filled == cached.n_chunks == int(np.count_nonzero(cached._state))  # counted once each


def test_the_cache_never_exceeds_its_budget(tmp_path: Path) -> None:
    paths = [_volume(tmp_path / f"v{i}.ome.zarr", seed=i) for i in range(3)]
    budget = 40 * 4 * 16 * 16 * 4  # 40 uint32 chunks of 4×16×16: less than one label layer (150 chunks)
    samples = []
    for path in paths:
        ds = _dataset(path, budget)
        samples.append(_samples(ds))
        _same(samples[-1], _samples(_dataset(path, 0)))  # a partial grant changes nothing read
    found = entries()
    assert sum(info["reserved_bytes"] for _, info in found) <= budget
    full = 0
    for folder, info in found:
        filled = int(np.frombuffer((folder / "state").read_bytes()[:8], np.uint64)[0])
        chunks = int(np.count_nonzero(np.frombuffer((folder / "state").read_bytes()[8:], np.uint8)))
        slot = int(np.prod(info["chunks"])) * np.dtype(info["dtype"]).itemsize
        assert filled <= info["reserved_bytes"]
        assert (folder / "data").stat().st_blocks * 512 <= filled + 2 * 4096 * chunks  # sparse: pages of filled slots
        full += filled + slot > info["reserved_bytes"]  # no room left for another chunk
    assert DecodedCache(budget=budget).reserved_bytes() <= budget
    assert full  # some grant was used up: the budget did bound the cache


def test_a_reprepared_volume_is_never_served_from_the_old_cache(tmp_path: Path) -> None:
    path = tmp_path / "v.ome.zarr"
    _volume(path, seed=0)
    old = _samples(_dataset(path, 64 << 20))
    assert entries()
    _volume(path, seed=1)  # prepare --force: a new published version
    new = _samples(_dataset(path, 64 << 20))
    assert not np.array_equal(old[0]["raw"], new[0]["raw"])
    _same(new, _samples(_dataset(path, 0)))
    # the old version's entries are stale: dropped as soon as another entry is admitted
    versions = {json.dumps(info["version"]) for _, info in entries()}
    assert len(versions) == 1 and json.loads(versions.pop())["folder"].endswith(".v2")


def test_cache_clean_removes_entries_nobody_reads(tmp_path: Path) -> None:
    from emdata.cache import cache_report, clean

    path = _volume(tmp_path / "v.ome.zarr")
    reader = VolumeReader(path, memory_budget=64 << 20)
    reader.read("raw", 0, (slice(0, 4), slice(0, 16), slice(0, 16)))
    other = VolumeReader(_volume(tmp_path / "w.ome.zarr", seed=2), memory_budget=64 << 20)
    other.read("raw", 0, (slice(0, 4), slice(0, 16), slice(0, 16)))
    other.cached("raw", 0).close()  # no longer read by anyone
    assert cache_report()["datasets"]["demo"]["decoded_bytes"] > 0  # `emdata cache` shows what the loaders keep
    assert clean("demo")["decoded_bytes"] > 0
    assert [info["label"] for _, info in entries()] == ["demo/v/raw/0"]  # the one still open stays
    reader.cached("raw", 0).close()
    assert decoded_cache.clean() > 0 and entries() == []


def test_old_zstd_raw_stores_and_the_zarr_path_read_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    plain = _volume(tmp_path / "plain.ome.zarr")
    monkeypatch.setattr(layout, "RAW_COMPRESSORS", zarr.codecs.ZstdCodec(level=3))  # how raw was stored before
    old = _volume(tmp_path / "old.ome.zarr")
    assert '"zstd"' in (old / "0" / "zarr.json").read_text() and '"zstd"' not in (plain / "0" / "zarr.json").read_text()
    assert verify_volume(plain, deep=True).ok and verify_volume(old, deep=True).ok
    box = (slice(2, 19), slice(5, 66), slice(0, 90))
    want = VolumeReader(plain, memory_budget=0).read("raw", 0, box)
    np.testing.assert_array_equal(VolumeReader(old, memory_budget=0).read("raw", 0, box), want)
    # any array-like: through zarr
    monkeypatch.setattr(reader_module._ChunkFiles, "of", classmethod(lambda cls, array: None))
    np.testing.assert_array_equal(VolumeReader(old, memory_budget=0).read("raw", 0, box), want)
    assert VolumeReader(old, memory_budget=0)._level("raw", 0)._file is None


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="memory_budget"):
        VolumeReader("/nonexistent.ome.zarr", memory_budget=-1)


class _ArrayLike:
    """Anything with shape, chunks, dtype and slicing (a remote array, say): counts the chunk reads."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...]) -> None:
        self.data, self.chunks, self.shape, self.dtype, self.reads = data, chunks, data.shape, data.dtype, []

    def __getitem__(self, box: tuple[slice, ...]) -> np.ndarray:
        self.reads.append(box)
        return self.data[box]


def test_any_array_like_is_read_one_chunk_box_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE)
    array = _ArrayLike(data, (4, 16, 16))
    reader = VolumeReader(_volume(tmp_path / "v.ome.zarr"), memory_budget=0)
    level = reader_module._Level(array, None)
    assert level._file is None
    monkeypatch.setattr(reader, "_level", lambda layer, lv: level)
    box = (slice(3, 9), slice(15, 33), slice(0, 90))
    np.testing.assert_array_equal(reader.read("raw", 0, box), data[box])
    assert len(array.reads) == 3 * 3 * 6 and all(  # every touched chunk once, each a whole chunk box
        all(s.start % c == 0 for s, c in zip(b, array.chunks)) for b in array.reads)


def test_an_unwritable_cache_folder_reads_on_without_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _volume(tmp_path / "v.ome.zarr")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    reader = VolumeReader(path, memory_budget=64 << 20, cache_dir=blocked / "decoded")
    box = (slice(0, 5), slice(0, 20), slice(0, 20))
    np.testing.assert_array_equal(reader.read("raw", 0, box), VolumeReader(path, memory_budget=0).read("raw", 0, box))
    assert reader.cached("raw", 0) is None and "cannot be used" in caplog.text and str(blocked) in caplog.text


def _plain_array(root: Path, dtype: str, endian: str = "little",
                 compressors: object = None) -> tuple[object, np.ndarray]:
    """An array of a published-looking local store (``root`` holds the completion marker): shape
    (10, 37, 45) in (4, 16, 16) chunks, partial edge chunks on every axis, fill 7, some chunks never
    written; returns it and its voxels as zarr reads them."""
    import zarr
    from zarr.codecs import BytesCodec

    from emdata.store.publish import COMPLETE_MARKER

    root.mkdir()
    (root / COMPLETE_MARKER).write_text("{}")
    data = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, (10, 37, 45), dtype=dtype, endpoint=True)
    data[4:8, 16:37, 0:16] = 7  # whole chunks at the fill value: zarr never writes them
    array = zarr.create_array(zarr.storage.LocalStore(root), name="a", shape=data.shape, dtype=dtype,
                              chunks=(4, 16, 16), fill_value=7, compressors=compressors,
                              serializer=BytesCodec(endian=endian), zarr_format=3)
    array[...] = data
    assert not (root / "a" / "c" / "1" / "1" / "0").exists()  # never written
    return array, np.asarray(array[...])


def _reader_of(array: object, monkeypatch: pytest.MonkeyPatch) -> VolumeReader:
    reader = VolumeReader("/not-opened.ome.zarr", memory_budget=0)
    level = reader_module._Level(array, None)
    monkeypatch.setattr(reader, "_level", lambda layer, lv: level)
    return reader


@pytest.mark.parametrize(("dtype", "endian"), [("u1", "little"), ("u2", "little"), ("u2", "big"), ("u8", "little")])
def test_partial_reads_of_uncompressed_chunks_are_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        dtype: str, endian: str) -> None:
    array, truth = _plain_array(tmp_path / "s", dtype, endian)
    reader = _reader_of(array, monkeypatch)
    level = reader._level("raw", 0)
    assert level._file is not None and level._file.partial
    rng = np.random.default_rng(1)
    boxes = [(slice(0, 10), slice(0, 37), slice(0, 45)), (slice(9, 10), slice(36, 37), slice(44, 45)),
             (slice(3, 9), slice(15, 33), slice(30, 45)), (slice(4, 8), slice(16, 37), slice(0, 16))]  # unwritten
    for _ in range(40):
        lo = [int(rng.integers(0, s)) for s in truth.shape]
        boxes.append(tuple(slice(a, int(rng.integers(a + 1, s + 1))) for a, s in zip(lo, truth.shape)))
    for gap in (0, reader_module.MERGE_GAP, 1 << 30):  # runs read apart, as the default merges them, as one
        monkeypatch.setattr(reader_module, "MERGE_GAP", gap)
        for box in boxes:
            got = reader.read("raw", 0, box)
            assert got.dtype == truth.dtype and got.dtype.isnative
            np.testing.assert_array_equal(got, truth[box], err_msg=f"{box} merge gap {gap}")


def test_a_partial_read_reads_only_the_rows_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    array, truth = _plain_array(tmp_path / "s", "u8")
    reader = _reader_of(array, monkeypatch)
    read: list[int] = []
    real = reader_module.os.preadv

    def counting(fd: int, buffers: list, offset: int) -> int:
        n = real(fd, buffers, offset)
        read.append(n)
        return n

    monkeypatch.setattr(reader_module.os, "preadv", counting)
    monkeypatch.setattr(reader_module, "MERGE_GAP", 0)
    box = (slice(1, 3), slice(18, 20), slice(3, 5))  # 2 slices of 2 rows in one chunk of 4×16×16
    np.testing.assert_array_equal(reader.read("raw", 0, box), truth[box])
    assert read == [2 * 16 * 8] * 2  # two runs of two whole rows, not the 16 KiB chunk


@pytest.mark.parametrize("codec", ["zstd", "blosc"])
def test_a_chunk_of_the_wrong_size_is_refused_not_half_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               codec: str) -> None:
    import zarr
    from numcodecs import Blosc, Zstd

    compressor = zarr.codecs.ZstdCodec(level=1) if codec == "zstd" else zarr.codecs.BloscCodec(cname="lz4")
    array, truth = _plain_array(tmp_path / "s", "u2", compressors=compressor)
    reader = _reader_of(array, monkeypatch)
    assert not reader._level("raw", 0)._file.partial
    box = (slice(0, 4), slice(0, 16), slice(0, 32))
    np.testing.assert_array_equal(reader.read("raw", 0, box), truth[box])  # fills this thread's buffers
    smaller = np.zeros(4 * 16 * 8, "u2").tobytes()  # half a chunk, a well-formed frame
    (tmp_path / "s" / "a" / "c" / "0" / "0" / "1").write_bytes((Zstd() if codec == "zstd" else Blosc()).encode(smaller))
    with pytest.raises(OSError, match=r"c/0/0/1: chunk decodes to 1024 bytes, expected 2048"):
        reader.read("raw", 0, box)


def test_a_volume_removed_while_read_in_parts_says_so(tmp_path: Path) -> None:
    from emdata.store.publish import COMPLETE_MARKER, VolumeReplacedError

    path = _volume(tmp_path / "v.ome.zarr")
    reader = VolumeReader(path, memory_budget=0)
    assert reader._level("raw", 0)._file.partial  # raw is stored uncompressed: read in parts
    box = (slice(0, 6), slice(0, 20), slice(0, 20))
    reader.read("raw", 0, box)
    folder = Path(reader.volume.folder)
    (folder / COMPLETE_MARKER).unlink()  # what retiring a replaced version does first
    for chunk in (folder / "0" / "c").rglob("*"):
        if chunk.is_file():
            chunk.unlink()
    with pytest.raises(VolumeReplacedError, match="removed while being read"):
        reader.read("raw", 0, box)


def test_read_threads_share_the_cores_among_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.data

    monkeypatch.delenv("EMDATA_READ_THREADS", raising=False)
    monkeypatch.setattr(reader_module.os, "cpu_count", lambda: 2)
    assert reader_module.read_threads() == 4  # the main process: 2 per core
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: type("Info", (), {"num_workers": 2})())
    assert reader_module.read_threads() == 2  # each of 2 workers: the 4 shared
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: type("Info", (), {"num_workers": 8})())
    assert reader_module.read_threads() == 2  # never fewer than 2: one waits on the disk, one decodes
    monkeypatch.setenv("EMDATA_READ_THREADS", "3")
    assert reader_module.read_threads() == 3


def test_reads_into_a_slot_of_a_batch(tmp_path: Path) -> None:
    path = _volume(tmp_path / "v.ome.zarr")
    reader = VolumeReader(path, memory_budget=0)
    box = (slice(3, 9), slice(10, 50), slice(20, 80))
    batch = np.zeros((2, 6, 40, 60), np.int64)
    labels = np.zeros((2, 6, 40, 60), np.uint32)
    got = reader.read("cells", 0, box, out=labels[1])
    assert got is not None and np.shares_memory(got, labels)
    np.testing.assert_array_equal(labels[1], reader.read("cells", 0, box))
    assert not labels[0].any()
    raws = np.zeros((2, 6, 40, 60), np.uint8)  # raw: read in parts, straight into the slot
    np.testing.assert_array_equal(reader.read("raw", 0, box, out=raws[0]), reader.read("raw", 0, box))
    assert raws[0].any() and not raws[1].any()
    with pytest.raises(ValueError, match=r"expected a writable uint32 array of shape \(6, 40, 60\)"):
        reader.read("cells", 0, box, out=batch[1])  # int64: not the level's dtype
    with pytest.raises(ValueError, match="shape"):
        reader.read("cells", 0, box, out=labels[1, :5])
