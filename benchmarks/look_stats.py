"""How long `emdata stats` and `emdata preview` take on a volume that has no stored statistics.

One run, one prepared volume (SNEMI3D-sized: 100×1024×1024 uint8 raw, 30×6×6 nm, a uint64
instance layer of touching cells and a sparse uint8 semantic layer, written by emdata's store;
0.98 GB of level-0 arrays uncompressed), one process. Cases, in interleaved rounds:

- ``stats, cold``: ``compute_stats`` with the page cache of every file of the volume dropped
  first (``os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`` per file): reads from disk;
- ``stats, warm``: the same with the files in the page cache;
- the parts of a warm run: ``raw`` (saturation and histogram: a full read of the raw level with at
  most 2**24 voxels, here level 2), ``instance layer`` (decoded where its index says foreground:
  here everywhere), ``semantic layer`` (answered from the stored foreground index, no decode);
- ``stats, cached``: ``volume_stats`` once the result is cached (a JSON read);
- ``preview``: ``render_sheet`` (default point, both layers), warm.

Figures are seconds and seconds per GB of level-0 arrays (uncompressed), best of the rounds
(median beside it). Writes benchmarks/results/look_stats.{json,md}.
Run: .venv/bin/python benchmarks/look_stats.py [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

SHAPE = (100, 1024, 1024)


def make_volume(root: Path) -> Path:
    from emdata.store.writer import LabelLayerData, write_volume

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    raw = np.clip(128 + 40 * np.sin(x / 9.0 + z / 4.0) * np.cos(y / 13.0) + rng.normal(0, 25, SHAPE), 0, 255)
    raw = raw.astype(np.uint8)
    cells = np.broadcast_to((x // 37 + 29 * (y // 41) + 7 * (z // 20)).astype(np.uint64)
                            * np.uint64(864691136617970907), SHAPE).copy()
    mito = np.zeros(SHAPE, np.uint8)
    mito[20:60, 100:300, 200:330] = 1
    mito[70:90, 700:760, 600:900] = 1
    path = root / "prepared" / "bench" / "train.ome.zarr"
    write_volume(path, raw, (30, 6, 6), meta={"dataset": "bench", "volume": "train", "split": "train"},
                 labels=[LabelLayerData("cells", cells, "instance",
                                        [{"value": 0, "name": "background", "ontology": "background"}],
                                        instance_of="neuron"),
                         LabelLayerData("mito", mito, "semantic",
                                        [{"value": 0, "name": "background", "ontology": "background"},
                                         {"value": 1, "name": "mito", "ontology": "mitochondria"}])])
    return path


def drop_cache(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="reuse or keep the volume in this folder")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="look-bench-"))
    os.environ["EMDATA_HOME"] = str(root / "home")
    from emdata.look import stats as look_stats
    from emdata.look.preview import render_sheet
    from emdata.store.volume import open_volume

    path = root / "prepared" / "bench" / "train.ome.zarr"
    if not (path / "zarr.json").is_file():
        made = timed(lambda: make_volume(root))
        print(f"volume written in {made:.1f} s")
    vol = open_volume(path)
    meta = vol.meta
    gb = look_stats.compute_stats(vol)["nbytes"] / 1e9
    cases = {
        "stats, cold (page cache dropped)": lambda: (drop_cache(vol.folder), look_stats.compute_stats(vol)),
        "stats, warm": lambda: look_stats.compute_stats(vol),
        "raw part (saturation, histogram: finest level of at most 2**24 voxels)": lambda: look_stats._raw_stats(
            vol, meta),
        "instance layer (uint64, decoded where foreground)": lambda: look_stats._layer_stats(
            vol, "cells", meta["labels"]["cells"]),
        "semantic layer (uint8, from the stored index)": lambda: look_stats._layer_stats(
            vol, "mito", meta["labels"]["mito"]),
        "stats, cached (volume_stats, second call)": lambda: look_stats.volume_stats(vol),
        "preview (render_sheet, default point, 2 layers)": lambda: render_sheet(vol),
    }
    look_stats.volume_stats(vol)  # fills the cache the "cached" case reads
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            if "cold" not in name:
                fn()  # warm the page cache for the warm cases
            times[name].append(timed(fn))
        print(f"round {r + 1}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values()))
    rows = [{"case": name, "best_s": min(t), "median_s": statistics.median(t), "best_s_per_gb": min(t) / gb,
             "rounds": t} for name, t in times.items()]
    regime = (f"{SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]} uint8 raw (30×6×6 nm) + uint64 instance layer + uint8 semantic "
              f"layer, {gb:.2f} GB of level-0 arrays uncompressed, zstd chunks 32×128×128 as written by emdata; "
              f"one process, {args.rounds} interleaved rounds, best (median) shown; "
              f"{platform.machine()} with {os.cpu_count()} CPU(s), shared with other jobs")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "look_stats.json").write_text(json.dumps({"regime": regime, "gb": gb, "rows": rows}, indent=2))
    lines = ["# `emdata stats` / `emdata preview` timings", "", regime, "",
             "| case | best s | median s | best s/GB |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['best_s']:.3f} | {r['median_s']:.3f} | {r['best_s_per_gb']:.3f} |" for r in rows]
    lines += ["", "Run: `.venv/bin/python benchmarks/look_stats.py`", ""]
    (out / "look_stats.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
