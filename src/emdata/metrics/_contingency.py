"""Chunked contingency tables: pair counts of (ground-truth id, prediction id) over a volume.

The table is accumulated slab by slab along axis 0, so memory is bounded by one slab plus the
number of distinct (gt, pred) pairs, never by the volume or by the largest id. Ids are never
combined into one integer by arithmetic on their values: each slab's ids are first collapsed into
runs of equal pairs along the fastest axis, then mapped to dense indices with ``np.unique``, so
uint64 ids >= 2**63 (CREMI, MICrONS) count exactly like small ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# Voxels per slab: 4 Mi voxels keep a slab's temporaries (two uint64 copies, a change mask, run
# starts) around 100 MB, whatever the volume's shape.
SLAB_VOXELS = 1 << 22
# Merge the per-slab pair lists once they hold this many rows (bounds memory by distinct pairs).
MERGE_ROWS = 1 << 22


@dataclass(frozen=True)
class Contingency:
    """Distinct (gt, pred) pairs with their voxel counts, plus the voxels excluded before counting.

    ``gt`` and ``pred`` keep the inputs' dtypes; ``counts`` is int64. ``n_voxels`` counts every voxel
    of the volume (also the excluded ones: the SNEMI3D formula divides by it).
    """

    gt: np.ndarray
    pred: np.ndarray
    counts: np.ndarray
    n_voxels: int
    n_excluded: int = 0


def check_label_array(name: str, array: Any) -> None:
    """Raise a teaching error unless ``array`` holds integer (or bool) labels."""
    dtype = np.dtype(getattr(array, "dtype", np.asarray(array).dtype))
    if dtype.kind not in "iub":
        raise TypeError(f"{name} has dtype {dtype}, expected integer labels (e.g. uint32/uint64); "
                        "threshold or round a probability map and label it before scoring")


def check_same_shape(gt: Any, pred: Any, names: tuple[str, str] = ("gt", "pred")) -> tuple[int, ...]:
    gs, ps = tuple(np.shape(gt)), tuple(np.shape(pred))
    if gs != ps:
        raise ValueError(f"{names[0]} has shape {gs} but {names[1]} has shape {ps}: both must cover the same voxels "
                         "(crop or pad the prediction to the ground truth's box first)")
    return gs


def reduce_pairs(g: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum the weights ``w`` of equal (g, p) pairs. Returns (g ids, p ids, summed weights), sorted by (g, p)."""
    if g.size == 0:
        return g[:0], p[:0], np.zeros(0, np.int64)
    gu, gi = np.unique(g, return_inverse=True)
    pu, pi = np.unique(p, return_inverse=True)
    n_p = len(pu)
    key = gi.reshape(-1).astype(np.int64) * n_p + pi.reshape(-1)  # < len(g) * len(p) <= (2**31)**2
    cells = len(gu) * n_p
    if cells <= max(4 * key.size, 1 << 16):  # small table: a dense bincount is fastest
        summed = np.bincount(key, weights=w, minlength=cells)
        nz = np.flatnonzero(summed)
        counts = summed[nz]
    else:
        order = np.argsort(key, kind="stable")
        ks = key[order]
        starts = np.flatnonzero(np.concatenate(([True], ks[1:] != ks[:-1])))
        nz = ks[starts]
        counts = np.add.reduceat(w[order], starts)
    return gu[nz // n_p], pu[nz % n_p], np.rint(counts).astype(np.int64)


def slab_pairs(g: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair counts of two equal-length 1D label arrays, via runs of equal pairs (cheap for segmentations)."""
    n = g.size
    if n == 0:
        return g[:0], p[:0], np.zeros(0, np.int64)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(g[1:], g[:-1], out=change[1:])
    change[1:] |= p[1:] != p[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, n)).astype(np.float64)
    return reduce_pairs(g[starts], p[starts], lengths)


def slabs(shape: tuple[int, ...], slab_voxels: int) -> list[tuple[slice, ...]]:
    if len(shape) == 0:
        return [()]
    plane = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, slab_voxels // max(plane, 1))
    return [(slice(z, min(z + step, shape[0])),) for z in range(0, shape[0], step)]


def contingency(gt: Any, pred: Any, *, exclude: Callable[[np.ndarray, tuple[slice, ...]], np.ndarray] | None = None,
                slab_voxels: int = SLAB_VOXELS) -> Contingency:
    """Count (gt, pred) pairs over a volume, slab by slab along axis 0.

    ``gt`` and ``pred`` are arrays of the same shape (numpy, or anything sliceable along axis 0 such
    as a zarr array: only one slab is in memory at a time). ``exclude(gt_slab, index)`` may return a
    boolean mask of voxels to leave out (e.g. the CREMI border mask); they count in ``n_voxels``.

    >>> t = contingency(np.array([[1, 1, 2]]), np.array([[5, 5, 5]], dtype=np.uint64))
    >>> t.gt.tolist(), t.pred.tolist(), t.counts.tolist()
    ([1, 2], [5, 5], [2, 1])
    """
    check_label_array("gt", gt)
    check_label_array("pred", pred)
    shape = check_same_shape(gt, pred)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rows = 0
    n_excluded = 0
    for index in slabs(shape, slab_voxels):
        g = np.asarray(gt[index])
        p = np.asarray(pred[index])
        if exclude is not None:
            keep = ~np.asarray(exclude(g, index), dtype=bool)
            n_excluded += int(keep.size - np.count_nonzero(keep))
            g, p = g[keep], p[keep]
        part = slab_pairs(g.reshape(-1), p.reshape(-1))
        pending.append(part)
        rows += part[0].size
        if rows > MERGE_ROWS and len(pending) > 1:
            merged = _merge(pending)
            pending, rows = [merged], merged[0].size
    g_ids, p_ids, counts = _merge(pending) if pending else (np.zeros(0, np.asarray(gt[:0]).dtype),
                                                             np.zeros(0, np.asarray(pred[:0]).dtype),
                                                             np.zeros(0, np.int64))
    return Contingency(g_ids, p_ids, counts, int(np.prod(shape, dtype=np.int64)), n_excluded)


def _merge(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    g = np.concatenate([x[0] for x in parts])
    p = np.concatenate([x[1] for x in parts])
    w = np.concatenate([x[2] for x in parts]).astype(np.float64)
    return reduce_pairs(g, p, w)


def sums_by(ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per distinct id, the sum of ``weights`` (float64; order of the sorted distinct ids)."""
    if ids.size == 0:
        return np.zeros(0, np.float64)
    _, inverse = np.unique(ids, return_inverse=True)
    return np.bincount(inverse.reshape(-1), weights=weights.astype(np.float64))
