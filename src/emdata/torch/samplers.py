"""Where a patch goes: the sampler choices and the geometry of valid patch origins.

A sampler says how a patch origin is drawn: :class:`Uniform` (every valid origin equally
likely), :class:`Foreground` (centred on a voxel of a chosen class, drawn through the
foreground index without a rejection loop) or :class:`MinInstances` (at least ``k``
instances, a bounded number of foreground draws). Origins are whole voxels of the target
grid (the patch's voxel size); the functions here map level-0 voxels to that grid, give the
valid origins along an axis and the level-0 voxels some valid patch can hold.

Example:
    >>> origin_range(768, 10, 64, None)  # 128 voxels of 6 nm hold 76 whole voxels of 10 nm
    (0, 12)
    >>> reach_range(128, 6, 10, 0, 12, 64)  # the level-0 voxels those patches read
    (0, 127)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Zyx = tuple[int, int, int]


def check_weights(what: str, weights: Sequence[float]) -> np.ndarray:
    """Finite, non-negative weights with a positive sum, as float64.

    Example:
        >>> check_weights("volume_weights", [1, 3]).tolist()
        [1.0, 3.0]
    """
    values = np.array([float(w) for w in weights], dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"{what} must be finite, non-negative and not all zero, got {values.tolist()}")
    return values


@dataclass(frozen=True)
class Uniform:
    """Every valid patch origin equally likely.

    Example:
        >>> Uniform()
        Uniform()
    """


@dataclass(frozen=True)
class Foreground:
    """Centre the patch on a voxel of a chosen class of ``layer``.

    ``class_probs`` maps native values of a semantic layer (or ``1`` = any instance of an
    instance layer) to probabilities; classes absent from a volume are dropped and the rest
    renormalised. ``p_uniform`` mixes in uniform draws. Blocks are drawn from the foreground
    index in proportion to class counts (only voxels a valid patch can hold), then a voxel of
    that class inside the block: no rejection loop.

    Example:
        >>> Foreground("mito", {1: 1.0}, p_uniform=0.2).p_uniform
        0.2
    """

    layer: str
    class_probs: Mapping[int, float] | None = None
    p_uniform: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.p_uniform) <= 1.0:
            raise ValueError(f"Foreground({self.layer!r}): p_uniform must be in [0, 1], got {self.p_uniform}")
        if self.class_probs is not None:
            check_weights(f"Foreground({self.layer!r}) class_probs", list(self.class_probs.values()))


@dataclass(frozen=True)
class MinInstances:
    """Patches holding at least ``k`` distinct instances of ``layer`` (a bounded number of
    foreground draws; a sample that still has fewer reports ``sampler_ok=False``).

    Example:
        >>> MinInstances("cells", k=3).max_tries
        16
    """

    layer: str
    k: int = 2
    max_tries: int = 16

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_tries < 1:
            raise ValueError(f"MinInstances({self.layer!r}): k and max_tries must be at least 1, "
                             f"got k={self.k}, max_tries={self.max_tries}")


Sampler = Uniform | Foreground | MinInstances


def target_voxel(voxel0: np.ndarray, vs0: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """The target-grid voxel holding the centre of level-0 voxel ``voxel0`` (per axis).

    Example:
        >>> target_voxel([127, 126, 0], (6, 6, 6), (10, 10, 10)).tolist()  # centres at 765, 759 and 3 nm
        [76, 75, 0]
    """
    return np.floor((np.asarray(voxel0) + 0.5) * np.asarray(vs0, dtype=np.float64) / np.asarray(target)).astype(int)


def origin_range(extent_nm: float, target: float, patch: int, region: tuple[float, float] | None) -> tuple[int, int]:
    """Valid patch origins ``[lo, hi]`` (target voxels) along one axis: whole target voxels
    inside the volume's extent and inside ``region`` (nm from the volume's first voxel edge).

    Example:
        >>> origin_range(768, 10, 64, None)  # 128 voxels of 6 nm hold 76 whole voxels of 10 nm
        (0, 12)
        >>> origin_range(720, 30, 4, (600, 720))
        (20, 20)
    """
    a, b = region if region is not None else (0.0, extent_nm)
    n_target = math.floor(min(b, extent_nm) / target + 1e-9)
    return math.ceil(max(a, 0.0) / target - 1e-9), n_target - patch


def reach_range(n0: int, vs0: float, target: float, lo: int, hi: int, patch: int) -> tuple[int, int]:
    """Level-0 voxels ``[a, b)`` whose centre lies in a patch with origin in ``[lo, hi]``.

    Example:
        >>> reach_range(128, 6, 10, 0, 12, 64)  # voxel 127 (centre 765 nm) is past the last 10 nm voxel
        (0, 127)
    """
    g = target_voxel(np.arange(n0), (vs0,), (target,))
    inside = np.flatnonzero((g >= lo) & (g <= hi + patch - 1))
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


def reachable_counts(counts: np.ndarray, block: Zyx, shape: Zyx, reach: tuple[tuple[int, int], ...],
                     count_in: Callable[[tuple[slice, ...]], int]) -> np.ndarray:
    """Per-block counts restricted to the ``reach`` box: blocks inside keep the index counts,
    blocks outside get 0, blocks cut by its faces are counted exactly (``count_in(box)``).

    Example:
        >>> counts = np.full((1, 1, 2), 4)  # two blocks of 4 voxels along x, all foreground
        >>> reachable_counts(counts, (1, 1, 4), (1, 1, 8), ((0, 1), (0, 1), (0, 6)),
        ...                  lambda box: box[2].stop - box[2].start).tolist()
        [[[4.0, 2.0]]]
    """
    out = counts.astype(np.float64)
    inside = np.ones(counts.shape, dtype=bool)
    for axis, (b, n, (lo, hi)) in enumerate(zip(block, shape, reach)):
        starts = np.arange(counts.shape[axis]) * b
        stops = np.minimum(starts + b, n)
        view = [1, 1, 1]
        view[axis] = -1
        out[np.broadcast_to(((stops <= lo) | (starts >= hi)).reshape(view), out.shape)] = 0
        inside &= ((starts >= lo) & (stops <= hi)).reshape(view)
    for key in zip(*np.nonzero((out > 0) & ~inside)):
        box = tuple(slice(max(k * b, lo), min((k + 1) * b, n, hi))
                    for k, b, n, (lo, hi) in zip(key, block, shape, reach))
        out[key] = count_in(box)
    return out
