"""Geometric transforms, identical for raw, every label layer and the validity mask.

- :class:`FlipTurn`: flips on every axis and 90° turns in xy (``augment=True``).
- :class:`Warp`: one coordinate map per sample, rotation ∘ scale ∘ elastic, in nm. Raw is
  interpolated linearly (kept in its dtype, rounded once); labels take the value of the nearest
  source voxel, read by index, so ids are never blended, invented or cast (uint64 survives).
  Voxels whose source lies outside the volume are marked invalid. z is mixed (tilts, z
  displacement) only when the voxel is near-isotropic (z / xy ≤ 1.5); otherwise z stays
  section-exact.

Example:
    >>> import numpy as np
    >>> from emdata.torch.augment.compose import Sample
    >>> ids = np.arange(2 * 40 * 40, dtype=np.uint64).reshape(2, 40, 40) + np.uint64(2**63)
    >>> s = Sample(ids.astype(np.uint8), {"cells": ids}, np.ones(ids.shape, bool), (30.0, 6.0, 6.0))
    >>> warp = Warp(rotation_deg=180, scale=0.1, elastic_sigma_nm=12)
    >>> out = warp(s, np.random.default_rng(0), (2, 16, 16))
    >>> out.raw.shape, bool(np.isin(out.labels["cells"], ids).all())
    ((2, 16, 16), True)
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
from scipy import ndimage

from emdata.torch.augment.compose import Nm, Sample, Zyx

ISOTROPIC = 1.5  # z / xy voxel ratio at or below which z may be mixed into xy


def is_isotropic(voxel_size: Nm) -> bool:
    """True when z / xy ≤ 1.5 (z may be mixed into xy)."""
    return voxel_size[0] / min(voxel_size[1:]) <= ISOTROPIC


class FlipTurn:
    """Flips on every axis (p = 0.5 each) and 0–3 quarter turns in xy (square xy only)."""

    def __repr__(self) -> str:
        return "FlipTurn()"

    def margin(self, out_shape: Zyx, voxel_size: Nm) -> Zyx:
        return (0, 0, 0)

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        turns = int(rng.integers(4)) if sample.shape[1] == sample.shape[2] else 0

        def apply(a: np.ndarray) -> np.ndarray:
            if flips:
                a = np.flip(a, axis=flips)
            if turns:
                a = np.rot90(a, turns, axes=(1, 2))
            return np.ascontiguousarray(a)

        return sample.map_arrays(apply)


def _rotation(angle: float, tilt_y: float, tilt_x: float) -> np.ndarray:
    """(z, y, x) rotation: ``angle`` in the xy plane, then tilts about the y and x axes (radians)."""
    c, s = math.cos(angle), math.sin(angle)
    rz = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    c, s = math.cos(tilt_y), math.sin(tilt_y)
    ry = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
    c, s = math.cos(tilt_x), math.sin(tilt_x)
    rx = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return rx @ ry @ rz


class Warp:
    """Rotation, scaling and elastic deformation as one coordinate map.

    ``rotation_deg``: the xy angle is uniform in ±rotation_deg. ``scale``: the zoom factor is
    uniform in [1 - scale, 1 + scale] (xy; and z when near-isotropic). ``elastic_sigma_nm``:
    standard deviation of the displacement at control points spaced ``control_spacing_nm``
    (z, y, x), smoothly interpolated (cubic spline) and clipped to 3 sigma; xy displacement only
    unless near-isotropic. ``tilt_deg``: uniform tilts about y and x, near-isotropic voxels only.
    All zero: the identity. ``p``: probability of warping a sample at all.
    """

    def __init__(self, rotation_deg: float = 180.0, scale: float = 0.1, elastic_sigma_nm: float = 0.0,
                 control_spacing_nm: tuple[float, float, float] = (200.0, 200.0, 200.0), tilt_deg: float = 0.0,
                 p: float = 1.0) -> None:
        if not (0 <= scale < 1 and rotation_deg >= 0 and elastic_sigma_nm >= 0 and tilt_deg >= 0 and 0 <= p <= 1
                and all(c > 0 for c in control_spacing_nm)):
            raise ValueError(f"Warp needs 0 <= scale < 1, rotation_deg, elastic_sigma_nm, tilt_deg >= 0, 0 <= p <= 1 "
                             f"and positive control_spacing_nm; got scale={scale}, rotation_deg={rotation_deg}, "
                             f"elastic_sigma_nm={elastic_sigma_nm}, tilt_deg={tilt_deg}, p={p}, "
                             f"control_spacing_nm={control_spacing_nm}")
        self.rotation, self.scale, self.sigma = math.radians(rotation_deg), float(scale), float(elastic_sigma_nm)
        self.spacing, self.tilt, self.p = tuple(float(c) for c in control_spacing_nm), math.radians(tilt_deg), float(p)

    def __repr__(self) -> str:
        return (f"Warp(rotation_deg={math.degrees(self.rotation):g}, scale={self.scale:g}, "
                f"elastic_sigma_nm={self.sigma:g}, control_spacing_nm={self.spacing}, "
                f"tilt_deg={math.degrees(self.tilt):g}, p={self.p:g})")

    def margin(self, out_shape: Zyx, voxel_size: Nm) -> Zyx:
        """Voxels per side that any draw can reach beyond the output (rotation, zoom, 3 sigma bounded)."""
        iso = is_isotropic(voxel_size)
        half = [(n - 1) / 2 * v for n, v in zip(out_shape, voxel_size)]
        turn = min(self.rotation + (2 * self.tilt if iso else 0.0), math.pi / 2)
        out = []
        for axis, (n, v) in enumerate(zip(out_shape, voxel_size)):
            if axis == 0 and not iso:
                out.append(0)
                continue
            moved = [1, 2] if not iso else [0, 1, 2]
            others = sum(half[k] for k in moved if k != axis) if (axis > 0 or self.tilt) else 0.0
            reach = (1 + self.scale) * min(half[axis] + math.sin(turn) * others,
                                           math.sqrt(sum(half[k] ** 2 for k in moved)))
            reach += 3 * self.sigma
            out.append(max(0, math.ceil(reach / v - (n - 1) / 2 - 1e-9)))
        return tuple(out)  # type: ignore[return-value]

    def _elastic(self, out_shape: Zyx, voxel_size: Nm, axes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
        """Smooth displacements (nm) for ``axes`` on the output grid (z-constant field when z is not moved)."""
        grid = [max(2, math.ceil((n - 1) * v / c) + 2) for n, v, c in zip(out_shape, voxel_size, self.spacing)]
        coords = np.meshgrid(*[np.linspace(0, g - 1, n) for g, n in zip(grid, out_shape)], indexing="ij", sparse=True)
        coords = [np.broadcast_to(c, out_shape) for c in coords]
        out = []
        for _ in axes:
            control = np.clip(rng.normal(0.0, self.sigma, grid), -3 * self.sigma, 3 * self.sigma)
            out.append(ndimage.map_coordinates(control, coords, order=3, mode="nearest").astype(np.float64))
        return out

    def coordinates(self, in_shape: Zyx, out_shape: Zyx, voxel_size: Nm, rng: np.random.Generator) -> list[np.ndarray]:
        """Source positions (voxels of the input window) of every output voxel, per axis."""
        iso = is_isotropic(voxel_size)
        angle = rng.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        tilts = (rng.uniform(-self.tilt, self.tilt), rng.uniform(-self.tilt, self.tilt)) if iso and self.tilt \
            else (0.0, 0.0)
        zoom = rng.uniform(1 - self.scale, 1 + self.scale) if self.scale else 1.0
        v = np.array(voxel_size)
        rel = [((np.arange(n) - (n - 1) / 2) * s) for n, s in zip(out_shape, v)]
        mat = _rotation(angle, *tilts) * zoom
        if not iso:
            mat[0] = (1.0, 0.0, 0.0)  # z untouched: sections stay sections
        shape = (1, out_shape[1], out_shape[2]) if not iso else out_shape
        grids = np.meshgrid(*rel, indexing="ij", sparse=True)
        src = []
        for axis in range(3):
            if axis == 0 and not iso:
                src.append(grids[0] + np.zeros(shape))
                continue
            src.append(sum(mat[axis, k] * grids[k] for k in range(3) if mat[axis, k] != 0) + np.zeros(shape))
        if self.sigma:
            axes = [0, 1, 2] if iso else [1, 2]
            for axis, d in zip(axes, self._elastic(out_shape, voxel_size, axes, rng)):
                src[axis] = src[axis] + d
        out = []
        for axis in range(3):
            pos = src[axis] / v[axis] + (in_shape[axis] - 1) / 2
            near = np.rint(pos)
            out.append(np.where(np.abs(pos - near) < 1e-6, near, pos))
        return out

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        if self.p < 1 and rng.random() >= self.p:
            from emdata.torch.augment.compose import center_crop

            return center_crop(sample, out_shape)
        coords = self.coordinates(sample.shape, out_shape, sample.voxel_size, rng)
        return remap(sample, coords, out_shape)


def remap(sample: Sample, coords: list[np.ndarray], out_shape: Zyx) -> Sample:
    """``sample`` read at source positions ``coords`` (voxels, per axis, broadcastable to ``out_shape``):
    raw linearly (axes whose positions are all whole read exactly), labels and validity by the
    nearest voxel; positions outside the input are invalid."""
    shape = sample.shape
    coords = [np.broadcast_to(c, out_shape) for c in coords]
    inside = np.ones(out_shape, bool)
    for c, n in zip(coords, shape):
        inside &= (c > -0.5) & (c < n - 0.5)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    nearest = sum(np.clip(np.rint(c), 0, n - 1).astype(np.intp) * s for c, n, s in zip(coords, shape, strides))
    labels = {k: np.take(np.ascontiguousarray(v).reshape(-1), nearest) for k, v in sample.labels.items()}
    valid = np.take(np.ascontiguousarray(sample.valid).reshape(-1), nearest) & inside
    raw = _linear(sample.raw, coords, strides, nearest)
    return Sample(raw, labels, valid, sample.voxel_size)


def _linear(raw: np.ndarray, coords: list[np.ndarray], strides: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(raw).reshape(-1)
    lows, weights, base = [], [], 0
    for c, n, s in zip(coords, raw.shape, strides):
        if n < 2 or np.array_equal(c, np.rint(c)):
            base = base + np.clip(np.rint(c), 0, n - 1).astype(np.intp) * s
            continue
        lo = np.clip(np.floor(c), 0, n - 2)
        weights.append(np.clip(c - lo, 0, 1).astype(np.float32))
        lows.append((lo.astype(np.intp) * s, s))
    if not lows:
        return np.take(flat, nearest)
    out = np.zeros(nearest.shape, np.float32)
    for corner in product((0, 1), repeat=len(lows)):
        idx = base + sum(lo + bit * s for (lo, s), bit in zip(lows, corner))
        w = np.ones((), np.float32)
        for weight, bit in zip(weights, corner):
            w = w * (weight if bit else 1 - weight)
        out += np.take(flat, idx) * w
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(raw.dtype)
    return out.astype(raw.dtype, copy=False)
