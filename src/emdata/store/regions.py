"""The region grid of a volume built region by region: each level's arrays and shapes, and
the regions (units of work) that tile it.

Example:
    >>> Region(0, (0, 1, 0), (0, 256, 0), (64, 512, 256)).shape
    (64, 256, 256)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emdata.store.chunking import SHARD_CHUNKS, choose_chunks
from emdata.store.layout import StoreWriteError
from emdata.store.pyramid import level_shape, plan_levels

__all__ = ["Chunking", "Region", "Zyx", "ceil_div", "plan_build_levels", "region_shape"]

Zyx = tuple[int, int, int]
Chunking = Callable[[tuple[int, ...], tuple[float, float, float], int], tuple[Zyx, Zyx | None]]


@dataclass(frozen=True)
class Region:
    """One unit of work: the box ``[start, stop)`` of grid cell ``index`` at pyramid ``level``.

    Example:
        >>> r = Region(0, (0, 1, 0), (0, 256, 0), (64, 512, 256))
        >>> r.shape, r.slices[1]
        ((64, 256, 256), slice(256, 512, None))
    """

    level: int
    index: Zyx
    start: Zyx
    stop: Zyx

    @property
    def shape(self) -> Zyx:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def key(self) -> str:
        return "_".join(map(str, self.index))


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up.

    Example:
        >>> ceil_div(7, 2)
        4
    """
    return -(-a // b)


def region_shape(shape: Sequence[int], arrays: dict[str, dict[str, Any]],
                 unit_chunks: Sequence[int] = SHARD_CHUNKS) -> Zyx:
    """The region shape of one level: the shard (or, unsharded, ``unit_chunks`` chunks: by default
    a shard's worth).

    Every array's checksum block must tile it, so a region holds whole blocks only.
    """
    blocks = [tuple(a["shards"] or a["chunks"]) for a in arrays.values()]
    sharded = [tuple(a["shards"]) for a in arrays.values() if a["shards"]]
    if sharded:
        unit = tuple(max(b[i] for b in sharded) for i in range(3))
    else:
        chunk = tuple(arrays["raw"]["chunks"])
        unit = tuple(min(c * k, ceil_div(n, c) * c) for c, k, n in zip(chunk, unit_chunks, shape))
    for b in blocks:
        if any(u % c and u < n for u, c, n in zip(unit, b, shape)):
            raise StoreWriteError(f"block {b} of one array does not tile the region shape {unit} (level shape "
                                  f"{tuple(shape)}); choose chunk/shard shapes that nest")
    return unit  # type: ignore[return-value]


def plan_build_levels(shape: Sequence[int], voxel_size: Sequence[float], arrays: Sequence[tuple[str, str, str]], *,
                      max_levels: int = 4, chunking: Chunking = choose_chunks,
                      unit_chunks: Sequence[int] = SHARD_CHUNKS) -> list[dict[str, Any]]:
    """Every pyramid level of a build: factor, step from the level below, shape, region shape
    (``unit``; ``unit_chunks`` chunks per region where no array is sharded) and, per array
    ``(name, dtype, path prefix)``, its path, chunks and shards.

    Example:
        >>> lv = plan_build_levels((8, 64, 64), (1.0, 1.0, 1.0), [("raw", "uint8", "")])
        >>> lv[0]["unit"], lv[0]["arrays"]["raw"]["path"]
        ([8, 64, 64], '0')
    """
    levels = []
    prev = (1, 1, 1)
    for i, factor in enumerate(plan_levels(tuple(shape), tuple(voxel_size), max_levels=max_levels)):
        lshape = level_shape(tuple(shape), factor)
        lvoxel = tuple(v * f for v, f in zip(voxel_size, factor))
        planned = {}
        for name, dtype, prefix in arrays:
            chunks, shards = chunking(lshape, lvoxel, np.dtype(dtype).itemsize)  # type: ignore[arg-type]
            planned[name] = {"path": f"{prefix}{i}", "dtype": dtype, "chunks": list(chunks),
                             "shards": list(shards) if shards else None}
        levels.append({"level": i, "factor": list(factor), "step": [f // p for f, p in zip(factor, prev)],
                       "shape": list(lshape), "unit": list(region_shape(lshape, planned, unit_chunks)),
                       "arrays": planned})
        prev = factor
    return levels
