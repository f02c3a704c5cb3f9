"""Augmentation speed: ``PatchDataset(augment=...)`` against the same dataset without augmentation.

One run, one prepared volume (48×1024×1024 uint8 raw + uint64 instance labels, 30×6×6 nm,
written by emdata's store and held in memory by the reader), random 16×128×128 patches of raw +
``labels/cells`` (no targets), batch size 1, ``make_loader`` with 0 workers (one process; torch
limited to one thread), after a warm-up. Cases:

- ``plain``: no augmentation (the reference);
- ``augment=True``: flips on every axis and 90° turns in xy;
- ``augment="em"``: the standard EM set (:func:`emdata.torch.augment.em_augment`: misalignment
  and slip, rotation ∘ zoom ∘ elastic warp with its margin read from the volume, flips and turns,
  section defects, gamma, contrast, noise, blur, local contrast, each with its probability),
  its geometry resampled in one pass through one composed map (OpenCV when installed).

The cases run in interleaved rounds, so a busy machine slows them alike; each augmented rate is
divided by the plain rate of the same round and the table gives the median of those ratios (and
the median rates). The process's CPU time per patch is recorded too (time.process_time: what the
patch costs this process, whatever else the machine runs) with its ratio. Writes
benchmarks/results/augment.{json,md} (or under ``--out``).
Run: PYTHONPATH=src .venv/bin/python benchmarks/augment.py [--n 300] [--rounds 5] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (48, 1024, 1024)
PATCH = (16, 128, 128)
CASES = {"plain": False, "augment=True (flips, 90° turns)": True, "augment='em' (standard EM set)": "em"}


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


def opencv_version() -> str:
    from emdata.torch.augment.geometric import _cv2

    cv2 = _cv2()
    return cv2.__version__ if cv2 is not None else "not installed (numpy and torch paths)"


def rate(dataset, n_warm: int, epoch: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    from emdata.torch import make_loader

    loader = make_loader(dataset, batch_size=1, num_workers=0)
    loader.sampler.set_epoch(epoch)
    count, started, cpu = 0, 0.0, 0.0
    for _ in loader:
        count += 1
        if count == n_warm:
            started, cpu = time.perf_counter(), time.process_time()
    n = count - n_warm
    return n / (time.perf_counter() - started), (time.process_time() - cpu) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="patches timed per case and round (after 8 warm-up)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    args = parser.parse_args()
    os.environ["EMDATA_QUIET"] = "1"
    import torch

    torch.set_num_threads(1)
    from emdata.torch import PatchDataset

    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="emdata-augment-"))
    try:
        t = time.perf_counter()
        path = make_volume(root)
        print(f"volume written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        datasets = {name: PatchDataset([str(path)], PATCH, labels=["cells"], samples_per_epoch=args.n + 8,
                                       augment=augment) for name, augment in CASES.items()}
        rates: dict[str, list[float]] = {name: [] for name in CASES}
        cpu: dict[str, list[float]] = {name: [] for name in CASES}
        for r in range(args.rounds):
            for name, ds in datasets.items():
                per_s, ms = rate(ds, 8, epoch=r)
                rates[name].append(per_s)
                cpu[name].append(ms)
            print(json.dumps({name: [round(v[-1], 1), round(cpu[name][-1], 2)] for name, v in rates.items()}),
                  file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for name, values in rates.items():
        ratios = [v / p for v, p in zip(values, rates["plain"])]
        cpu_ms = statistics.median(cpu[name])
        rows.append({"case": name, "patches_per_s": round(statistics.median(values), 1),
                     "ratio_to_plain": round(statistics.median(ratios), 3),
                     "cpu_ms_per_patch": round(cpu_ms, 3),
                     "cpu_ratio_to_plain": round(statistics.median(cpu["plain"]) / cpu_ms, 3),
                     "rounds": [round(v, 1) for v in values], "cpu_ms_rounds": [round(v, 3) for v in cpu[name]]})
    regime = (f"16×128×128 patches of uint8 raw + uint64 `labels/cells` (no targets) from a {SHAPE[0]}×{SHAPE[1]}×"
              f"{SHAPE[2]} volume held in memory; one process, 0 workers, batch 1, torch 1 thread; {args.rounds} "
              f"interleaved rounds of {args.n} patches after 8 warm-up; median rate, median of the per-round "
              f"ratios to the plain rate of the same round. Machine: {platform.machine()}, {os.cpu_count()} CPUs "
              f"(shared; 1-minute load average {load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end). "
              f"OpenCV {opencv_version()}.")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "augment.json").write_text(json.dumps({"regime": regime, "rows": rows}, indent=1) + "\n")
    table = ["| case | patches/s | ÷ plain (same rounds) | CPU ms / patch | plain CPU ÷ this |",
             "|---|---|---|---|---|"]
    table += [f"| {r['case']} | {r['patches_per_s']} | {r['ratio_to_plain']:.3f} | {r['cpu_ms_per_patch']} | "
              f"{r['cpu_ratio_to_plain']:.3f} |" for r in rows]
    text = "\n".join(table) + "\n\n" + regime + "\n"
    (out / "augment.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
