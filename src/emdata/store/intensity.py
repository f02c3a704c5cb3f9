"""Raw intensity statistics of a volume, recorded at prepare time so datasets of different bit
depth can be brought to one scale (``PatchDataset(normalize="percentile")``).

Integer raw of up to 16 bits gets an exact histogram (region by region, merged); other dtypes a
strided subsample of every region. Stored in the volume's ``emdata.raw.intensity`` block as
``{"min", "max", "percentiles": {"0.5": …, "99.5": …}, "method"}``; percentiles are the smallest
value whose cumulative share reaches ``q`` (numpy's ``inverted_cdf``).

Example:
    >>> import numpy as np
    >>> stats = IntensityHistogram("uint16")
    >>> stats.add(np.arange(1000, dtype="uint16"))
    >>> stats.summary()
    {'min': 0, 'max': 999, 'percentiles': {'0.5': 4, '99.5': 994}, 'method': 'histogram'}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PERCENTILES = (0.5, 99.5)
COUNT_PIECE = 1 << 20  # voxels counted at once (bincount's int64 copy of them: 8 MiB)
SAMPLES_PER_ADD = 1 << 16  # subsampled dtypes: values kept from each region
ESTIMATE_VOXELS = 1 << 20  # a stored volume without statistics: read a level of about this many voxels


class IntensityHistogram:
    """Accumulates raw voxels (one region at a time) into min, max and percentiles."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.exact = self.dtype.kind in "ui" and self.dtype.itemsize <= 2
        self.offset = int(np.iinfo(self.dtype).min) if self.exact else 0
        self.counts = np.zeros(1 << (8 * self.dtype.itemsize), np.int64) if self.exact else None
        self.samples: list[np.ndarray] = []
        self.low: float | None = None
        self.high: float | None = None

    def add(self, data: np.ndarray) -> None:
        """Count the voxels of ``data`` (any shape, this histogram's dtype)."""
        flat = np.asarray(data).reshape(-1)
        if not flat.size:
            return
        if self.counts is not None:
            for start in range(0, flat.size, COUNT_PIECE):  # bincount copies its input as int64: bound that copy
                piece = flat[start: start + COUNT_PIECE]
                if self.dtype == np.uint8 and piece.size > 1:
                    self.counts += _byte_counts(piece)
                    continue
                values = piece if self.offset == 0 else piece.astype(np.int32) - self.offset
                self.counts += np.bincount(values, minlength=self.counts.size)
            return
        lo, hi = float(np.nanmin(flat)), float(np.nanmax(flat))
        self.low = lo if self.low is None else min(self.low, lo)
        self.high = hi if self.high is None else max(self.high, hi)
        self.samples.append(flat[:: max(1, flat.size // SAMPLES_PER_ADD)].astype(np.float64))

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save with a region (``np.savez``) and :meth:`merge` later."""
        if self.counts is not None:
            return {"counts": self.counts}
        return {"samples": np.concatenate(self.samples) if self.samples else np.zeros(0),
                "range": np.array([np.nan if self.low is None else self.low,
                                   np.nan if self.high is None else self.high])}

    def merge(self, state: Any) -> None:
        """Add a saved :meth:`state` (of a histogram of the same dtype)."""
        if self.counts is not None:
            self.counts += state["counts"]
            return
        lo, hi = (float(v) for v in state["range"])
        if not math.isnan(lo):
            self.low = lo if self.low is None else min(self.low, lo)
            self.high = hi if self.high is None else max(self.high, hi)
        self.samples.append(np.asarray(state["samples"], np.float64))

    def summary(self) -> dict[str, Any]:
        """``{"min", "max", "percentiles": {"0.5": …, "99.5": …}, "method"}`` (JSON-able)."""
        if self.counts is not None:
            total = int(self.counts.sum())
            if total == 0:
                raise ValueError("no voxels were added to the intensity histogram")
            nonzero = np.flatnonzero(self.counts)
            cdf = np.cumsum(self.counts)
            pct = {f"{q:g}": int(np.searchsorted(cdf, q / 100 * total, side="left")) + self.offset
                   for q in PERCENTILES}
            return {"min": int(nonzero[0]) + self.offset, "max": int(nonzero[-1]) + self.offset,
                    "percentiles": pct, "method": "histogram"}
        samples = np.concatenate(self.samples) if self.samples else np.zeros(0)
        samples = samples[np.isfinite(samples)]
        if not samples.size or self.low is None:
            raise ValueError("no finite voxels were added to the intensity histogram")
        values = np.percentile(samples, PERCENTILES, method="inverted_cdf")
        return {"min": self.low, "max": self.high,
                "percentiles": {f"{q:g}": float(v) for q, v in zip(PERCENTILES, values)}, "method": "subsample"}


def _byte_counts(values: np.ndarray) -> np.ndarray:
    """Counts of each value of a flat uint8 array: pairs of bytes counted as uint16 (half the
    elements for bincount), then folded back to bytes — the same counts, voxel for voxel.

    Example:
        >>> values = np.array([0, 255, 3, 3, 7], "u1")
        >>> np.array_equal(_byte_counts(values), np.bincount(values, minlength=256))
        True
    """
    values = np.ascontiguousarray(values)
    even = values.size - values.size % 2
    pairs = np.bincount(values[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)  # low bytes + high bytes (either byte order)
    if even < values.size:
        counts[values[-1]] += 1
    return counts


def raw_intensity(data: np.ndarray) -> dict[str, Any]:
    """The intensity statistics of a whole raw array (what the writer records).

    Example:
        >>> raw_intensity(np.array([[[0, 10, 20, 255]]], "uint8"))["percentiles"]
        {'0.5': 0, '99.5': 255}
    """
    stats = IntensityHistogram(data.dtype)
    stats.add(data)
    return stats.summary()


def estimate_intensity(levels: list[Any]) -> dict[str, Any]:
    """Statistics of a stored volume that has none recorded, from its raw pyramid ``levels``
    (finest first): the coarsest level still holding ``ESTIMATE_VOXELS`` voxels (level 0 when
    the volume is smaller), read whole. Coarser levels are block means, so the tails are a
    little narrower than level 0's.

    Example:
        >>> estimate_intensity([np.arange(100, dtype="uint8").reshape(1, 10, 10)])["max"]
        99
    """
    chosen = levels[0]
    for array in levels:
        if math.prod(array.shape) >= ESTIMATE_VOXELS:
            chosen = array
    stats = IntensityHistogram(chosen.dtype)
    stats.add(np.asarray(chosen[...]))
    summary = stats.summary()
    summary["method"] += " (estimated from a stored level)"
    return summary
