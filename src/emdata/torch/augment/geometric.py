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
from functools import lru_cache
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


@lru_cache(maxsize=64)
def _spline_matrix(n_out: int, n_grid: int) -> np.ndarray:
    """(n_out, n_grid) weights of cubic-spline interpolation from ``n_grid`` control points spread
    evenly over ``n_out`` voxels (a linear map, so applied to unit vectors once)."""
    pos = np.linspace(0, n_grid - 1, n_out)[None]
    eye = np.eye(n_grid)
    return np.stack([ndimage.map_coordinates(eye[j], pos, order=3, mode="nearest") for j in range(n_grid)], axis=1)


class Warp:
    """Rotation, scaling and elastic deformation as one coordinate map.

    ``rotation_deg``: the xy angle is uniform in ±rotation_deg. ``scale``: the zoom factor is
    uniform in [1 - scale, 1 + scale] (xy; and z when near-isotropic). ``elastic_sigma_nm``:
    standard deviation of the displacement at control points spaced ``control_spacing_nm``
    (z, y, x), smoothly interpolated (cubic spline) and clipped to 3 sigma; xy displacement only
    unless near-isotropic. ``tilt_deg``: uniform tilts about y and x, near-isotropic voxels only.
    All zero: the identity. ``p``: probability of warping a sample at all. ``mix_z``: whether z
    may move (default: when the voxel is near-isotropic; False for 2D patches).
    """

    def __init__(self, rotation_deg: float = 180.0, scale: float = 0.1, elastic_sigma_nm: float = 0.0,
                 control_spacing_nm: tuple[float, float, float] = (200.0, 200.0, 200.0), tilt_deg: float = 0.0,
                 p: float = 1.0, mix_z: bool | None = None) -> None:
        self.mix_z = mix_z
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
                f"tilt_deg={math.degrees(self.tilt):g}, p={self.p:g}, mix_z={self.mix_z})")

    def margin(self, out_shape: Zyx, voxel_size: Nm) -> Zyx:
        """Voxels per side that any draw can reach beyond the output (rotation, zoom, 3 sigma bounded)."""
        iso = self._mixes_z(voxel_size)
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

    def _mixes_z(self, voxel_size: Nm) -> bool:
        return is_isotropic(voxel_size) if self.mix_z is None else self.mix_z

    def _elastic(self, out_shape: Zyx, voxel_size: Nm, axes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
        """Smooth displacements (nm) for ``axes`` on the output grid: Gaussian jitter at the control
        points, clipped to 3 sigma, interpolated by a cubic spline one axis at a time."""
        grid = [max(2, math.ceil((n - 1) * v / c) + 2) for n, v, c in zip(out_shape, voxel_size, self.spacing)]
        mats = [_spline_matrix(n, g) for n, g in zip(out_shape, grid)]
        out = []
        for _ in axes:
            field = np.clip(rng.normal(0.0, self.sigma, grid), -3 * self.sigma, 3 * self.sigma)
            for axis, mat in enumerate(mats):  # (.., g, ..) -> (.., n, ..)
                field = np.moveaxis(np.tensordot(mat, field, axes=(1, axis)), 0, axis)
            out.append(field)
        return out

    def coordinates(self, in_shape: Zyx, out_shape: Zyx, voxel_size: Nm, rng: np.random.Generator) -> list[np.ndarray]:
        """Source positions (voxels of the input window) of every output voxel, per axis, broadcastable
        to ``out_shape``. Anisotropic voxels: z is whole section indices (an integer array) and one
        (1, y, x) map serves every section, as pytorch_connectomics' Elastic warps a stack."""
        iso = self._mixes_z(voxel_size)
        angle = rng.uniform(-self.rotation, self.rotation) if self.rotation else 0.0
        tilts = (rng.uniform(-self.tilt, self.tilt), rng.uniform(-self.tilt, self.tilt)) if iso and self.tilt \
            else (0.0, 0.0)
        zoom = rng.uniform(1 - self.scale, 1 + self.scale) if self.scale else 1.0
        field = out_shape if iso else (1, *out_shape[1:])
        elastic = self._elastic(field, voxel_size, [0, 1, 2] if iso else [1, 2], rng) if self.sigma else None
        offset = [(i - o) / 2 for i, o in zip(in_shape, out_shape)]
        if angle == 0 and zoom == 1 and tilts == (0.0, 0.0) and elastic is None:  # exact: whole voxels
            return [np.arange(n).reshape([-1 if k == a else 1 for k in range(3)]) + int(m)
                    for a, (n, m) in enumerate(zip(out_shape, offset))]
        v = np.array(voxel_size)
        mat = _rotation(angle, *tilts) * zoom
        rel = [((np.arange(n) - (n - 1) / 2) * s).reshape([-1 if k == a else 1 for k in range(3)])
               for a, (n, s) in enumerate(zip(out_shape, v))]
        out: list[np.ndarray] = []
        if not iso:
            out.append(np.arange(out_shape[0]).reshape(-1, 1, 1) + int(offset[0]))
            rel[0] = np.zeros((1, 1, 1))
        for axis in range(0 if iso else 1, 3):
            pos = sum(mat[axis, k] * rel[k] for k in range(3) if mat[axis, k] != 0)
            if elastic is not None:
                pos = pos + elastic[axis - (0 if iso else 1)]
            out.append((np.broadcast_to(pos, field) / v[axis] + (in_shape[axis] - 1) / 2).astype(np.float32))
        return out

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        if self.p < 1 and rng.random() >= self.p:
            from emdata.torch.augment.compose import center_crop

            return center_crop(sample, out_shape)
        coords = self.coordinates(sample.shape, out_shape, sample.voxel_size, rng)
        return remap(sample, coords, out_shape)


def _axis(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """For source positions ``c`` on an axis of ``n`` voxels: the lower neighbour, the upper one's
    weight (None for whole positions), the nearest voxel, whether ``c`` lies inside, the upper
    neighbour (the lower one again on a one-voxel axis)."""
    if np.issubdtype(c.dtype, np.integer):
        near = np.clip(c, 0, n - 1)
        return near, None, near, (c >= 0) & (c < n), near
    inside = (c > -0.5) & (c < n - 0.5)
    cc = np.clip(c, 0, n - 1)
    lo = np.minimum(cc.astype(np.intp), max(n - 2, 0))
    w = cc - lo
    return lo, w, np.minimum(lo + (w >= 0.5), n - 1), inside, np.minimum(lo + 1, n - 1)


def remap(sample: Sample, coords: list[np.ndarray], out_shape: Zyx) -> Sample:
    """``sample`` read at source positions ``coords`` (voxels, per axis, broadcastable to ``out_shape``;
    integer arrays are whole voxels): raw linearly, labels and validity by the nearest voxel
    (read by index, never interpolated); positions outside the input are invalid."""
    shape = sample.shape
    terms = [_axis(c, n) for c, n in zip(coords, shape)]
    inside = np.broadcast_to(terms[0][3] & terms[1][3] & terms[2][3], out_shape)
    planar = terms[0][1] is None and terms[0][2].shape[1:] == (1, 1) and all(t[2].shape[0] == 1 for t in terms[1:])
    if planar:  # one (y, x) map for every section: gather rows of (z, y * x)
        rows = terms[0][2].reshape(-1)

        every = np.array_equal(rows, np.arange(shape[0]))

        def take(a: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:  # works on views: no copy first
            y, x = np.broadcast_to(y, (1, *out_shape[1:]))[0], np.broadcast_to(x, (1, *out_shape[1:]))[0]
            return a[:, y, x] if every else a[rows[:, None, None], y[None], x[None]]
    else:
        def take(a: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
            idx = (terms[0][2] * shape[1] + y) * shape[2] + x
            return np.take(np.ascontiguousarray(a).reshape(-1), np.broadcast_to(idx, out_shape))
        if terms[0][1] is not None:  # z interpolated too: trilinear
            return _remap_3d(sample, terms, inside, out_shape)
    (ylo, wy, yn, _, yhi), (xlo, wx, xn, _, xhi) = terms[1], terms[2]
    labels = {k: take(v, yn, xn) for k, v in sample.labels.items()}
    valid = take(sample.valid, yn, xn) & inside
    raw = sample.raw
    if wy is None and wx is None:
        out = take(raw, yn, xn)
    else:
        wy = np.zeros((1, 1, 1), np.float32) if wy is None else wy
        wx = np.zeros((1, 1, 1), np.float32) if wx is None else wx
        a, b = take(raw, ylo, xlo).astype(np.float32), take(raw, ylo, xhi).astype(np.float32)
        c, d = take(raw, yhi, xlo).astype(np.float32), take(raw, yhi, xhi).astype(np.float32)
        top = a + (b - a) * wx
        out = top + (c + (d - c) * wx - top) * wy
        out = _back(out, raw.dtype)
    return Sample(out, labels, valid, sample.voxel_size)


def _back(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _remap_3d(sample: Sample, terms: list, inside: np.ndarray, out_shape: Zyx) -> Sample:
    """Trilinear raw and nearest labels when every axis is interpolated (near-isotropic warps)."""
    shape = sample.shape
    strides = (shape[1] * shape[2], shape[2], 1)

    def flat(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a).reshape(-1)

    nearest = np.broadcast_to(sum(t[2] * s for t, s in zip(terms, strides)), out_shape)
    labels = {k: np.take(flat(v), nearest) for k, v in sample.labels.items()}
    valid = np.take(flat(sample.valid), nearest) & inside
    raw, out = flat(sample.raw), np.zeros(out_shape, np.float32)
    for corner in product((0, 1), repeat=3):
        idx = sum(t[4 if bit else 0] * s for t, bit, s in zip(terms, corner, strides))
        w = np.ones((1, 1, 1), np.float32)
        for t, bit in zip(terms, corner):
            w = w * (t[1] if bit else 1 - t[1])
        out += np.take(raw, np.broadcast_to(idx, out_shape)) * w
    return Sample(_back(out, sample.raw.dtype), labels, valid, sample.voxel_size)
