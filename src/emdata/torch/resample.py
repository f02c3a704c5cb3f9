"""Separable resampling of patches: each axis on its own, so z is never mixed into xy.

Raw uses linear interpolation and keeps its integer dtype (rounded); labels use nearest.
Coordinates follow voxel centres: output voxel ``i`` of an axis sits at source position
``start + (i + 0.5) * step - 0.5``.

Example:
    >>> import numpy as np
    >>> a = np.arange(4, dtype=np.uint8)[None, None]
    >>> resample(a, (1, 1, 8), (1.0, 1.0, 0.5), 0.0, linear=False)[0, 0].tolist()
    [0, 0, 1, 1, 2, 2, 3, 3]
"""

from __future__ import annotations

import numpy as np


def source_positions(n_out: int, step: float, start: float) -> np.ndarray:
    return start + (np.arange(n_out) + 0.5) * step - 0.5


def resample(data: np.ndarray, out_shape: tuple[int, int, int], steps: tuple[float, float, float],
             starts: float | tuple[float, float, float], linear: bool) -> np.ndarray:
    """Resample ``data`` to ``out_shape``; ``steps`` = source voxels per output voxel per axis."""
    starts = (starts,) * 3 if isinstance(starts, int | float) else starts
    out = data
    dtype = data.dtype
    for axis, (n_out, step, start) in enumerate(zip(out_shape, steps, starts)):
        if step == 1.0 and start == 0 and out.shape[axis] >= n_out:
            out = np.take(out, np.arange(n_out), axis=axis) if out.shape[axis] > n_out else out
            continue
        pos = np.clip(source_positions(n_out, step, start), 0, out.shape[axis] - 1)
        if not linear:
            out = np.take(out, np.rint(pos).astype(np.intp), axis=axis)
            continue
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, out.shape[axis] - 1)
        w = (pos - lo).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n_out
        w = w.reshape(shape)
        a = np.take(out, lo, axis=axis).astype(np.float32)
        b = np.take(out, hi, axis=axis).astype(np.float32)
        out = a + (b - a) * w
    if linear and out.dtype != dtype:
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        out = out.astype(dtype)
    return np.ascontiguousarray(out)


def level_positions(origin: int, n: int, target: float, scale: float, centre0: float) -> np.ndarray:
    """Source indices (float) of the ``n`` target voxels from ``origin`` (voxel ``target`` nm) in a
    level of voxel ``scale`` nm whose voxel 0 is centred at ``centre0`` nm.

    Example:
        >>> level_positions(0, 2, 10.0, 5.0, 2.5).tolist()  # 10 nm voxels over a 5 nm level
        [0.5, 2.5]
    """
    return ((origin + np.arange(n) + 0.5) * target - centre0) / scale


def resample_at(block: np.ndarray, positions: list[np.ndarray], linear: bool) -> np.ndarray:
    """Resample ``block`` at evenly spaced per-axis source ``positions`` (relative to the block),
    all axes in one pass so integer raw is rounded once.

    Example:
        >>> a = np.arange(4, dtype=np.uint8)[None, None]
        >>> resample_at(a, [np.array([0.0]), np.array([0.0]), np.array([0.5, 2.5])], linear=True)[0, 0].tolist()
        [0, 2]
    """
    steps, starts = [], []
    for pos in positions:
        step = float(pos[1] - pos[0]) if len(pos) > 1 else 1.0
        steps.append(step)
        starts.append(float(pos[0]) - 0.5 * step + 0.5)
    shape = tuple(len(p) for p in positions)
    return resample(block, shape, tuple(steps), tuple(starts), linear)  # type: ignore[arg-type]
