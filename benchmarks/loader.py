"""Patch loading speed in two regimes, emdata against a naive zarr slice and torch-em, and the limits.

One run, one prepared volume (SNEMI3D-sized: 100×1024×1024 uint8 raw + uint64 instance labels,
30×6×6 nm, written by emdata's store: 0.94 GB decoded), random 32×256×256 and 16×128×128
patches of raw + labels, batch size 1, DataLoader workers forked, rates after a warm-up
(``--n`` patches of 32×256×256 and 3× as many of 16×128×128 per case from disk: more would read
the volume's pages again from the page cache and the case would no longer be cold; in memory
``--memory-factor`` (4) times as many, so a case lasts long enough to time worker processes):

- regime **in memory**: emdata with its shared decoded cache filled (``memory_budget`` 4 GiB,
  every chunk decoded once beforehand, by one process, for all workers); the peers read the
  store with all its files in the page cache (they keep nothing decoded, so they decode per patch);
- regime **from disk, cold page cache**: before each case every file of the volume is dropped
  from the page cache (``os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``); emdata keeps nothing
  decoded (``memory_budget=0``), so every patch reads and decodes its chunks, as the peers do.
  Pages read during a case stay cached for the rest of it, for every loader alike;
- loaders: ``emdata`` (``PatchDataset``, raw uint8 + labels, no targets; with workers
  ``make_loader``'s ``ProcessLoader``: each worker builds whole batches into reused shared-memory
  buffers), ``emdata, torch DataLoader workers (before)`` (in memory: the same dataset through a
  torch DataLoader, one new shared-memory segment per tensor per batch), ``naive zarr`` (a
  Dataset slicing the zarr arrays per patch), ``torch-em`` ``SegmentationDataset`` without
  transforms and ``default_segmentation_dataset`` (own venv: ``benchmarks/peers/README.md``;
  skipped without ``--peers-python``), each at 0, 2 and 4 process workers; ``emdata
  DataModule defaults`` is ``SNEMI3DDataModule`` as shipped (batch 4, ``semantic`` target,
  0 workers, default budget; in the cold regime its decoded cache starts empty), in memory also
  with 2 workers;
- limits, same run: ``memcpy`` of the patch bytes from arrays in RAM, and ``read + decode touched
  chunks``: exactly the chunk files each patch touches read with ``os.read`` and decoded with the
  store's codec (numcodecs), spread over one thread per core, nothing assembled (cold at the
  start of the case, like the loaders); and ``read needed raw rows + decode touched label
  chunks``: the same, but of each raw chunk (stored uncompressed) only the byte span from the
  first to the last row the patch needs, as emdata's reader reads it;
- raw codec table: the raw level written with zstd 3 (the store's codec before), zstd 1 and
  no compression: bytes on disk and the read + decode rate of the chunks the 32×256×256 patches
  touch, cold;
- memory and start (in memory, 16×128×128, 2 workers, fork and spawn): PSS and USS (psutil) of
  the whole process tree after the rate run, the decoded cache's resident bytes (``fincore``),
  and the time from ``iter(loader)`` to the first batch.

- augmented (in memory, 16×128×128, 0 workers): ``augment="em"`` interleaved with plain emdata,
  its rate and its ratio to the plain rate of the same rounds. The augmentation cases in detail:
  ``benchmarks/augment.py``.

Emdata and naive zarr run in 2 interleaved rounds (the best of each is kept), the disk limits in 2, torch-em in one;
the machine is shared, so compare ratios within one row group, measured in the same run.
Writes benchmarks/results/loader.{json,md}.
Run: .venv/bin/python benchmarks/loader.py [--peers-python /tmp/peers/torchem/bin/python] [--n 20] [--memory-factor 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SHAPE = (100, 1024, 1024)
PATCHES = {"32x256x256": (32, 256, 256), "16x128x128": (16, 128, 128)}
WORKERS = (0, 2, 4)
CONTEXTS = ("fork", "spawn")
TORCH_LOADER = "emdata, torch DataLoader workers (before)"
DATAMODULE_WORKERS = "emdata DataModule (batch 4, semantic target, 2 workers)"
MEMORY, DISK = "in memory", "from disk, cold page cache"
BUDGET = 4 << 30


def make_volume(root: Path) -> Path:
    from emdata.store.writer import LabelLayerData, write_volume

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    raw = np.clip(128 + 40 * np.sin(x / 9.0 + z / 4.0) * np.cos(y / 13.0) + rng.normal(0, 25, SHAPE), 0, 255)
    cells = (x // 37 + 29 * (y // 41) + 7 * (z // 20)).astype(np.uint64) * np.uint64(864691136617970907)
    path = root / "prepared" / "snemi3d" / "train.ome.zarr"  # where SNEMI3DDataModule looks
    write_volume(path, raw.astype(np.uint8), (30, 6, 6),
                 meta={"dataset": "snemi3d", "volume": "train", "split": "train"},
                 labels=[LabelLayerData("cells", np.broadcast_to(cells, SHAPE).copy(), "instance",
                                        [{"value": 0, "name": "background", "ontology": "background"}],
                                        instance_of="neuron")])
    os.sync()  # written pages are clean, so dropping them works
    return path


def drop_pages(path: Path) -> None:
    """Drop every file under ``path`` (links followed) from the page cache."""
    for folder, _, files in os.walk(os.path.realpath(path)):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def warm_pages(path: Path) -> None:
    for folder, _, files in os.walk(os.path.realpath(path)):
        for name in files:
            Path(folder, name).read_bytes()


def origins(n: int, patch: tuple[int, int, int], seed: int = 1) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(SHAPE, patch)) for _ in range(n)]


class NaiveZarr:
    """Slice zarr for every patch (opened lazily per process)."""

    def __init__(self, path: str, patch: tuple[int, int, int], n: int) -> None:
        self.path, self.patch, self.starts, self.arrays = path, patch, origins(n, patch), None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict:
        import torch
        import zarr

        if self.arrays is None:
            g = zarr.open_group(self.path, mode="r")
            self.arrays = (g["0"], g["labels/cells/0"])
        box = tuple(slice(o, o + p) for o, p in zip(self.starts[i], self.patch))
        raw, lab = (np.asarray(a[box]) for a in self.arrays)
        return {"raw": torch.from_numpy(raw), "labels": torch.from_numpy(lab.view(np.int64))}


def rate(loader, n_warm: int, per_batch: int = 1) -> float:  # type: ignore[no-untyped-def]
    count, started = 0, None
    for _ in loader:
        count += 1
        if count == n_warm:
            started = time.perf_counter()
    return (count - n_warm) * per_batch / (time.perf_counter() - started)


def loader_for(dataset, workers: int, context: str = "fork", worker_type: str = "process"):  # type: ignore[no-untyped-def]
    """emdata: ``make_loader`` (process workers: its ``ProcessLoader``; ``worker_type="torch"``: a torch
    DataLoader, the loader before); anything else: a torch DataLoader with persistent workers."""
    from torch.utils.data import DataLoader

    from emdata.torch import make_loader

    if hasattr(dataset, "patch_shape") and hasattr(dataset, "sample"):
        return make_loader(dataset, batch_size=1, num_workers=workers, worker_type=worker_type,
                           multiprocessing_context=context if workers else None)
    return DataLoader(dataset, batch_size=1, num_workers=workers, shuffle=False,
                      multiprocessing_context=context if workers else None, persistent_workers=bool(workers))


def touched_chunks(patch: tuple[int, int, int], starts: list, chunks: tuple[int, ...]) -> list[list[tuple]]:
    return [list(itertools.product(*(range(o // c, (o + p - 1) // c + 1) for o, p, c in zip(s, patch, chunks))))
            for s in starts]


def chunk_decoder(array_dir: Path):  # type: ignore[no-untyped-def]
    """A function decoding one chunk file of the zarr v3 array at ``array_dir`` with its codec."""
    from numcodecs import Zstd, blosc

    meta = json.loads((array_dir / "zarr.json").read_text())
    names = [c["name"] for c in meta["codecs"]]
    return Zstd().decode if "zstd" in names else blosc.decompress if "blosc" in names else (lambda data: data)


def read_decode_rate(path: Path, arrays: list[str], patch: tuple[int, int, int], starts: list) -> float:
    """Patches/s reading and decoding exactly the chunks each patch touches (one thread per core)."""
    jobs = []
    for name in arrays:
        meta = json.loads((path / name / "zarr.json").read_text())
        decode, chunks = chunk_decoder(path / name), tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        jobs.append((path / name, decode, touched_chunks(patch, starts, chunks)))

    def one(item: tuple) -> int:
        folder, decode, idx = item
        try:
            data = (folder / "c" / "/".join(map(str, idx))).read_bytes()
        except FileNotFoundError:
            return 0
        return len(decode(data))

    drop_pages(path)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        t = time.perf_counter()
        for i in range(len(starts)):
            list(pool.map(one, [(folder, decode, idx) for folder, decode, per_patch in jobs for idx in per_patch[i]]))
        return len(starts) / (time.perf_counter() - t)


def needed_read_rate(path: Path, patch: tuple[int, int, int], starts: list) -> float:
    """Patches/s reading, of each raw chunk a patch touches (stored uncompressed), only the byte span
    from its first to its last needed row (``os.pread``), and reading + decoding every label chunk it
    touches (compressed: decoded whole); one thread per core, nothing assembled."""
    raw_meta = json.loads((path / "0" / "zarr.json").read_text())
    assert not [c for c in raw_meta["codecs"] if c["name"] != "bytes"], "raw must be stored uncompressed"
    raw_chunks = tuple(raw_meta["chunk_grid"]["configuration"]["chunk_shape"])
    itemsize = np.dtype(raw_meta["data_type"]).itemsize
    lab_dir = path / "labels" / "cells" / "0"
    lab_chunks = tuple(json.loads((lab_dir / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"])
    decode = chunk_decoder(lab_dir)

    def raw_span(item: tuple) -> int:
        idx, o = item
        lo = [max(a, i * c) - i * c for a, i, c in zip(o, idx, raw_chunks)]
        hi = [min(a + p, (i + 1) * c) - i * c for a, p, i, c in zip(o, patch, idx, raw_chunks)]
        row = raw_chunks[2] * itemsize
        first, last = (lo[0] * raw_chunks[1] + lo[1]) * row, ((hi[0] - 1) * raw_chunks[1] + hi[1]) * row
        try:
            fd = os.open(path / "0" / "c" / "/".join(map(str, idx)), os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            return len(os.pread(fd, last - first, first))
        finally:
            os.close(fd)

    def label_chunk(idx: tuple) -> int:
        try:
            return len(decode((lab_dir / "c" / "/".join(map(str, idx))).read_bytes()))
        except FileNotFoundError:
            return 0

    raw_touched, lab_touched = touched_chunks(patch, starts, raw_chunks), touched_chunks(patch, starts, lab_chunks)
    drop_pages(path)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        t = time.perf_counter()
        for i, o in enumerate(starts):
            jobs = [pool.submit(raw_span, (idx, o)) for idx in raw_touched[i]]
            jobs += [pool.submit(label_chunk, idx) for idx in lab_touched[i]]
            for job in jobs:
                job.result()
        return len(starts) / (time.perf_counter() - t)


def limits(path: Path, patch: tuple[int, int, int], n: int, n_memory: int) -> dict[str, float]:
    import zarr

    g = zarr.open_group(str(path), mode="r")
    raw, lab = np.asarray(g["0"][...]), np.asarray(g["labels/cells/0"][...])
    t = time.perf_counter()
    for o in origins(n_memory, patch, seed=5):
        box = tuple(slice(a, a + p) for a, p in zip(o, patch))
        raw[box].copy()
        lab[box].copy()
    memcpy = n_memory / (time.perf_counter() - t)
    starts = origins(n, patch, seed=5)
    del raw, lab
    touched = "read + decode touched chunks (limit)"
    needed = "read needed raw rows + decode touched label chunks (limit)"
    disk = {touched: 0.0, needed: 0.0}
    for _ in range(2):  # interleaved, the best kept, like the loaders' rounds
        disk[touched] = max(disk[touched], read_decode_rate(path, ["0", "labels/cells/0"], patch, starts))
        disk[needed] = max(disk[needed], needed_read_rate(path, patch, starts))
    return {"memcpy (limit)": memcpy, **disk}


def codec_rows(path: Path, root: Path, n: int) -> list[dict]:
    """Raw written with zstd 3, zstd 1 and no compression: disk bytes, cold read + decode of touched chunks."""
    import zarr

    raw = np.asarray(zarr.open_group(str(path), mode="r")["0"][...])
    chunks = zarr.open_group(str(path), mode="r")["0"].chunks
    patch = PATCHES["32x256x256"]
    starts = origins(n, patch, seed=7)
    out = []
    best: dict[str, float] = {}
    variants = {"zstd level 3 (before)": zarr.codecs.ZstdCodec(level=3), "zstd level 1": zarr.codecs.ZstdCodec(level=1),
                "blosc lz4": zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"), "none": None}
    sizes = {}
    for name, codec in variants.items():
        folder = root / "codecs" / name.split(" (")[0].replace(" ", "-")
        arr = zarr.create_array(str(folder), shape=raw.shape, dtype=raw.dtype, chunks=chunks, fill_value=0,
                                compressors=codec, zarr_format=3)
        arr[...] = raw
        sizes[name] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")
    os.sync()
    for _ in range(2):
        for name in variants:
            folder = root / "codecs" / name.split(" (")[0].replace(" ", "-")
            best[name] = max(best.get(name, 0.0), read_decode_rate(folder.parent, [folder.name], patch, starts))
    for name in variants:
        out.append({"codec": name, "disk_bytes": sizes[name], "ratio": round(raw.nbytes / sizes[name], 3),
                    "patches_per_s": round(best[name], 1)})
        print(json.dumps(out[-1]), file=sys.stderr)
    shutil.rmtree(root / "codecs", ignore_errors=True)
    return out


def peers(python: str, path: Path, patch: tuple[int, int, int], n: int, cold: bool) -> dict[tuple[str, int], float]:
    script = Path(__file__).parent / "peers" / "torchem_bench.py"
    cmd = [python, str(script), str(path), ",".join(map(str, patch)), ",".join(map(str, WORKERS)), str(n)]
    run = subprocess.run(cmd + (["--cold"] if cold else []), capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        print(f"torch-em run failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    found = json.loads(run.stdout.strip().splitlines()[-1])
    return {(k.split("|")[0], int(k.split("|")[1])): v for k, v in found.items()}


def fill_cache(path: Path) -> None:
    from emdata.torch.reader import VolumeReader

    reader = VolumeReader(path, memory_budget=BUDGET)
    assert reader.preload("raw", 0) and reader.preload("cells", 0), "the budget must hold the volume"


def clear_cache() -> None:
    from emdata.store import decoded_cache

    decoded_cache.clean()


def datamodule_rate(root: Path, patch: tuple[int, int, int], n: int, workers: int = 0) -> float:
    from emdata.lightning import SNEMI3DDataModule

    dm = SNEMI3DDataModule(data_root=root, patch_shape=patch, samples_per_epoch=4 * (n // 4 + 2 + workers),
                           num_workers=workers, multiprocessing_context="fork" if workers else None)
    dm.setup()
    return rate(dm.train_dataloader(), 2 + workers, per_batch=4)


def emdata_dataset(path: Path, patch: tuple[int, int, int], n: int, budget: int):  # type: ignore[no-untyped-def]
    from emdata.torch import PatchDataset

    return PatchDataset([str(path)], patch, labels=["cells"], samples_per_epoch=n, memory_budget=budget)


def regime_rows(path: Path, root: Path, pname: str, patch: tuple[int, int, int], regime: str, n: int,
                peers_python: str | None, rounds: int = 2) -> list[dict]:
    budget = BUDGET if regime == MEMORY else 0
    best: dict[tuple[str, int], float] = {}
    for _ in range(rounds):
        for workers in WORKERS:
            warm = 4 + 2 * workers
            names = ("emdata", "naive zarr") + ((TORCH_LOADER,) if regime == MEMORY and workers else ())
            for name in names:
                ds = (emdata_dataset(path, patch, n + warm, budget) if name.startswith("emdata")
                      else NaiveZarr(str(path), patch, n + warm))
                if regime == DISK:
                    drop_pages(path)
                key = (name, workers)
                loader = loader_for(ds, workers, worker_type="torch" if name == TORCH_LOADER else "process")
                best[key] = max(best.get(key, 0.0), rate(loader, warm))
                del loader  # its workers stop before the next case starts
        if regime == MEMORY:
            key = (DATAMODULE_WORKERS, 2)
            best[key] = max(best.get(key, 0.0), datamodule_rate(root, patch, n, workers=2))
        if regime == DISK:
            clear_cache()
            drop_pages(path)
        key = ("emdata DataModule defaults (batch 4, semantic target)", 0)
        best[key] = max(best.get(key, 0.0), datamodule_rate(root, patch, n))
    if peers_python:
        if regime == MEMORY:
            warm_pages(path)
        best.update(peers(peers_python, path, patch, max(n // 2, 12), cold=regime == DISK))
    return [{"patch": pname, "regime": regime, "workers": w, "loader": name, "patches_per_s": round(v, 1)}
            for (name, w), v in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0] != "emdata"))]


def tree_memory() -> dict[str, float]:
    """PSS and USS of this process and its children; ``outside_cache_pss_gb``: their PSS less the
    decoded cache's mapped files (what the processes add to the cache)."""
    import psutil

    from emdata.store.decoded_cache import cache_root

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    info = [p.memory_full_info() for p in procs]
    root = str(cache_root())
    mapped = sum(m.pss for p in procs for m in p.memory_maps(grouped=True) if m.path.startswith(root))
    return {"processes": len(procs), "pss_gb": sum(i.pss for i in info) / 1e9, "uss_gb": sum(i.uss for i in info) / 1e9,
            "uss_main_gb": info[0].uss / 1e9, "outside_cache_pss_gb": (sum(i.pss for i in info) - mapped) / 1e9}


def cache_resident() -> float:
    from emdata.store.decoded_cache import entries

    total = 0
    for folder, _ in entries():
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", str(folder / "data")], capture_output=True, text=True)
        total += int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.split() else 0
    return total / 1e9


def memory_rows(path: Path, n: int) -> list[dict]:
    """In memory, 16×128×128, 2 workers, fork and spawn: PSS/USS of the tree, cache resident bytes,
    time to the first batch; each start method measured in a fresh process (what a training
    script's main process holds: torch and emdata imported, the dataset, the loader), not in
    this benchmark's process with its limit arrays and peers' leftovers."""
    rows = []
    for context in CONTEXTS:
        run = subprocess.run([sys.executable, __file__, "--memory-case", str(path), context, str(n)],
                             capture_output=True, text=True, timeout=600, env=os.environ.copy())
        if run.returncode != 0:
            raise RuntimeError(f"memory case {context} failed: {run.stderr[-2000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def memory_case(path: Path, context: str, n: int) -> dict:
    """One :func:`memory_rows` case, in this (fresh) process."""
    import torch  # noqa: F401  (the main process of any training: in "main before")

    patch = PATCHES["16x128x128"]
    one_copy = (np.prod(SHAPE) * (1 + 8)) / 1e9
    fill_cache(path)  # in memory: every chunk decoded once, shared by the workers
    ds = emdata_dataset(path, patch, n + 8, BUDGET)
    before = tree_memory()["outside_cache_pss_gb"]  # this process alone, before the loader starts
    loader = loader_for(ds, 2, context)
    t = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t
    for _ in it:
        pass
    mem = tree_memory()
    return {"start": context, "workers": 2, "first_batch_s": round(first, 2),
            **{k: round(v, 3) for k, v in mem.items()}, "main_before_pss_gb": round(before, 3),
            "decoded_cache_resident_gb": round(cache_resident(), 3), "one_copy_gb": round(one_copy, 3)}


def augmented_row(path: Path, patch: tuple[int, int, int], n: int, rounds: int = 2) -> dict:
    """In memory, 0 workers: ``augment="em"`` against plain emdata in interleaved rounds (the same
    dataset settings); the row carries the median augmented rate and its ratio to plain of the same rounds."""
    from emdata.torch import PatchDataset

    def dataset(augment):  # type: ignore[no-untyped-def]
        return PatchDataset([str(path)], patch, labels=["cells"], samples_per_epoch=n + 4, memory_budget=BUDGET,
                            augment=augment)

    plain, em = dataset(False), dataset("em")
    pairs = [(rate(loader_for(plain, 0), 4), rate(loader_for(em, 0), 4)) for _ in range(rounds)]
    ratio = statistics.median(a / p for p, a in pairs)
    return {"patch": "x".join(map(str, patch)), "regime": MEMORY, "workers": 0,
            "loader": f"emdata augment='em' (÷ plain emdata of the same rounds: {ratio:.3f})",
            "patches_per_s": round(statistics.median(a for _, a in pairs), 1), "ratio_to_plain": round(ratio, 3)}


def table(rows: list[dict]) -> list[str]:
    lines = ["| patch | regime | workers | loader | patches/s | emdata ÷ this |", "|---|---|---|---|---|---|"]
    for r in rows:
        ref = "emdata"
        workers = 0 if r["workers"] == "-" else r["workers"]  # a limit: against emdata at 0 workers
        ours = next((x["patches_per_s"] for x in rows if (x["patch"], x["regime"], x["workers"], x["loader"]) ==
                     (r["patch"], r["regime"], workers, ref)), None)
        ratio = f"{ours / r['patches_per_s']:.2f}" if ours else "-"
        lines.append(f"| {r['patch']} | {r['regime']} | {r['workers']} | {r['loader']} | {r['patches_per_s']} | "
                     f"{ratio} |")
    return lines


def write_markdown(doc: dict, out: Path) -> None:
    """``loader.md`` from the results ``doc`` (also: ``python benchmarks/loader.py --markdown-only``)."""
    lines = table(doc["rows"])
    if doc.get("codecs"):
        lines += ["", "Raw codec (the raw level alone, 32x256x256 patches, from disk, cold page cache, read + decode "
                  "of the touched chunks, one thread per core):", "",
                  "| raw codec | bytes on disk | compression | patches/s |", "|---|---|---|---|"]
        lines += [f"| {c['codec']} | {c['disk_bytes'] / 1e6:.0f} MB | {c['ratio']}× | {c['patches_per_s']} |"
                  for c in doc["codecs"]]
    if doc.get("memory"):
        lines += ["", "Memory and start (in memory, 16x128x128, 2 process workers, after the epoch; PSS and USS "
                  "summed over the main process and its workers, psutil; outside the cache: that PSS less the "
                  "decoded cache's mapped files; main before: the main process's PSS outside the cache before the "
                  "loader starts (a fresh process with torch, emdata and the dataset); the decoded cache's "
                  "resident bytes by fincore; one copy = raw + labels of level 0; footprint = tree PSS outside "
                  "the cache + the cache's resident bytes (what the tree holds in RAM: the cache's pages count "
                  "once, mapped or not; tree PSS alone misses cache pages no process has touched); ratio = "
                  "footprint ÷ one copy):", "",
                  "| start | first batch | footprint | ratio | tree PSS outside the cache | main before | tree PSS | "
                  "tree USS | decoded cache resident | one copy |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in doc["memory"]:
            footprint = m["outside_cache_pss_gb"] + m["decoded_cache_resident_gb"]
            lines.append(f"| {m['start']} | {m['first_batch_s']} s | {footprint:.2f} GB | "
                         f"{footprint / m['one_copy_gb']:.2f}× | {m['outside_cache_pss_gb']:.2f} GB | "
                         f"{m['main_before_pss_gb']:.2f} GB | {m['pss_gb']:.2f} GB | {m['uss_gb']:.2f} GB | "
                         f"{m['decoded_cache_resident_gb']:.2f} GB | {m['one_copy_gb']:.2f} GB |")
    (out / "loader.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="32x256x256 patches timed per case (16x128x128: 3x)")
    parser.add_argument("--memory-factor", type=int, default=4,
                        help="in memory, time this many times more patches (the cold cases stay cold: with more "
                             "patches the volume's pages would be read again from the page cache)")
    parser.add_argument("--peers-python", help="python of a venv with torch-em (benchmarks/peers/README.md)")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite loader.md from loader.json")
    parser.add_argument("--memory-case", nargs=3, metavar=("PATH", "CONTEXT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:  # a child of memory_rows: EMDATA_HOME is the parent's (its decoded cache)
        case_path, context, n = args.memory_case
        print(json.dumps(memory_case(Path(case_path), context, int(n))))
        return
    out = Path(__file__).parent / "results"
    if args.markdown_only:
        write_markdown(json.loads((out / "loader.json").read_text()), out)
        return
    root = Path(tempfile.mkdtemp(prefix="emdata-loader-"))
    os.environ["EMDATA_QUIET"] = "1"
    os.environ["EMDATA_HOME"] = str(root)  # the decoded cache lives under it, and goes with it
    rows: list[dict] = []
    doc: dict = {"shape": SHAPE, "cpus": os.cpu_count()}
    started = time.perf_counter()
    try:
        t = time.perf_counter()
        path = make_volume(root)
        print(f"volume written in {time.perf_counter() - t:.1f} s: {path}", file=sys.stderr)
        doc["codecs"] = codec_rows(path, root, args.n)
        for pname, patch in PATCHES.items():
            n = args.n * (3 if patch[0] == 16 else 1)
            n_memory = n * args.memory_factor
            lim = limits(path, patch, n, n_memory)
            for regime in (MEMORY, DISK):
                if regime == MEMORY:
                    fill_cache(path)
                new = regime_rows(path, root, pname, patch, regime, n_memory if regime == MEMORY else n,
                                  args.peers_python)
                if regime == MEMORY and patch == (16, 128, 128):  # the standard EM augmentation set, 0 workers
                    new.append(augmented_row(path, patch, n_memory))
                for name, value in lim.items():
                    if (name == "memcpy (limit)") == (regime == MEMORY):
                        new.append({"patch": pname, "regime": regime, "workers": "-", "loader": name,
                                    "patches_per_s": round(value, 1)})
                for r in new:
                    print(json.dumps(r), file=sys.stderr)
                rows += new
        doc["memory"] = memory_rows(path, args.n * 3 * args.memory_factor)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    doc["seconds"] = round(time.perf_counter() - started)
    doc["rows"] = rows
    out.mkdir(exist_ok=True)
    (out / "loader.json").write_text(json.dumps(doc, indent=1))
    write_markdown(doc, out)




if __name__ == "__main__":
    main()
