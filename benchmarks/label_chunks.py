"""Which decoded-size cap for label chunks serves random patches from disk fastest?

``emdata.store.chunking.MAX_CHUNK_BYTES`` caps the decoded bytes of one chunk: uint8 raw keeps
32×128×128 (512 KiB) under every cap measured here, uint64 instance labels get 32×128×128
(4 MiB: no cap), 16×128×128 (2 MiB) or 16×64×64 (512 KiB). For each cap the loader benchmark's
volume (``benchmarks/loader.py``: 100×1024×1024 uint8 raw + uint64 instance labels, 30×6×6 nm)
is prepared by ``write_volume``, then random patches of raw + labels are read **from disk with a
cold page cache** (every file dropped with ``os.posix_fadvise(..., POSIX_FADV_DONTNEED)`` before
each case), in one process:

- ``emdata reader``: ``VolumeReader(memory_budget=0).read`` of raw and labels (its per-process
  thread pool, nothing kept decoded), patches/s and CPU ms per patch (user + system, all threads);
- ``naive zarr``: slicing the two zarr arrays (zarr-python), patches/s.

Also the prepare time of the whole volume (all pyramid levels), and the label level-0 files and
bytes on disk. Rounds are interleaved (best rate, median CPU kept); the machine is shared, so
compare within one run. Writes benchmarks/results/label_chunks.{json,md}.

Run: .venv/bin/python benchmarks/label_chunks.py [--n 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import loader as bench  # the loader benchmark's volume, page dropping and patch origins

CAPS = {"4 MiB (no cap, before)": 4 << 20, "2 MiB (chosen)": 2 << 20, "512 KiB": 512 << 10}


def cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def prepare(root: Path, cap: int) -> tuple[Path, float]:
    from emdata.store import chunking

    before = chunking.MAX_CHUNK_BYTES
    chunking.MAX_CHUNK_BYTES = cap
    try:
        t = time.perf_counter()
        path = bench.make_volume(root)
        return path, time.perf_counter() - t
    finally:
        chunking.MAX_CHUNK_BYTES = before


def emdata_case(path: Path, patch: tuple[int, int, int], starts: list) -> tuple[float, float]:
    from emdata.torch.reader import VolumeReader

    reader = VolumeReader(path, memory_budget=0)
    for layer in ("raw", "cells"):
        reader.read(layer, 0, (slice(0, 1),) * 3)  # opened before the clock starts
    bench.drop_pages(path)
    t, c = time.perf_counter(), cpu_seconds()
    for o in starts:
        box = tuple(slice(a, a + p) for a, p in zip(o, patch))
        reader.read("raw", 0, box)
        reader.read("cells", 0, box)
    return len(starts) / (time.perf_counter() - t), 1e3 * (cpu_seconds() - c) / len(starts)


def naive_case(path: Path, patch: tuple[int, int, int], starts: list) -> float:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    arrays = (group["0"], group["labels/cells/0"])
    bench.drop_pages(path)
    t = time.perf_counter()
    for o in starts:
        box = tuple(slice(a, a + p) for a, p in zip(o, patch))
        for array in arrays:
            np.asarray(array[box])
    return len(starts) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="32x256x256 patches per case (16x128x128: 3x)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ["EMDATA_QUIET"] = "1"
    top = Path(tempfile.mkdtemp(prefix="emdata-label-chunks-"))
    rows: dict[str, dict] = {}
    try:
        volumes = {}
        for name, cap in CAPS.items():
            path, seconds = prepare(top / name.split()[0].replace(".", ""), cap)
            labels = path / "labels" / "cells" / "0"
            files = [p for p in labels.rglob("*") if p.is_file() and p.name != "zarr.json"]
            chunks = json.loads((labels / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"]
            volumes[name] = path
            rows[name] = {"cap": name, "label_chunks": "x".join(map(str, chunks)), "label_files": len(files),
                          "label_mb": round(sum(p.stat().st_size for p in files) / 1e6, 1),
                          "prepare_s": round(seconds, 1)}
            print(json.dumps(rows[name]), file=sys.stderr)
        samples: dict[tuple[str, str, str], list[float]] = {}
        for rnd in range(args.rounds):
            for pname, patch in bench.PATCHES.items():
                n = args.n * (3 if patch[0] == 16 else 1)
                starts = bench.origins(n, patch, seed=30 + rnd)
                for name, path in volumes.items():
                    rate, cpu = emdata_case(path, patch, starts)
                    samples.setdefault((name, pname, "emdata"), []).append(rate)
                    samples.setdefault((name, pname, "cpu"), []).append(cpu)
                    samples.setdefault((name, pname, "naive"), []).append(naive_case(path, patch, starts))
        for name in CAPS:
            for pname in bench.PATCHES:
                rows[name][f"{pname} emdata patches/s"] = round(max(samples[(name, pname, "emdata")]), 1)
                rows[name][f"{pname} emdata cpu ms/patch"] = round(statistics.median(samples[(name, pname, "cpu")]), 2)
                rows[name][f"{pname} naive zarr patches/s"] = round(max(samples[(name, pname, "naive")]), 1)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    doc = {"shape": bench.SHAPE, "cpus": os.cpu_count(), "n": args.n, "rounds": args.rounds,
           "rows": list(rows.values())}
    (out / "label_chunks.json").write_text(json.dumps(doc, indent=1))
    cols = ["label_chunks", "label_files", "label_mb", "prepare_s"] + [
        f"{p} {k}" for p in bench.PATCHES for k in ("emdata patches/s", "emdata cpu ms/patch", "naive zarr patches/s")]
    lines = ["From disk, cold page cache, 0 workers (one process; the emdata reader's thread pool), raw + labels "
             "per patch; prepare = the whole volume with its pyramid.", "",
             "| cap | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += ["| " + " | ".join([r["cap"]] + [str(r[c]) for c in cols]) + " |" for r in rows.values()]
    (out / "label_chunks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
