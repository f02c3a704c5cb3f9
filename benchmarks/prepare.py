"""`emdata prepare` out of core: MB/s, peak RSS ÷ volume size and the ratio to a plain read + write floor.

For each size (decimal GB of the volume's arrays: raw uint8 + neuron ids uint16, SNEMI3D's
layout), a ``snemi.zip`` is written (members ``image/train-input.tif`` and ``seg/train-labels.tif``:
uncompressed multipage TIFFs in a deflated zip, as the organisers publish them, and a tiny
``image/test-input.tif``), placed in the download cache and pinned by its sha256. Then, in
interleaved rounds, each case runs in its own subprocess while the whole process tree's RSS
is sampled every 50 ms (psutil; a LocalCluster's worker processes included):

- ``floor``: the plain read + write: each member inflated from the zip (streamed in slabs of
  ``FLOOR_SLAB`` slices, so it fits in memory at every size) and written as one zarr v3 array
  with the store's chunks and codec (``emdata.store.layout.create_level_array``); no pyramid,
  no checksums, no index — a lower bound on the work;
- ``in-process``: ``emdata prepare snemi3d --volume train --force --scheduler in-process``;
- ``local``: the same with ``--scheduler local`` (a dask LocalCluster, one process per core);
- ``baseline``: ``in-process`` with the emdata found under ``--baseline-src`` (another checkout's
  ``src``), to compare a change with the code before it in the same run;
  ``local-N``: the same on a LocalCluster of N worker processes (for the 1 → 2 worker speedup).

Every prepare case extracts the TIFF members again and writes a fresh volume (the member copy
and the volume of the previous round are deleted, untimed), so it does all its work. Regime:
files on local disk, page cache warm where they fit (the machine's other jobs share it);
in-process: up to 4 writer threads (one per core); local: one thread per worker process.

Run: ``python benchmarks/prepare.py --sizes 0.5 2 8 --rounds 2`` (writes
``benchmarks/results/prepare.md`` and ``.json``; needs ~3x the largest size free on disk, the
scratch folder is deleted at the end).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

PLANE = (2048, 2048)
BYTES_PER_VOXEL = 3  # raw uint8 + labels uint16
FLOOR_SLAB = 64
RESULTS = Path(__file__).parent / "results"


def _pages_raw(n: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(PLANE[0]), np.arange(PLANE[1]), indexing="ij")
    base = (96 + 40 * np.sin(xx / 17.0) * np.cos(yy / 23.0)).astype(np.int16)
    for z in range(n):
        noise = rng.integers(-24, 24, size=PLANE, dtype=np.int16)
        yield np.clip(np.roll(base, z, axis=1) + noise, 0, 255).astype(np.uint8)


def _pages_labels(n: int) -> Any:
    yy, xx = np.meshgrid(np.arange(PLANE[0]), np.arange(PLANE[1]), indexing="ij")
    for z in range(n):
        y, x = yy + 3 * z, xx + ((yy // 37) % 5) * z
        ids = ((y // 41) * 60 + (x // 53)) % 40000 + 1
        ids[(y % 41 == 0) | (x % 53 == 0)] = 0  # membranes
        yield ids.astype(np.uint16)


def _write_tiff(path: Path, pages: Any, n: int, dtype: str) -> None:
    import tifffile

    big = n * math.prod(PLANE) * np.dtype(dtype).itemsize > (4 << 30) - (64 << 20)
    with tifffile.TiffWriter(path, bigtiff=big) as tif:
        tif.write(pages, shape=(n, *PLANE), dtype=dtype, photometric="minisblack")


def make_replica(archive: Path, n: int) -> None:
    """``snemi.zip`` with an ``n``-slice train volume (each member written through a temporary file)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    scratch = archive.parent / "members.tmp"
    scratch.mkdir(exist_ok=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for member, pages, dtype, count in (("image/train-input.tif", _pages_raw(n, 1), "uint8", n),
                                            ("seg/train-labels.tif", _pages_labels(n), "uint16", n),
                                            ("image/test-input.tif", _pages_raw(2, 2), "uint8", 2)):
            tmp = scratch / Path(member).name
            _write_tiff(tmp, pages, count, dtype)
            zf.write(tmp, member)
            tmp.unlink()
    scratch.rmdir()
    archive.with_name("shape.json").write_text(json.dumps([n, *PLANE]))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


FLOOR = r"""
import io, sys, zipfile, numpy as np, tifffile, zarr
from emdata.store.chunking import choose_chunks
from emdata.store.layout import create_level_array
archive, out, slab, n, ny, nx = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
root = zarr.open_group(out, mode="w", zarr_format=3)
with zipfile.ZipFile(archive) as zf:
    for i, (member, dtype) in enumerate([("image/train-input.tif", "uint8"), ("seg/train-labels.tif", "uint16")]):
        shape, dtype = (n, ny, nx), np.dtype(dtype)
        with zf.open(member) as f:  # the first page's header: where the contiguous pixel data starts
            offset = tifffile.TiffFile(io.BytesIO(f.read(1 << 20))).pages.first.dataoffsets[0]
        chunks, shards = choose_chunks(shape, (30.0, 6.0, 6.0), dtype.itemsize)
        arr = create_level_array(root, str(i), shape, dtype, chunks, shards)
        plane = ny * nx * dtype.itemsize
        with zf.open(member) as f:
            f.read(offset)
            for z0 in range(0, n, slab):
                k = min(slab, n - z0)
                arr[z0:z0 + k] = np.frombuffer(f.read(k * plane), dtype).reshape(k, ny, nx)
"""


def run_case(case: str, home: Path, env: dict[str, str], archive: Path, baseline_src: Path | None = None
             ) -> dict[str, Any]:
    """One case in a subprocess; returns seconds and the tree's peak RSS (sum over processes)."""
    import psutil

    members = archive.with_name(archive.name + ".members")
    shutil.rmtree(members, ignore_errors=True)
    shutil.rmtree(home / "prepared", ignore_errors=True)  # a fresh prepare: nothing to replace
    floor_out = home / "floor.zarr"
    shutil.rmtree(floor_out, ignore_errors=True)
    if case.startswith("local-"):  # a LocalCluster of N worker processes
        code = ("import sys, emdata; from emdata.datasets import _common; "
                f"_common.LOCAL_CLUSTER.update(n_workers={int(case.split('-')[1])}); "
                "emdata.prepare('snemi3d', volumes=['train'], force=True, scheduler='local')")
        cmd = [sys.executable, "-c", code]
    elif case == "floor":
        n = int(json.loads(archive.with_name("shape.json").read_text())[0])
        cmd = [sys.executable, "-c", FLOOR, str(archive), str(floor_out), str(FLOOR_SLAB), str(n), *map(str, PLANE)]
    else:
        cmd = [sys.executable, "-m", "emdata", "prepare", "snemi3d", "--volume", "train", "--force",
               "--scheduler", "in-process" if case == "baseline" else case, "--json"]
    if case == "baseline":
        if baseline_src is None:
            raise SystemExit("the baseline case needs --baseline-src (the src folder of the code to compare with)")
        env = {**env, "PYTHONPATH": str(baseline_src)}
    peak = [0, 0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = psutil.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                procs = [proc, *proc.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs if p.is_running()]
                peak[0] = max(peak[0], sum(rss))
                peak[1] = max(peak[1], max(rss, default=0))
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{case} failed ({proc.returncode}): {err.decode()[-3000:]}")
    shutil.rmtree(floor_out, ignore_errors=True)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_tree": peak[0], "peak_rss_process": peak[1],
            "load_average_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 2.0, 8.0], help="volume sizes, decimal GB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=["floor", "in-process", "local"])
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--out", default="prepare")
    parser.add_argument("--baseline-src", type=Path, default=None, help="src folder of the code the baseline case runs")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="emdata-bench-prepare-", dir=args.scratch))
    results: list[dict[str, Any]] = []
    try:
        for gb in args.sizes:
            n = max(8, round(gb * 1e9 / (BYTES_PER_VOXEL * math.prod(PLANE))))
            volume_bytes = n * math.prod(PLANE) * BYTES_PER_VOXEL
            home = scratch / f"home-{gb:g}"
            archive = home / "downloads" / "snemi3d" / "snemi.zip"
            t0 = time.perf_counter()
            make_replica(archive, n)
            print(f"{gb:g} GB: replica of {n}x{PLANE[0]}x{PLANE[1]} written in {time.perf_counter() - t0:.0f} s "
                  f"({archive.stat().st_size / 1e9:.2f} GB zip)", flush=True)
            from emdata.catalog import get_card

            url = get_card("snemi3d").source("snemi.zip").url
            sums = home / "sums.json"
            sums.write_text(json.dumps({url: sha256(archive)}))
            env = {**os.environ, "EMDATA_HOME": str(home), "EMDATA_CHECKSUMS": str(sums), "EMDATA_OFFLINE": "1",
                   "EMDATA_QUIET": "1"}
            subprocess.run([sys.executable, "-m", "emdata", "fetch", "snemi3d", "--json"], env=env, check=True,
                           capture_output=True)  # adopts the placed file (hash checked once, untimed)
            for r in range(args.rounds):
                for case in args.cases if r % 2 == 0 else list(reversed(args.cases)):
                    row = run_case(case, home, env, archive, args.baseline_src)
                    row.update({"size_gb": gb, "case": case, "round": r, "volume_bytes": volume_bytes,
                                "shape": [n, *PLANE]})
                    results.append(row)
                    print(f"  {case:10s} round {r}: {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} s CPU), "
                          f"{volume_bytes / row['seconds'] / 1e6:.0f} MB/s, peak RSS tree "
                          f"{row['peak_rss_tree'] / 2**30:.2f} GiB", flush=True)
            shutil.rmtree(home, ignore_errors=True)
            write_results(results, args.out)  # after every size: a later failure keeps what was measured
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_results(results: list[dict[str, Any]], name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                                      "rows": results}, indent=1))
    lines = [f"# `emdata prepare` out of core ({os.cpu_count()} cores, {platform.machine()})", "",
             "SNEMI3D-layout replica (uncompressed multipage TIFFs in a deflated zip; raw uint8 + neuron ids "
             f"uint16, {PLANE[0]}x{PLANE[1]} slices), volume `train`. Each case in its own subprocess; median of the "
             "rounds (interleaved). Files on local disk, page cache warm where they fit; RSS = the whole process "
             "tree's (LocalCluster workers included), sampled every 50 ms. Floor = inflate each member and write it "
             "as one zarr array with the store's chunks and codec (no pyramid, checksums or index).", "",
             "Wall seconds depend on what else the machine runs; CPU seconds (user + system of the whole "
             "process tree, cluster workers included) are the steadier measure of work on a shared machine.", "",
             "| size | case | wall s | MB/s (wall) | × floor (wall) | CPU s | × floor (CPU) | peak RSS (tree) | "
             "peak RSS ÷ volume |",
             "|---|---|---|---|---|---|---|---|---|"]
    sizes = sorted({r["size_gb"] for r in results})
    for gb in sizes:
        rows = [r for r in results if r["size_gb"] == gb]
        med = {c: float(np.median([r["seconds"] for r in rows if r["case"] == c])) for c in {r["case"] for r in rows}}
        cpu = {c: float(np.median([r["cpu_seconds"] for r in rows if r["case"] == c])) for c in med}
        for case in ("floor", "baseline", "in-process", "local", *sorted(c for c in med if c.startswith("local-"))):
            if case not in med:
                continue
            sel = [r for r in rows if r["case"] == case]
            vb = sel[0]["volume_bytes"]
            peak = max(r["peak_rss_tree"] for r in sel)
            ratio = f"{med['floor'] / med[case]:.2f}" if "floor" in med else "-"
            cratio = f"{cpu['floor'] / cpu[case]:.2f}" if "floor" in cpu else "-"
            lines.append(f"| {vb / 1e9:.2f} GB | {case} | {med[case]:.1f} | {vb / med[case] / 1e6:.0f} | {ratio} | "
                         f"{cpu[case]:.1f} | {cratio} | {peak / 2**30:.2f} GiB | {peak / vb:.3f} |")
    loads = [r["load_average_1min"] for r in results if "load_average_1min" in r]
    if loads:
        lines += ["", f"Load average (1 min, after each case) {min(loads):.1f}–{max(loads):.1f} on "
                      f"{os.cpu_count()} cores: other jobs shared the machine."]
    lines += ["", "Command: `python benchmarks/prepare.py " + " ".join(sys.argv[1:]) + "`", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
