"""ARAND and VOI on a 100x1024x1024 uint64 segmentation: emdata vs scikit-image vs the sparse-matrix formulation.

Compares, in one run with interleaved rounds, the time and the peak memory of
- emdata.metrics (chunked contingency table; ARAND in the SNEMI3D convention, CREMI VOI),
- scikit-image 0.26 ``skimage.metrics.adapted_rand_error`` / ``variation_of_information``
  (``ignore_labels=[0]``; its ARAND convention differs slightly, the work is the same),
- the sparse-matrix formulation of the organisers' code (cremi/cremi_python ``rand.py`` @ 2a7913b and
  ``voi.py`` @ 127841e: a ``scipy.sparse`` contingency table indexed by id), re-implemented here.

Regime: in memory. Ground truth and prediction (839 MB each, uint64) are generated once, saved as
.npy in a temporary folder, and each method runs in its own fresh process that loads both arrays
fully into RAM first (load time excluded). Peak memory is the process's peak RSS while the metric
runs minus its RSS with the inputs loaded (the peak is reset through /proc/self/clear_refs), i.e.
the working memory a method needs on top of its inputs. One thread per process (numpy/scipy here
do not multithread these operations). scikit-image and the sparse formulation index matrices by
id, so the volume's ids are small (< 2**17); and scipy.sparse (1.17) raises OverflowError on uint64 index
arrays whatever their values, so those two get int64 copies of the inputs (cast before timing, not
counted). emdata takes the uint64 arrays as they are, and also runs on the same partition with every
nonzero id shifted by 2**63, which neither of the others can take.

Run: .venv/bin/python benchmarks/metrics.py [--rounds 2] [--repeats 2] [--shape 100 1024 1024]
Writes benchmarks/results/metrics.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("emdata", "emdata, ids >= 2**63", "scikit-image", "sparse (organisers' formulation)")
ZARR_METHOD = "emdata, from zarr on disk"
U63 = np.uint64(2**63)


def make_volumes(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Segmentation-like ground truth (warped cells, ~1.7k ids, some background) and a prediction with
    shifted boundaries, merges, splits and zeros. Built slab by slab."""
    rng = np.random.default_rng(seed)
    gt = np.empty(shape, np.uint64)
    pred = np.empty(shape, np.uint64)
    y, x = np.ogrid[: shape[1], : shape[2]]
    merge_map = rng.integers(1, 40, size=4096)  # prediction ids that share a merge group
    for z in range(shape[0]):
        wy = y + 16 + 9 * np.sin(x / 23.0 + z / 7.0)  # >= 7: ids stay positive
        wx = x + 16 + 9 * np.cos(y / 19.0 - z / 11.0)
        col = (wx // 48).astype(np.int64)
        g = ((z // 20) * 1000 + (wy // 64).astype(np.int64) * 40 + col + 1).astype(np.uint64)
        g[(wy % 64 < 2) | (wx % 48 < 2)] = 0  # membrane = background
        gt[z] = g
        py = y + 16 + 9 * np.sin(x / 23.0 + z / 7.0 + 0.4)  # boundaries moved by a few pixels
        p = ((z // 20) * 1000 + (py // 64).astype(np.int64) * 40 + col + 1).astype(np.uint64)
        p = np.where(p % 7 == 0, merge_map[p % 4096] + 60000, p).astype(np.uint64)  # false merges
        p = np.where((p % 11 == 0) & (x > shape[2] // 2), p + 30000, p).astype(np.uint64)  # false splits
        p[np.broadcast_to(py % 64 < 1, p.shape)] = 0  # unassigned voxels on the boundaries
        pred[z] = p
    return gt, pred


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


_BASE_KB: list[int] = []


REPEATS = [2]


def _measure(fn: Any) -> tuple[Any, float, float]:
    """(value, best seconds of REPEATS calls, peak MB above the RSS the process had with its inputs loaded)."""
    if not _BASE_KB:
        _BASE_KB.append(_rss_kb("VmRSS"))
    base = _BASE_KB[0]
    best, peak, value = math.inf, 0.0, None
    for _ in range(REPEATS[0]):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
        peak = max(peak, max(_rss_kb("VmHWM") - base, 0) / 1024)
    return value, best, peak


def sparse_arand(gt: np.ndarray, pred: np.ndarray) -> float:
    """The organisers' formulation: scipy.sparse p_ij indexed by id, rows = truth, columns = prediction."""
    from scipy import sparse

    a_ids, b_ids = gt.reshape(-1), pred.reshape(-1)
    n = a_ids.size
    p_ij = sparse.csr_matrix((np.ones(n), (a_ids, b_ids)), shape=(int(a_ids.max()) + 1, int(b_ids.max()) + 1))
    rows = p_ij[1:, :]
    inner = p_ij[1:, 1:]
    c = np.asarray(p_ij[1:, 0].todense()).sum()
    a_i = np.asarray(rows.sum(axis=1)).ravel()
    b_j = np.asarray(inner.sum(axis=0)).ravel()
    sum_a = float((a_i * a_i).sum())
    sum_b = float((b_j * b_j).sum()) + c / n
    sum_ab = float(inner.multiply(inner).sum()) + c / n
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    return 1.0 - 2.0 * precision * recall / (precision + recall)


def sparse_voi(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """CREMI's formulation: a normalised sparse table without gt 0, conditional entropies in bits."""
    from scipy import sparse

    seg, truth = pred.reshape(-1), gt.reshape(-1)
    data = (truth != 0).astype(np.float64)
    cont = sparse.coo_matrix((data, (seg, truth))).tocsc()
    cont = cont / cont.sum()
    px = np.asarray(cont.sum(axis=1)).ravel()  # prediction marginals
    py = np.asarray(cont.sum(axis=0)).ravel()  # truth marginals
    coo = cont.tocoo()
    keep = coo.data > 0
    pij, i, j = coo.data[keep], coo.row[keep], coo.col[keep]
    split = -float(np.sum(pij * np.log2(pij / py[j])))  # H(pred | gt)
    merge = -float(np.sum(pij * np.log2(pij / px[i])))  # H(gt | pred)
    return split, merge


def drop_page_cache(folder: Path) -> None:
    """Evict the files under ``folder`` from the page cache (cold reads)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def zarr_child(folder: Path) -> dict[str, Any]:
    """cremi_score straight from two zarr arrays on disk: the whole process's peak RSS shows the bound."""
    import zarr

    from emdata.metrics import cremi_score

    gt = zarr.open_array(str(folder / "gt.zarr"), mode="r")
    pred = zarr.open_array(str(folder / "pred.zarr"), mode="r")
    drop_page_cache(folder / "gt.zarr")
    drop_page_cache(folder / "pred.zarr")
    Path("/proc/self/clear_refs").write_text("5")
    t = time.perf_counter()
    c = cremi_score(gt, pred)
    return {"method": ZARR_METHOD, "both_s": time.perf_counter() - t, "process_peak_mb": _rss_kb("VmHWM") / 1024,
            "arand": c["arand"], "voi_split": c["voi_split"], "voi_merge": c["voi_merge"]}


def child(method: str, folder: Path) -> dict[str, Any]:
    if method == ZARR_METHOD:
        return zarr_child(folder)
    gt = np.load(folder / "gt.npy")
    pred = np.load(folder / "pred.npy")
    if method == "emdata, ids >= 2**63":
        np.add(gt, U63, out=gt, where=gt != 0)
        np.add(pred, U63, out=pred, where=pred != 0)
    elif not method.startswith("emdata"):  # scipy.sparse rejects uint64 index arrays (OverflowError): int64 copies
        gt, pred = gt.astype(np.int64), pred.astype(np.int64)
    out: dict[str, Any] = {"method": method}
    if method.startswith("emdata"):
        from emdata.metrics import adapted_rand_error, cremi_score, variation_of_information

        r, out["arand_s"], out["arand_peak_mb"] = _measure(lambda: adapted_rand_error(gt, pred))
        v, out["voi_s"], out["voi_peak_mb"] = _measure(lambda: variation_of_information(gt, pred))
        c, out["both_s"], out["both_peak_mb"] = _measure(lambda: cremi_score(gt, pred))
        out.update(arand=r["arand"], voi_split=v["split"], voi_merge=v["merge"], cremi_score=c["cremi_score"])
    elif method == "scikit-image":
        from skimage.metrics import adapted_rand_error, variation_of_information

        r, out["arand_s"], out["arand_peak_mb"] = _measure(lambda: adapted_rand_error(gt, pred))
        v, out["voi_s"], out["voi_peak_mb"] = _measure(lambda: variation_of_information(gt, pred, ignore_labels=[0]))
        out.update(arand=float(r[0]), voi_split=float(v[0]), voi_merge=float(v[1]))
    else:
        r, out["arand_s"], out["arand_peak_mb"] = _measure(lambda: sparse_arand(gt, pred))
        v, out["voi_s"], out["voi_peak_mb"] = _measure(lambda: sparse_voi(gt, pred))
        out.update(arand=r, voi_split=v[0], voi_merge=v[1])
    out["input_rss_mb"] = _rss_kb("VmRSS") / 1024
    return out


def run_child(method: str, folder: Path, repeats: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--child", method, str(folder), str(repeats)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 1024, 1024))
    parser.add_argument("--repeats", type=int, default=2, help="calls per metric in each process (best time)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "metrics"), help="results path without extension")
    args = parser.parse_args()
    if args.child:
        REPEATS[0] = int(args.child[2])
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(prefix="emdata-metrics-bench-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        gt, pred = make_volumes(shape)
        np.save(folder / "gt.npy", gt)
        np.save(folder / "pred.npy", pred)
        n_gt, n_pred = len(np.unique(gt[::10])), len(np.unique(pred[::10]))
        import zarr

        for name, array in (("gt", gt), ("pred", pred)):
            z = zarr.create_array(str(folder / f"{name}.zarr"), shape=array.shape, dtype=array.dtype,
                                  chunks=(1, *array.shape[1:]))
            z[:] = array
        del gt, pred
        print(f"volumes {shape} uint64 written in {time.perf_counter() - t:.1f} s", flush=True)
        runs: list[dict[str, Any]] = []
        for r in range(args.rounds):
            order = METHODS[r % len(METHODS):] + METHODS[: r % len(METHODS)]  # rotate: no method always first
            for method in (*order, ZARR_METHOD):
                res = run_child(method, folder, args.repeats)
                res["round"] = r
                runs.append(res)
                print(json.dumps(res), flush=True)
    write(runs, shape, n_gt, n_pred, args)


def write(runs: list[dict[str, Any]], shape: tuple[int, ...], n_gt: int, n_pred: int, args: Any) -> None:
    def best(method: str, key: str) -> float:
        return min(r[key] for r in runs if r["method"] == method)

    def worst(method: str, key: str) -> float:
        return max(r[key] for r in runs if r["method"] == method)

    rows = []
    for m in METHODS:
        row = {"method": m, "arand_s": best(m, "arand_s"), "voi_s": best(m, "voi_s"),
               "arand_peak_mb": worst(m, "arand_peak_mb"), "voi_peak_mb": worst(m, "voi_peak_mb"),
               "arand": next(r["arand"] for r in runs if r["method"] == m),
               "voi_split": next(r["voi_split"] for r in runs if r["method"] == m),
               "voi_merge": next(r["voi_merge"] for r in runs if r["method"] == m)}
        if m.startswith("emdata"):
            row["both_s"] = best(m, "both_s")
            row["both_peak_mb"] = worst(m, "both_peak_mb")
        rows.append(row)
    sk = next(r for r in rows if r["method"] == "scikit-image")
    sp = next(r for r in rows if r["method"].startswith("sparse"))
    for row in rows:
        row["arand_speedup_vs_skimage"] = sk["arand_s"] / row["arand_s"]
        row["voi_speedup_vs_skimage"] = sk["voi_s"] / row["voi_s"]
        row["arand_speedup_vs_sparse"] = sp["arand_s"] / row["arand_s"]
        row["voi_speedup_vs_sparse"] = sp["voi_s"] / row["voi_s"]
    meta = {"shape": list(shape), "dtype": "uint64", "voxels": int(np.prod(shape)), "rounds": args.rounds,
            "gt_ids_sampled": n_gt, "pred_ids_sampled": n_pred, "regime": "in memory, one process per method "
            "and round, inputs loaded before timing, one thread", "time": "best of rounds x repeats",
            "peak": "worst of rounds, MB above the RSS with inputs loaded", "python": platform.python_version(),
            "repeats": args.repeats, "numpy": np.__version__,
            "machine": f"{os.cpu_count()} cores, shared and busy (load varies)",
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"methods": rows}
    lines = [f"# ARAND / VOI on {shape[0]}x{shape[1]}x{shape[2]} uint64 ({meta['voxels'] / 1e6:.0f} M voxels)", "",
             f"Regime: {meta['regime']}. Time: {meta['time']} ({args.rounds} interleaved rounds). Peak: "
             f"{meta['peak']}. Machine: {meta['machine']}; compare ratios within this run only. Command: "
             f"`.venv/bin/python benchmarks/metrics.py --rounds {args.rounds} --repeats {args.repeats}`. "
             f"{meta['date_utc']} UTC. scikit-image and the sparse formulation get int64 copies of the inputs "
             "(scipy.sparse rejects uint64 index arrays); emdata takes the uint64 arrays.", "",
             "| method | ARAND s | VOI s | ARAND+VOI (one table) s | ARAND peak MB | VOI peak MB | ARAND x vs "
             "scikit-image | VOI x vs scikit-image | ARAND x vs sparse | VOI x vs sparse |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        both = f"{r['both_s']:.2f}" if "both_s" in r else "-"
        lines.append(f"| {r['method']} | {r['arand_s']:.2f} | {r['voi_s']:.2f} | {both} | {r['arand_peak_mb']:.0f} | "
                     f"{r['voi_peak_mb']:.0f} | {r['arand_speedup_vs_skimage']:.1f} | {r['voi_speedup_vs_skimage']:.1f}"
                     f" | {r['arand_speedup_vs_sparse']:.1f} | {r['voi_speedup_vs_sparse']:.1f} |")
    z = [r for r in runs if r["method"] == ZARR_METHOD]
    zarr_row = {"method": ZARR_METHOD, "both_s": min(r["both_s"] for r in z),
                "process_peak_mb": max(r["process_peak_mb"] for r in z), "arand": z[0]["arand"],
                "voi_split": z[0]["voi_split"], "voi_merge": z[0]["voi_merge"]}
    summary["zarr"] = zarr_row
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1) + "\n")
    lines += ["", f"Bounded memory: `cremi_score` (ARAND + VOI from one table) reading both volumes from zarr on disk "
              f"(uint64, one {shape[1]}x{shape[2]} section per chunk, zstd; page cache dropped with posix_fadvise "
              f"DONTNEED per file before the run) took {zarr_row['both_s']:.2f} s with a peak RSS of "
              f"{zarr_row['process_peak_mb']:.0f} MB for the whole process (interpreter and imports included), "
              f"while the two volumes hold {2 * meta['voxels'] * 8 / 2**20:.0f} MB.", "",
              "Values (same partition; scikit-image's ARAND counts pairs as x(x-1) and prediction 0 as a segment):",
              "", "| method | ARAND | VOI split | VOI merge |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['arand']:.9f} | {r['voi_split']:.9f} | {r['voi_merge']:.9f} |"
              for r in [*rows, zarr_row]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
