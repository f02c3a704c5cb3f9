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
# Count a slab's pairs in a dense (gt x pred) table when it has at most this many cells, or at most
# DENSE_FACTOR cells per run; otherwise sort the pair keys.
DENSE_CELLS = 1 << 22
DENSE_FACTOR = 8
# Rank a slab's ids through a lookup table when they span at most this many values per run.
DENSE_ID_FACTOR = 4
# Distinct ids kept in the cross-slab id cache before it restarts.
ID_CACHE_LIMIT = 1 << 22


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


def dtype_of(array: Any) -> np.dtype:
    """The element type of an array-like, without reading a zarr/h5py array's data."""
    dtype = getattr(array, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(array).dtype


def check_label_array(name: str, array: Any) -> None:
    """Raise a teaching error unless ``array`` holds integer (or bool) labels."""
    dtype = dtype_of(array)
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


class IdIndex:
    """Sorted distinct ids seen so far (a cache across slabs): maps values to positions without sorting them.

    Objects span many sections, so most of a slab's ids were seen before: a binary search finds
    them, and only the new ones are sorted in. The cache restarts past ``limit`` ids (then each
    slab pays for its own ids, as without a cache).
    """

    def __init__(self, dtype: np.dtype, limit: int | None = None) -> None:
        self.ids = np.zeros(0, dtype)
        self.limit = ID_CACHE_LIMIT if limit is None else limit

    def index(self, values: np.ndarray) -> np.ndarray:
        if self.ids.size:
            idx = np.searchsorted(self.ids, values)
            np.minimum(idx, self.ids.size - 1, out=idx)
            missing = self.ids[idx] != values
            if not missing.any():
                return idx
            new = np.unique(values[missing])
            if self.ids.size + new.size > self.limit:
                self.ids = np.unique(values)  # restart with this slab's ids only
            else:
                self.ids = np.union1d(self.ids, new)
        else:
            self.ids = np.unique(values)
        return np.searchsorted(self.ids, values)


def _compact(idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct positions used, each element's rank among them), in O(len(idx) + size)."""
    present = np.zeros(size, dtype=bool)
    present[idx] = True
    used = np.flatnonzero(present)
    rank = np.cumsum(present, dtype=np.int64) - 1
    return used, rank[idx]


def _offsets(values: np.ndarray, lo: int) -> np.ndarray:
    """values - lo as intp, exact wherever the difference is small (unsigned: values >= lo, or masked later)."""
    if values.dtype.kind == "i":  # widen first: int8 100 - (-100) does not fit int8
        return np.subtract(values, lo, dtype=np.int64).astype(np.intp, copy=False)
    return np.subtract(values, values.dtype.type(lo), dtype=values.dtype).astype(np.intp, copy=False)


def local_ids(values: np.ndarray, cache: IdIndex) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted distinct ids of ``values``, each value's index among them).

    Ids spanning a compact range (the usual case: consecutive object ids, also near 2**63) are
    ranked through a lookup table over that range, without sorting or searching; scattered ids
    (hashed, random) through the cross-slab ``cache``.
    """
    if values.dtype == bool:
        values = values.view(np.uint8)
    limit = max(DENSE_ID_FACTOR * values.size, 1 << 16)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= limit:
        offset = _offsets(values, lo)
        used, index = _compact(offset, hi - lo + 1)
        # modular integer arithmetic: exact in the dtype even where used alone would not fit
        return used.astype(values.dtype) + values.dtype.type(lo), index
    if lo == 0:  # background 0 plus a compact range of object ids far from it (e.g. ids >= 2**63)
        nonzero = values != 0
        lo2 = int(values[nonzero].min())
        if hi - lo2 <= limit:  # offsets: 0 for background, 1 + (id - lo2) for objects
            offset = _offsets(values, lo2 - 1)
            offset *= nonzero
            used, index = _compact(offset, hi - lo2 + 2)
            ids = np.zeros(used.size, values.dtype)
            objects = used > 0
            ids[objects] = (used[objects] - 1).astype(values.dtype) + values.dtype.type(lo2)
            return ids, index
    used, index = _compact(cache.index(values), cache.ids.size)
    return cache.ids[used], index


def slab_pairs(g: np.ndarray, p: np.ndarray, g_index: IdIndex | None = None, p_index: IdIndex | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair counts of two equal-length 1D label arrays, via runs of equal pairs (cheap for segmentations)."""
    n = g.size
    if n == 0:
        return g[:0], p[:0], np.zeros(0, np.int64)
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(g[1:], g[:-1], out=change[1:])
    differs = np.not_equal(p[1:], p[:-1])
    np.logical_or(change[1:], differs, out=change[1:])
    del differs
    starts = np.flatnonzero(change)
    del change
    lengths = np.diff(starts, append=n).astype(np.float64)
    gr, pr = g[starts], p[starts]
    del starts
    g_ids, gi = local_ids(gr, IdIndex(g.dtype) if g_index is None else g_index)
    p_ids, pi = local_ids(pr, IdIndex(p.dtype) if p_index is None else p_index)
    p_ids, pi = local_ids(pr, p_index)
    n_p = p_ids.size
    key = gi * n_p + pi  # < runs^2 < 2**62
    cells = g_ids.size * n_p
    if cells <= DENSE_CELLS or cells <= DENSE_FACTOR * key.size:  # dense: one bincount, no sort
        summed = np.bincount(key, weights=lengths, minlength=cells)
        cell = np.flatnonzero(summed)
        counts = summed[cell]
    else:  # sparse: sort the keys (no argsort), then sum lengths per distinct key
        sk = np.sort(key)
        first = np.empty(sk.size, dtype=bool)
        first[0] = True
        np.not_equal(sk[1:], sk[:-1], out=first[1:])
        cell = sk[first]
        counts = np.bincount(np.searchsorted(cell, key), weights=lengths, minlength=cell.size)
    return g_ids[cell // n_p], p_ids[cell % n_p], np.rint(counts).astype(np.int64)


def slabs(shape: tuple[int, ...], slab_voxels: int) -> list[tuple[slice, ...]]:
    if len(shape) == 0:
        return [()]
    plane = int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, slab_voxels // max(plane, 1))
    return [(slice(z, min(z + step, shape[0])),) for z in range(0, shape[0], step)]


def contingency(gt: Any, pred: Any, *, exclude: Callable[[np.ndarray, tuple[slice, ...]], np.ndarray] | None = None,
                slab_voxels: int | None = None) -> Contingency:
    """Count (gt, pred) pairs over a volume, slab by slab along axis 0.

    ``gt`` and ``pred`` are arrays of the same shape (numpy, or anything sliceable along axis 0 such
    as a zarr array: only one slab is in memory at a time; ``slab_voxels`` defaults to
    ``SLAB_VOXELS``). ``exclude(gt_slab, index)`` may return a boolean mask of voxels to leave out
    (e.g. the CREMI border mask); they count in ``n_voxels``.

    >>> t = contingency(np.array([[1, 1, 2]]), np.array([[5, 5, 5]], dtype=np.uint64))
    >>> t.gt.tolist(), t.pred.tolist(), t.counts.tolist()
    ([1, 2], [5, 5], [2, 1])
    """
    check_label_array("gt", gt)
    check_label_array("pred", pred)
    shape = check_same_shape(gt, pred)
    slab_voxels = SLAB_VOXELS if slab_voxels is None else slab_voxels
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    g_index = IdIndex(dtype_of(gt))
    p_index = IdIndex(dtype_of(pred))
    rows = 0
    n_excluded = 0
    for index in slabs(shape, slab_voxels):
        g = np.asarray(gt[index])
        p = np.asarray(pred[index])
        if exclude is not None:
            keep = ~np.asarray(exclude(g, index), dtype=bool)
            n_excluded += int(keep.size - np.count_nonzero(keep))
            g, p = g[keep], p[keep]
        part = slab_pairs(g.reshape(-1), p.reshape(-1), g_index, p_index)
        pending.append(part)
        rows += part[0].size
        if rows > MERGE_ROWS and len(pending) > 1:  # bound memory by the distinct pairs seen so far
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
