"""The shape every metric result shares: ``metric``, ``version``, ``conventions``, ``voxel_size``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def voxel_size_list(voxel_size: Sequence[float] | None, ndim: int | None = None) -> list[float] | None:
    """``voxel_size`` as a list of positive floats (nm, axis order of the array), or None."""
    if voxel_size is None:
        return None
    values = [float(v) for v in voxel_size]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"voxel_size must be positive nm values per axis (z, y, x), got {tuple(voxel_size)}")
    if ndim is not None and len(values) != ndim:
        raise ValueError(f"voxel_size {tuple(values)} has {len(values)} values but the arrays have {ndim} axes; "
                         "give one nm value per axis")
    return values


def result(metric: str, version: str, values: dict[str, Any], conventions: dict[str, Any],
           voxel_size: Sequence[float] | None) -> dict[str, Any]:
    """Assemble a result dict (values first, then the provenance keys)."""
    out: dict[str, Any] = {"metric": metric, "version": version}
    out.update(values)
    out["conventions"] = conventions
    out["voxel_size"] = None if voxel_size is None else [float(v) for v in voxel_size]
    return out


def ratio(num: float, den: float) -> float | None:
    """num / den, or None where the denominator is 0 (the quantity is undefined, not 0 or 1)."""
    return None if den == 0 else float(num) / float(den)
