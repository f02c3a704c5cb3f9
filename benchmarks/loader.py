"""Patch loading speed: emdata vs a naive zarr slice vs torch-em, against the physical limit.

One run, one prepared volume (SNEMI3D-sized: 100×1024×1024 uint8 raw + uint64 instance
labels, 30×6×6 nm, written by emdata's store), random 32×256×256 and 16×128×128 patches of
raw + labels, with 0 and 2 DataLoader workers (fork), batch size 1, after a warm-up:

- ``emdata``: ``PatchDataset`` (raw uint8 + labels as int64 view, no targets, no float), with
  process workers and, for 2 workers, also with ``worker_type="thread"``;
- ``naive zarr``: a Dataset that slices the zarr arrays for every patch;
- ``torch-em``: ``SegmentationDataset`` without transforms and ``default_segmentation_dataset``
  with its defaults, run in a separate virtual environment (CUDA-free here: see
  ``benchmarks/peers/README.md``); skipped when ``--peers-python`` is not given;
- limits: ``memcpy`` of the same patch bytes from RAM, and ``decode`` of the chunks each patch
  touches (zarr-python, one process).

Augmentation speed is measured by ``benchmarks/augment.py``.

Writes benchmarks/results/loader.{json,md}.
Run: .venv/bin/python benchmarks/loader.py [--peers-python /tmp/peers/torchem/bin/python] [--n 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (100, 1024, 1024)
PATCHES = {"32x256x256": (32, 256, 256), "16x128x128": (16, 128, 128)}


def make_volume(root: Path) -> Path:
    from emdata.store.writer import LabelLayerData, write_volume

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    raw = np.clip(128 + 40 * np.sin(x / 9.0 + z / 4.0) * np.cos(y / 13.0) + rng.normal(0, 25, SHAPE), 0, 255)
    cells = (x // 37 + 29 * (y // 41) + 7 * (z // 20)).astype(np.uint64) * np.uint64(864691136617970907)
    path = root / "prepared" / "bench" / "train.ome.zarr"
    write_volume(path, raw.astype(np.uint8), (30, 6, 6), meta={"dataset": "bench", "volume": "train", "split": "train"},
                 labels=[LabelLayerData("cells", np.broadcast_to(cells, SHAPE).copy(), "instance",
                                        [{"value": 0, "name": "background", "ontology": "background"}],
                                        instance_of="neuron")])
    return path


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


def rate(loader, n_warm: int) -> float:  # type: ignore[no-untyped-def]
    count, started = 0, None
    for _ in loader:
        count += 1
        if count == n_warm:
            started = time.perf_counter()
    return (count - n_warm) / (time.perf_counter() - started)


def loader_for(dataset, workers: int, threads: bool = False):  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader

    from emdata.torch import make_loader

    if hasattr(dataset, "patch_shape") and hasattr(dataset, "sample"):
        return make_loader(dataset, batch_size=1, num_workers=workers, worker_type="thread" if threads else "process",
                           multiprocessing_context="fork" if workers and not threads else None)
    return DataLoader(dataset, batch_size=1, num_workers=workers, shuffle=False,
                      multiprocessing_context="fork" if workers else None, persistent_workers=bool(workers))


def limits(path: Path, patch: tuple[int, int, int], n: int) -> dict[str, float]:
    import zarr

    g = zarr.open_group(str(path), mode="r")
    raw_arr, lab_arr = g["0"], g["labels/cells/0"]
    raw, lab = np.asarray(raw_arr[...]), np.asarray(lab_arr[...])
    starts = origins(n, patch)
    t = time.perf_counter()
    for o in starts:
        box = tuple(slice(a, a + p) for a, p in zip(o, patch))
        raw[box].copy()
        lab[box].copy()
    memcpy = n / (time.perf_counter() - t)
    chunks = raw_arr.chunks
    t = time.perf_counter()
    for o in starts[: max(n // 4, 8)]:
        box = tuple(slice(a // c * c, min(-(-(a + p) // c) * c, s)) for a, p, c, s in zip(o, patch, chunks, SHAPE))
        np.asarray(raw_arr[box])
        np.asarray(lab_arr[box])
    decode = max(n // 4, 8) / (time.perf_counter() - t)
    return {"memcpy (limit)": memcpy, "decode touched chunks (limit)": decode}


def peers(python: str, path: Path, patch: tuple[int, int, int], workers: int, n: int) -> dict[str, float]:
    script = Path(__file__).parent / "peers" / "torchem_bench.py"
    run = subprocess.run([python, str(script), str(path), ",".join(map(str, patch)), str(workers), str(n)],
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0:
        print(f"torch-em run failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="patches timed per case (after warm-up)")
    parser.add_argument("--peers-python", help="python of a venv with torch-em (benchmarks/peers/README.md)")
    args = parser.parse_args()
    os.environ["EMDATA_QUIET"] = "1"
    from emdata.torch import PatchDataset

    root = Path(tempfile.mkdtemp(prefix="emdata-loader-"))
    rows = []
    try:
        t = time.perf_counter()
        path = make_volume(root)
        print(f"volume written in {time.perf_counter() - t:.1f} s: {path}", file=sys.stderr)
        for pname, patch in PATCHES.items():
            lim = limits(path, patch, args.n * 4)
            for workers in (0, 2):
                n, warm = args.n * (4 if patch[0] == 16 else 1), 4 + 2 * workers
                cases = {
                    "emdata": PatchDataset([str(path)], patch, labels=["cells"], samples_per_epoch=n + warm),
                    "naive zarr": NaiveZarr(str(path), patch, n + warm),
                }
                result = {name: rate(loader_for(ds, workers), warm) for name, ds in cases.items()}
                if workers:
                    threaded = PatchDataset([str(path)], patch, labels=["cells"], samples_per_epoch=n + warm)
                    result["emdata (threads)"] = rate(loader_for(threaded, workers, threads=True), warm)
                if args.peers_python:
                    result.update(peers(args.peers_python, path, patch, workers, max(n // 2, 16)))
                result.update(lim)
                for name, value in result.items():
                    rows.append({"patch": pname, "workers": workers, "loader": name, "patches_per_s": round(value, 1)})
                    print(json.dumps(rows[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = Path(__file__).parent / "results"
    table = ["| patch | workers | loader | patches/s | emdata ÷ this |", "|---|---|---|---|---|"]
    for r in rows:
        ours = next(x["patches_per_s"] for x in rows if (x["patch"], x["workers"], x["loader"]) ==
                    (r["patch"], r["workers"], "emdata"))
        table.append(f"| {r['patch']} | {r['workers']} | {r['loader']} | {r['patches_per_s']} | "
                     f"{ours / r['patches_per_s']:.2f} |")
    out.mkdir(exist_ok=True)
    (out / "loader.json").write_text(json.dumps({"shape": SHAPE, "rows": rows}, indent=1))
    (out / "loader.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
