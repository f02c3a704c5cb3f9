"""Download engine throughput against the loopback limit, and the cost of faults.

Serves a random file from the loopback mirror and measures, in one run:
- the physical limit here: a bare ``requests`` stream of the same URL into /dev/null;
- ``emdata.sources.download.fetch`` (hashing sha256+md5, writing, fsync, atomic publish);
- ``fetch`` with the connection cut three times (resume), bytes fetched vs file size;
- hashing alone (sha256+md5 of the bytes in RAM), the CPU floor of verification.

Run: .venv/bin/python benchmarks/download.py [--mb 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from emdata.sources.download import fetch
from emdata.sources.http import RetryPolicy
from emdata.testing import MirrorServer
from emdata.testing.faults import Faults, reset_after

URL = "https://bench.example.org/data/file.bin"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256)
    args = parser.parse_args()
    size = args.mb << 20
    root = Path(tempfile.mkdtemp(prefix="emdata-bench-"))
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    target = root / "mirror" / "bench.example.org" / "data" / "file.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    sha = "sha256:" + hashlib.sha256(data).hexdigest()
    os.environ["EMDATA_QUIET"] = "1"
    results = {}

    t = time.perf_counter()
    hashlib.sha256(data).digest()
    hashlib.md5(data, usedforsecurity=False).digest()
    results["hash sha256+md5 in RAM"] = time.perf_counter() - t

    faults = Faults(root / "mirror")
    with MirrorServer(root / "mirror", hook=faults) as server:
        os.environ["EMDATA_MIRROR"] = server.url
        mirrored = f"{server.url}/bench.example.org/data/file.bin"
        t = time.perf_counter()
        with requests.get(mirrored, stream=True, timeout=60) as r:
            for _ in r.iter_content(1 << 20):
                pass
        results["bare requests stream (limit)"] = time.perf_counter() - t

        t = time.perf_counter()
        fetch(URL, root / "out" / "a.bin", checksum=sha)
        results["emdata fetch"] = time.perf_counter() - t

        faults.add("file.bin", reset_after(size // 4), times=3)
        t = time.perf_counter()
        cut = fetch(URL, root / "out" / "b.bin", checksum=sha, policy=RetryPolicy(backoff_s=0.01))
        results["emdata fetch, cut 3 times"] = time.perf_counter() - t
        refetched = cut.bytes_transferred / size

    mbps = {k: round(size / v / 1e6, 1) for k, v in results.items()}
    limit = mbps["bare requests stream (limit)"]
    rows = [{"case": k, "seconds": round(v, 3), "MB/s": mbps[k], "vs limit": round(mbps[k] / limit, 2)}
            for k, v in results.items()]
    doc = {"size_MB": args.mb, "rows": rows, "cut_3_times_bytes_fetched_over_size": round(refetched, 4)}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "download.json").write_text(json.dumps(doc, indent=1))
    lines = ["| case | seconds | MB/s | vs limit |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['seconds']} | {r['MB/s']} | {r['vs limit']} |" for r in rows]
    lines.append(f"\ncut 3 times: fetched {refetched:.4f}× the file size")
    (out / "download.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
