"""Preparing one human-liver-em box: the seed's serial one-request-per-read access vs emdata.

A replica of EMPIAR-13356 (per-slice uint16 LZW/predictor-2 strip TIFFs, one row per strip,
and 0/255 PNG masks of the three classes the seed's code reads: er, mito, nucleus) is served
by the loopback mirror with a fixed added latency per request (a server hook that sleeps),
the way a distant host answers; the mirror runs in its own process, as a remote host would, so
its request handling does not take the client's CPU. The same box is then prepared by:

- **seed**: the access pattern of torch-em's ``human_liver_em`` (seed-003), re-implemented
  minimally here: per slice, in order, a HEAD for the size, tifffile parsing the header through
  a file object whose every ``read()`` is one ranged GET, one GET for the strips of the box's
  rows, LZW + delta decoding per row, then one GET of each whole mask PNG, decode and crop;
  nothing is cached between boxes; the arrays are written to a zarr v3 store at the end.
- **emdata**: ``emdata.prepare("human-liver-em", bbox=...)`` from an empty ``EMDATA_HOME``
  (layouts parsed once and cached, the strips of each slice in one request, masks fetched once
  into the cache, slices and files read concurrently, OME-Zarr pyramid, checksums, verify-open).
  It also tries the six unconfirmed mask folders (404s here), which the seed does not.

Then a second box overlapping the first (shifted by a quarter in y), and a third lying inside
both, show what caching buys: the seed fetches everything again, emdata only the rows it has
not read (box 3: nothing, so its time is the floor: decoding and writing the canonical volume).
Requests are counted from the server's log.

Run: .venv/bin/python benchmarks/human_liver_box.py [--slices 32] [--size 1024] [--latency-ms 20 50]
Writes benchmarks/results/human_liver_box.{json,md}.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests
from werkzeug.wrappers import Request, Response

from emdata.datasets.human_liver_em.replica import write_human_liver_em_replica
from emdata.sources.urls import mirror_url
from emdata.testing import MirrorServer

BASE = "https://ftp.ebi.ac.uk/empiar/world_availability/13356/data"
SEED_CLASSES = ("er", "mito", "nucleus")  # the classes seed-003's code maps


def latency(seconds: float, log: Path | None = None) -> Callable[[Request], Response | None]:
    """A MirrorServer hook that delays every request (and logs it), then lets it be served normally."""

    def hook(request: Request) -> Response | None:
        time.sleep(seconds)
        if log is not None:
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{request.method} {request.path}\n")
        return None

    return hook


def _serve(root: str, seconds: float, log: str, conn: Any) -> None:
    """Child process: the mirror, in its own interpreter as a remote host would be."""
    with MirrorServer(Path(root), hook=latency(seconds, Path(log))) as server:
        conn.send(server.url)
        conn.recv()


class RemoteMirror:
    """The loopback mirror in a separate process (its request handling does not compete with the
    client for the GIL); requests are counted from its log, a 404 is a path with no file."""

    def __init__(self, root: Path, seconds: float) -> None:
        import multiprocessing as mp

        self.root, self.log = root, root.parent / "requests.log"
        self.log.write_text("")
        self._conn, child = mp.get_context("spawn").Pipe()
        self._proc = mp.get_context("spawn").Process(target=_serve, args=(str(root), seconds, str(self.log), child),
                                                     daemon=True)
        self._proc.start()
        self.url = self._conn.recv()

    def count(self) -> int:
        return len(self.log.read_text().splitlines())

    def since(self, start: int) -> dict[str, int]:
        lines = [line.split(" ", 1) for line in self.log.read_text().splitlines()[start:]]
        missing = sum(not (self.root / path.lstrip("/")).is_file() for _, path in lines)
        return {"requests": len(lines), "GET": sum(m == "GET" for m, _ in lines),
                "HEAD": sum(m == "HEAD" for m, _ in lines), "404": missing}

    def close(self) -> None:
        self._conn.send("stop")
        self._proc.join(timeout=10)


class OneGetPerRead:
    """A seekable file over HTTP where every ``read()`` is one ranged GET (the seed's file object)."""

    def __init__(self, url: str, http: requests.Session) -> None:
        self.url, self.http, self.pos = url, http, 0
        head = http.head(url, timeout=60)
        head.raise_for_status()
        self.size = int(head.headers["Content-Length"])

    def read(self, n: int = -1) -> bytes:
        end = self.size - 1 if n is None or n < 0 else min(self.pos + n, self.size) - 1
        if end < self.pos:
            return b""
        data = self.http.get(self.url, headers={"Range": f"bytes={self.pos}-{end}"}, timeout=60).content
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        self.pos = max(0, min(self.pos, self.size))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


def seed_box(box: tuple[slice, slice, slice], out: Path) -> dict[str, np.ndarray]:
    """The seed's serial access pattern for one box (see the module docstring)."""
    import imagecodecs
    import tifffile
    import zarr
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    zs, ys, xs = box
    http = requests.Session()
    shape = tuple(s.stop - s.start for s in box)
    raw = np.zeros(shape, np.uint16)
    masks = {c: np.zeros(shape, np.uint8) for c in SEED_CLASSES}
    for i, z in enumerate(range(zs.start, zs.stop)):
        url = mirror_url(f"{BASE}/humanliver_raw_images/humanliver_raw_{z:03d}.tif")
        with tifffile.TiffFile(OneGetPerRead(url, http)) as tif:
            page = tif.pages[0]
            offsets, counts, dtype = page.dataoffsets, page.databytecounts, page.dtype
        first, last = offsets[ys.start], offsets[ys.stop - 1] + counts[ys.stop - 1] - 1
        blob = http.get(url, headers={"Range": f"bytes={first}-{last}"}, timeout=60).content
        for j, y in enumerate(range(ys.start, ys.stop)):
            start = offsets[y] - first
            row = np.frombuffer(imagecodecs.lzw_decode(blob[start:start + counts[y]]), dtype).copy()
            raw[i, j] = imagecodecs.delta_decode(row, axis=-1)[xs.start:xs.stop]
        for cls in SEED_CLASSES:
            folder = f"humanliver_{cls}_mask"
            png = http.get(mirror_url(f"{BASE}/{folder}/{folder}_{z:03d}.png"), timeout=60).content
            image = np.array(Image.open(io.BytesIO(png)))
            masks[cls][i] = (image[..., 0] if image.ndim == 3 else image)[ys, xs]
    root = zarr.open_group(str(out), mode="w", zarr_format=3)
    for name, data in {"raw": raw, **masks}.items():
        root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(64, 256, 256))[...] = data
    return {"raw": raw, **masks}


def _text(box: tuple[slice, slice, slice]) -> str:
    return ",".join(f"{s.start}:{s.stop}" for s in box)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024, help="slice height and width in px")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[20.0, 50.0])
    args = parser.parse_args()
    n, size = args.slices, args.size
    first_box = (slice(0, n), slice(size // 4, 3 * size // 4), slice(size // 8, 7 * size // 8))
    second_box = (slice(0, n), slice(size // 2, size), slice(size // 8, 7 * size // 8))
    inside = (slice(0, n), slice(size // 2, 3 * size // 4), slice(size // 8, 7 * size // 8))
    work = Path(tempfile.mkdtemp(prefix="emdata-liver-bench-"))
    logging.getLogger("emdata").setLevel(logging.ERROR)
    os.environ["EMDATA_QUIET"] = "1"
    t = time.perf_counter()
    truth = write_human_liver_em_replica(work / "mirror", n_slices=n, shape=(size, size), classes=SEED_CLASSES)
    print(f"replica: {n} slices of {size}×{size} written in {time.perf_counter() - t:.1f} s "
          f"({sum(p.stat().st_size for p in truth['files']['raw']) / 1e6:.0f} MB of TIFF)")
    rows: list[dict[str, Any]] = []
    for ms in args.latency_ms:
        server = RemoteMirror(work / "mirror", ms / 1000)
        try:
            os.environ["EMDATA_MIRROR"] = server.url
            os.environ["EMDATA_HOME"] = str(work / f"home-{ms:g}")  # every latency starts with empty caches
            import emdata

            cases = (("box 1 (cold)", first_box), ("box 2 (overlaps box 1)", second_box),
                     ("box 3 (inside 1 and 2: all cached)", inside))
            for label, box in cases:
                start = server.count()
                t = time.perf_counter()
                got = seed_box(box, work / f"seed-{len(rows)}.zarr")
                seed_s = time.perf_counter() - t
                seed_req = server.since(start)
                assert np.array_equal(got["raw"], truth["raw"][box])
                start = server.count()
                t = time.perf_counter()
                vol, = emdata.prepare("human-liver-em", bbox=_text(box))
                ours_s = time.perf_counter() - t
                ours_req = server.since(start)
                assert np.array_equal(vol.raw[...], truth["raw"][box])
                for cls in SEED_CLASSES:
                    assert np.array_equal(vol.labels[cls][...], truth["masks"][cls][box] // 255)
                    assert np.array_equal(got[cls], truth["masks"][cls][box])
                rows.append({"latency_ms": ms, "case": label, "bbox": _text(box), "seed_s": round(seed_s, 3),
                             "emdata_s": round(ours_s, 3), "speedup": round(seed_s / ours_s, 1),
                             "seed_requests": seed_req, "emdata_requests": ours_req})
                print(rows[-1])
        finally:
            server.close()
    doc = {"slices": n, "slice_px": [size, size], "latency_ms": args.latency_ms, "classes": list(SEED_CLASSES),
           "cpu_count": os.cpu_count(), "rows": rows}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "human_liver_box.json").write_text(json.dumps(doc, indent=1))
    lines = [f"{n} slices of {size}×{size} px (uint16 LZW strip TIFF, one row per strip, + 3 PNG masks); the loopback "
             f"mirror in its own process adds a fixed latency per request; {os.cpu_count()} CPUs; every latency "
             "starts from empty caches", "",
             "| latency | case | bbox | seed s | emdata s | speedup | seed requests (GET/HEAD) | emdata requests "
             "(GET/HEAD; 404 probes) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, e = r["seed_requests"], r["emdata_requests"]
        lines.append(f"| {r['latency_ms']:g} ms | {r['case']} | {r['bbox']} | {r['seed_s']} | {r['emdata_s']} | "
                     f"{r['speedup']}× | {s['requests']} ({s['GET']}/{s['HEAD']}) | {e['requests']} "
                     f"({e['GET']}/{e['HEAD']}; {e['404']}) |")
    lines += ["", "404 probes: emdata also tries the six unconfirmed mask folders once (GET of the first slice, "
              "HEAD of the last); the result is remembered, so later boxes do not ask again."]
    (out / "human_liver_box.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
