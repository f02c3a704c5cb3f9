"""Remote training without a full copy: PatchDataset over a volume served with 20 ms latency vs the same
volume on local disk.

One run, one prepared volume (SNEMI3D-sized: 100×1024×1024 uint8 raw + uint64 instance labels,
30×6×6 nm, written by emdata's store), random patches of raw + labels (no targets, integer raw),
batch size 1, 0 and 2 DataLoader process workers (fork), after a warm-up. Cases:

- ``local, from disk``: ``PatchDataset([path], memory_budget=0)``: every patch reads and decodes
  its chunks from the local volume (page cache warm: the volume was just written and fits in RAM);
- ``remote, 20 ms``: ``PatchDataset([url])`` over ``http://127.0.0.1`` served by
  :class:`emdata.testing.MirrorServer` in its own process with ``latency_s=0.02`` added to every
  request (a same-region object store's first-byte latency); remote volumes are never preloaded
  and keep at most ``--cache-mb`` of fetched chunks per process;
- ``local, decoded cache`` (context, 0 workers): the default ``memory_budget`` keeps decoded chunks in the
  shared decoded cache (memory-mapped files; a remote volume gets no entry there).

Every case runs in a fresh process (its peak RSS, summed over the process and its workers, is
sampled every 20 ms), in interleaved rounds; the table gives the median rate over rounds and the
ratio remote ÷ local of the same round (median), so a busy machine moves both alike.

Writes benchmarks/results/remote.{json,md}.
Run: .venv/bin/python benchmarks/remote.py [--rounds 3] [--n 40] [--patch 32,256,256]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SHAPE = (100, 1024, 1024)
LATENCY_S = 0.02
RESULTS = Path(__file__).resolve().parent / "results"
SERVERS = {"aiohttp": "aiohttp's static files (sendfile, Range) behind a 20 ms delay",
           "werkzeug": "`emdata.testing.MirrorServer(latency_s=0.02)`"}


def make_volume(root: Path) -> Path:
    from emdata.store.writer import LabelLayerData, write_volume

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    raw = np.clip(128 + 40 * np.sin(x / 9.0 + z / 4.0) * np.cos(y / 13.0) + rng.normal(0, 25, SHAPE), 0, 255)
    cells = (x // 37 + 29 * (y // 41) + 7 * (z // 20)).astype(np.uint64) * np.uint64(864691136617970907)
    path = root / "bench.ome.zarr"
    write_volume(path, raw.astype(np.uint8), (30, 6, 6), meta={"dataset": "bench", "volume": "bench", "split": "train"},
                 labels=[LabelLayerData("cells", np.broadcast_to(cells, SHAPE).copy(), "instance",
                                        [{"value": 0, "name": "background", "ontology": "background"}],
                                        instance_of="neuron")])
    return path


def serve(root: str, latency: float, kind: str) -> None:
    """Child process: serve ``root`` with ``latency`` added to every request; print the URL, stop on stdin EOF.

    ``aiohttp``: aiohttp's static files (sendfile, Range) behind a middleware that waits ``latency``
    first, on one event loop (an object store answers many requests at once, each after its
    first-byte latency); ``werkzeug``: :class:`emdata.testing.MirrorServer` (a thread per request,
    Python-level copies: its throughput, not the latency, bounds what a client can fetch).
    """
    if kind == "werkzeug":
        from emdata.testing.server import MirrorServer

        with MirrorServer(Path(root), latency_s=latency) as server:
            print(server.url, flush=True)
            sys.stdin.read()
        return
    import asyncio

    from aiohttp import web

    @web.middleware
    async def delay(request: web.Request, handler: object) -> web.StreamResponse:
        await asyncio.sleep(latency)
        return await handler(request)  # type: ignore[operator]

    async def run() -> None:
        app = web.Application(middlewares=[delay])
        app.router.add_static("/", root, follow_symlinks=True)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(f"http://127.0.0.1:{port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(run())


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds used so far by process ``pid`` (and its live children when ``tree``)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *(proc.children(recursive=True) if tree else [])]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def run_case(source: str, workers: int, n: int, warmup: int, patch: tuple[int, int, int], budget: int,
             cache_mb: int, server_pid: int | None = None) -> dict:
    """Child process: time ``n`` batches after ``warmup`` and print the rate, and the CPU time per
    patch of this process with its workers and of the server, as JSON."""
    from emdata.store.volume import open_volume
    from emdata.torch import PatchDataset, make_loader

    volume = open_volume(source, cache_bytes=cache_mb << 20) if "://" in source else source
    ds = PatchDataset([volume], patch, labels=["cells"], samples_per_epoch=n + warmup, seed=1, memory_budget=budget)
    loader = make_loader(ds, batch_size=1, num_workers=workers, multiprocessing_context="fork" if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    cpu0, server0 = cpu_seconds(os.getpid()), cpu_seconds(server_pid, tree=False) if server_pid else 0.0
    start = time.perf_counter()
    count = sum(1 for _ in it)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(os.getpid()) - cpu0
    server = (cpu_seconds(server_pid, tree=False) - server0) if server_pid else 0.0
    return {"patches_per_s": count / elapsed, "patches": count, "seconds": elapsed,
            "cpu_ms_per_patch": 1000 * cpu / count, "server_cpu_ms_per_patch": 1000 * server / count}


def tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def measure(args: list[str], env: dict) -> dict:
    """Run one case in a fresh process; its result plus the peak RSS of its process tree."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, env=env, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"case {args} failed with exit code {proc.returncode}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=40, help="timed patches per case")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--patch", default="32,256,256")
    parser.add_argument("--cache-mb", type=int, default=256, help="fetched-chunk cache per process (remote)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--server", choices=("aiohttp", "werkzeug"), default="aiohttp",
                        help="the loopback server (see serve())")
    parser.add_argument("--source")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--budget", type=int, default=0)
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--out", default=str(RESULTS / "remote"))
    args = parser.parse_args()
    patch = tuple(int(v) for v in args.patch.split(","))
    if args.serve:
        serve(args.serve[0], float(args.serve[1]), args.server)
        return
    if args.child:
        print(json.dumps(run_case(args.source, args.workers, args.n, args.warmup, patch, args.budget,  # type: ignore[arg-type]
                                  args.cache_mb, args.server_pid)))
        return

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                          os.environ.get("PYTHONPATH", "")])}
    tmp = Path(tempfile.mkdtemp(prefix="emdata-remote-bench-"))
    env["EMDATA_HOME"] = str(tmp / "home")  # the decoded cache of the cases lives and dies with the run
    server = None
    try:
        path = make_volume(tmp)
        size = sum(f.stat().st_size for f in path.resolve().rglob("*") if f.is_file())
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp), str(LATENCY_S),
                                   "--server", args.server],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        url = server.stdout.readline().strip() + "/" + path.name  # type: ignore[union-attr]
        common = ["--n", str(args.n), "--warmup", str(args.warmup), "--patch", args.patch,
                  "--cache-mb", str(args.cache_mb), "--server-pid", str(server.pid)]
        cases = {
            ("local, from disk", 0): ["--source", str(path), "--workers", "0"],
            ("remote, 20 ms", 0): ["--source", url, "--workers", "0"],
            ("local, from disk", 2): ["--source", str(path), "--workers", "2"],
            ("remote, 20 ms", 2): ["--source", url, "--workers", "2"],
            ("local, decoded cache", 0): ["--source", str(path), "--workers", "0", "--budget", str(4 << 30)],
        }
        runs: dict[tuple[str, int], list[dict]] = {k: [] for k in cases}
        for r in range(args.rounds):
            for key, case in cases.items():
                result = measure([*case, *common], env)
                runs[key].append(result)
                print(f"round {r}: {key[0]:18s} {key[1]} workers: {result['patches_per_s']:6.2f} patches/s, "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    finally:
        if server is not None:
            server.stdin.close()  # type: ignore[union-attr]
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for (name, workers), results in runs.items():
        row = {"case": name, "workers": workers,
               "patches_per_s": statistics.median(r["patches_per_s"] for r in results),
               "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
               "cpu_ms_per_patch": statistics.median(r["cpu_ms_per_patch"] for r in results),
               "server_cpu_ms_per_patch": statistics.median(r["server_cpu_ms_per_patch"] for r in results),
               "rounds": [round(r["patches_per_s"], 3) for r in results]}
        if name == "remote, 20 ms":
            local = runs[("local, from disk", workers)]
            ratios = [a["patches_per_s"] / b["patches_per_s"] for a, b in zip(results, local)]
            row["ratio_to_local_disk"] = statistics.median(ratios)
            row["ratios_per_round"] = [round(r, 3) for r in ratios]
            memory = runs[("local, decoded cache", 0)]
            row["ratio_to_local_memory_0w"] = statistics.median(
                a["patches_per_s"] / b["patches_per_s"] for a, b in zip(results, memory))
        rows.append(row)
    doc = {"volume": {"shape": SHAPE, "raw": "uint8", "labels": "uint64 instance", "voxel_nm": [30, 6, 6],
                      "bytes_on_disk": size, "chunks": [32, 128, 128]},
           "patch": patch, "latency_s": LATENCY_S, "server": args.server, "cache_mb": args.cache_mb,
           "rounds": args.rounds,
           "timed_patches": args.n, "warmup": args.warmup, "cpus": os.cpu_count(), "rows": rows,
           "command": "python benchmarks/remote.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    lines = [
        "# Remote volumes: PatchDataset over HTTP with 20 ms latency vs local disk",
        "",
        f"Volume: {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]} uint8 raw + uint64 instance labels, 30×6×6 nm, chunks "
        f"32×128×128, {size / 2**20:.0f} MiB on disk. Patches {'×'.join(map(str, patch))} of raw + labels, batch 1, "
        f"{args.n} timed after {args.warmup} warm-up, fresh process per case, {args.rounds} interleaved rounds "
        f"(median), {os.cpu_count()} CPUs shared with other work. Remote: `http://127.0.0.1` served by "
        f"{SERVERS[args.server]} in its own process (every request waits {LATENCY_S * 1000:.0f} ms first); "
        f"fetched-chunk cache {args.cache_mb} MiB per process, never preloaded. Local from disk: "
        "`memory_budget=0` (nothing kept: each patch reads and decodes its chunks), page cache warm. Peak RSS: "
        "the case's process and its workers together (max over rounds). CPU per patch (median over rounds): "
        "user + system time during the timed patches of the case's process and its workers, and of the "
        "server process (it shares the same CPUs here; an object store's would not).",
        "",
        "| case | workers | patches/s (median) | remote ÷ local from disk, same round: median (each round) "
        "| peak RSS (MiB) | CPU ms/patch: loader | CPU ms/patch: server |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = (f"{row['ratio_to_local_disk']:.2f} ({', '.join(f'{r:.2f}' for r in row['ratios_per_round'])})"
                 if "ratio_to_local_disk" in row else "")
        lines.append(f"| {row['case']} | {row['workers']} | {row['patches_per_s']:.2f} | {ratio} | "
                     f"{row['peak_rss_mib']:.0f} | {row['cpu_ms_per_patch']:.1f} | "
                     f"{row['server_cpu_ms_per_patch']:.1f} |")
    memory_ratio = [r for r in rows if "ratio_to_local_memory_0w" in r and r["workers"] == 0]
    if memory_ratio:
        lines += ["", f"Remote (0 workers) ÷ local through the decoded cache (0 workers): "
                      f"{memory_ratio[0]['ratio_to_local_memory_0w']:.2f}."]
    lines += ["", f"Command: `{doc['command']}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
