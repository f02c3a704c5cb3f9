"""ProcessLoader: whole batches built by worker processes into reused shared-memory buffers.

Same samples as 0 workers under fork, spawn and forkserver and under DDP rank shares; batches
composed in order; buffers reused, and unlinked when the loader goes; worker errors and deaths
reported."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emdata.store.writer import LabelLayerData, write_volume  # noqa: E402
from emdata.torch import PatchDataset, ProcessLoader, make_loader  # noqa: E402
from emdata.torch.loaders import SHM_PREFIX, EpochSampler  # noqa: E402
from emdata.torch.workers import batch_layout, read_batch, write_batch  # noqa: E402


def _volume(path: Path) -> Path:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 255, (12, 64, 64), dtype=np.uint8)
    cells = (rng.integers(1, 9, (12, 64, 64)) * np.uint64(1 << 40)).astype(np.uint64)  # ids past 32 bits
    return write_volume(path, raw, (30, 6, 6),
                        labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
                        meta={"dataset": "demo", "volume": "v", "split": "train"})


def _dataset(path: Path, n: int = 10) -> PatchDataset:
    return PatchDataset([path], (4, 16, 16), labels=["cells"], targets=["semantic"], samples_per_epoch=n,
                        memory_budget=16 << 20)


def _segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith(f"{SHM_PREFIX}-{os.getpid()}-")}


def _plain(batch: dict) -> dict:
    return {k: _plain(v) if isinstance(v, dict) else (v.numpy().copy() if hasattr(v, "numpy") else v)
            for k, v in batch.items()}


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], dict):
                _same([x[key]], [y[key]])
            elif isinstance(x[key], np.ndarray):
                assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def test_samples_are_identical_with_0_workers_fork_spawn_and_forkserver(tmp_path: Path) -> None:
    ds = _dataset(_volume(tmp_path / "v.ome.zarr"))
    want = [_plain(b) for b in make_loader(ds, batch_size=3)]
    assert [len(b["raw"]) for b in want] == [3, 3, 3, 1]  # batch composition: in order, the last one short
    for context in ("fork", "spawn", "forkserver"):
        loader = make_loader(ds, batch_size=3, num_workers=2, multiprocessing_context=context)
        assert isinstance(loader, ProcessLoader)
        _same(want, [_plain(b) for b in loader])
        loader.close()
    assert not _segments()


def test_epochs_advance_and_rank_shares_match_the_serial_loader(tmp_path: Path) -> None:
    ds = _dataset(_volume(tmp_path / "v.ome.zarr"), n=9)
    for rank in (0, 1):
        serial = make_loader(ds, batch_size=2, rank=rank, world_size=2)
        workers = make_loader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork", rank=rank,
                              world_size=2)
        for _ in range(2):  # epoch 0, then 1
            _same([_plain(b) for b in serial], [_plain(b) for b in workers])
        workers.sampler.set_epoch(0)
        serial.sampler.set_epoch(0)
        _same([_plain(b) for b in serial], [_plain(b) for b in workers])
        assert len(workers) == len(serial) == (3 if rank == 0 else 2)
        workers.close()


def test_buffers_are_reused_and_unlinked_when_the_loader_goes(tmp_path: Path) -> None:
    ds = _dataset(_volume(tmp_path / "v.ome.zarr"), n=40)
    loader = make_loader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork", prefetch_factor=1)
    for _ in range(3):
        for _batch in loader:
            pass
    made = len(_segments())
    bound = 2 * (1 + 1) + 1  # in flight or built ahead (workers * (prefetch + 1)), and the one held
    assert 0 < made <= bound, f"a loop keeping one batch needs at most {bound} buffers, made {made}"
    kept = next(iter(loader))  # a batch still held stays readable after the loader goes
    raw = kept["raw"].clone()
    del loader
    gc.collect()
    assert not _segments(), "the buffers must be unlinked when the loader is garbage-collected"
    assert torch.equal(kept["raw"], raw)


def test_batches_held_by_the_caller_are_never_overwritten(tmp_path: Path) -> None:
    ds = _dataset(_volume(tmp_path / "v.ome.zarr"), n=24)
    want = [_plain(b) for b in make_loader(ds, batch_size=2)]
    with_workers = make_loader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
    held = list(with_workers)  # every batch alive at once: the ring grows instead of reusing
    _same(want, [_plain(b) for b in held])
    with_workers.close()


def test_a_failing_sample_names_its_keys_and_a_killed_worker_is_reported(tmp_path: Path) -> None:
    class Broken:
        def __len__(self) -> int:
            return 4

        def __getitem__(self, key: tuple[int, int]) -> dict:
            if key[1] == 2:
                raise ValueError("sample two is broken")
            return {"x": np.full(3, key[1])}

    loader = ProcessLoader(Broken(), 1, EpochSampler(4), num_workers=1, multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match=r"(?s)failed on samples \[\(0, 2\)\].*sample two is broken"):
        list(loader)
    again = iter(loader)  # a new pass (epoch 1) starts cleanly: the failed pass's batches still in flight are dropped
    assert [next(again)["x"].tolist(), next(again)["x"].tolist()] == [[[0, 0, 0]], [[1, 1, 1]]]
    loader.close()

    class Slow:
        def __len__(self) -> int:
            return 2

        def __getitem__(self, key: tuple[int, int]) -> dict:
            os.kill(os.getpid(), signal.SIGKILL)
            return {}

    dying = ProcessLoader(Slow(), 1, EpochSampler(2), num_workers=1, multiprocessing_context="fork")
    with pytest.raises(RuntimeError, match=r"ended unexpectedly.*exit code -9"):
        list(dying)
    assert not _segments()


def test_a_killed_main_process_leaves_no_buffer_behind(tmp_path: Path) -> None:
    """Buffers of a loader whose process was killed (no clean-up ran) go when the next loader starts."""
    ds_path = _volume(tmp_path / "v.ome.zarr")
    code = (f"import os, signal; from emdata.torch import PatchDataset, make_loader\n"
            f"ds = PatchDataset([{str(ds_path)!r}], (4, 16, 16), samples_per_epoch=6, memory_budget=0)\n"
            "loader = make_loader(ds, batch_size=2, num_workers=1, multiprocessing_context='fork')\n"
            "batches = list(loader)\nprint(os.getpid(), flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid = run.stdout.split()[0]
    assert [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}-{pid}-")], run.stderr
    loader = make_loader(_dataset(ds_path, n=2), batch_size=2, num_workers=1, multiprocessing_context="fork")
    next(iter(loader))
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}-{pid}-")]
    loader.close()


def test_batch_layout_stacks_like_collate_and_other_options_give_a_torch_dataloader(tmp_path: Path) -> None:
    samples = [{"a": np.arange(4, dtype=np.uint8).reshape(2, 2) + i, "n": i, "ok": True,
                "meta": {"name": f"s{i}", "v": np.float64(i)}} for i in range(3)]
    layout, size = batch_layout(samples)
    buffer = np.zeros(size, np.uint8)
    write_batch(samples, layout, buffer)
    out = read_batch(layout, buffer, torch.from_numpy)
    from emdata.torch.collate import collate_patches

    want = collate_patches(samples)
    for key in ("a", "n", "ok"):
        assert out[key].dtype == want[key].dtype and torch.equal(out[key], want[key])
    assert out["meta"]["name"] == ["s0", "s1", "s2"] and torch.equal(out["meta"]["v"], want["meta"]["v"])
    with pytest.raises(ValueError, match="different shapes"):
        batch_layout([{"a": np.zeros(2)}, {"a": np.zeros(3)}])
    ds = _dataset(_volume(tmp_path / "v.ome.zarr"), n=2)
    assert isinstance(make_loader(ds, num_workers=1, pin_memory=False), torch.utils.data.DataLoader)
    assert isinstance(make_loader(ds, num_workers=1, worker_type="torch"), torch.utils.data.DataLoader)



class _ThreadsSeen:
    """A dataset whose samples report the chunk-reading threads of the process that built them."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, key: tuple[int, int]) -> dict:
        from emdata.torch.reader import read_threads

        return {"threads": np.array([read_threads()])}


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_read_threads_share_the_cores(context: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMDATA_READ_THREADS", raising=False)
    cores = os.cpu_count() or 1
    if context == "fork":  # forked workers see the patched count; spawned ones count this machine's
        cores = 6
        monkeypatch.setattr(os, "cpu_count", lambda: 6)
    loader = ProcessLoader(_ThreadsSeen(), 2, EpochSampler(2), num_workers=2, multiprocessing_context=context)
    try:
        batch = next(iter(loader))
    finally:
        loader.close()
    shared = max(2, min(8, 2 * cores // 2))  # 2 per core, shared by the 2 workers (6 cores: 6, not 8)
    assert batch["threads"].ravel().tolist() == [shared, shared]
