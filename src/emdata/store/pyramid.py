"""Multiscale pyramids: which axes to halve at each level, and the downsampling itself.

Anisotropic EM is halved in y and x until the voxel becomes roughly isotropic, then in all
three axes, so z is never mixed into xy early. Raw uses a block mean (kept in the native
dtype); labels take every ``f``-th voxel, so label values are never invented.

Example:
    >>> plan_levels((100, 1024, 1024), (30.0, 6.0, 6.0))
    [(1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)]
"""

from __future__ import annotations

import numpy as np

Zyx = tuple[int, int, int]


def plan_levels(shape: tuple[int, ...], voxel_size: tuple[float, float, float],
                max_levels: int = 4, min_size: int = 64) -> list[Zyx]:
    """Cumulative downsampling factors per level, level 0 first.

    An axis is halved when its voxel is at most 1.5× the finest axis; levels stop when the
    largest halved axis would fall below ``min_size`` voxels or at ``max_levels``.
    """
    factors: list[Zyx] = [(1, 1, 1)]
    vs = list(voxel_size)
    while len(factors) < max_levels:
        finest = min(vs)
        step = tuple(2 if v <= 1.5 * finest else 1 for v in vs)
        prev = factors[-1]
        nxt = tuple(p * s for p, s in zip(prev, step))
        sizes = [-(-n // f) for n, f, s in zip(shape, nxt, step) if s == 2]
        if not sizes or max(sizes) < min_size:
            break
        factors.append(nxt)  # type: ignore[arg-type]
        vs = [v * s for v, s in zip(vs, step)]
    return factors


def level_shape(shape: tuple[int, ...], factor: Zyx) -> Zyx:
    return tuple(-(-n // f) for n, f in zip(shape, factor))  # type: ignore[return-value]


def downsample_nearest(data: np.ndarray, step: Zyx) -> np.ndarray:
    """Every ``step``-th voxel (labels)."""
    return np.ascontiguousarray(data[:: step[0], :: step[1], :: step[2]])


def downsample_mean(data: np.ndarray, step: Zyx, slab: int = 16) -> np.ndarray:
    """Block mean over ``step`` blocks, edge-padded, rounded back to ``data.dtype`` (raw).

    Works in z-slabs so the float copy stays small.
    """
    if step == (1, 1, 1):
        return data
    out = np.empty(level_shape(data.shape, step), dtype=data.dtype)
    fz, fy, fx = step
    zs = slab * fz
    exact = _integer_mean_exact(data.dtype, step)
    for z0 in range(0, data.shape[0], zs):
        block = data[z0: z0 + zs]
        if not exact:
            block = block.astype(np.float32)
        pad = [(0, -n % f) for n, f in zip(block.shape, step)]
        if any(p for _, p in pad):
            block = np.pad(block, pad, mode="edge")
        nz, ny, nx = (n // f for n, f in zip(block.shape, step))
        if exact:  # integer sums, rounded half to even: the float32 mean + rint below, voxel for voxel, faster
            count = fz * fy * fx
            acc = np.int16 if data.dtype.itemsize == 1 else np.int32
            total = np.zeros((nz, ny, nx), acc)
            for dz in range(fz):
                for dy in range(fy):
                    for dx in range(fx):
                        total += block[dz::fz, dy::fy, dx::fx]
            shift = count.bit_length() - 1
            q = total >> shift  # floor division by the power of two
            r2 = (total - (q << shift)) * 2
            q += (r2 > count) | ((r2 == count) & (q & 1 == 1))
            out[z0 // fz: z0 // fz + nz] = q
            continue
        mean = block.reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))
        if np.issubdtype(data.dtype, np.integer):
            mean = np.rint(mean)
        out[z0 // fz: z0 // fz + nz] = mean.astype(data.dtype)
    return out


def _integer_mean_exact(dtype: np.dtype, step: Zyx) -> bool:
    """Whether integer arithmetic reproduces the float32 block mean exactly: an integer dtype whose
    block sums stay below 2**24 (exact in float32) and a power-of-two block (exact division)."""
    count = step[0] * step[1] * step[2]
    if dtype.kind not in "ui" or count & (count - 1):
        return False
    info = np.iinfo(dtype)
    return max(abs(int(info.min)), int(info.max)) * count < (1 << 24)
