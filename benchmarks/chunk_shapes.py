"""Which chunk (and shard) shape serves random 3D training patches fastest?

Writes a SNEMI3D-sized volume (100×1024×1024 uint8 raw, 30×6×6 nm, EM-like texture; and
uint64 instance labels) once per candidate layout with zarr 3 + zstd, then reads random
32×256×256 and 16×128×128 patches (fresh array handle, no cache) and reports patches/s,
the ratio to a memcpy of the same bytes from RAM (the physical limit), bytes decoded per
byte delivered, files on disk and write time. Results go to benchmarks/results/.

Run: .venv/bin/python benchmarks/chunk_shapes.py [--patches 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

SHAPE = (100, 1024, 1024)
PATCHES = {"32x256x256": (32, 256, 256), "16x128x128": (16, 128, 128)}
CANDIDATES = [
    ("8x256x256", (8, 256, 256), None),
    ("16x128x128", (16, 128, 128), None),
    ("32x128x128 (emdata)", (32, 128, 128), None),
    ("32x256x256", (32, 256, 256), None),
    ("64x64x64", (64, 64, 64), None),
    ("64x128x128", (64, 128, 128), None),
    ("32x128x128 in 64x512x512 shards", (32, 128, 128), (64, 512, 512)),
    ("16x64x64 in 64x512x512 shards", (16, 64, 64), (64, 512, 512)),
]


def em_like(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    raw = 128 + 40 * np.sin(x / 9.0 + z / 4.0) * np.cos(y / 13.0) + rng.normal(0, 25, size=shape)
    raw = np.clip(raw, 0, 255).astype(np.uint8)
    cells = (x // 37 + 29 * (y // 41) + 7 * (z // 20)).astype(np.uint64) * 864691136617970907 % (2**62)
    labels = np.broadcast_to(cells, shape).copy()
    return raw, labels


def origins(n: int, patch: tuple[int, int, int], seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(SHAPE, patch)) for _ in range(n)]


def read_rate(path: Path, patch: tuple[int, int, int], n: int) -> float:
    arr = zarr.open_array(str(path), mode="r")
    starts = origins(n, patch, seed=1)
    arr[tuple(slice(o, o + p) for o, p in zip(starts[0], patch))]  # warm the handle
    t = time.perf_counter()
    for o in starts:
        np.asarray(arr[tuple(slice(a, a + p) for a, p in zip(o, patch))])
    return n / (time.perf_counter() - t)


def memcpy_rate(data: np.ndarray, patch: tuple[int, int, int], n: int) -> float:
    starts = origins(n, patch, seed=1)
    t = time.perf_counter()
    for o in starts:
        data[tuple(slice(a, a + p) for a, p in zip(o, patch))].copy()
    return n / (time.perf_counter() - t)


def decoded_ratio(chunks: tuple[int, int, int], patch: tuple[int, int, int]) -> float:
    """Expected voxels decoded per voxel delivered for a random patch position."""
    return math.prod((p + c - 1) / p for p, c in zip(patch, chunks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="raw only, fewer candidates")
    args = parser.parse_args()
    raw, labels = em_like(SHAPE)
    arrays = {"raw uint8": raw} if args.quick else {"raw uint8": raw, "labels uint64": labels}
    candidates = CANDIDATES[:4] if args.quick else CANDIDATES
    results = []
    tmp = Path(tempfile.mkdtemp(prefix="emdata-chunks-"))
    try:
        limits = {(name, pn): memcpy_rate(data, p, args.patches * 4)
                  for name, data in arrays.items() for pn, p in PATCHES.items()}
        for name, data in arrays.items():
            for label, chunks, shards in candidates:
                path = tmp / f"{len(results)}.zarr"
                t = time.perf_counter()
                arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                                        compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0)
                arr[...] = data
                write_s = time.perf_counter() - t
                files = sum(1 for p in path.rglob("*") if p.is_file())
                size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                row = {"array": name, "layout": label, "chunks": chunks, "shards": shards, "write_s": round(write_s, 2),
                       "files": files, "MB": round(size / 1e6, 1)}
                for pn, p in PATCHES.items():
                    rate = read_rate(path, p, args.patches)
                    row[f"{pn} patches/s"] = round(rate, 1)
                    row[f"{pn} % of memcpy"] = round(100 * rate / limits[(name, pn)], 2)
                    row[f"{pn} decoded/delivered"] = round(decoded_ratio(chunks, p), 2)
                results.append(row)
                print(json.dumps(row))
                shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    doc = {"shape": SHAPE, "voxel_size_nm": [30, 6, 6], "patches_per_point": args.patches,
           "memcpy_patches_per_s": {f"{a} {p}": round(r, 1) for (a, p), r in limits.items()}, "results": results}
    (out / "chunk_shapes.json").write_text(json.dumps(doc, indent=1))
    cols = ["array", "layout", "files", "MB", "write_s"] + [f"{pn} {m}" for pn in PATCHES
                                                            for m in ("patches/s", "% of memcpy", "decoded/delivered")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in results]
    (out / "chunk_shapes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
