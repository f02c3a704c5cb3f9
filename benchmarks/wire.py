"""Samples on the wire: the default ``SNEMI3DDataModule`` with compact samples against int64 ones,
at 0 and 2 process workers (fork and spawn).

One run, one prepared SNEMI3D replica (the dataset's published layout written by
``emdata.testing``'s replica kit at 64×512×512, prepared by ``emdata prepare``; uint8 raw, instance
labels, held in memory by the reader), the DataModule's defaults (16×128×128 patches, target
``semantic``, batch size 4) plus ``labels=["neurons"]`` in a second configuration (ids on the
wire too). Cases per configuration: ``compact=True`` (the default: uint8 ``semantic``, ids in
the smallest dtype, widened by ``on_after_batch_transfer`` on the device after the transfer) and
``compact=False`` (int64 out of the workers), each with 0 workers, 2 workers (fork) and 2 workers
(spawn). The rates are what the loader delivers; the widening (on the device in training) is
timed apart, on the CPU, per batch.

Each case builds its loader afresh, times the first batch (worker start included) and then the
steady rate over the following batches; the cases run in interleaved rounds and the table gives
the median rate, the median of the per-round ratios to the 0-worker rate of the same round and
configuration, and the median first-batch time. Writes benchmarks/results/wire.{json,md}.
Run: PYTHONPATH=src .venv/bin/python benchmarks/wire.py [--batches 60] [--rounds 3]
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

SHAPE = (64, 512, 512)
WORKERS = {"0 workers": (0, None), "2 workers (fork)": (2, "fork"), "2 workers (spawn)": (2, "spawn")}
CONFIGS = {"defaults (semantic)": {}, "semantic + labels/neurons": {"labels": ["neurons"]}}


def prepare(home: Path) -> None:
    import emdata
    import emdata.datasets.snemi3d.replica as replica
    from emdata.testing.replica_sets import serve_replicas

    replica.write_replica = lambda root, small=False: replica.write_snemi3d_replica(root, shape=SHAPE)
    with serve_replicas(["snemi3d"], home) as served:
        emdata.prepare("snemi3d", **served.options["snemi3d"])


def wire_bytes(sample: dict) -> int:
    return sum(v.nbytes for v in sample.values() if hasattr(v, "nbytes"))


def run_case(home: Path, workers: int, context: str | None, compact: bool, options: dict, batches: int) -> dict:
    from emdata.lightning import SNEMI3DDataModule

    dm = SNEMI3DDataModule(data_root=home, num_workers=workers, multiprocessing_context=context,
                           samples_per_epoch=4 * (batches + 2 + 2 * workers), val_samples=0, compact=compact,
                           **options)
    dm.setup("fit")
    started = time.perf_counter()
    it = iter(dm.train_dataloader())
    batch = next(it)
    first = time.perf_counter() - started
    for _ in range(1 + 2 * workers):  # warm-up: every worker has delivered
        next(it)
    t = time.perf_counter()
    count = 0
    for item in it:
        batch = item
        count += 1
    rate = count * 4 / (time.perf_counter() - t)
    del it
    t = time.perf_counter()
    for _ in range(10):
        wide = dm.on_after_batch_transfer(batch, 0)
    widen_ms = (time.perf_counter() - t) * 100
    assert str(wide["semantic"].dtype) == "torch.int64"
    return {"patches_per_s": rate, "first_batch_s": first, "widen_ms_per_batch_cpu": widen_ms,
            "sample_bytes": wire_bytes(dm.train_set.sample(0, 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60, help="batches of 4 timed per case (after warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    os.environ["EMDATA_QUIET"] = "1"
    import torch

    torch.set_num_threads(1)
    home = Path(tempfile.mkdtemp(prefix="emdata-wire-"))
    results: dict[tuple[str, str, str], list[dict]] = {}
    try:
        t = time.perf_counter()
        prepare(home)
        print(f"replica written and prepared in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for r in range(args.rounds):
            for config, options in CONFIGS.items():
                for compact in (True, False):
                    for name, (workers, context) in WORKERS.items():
                        out = run_case(home, workers, context, compact, options, args.batches)
                        key = (config, "compact" if compact else "int64", name)
                        results.setdefault(key, []).append(out)
                        print(json.dumps({"round": r, "case": key, **{k: round(v, 3) for k, v in out.items()}}),
                              file=sys.stderr)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    rows = []
    for (config, wire, name), runs in results.items():
        base = results[(config, wire, "0 workers")]
        rows.append({"config": config, "wire": wire, "workers": name,
                     "patches_per_s": round(statistics.median(x["patches_per_s"] for x in runs), 1),
                     "ratio_to_0_workers": round(statistics.median(
                         x["patches_per_s"] / b["patches_per_s"] for x, b in zip(runs, base)), 2),
                     "first_batch_s": round(statistics.median(x["first_batch_s"] for x in runs), 2),
                     "widen_ms_per_batch_cpu": round(statistics.median(x["widen_ms_per_batch_cpu"] for x in runs), 2),
                     "sample_kib": round(runs[0]["sample_bytes"] / 1024, 1),
                     "rounds": [round(x["patches_per_s"], 1) for x in runs]})
    regime = (f"SNEMI3D replica {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]} (uint8 raw, instance labels) held in memory; "
              f"SNEMI3DDataModule defaults (16×128×128, target semantic, batch 4); rates are the loader's, "
              f"the widening of one batch (on_after_batch_transfer) is timed apart on the CPU; {args.rounds} "
              f"interleaved rounds of {args.batches} "
              f"batches after warm-up; medians; torch 1 thread in the main process. Machine: {platform.machine()}, "
              f"{os.cpu_count()} CPUs (shared with other work, so 2 workers cannot reach 2×).")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "wire.json").write_text(json.dumps({"regime": regime, "rows": rows}, indent=1) + "\n")
    table = ["| configuration | wire | workers | patches/s | ÷ 0 workers (same rounds) | first batch (s) | "
             "sample (KiB) | widen, CPU (ms/batch) |", "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['config']} | {r['wire']} | {r['workers']} | {r['patches_per_s']} | "
              f"{r['ratio_to_0_workers']:.2f} | {r['first_batch_s']} | {r['sample_kib']} | "
              f"{r['widen_ms_per_batch_cpu']} |" for r in rows]
    text = "\n".join(table) + "\n\n" + regime + "\n"
    (out / "wire.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
