"""Geometric transforms, identical for raw, every label layer and the validity mask.

- :class:`FlipTurn`: flips on every axis and 90° turns in xy (``augment=True``).
- :class:`Warp`: one coordinate map per sample, rotation ∘ scale ∘ elastic, in nm. Raw is
  interpolated linearly (kept in its dtype, rounded once); labels take the value of the nearest
  source voxel, read by index, so ids are never blended, invented or cast (uint64 survives).
  Voxels whose source lies outside the volume are marked invalid. z is mixed (tilts, z
  displacement) only when the voxel is near-isotropic (z / xy ≤ 1.5); otherwise z stays
  section-exact.
- :func:`fused_geometry`: misalignments, a section-exact warp, flips and turns in a row composed
  into one map and resampled once (what :class:`~emdata.torch.augment.Compose` does with them).

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

from emdata.torch.augment.compose import Nm, Sample, Window, Zyx, materialize

ISOTROPIC = 1.5  # z / xy voxel ratio at or below which z may be mixed into xy


def is_isotropic(voxel_size: Nm) -> bool:
    """True when z / xy ≤ 1.5 (z may be mixed into xy)."""
    return voxel_size[0] / min(voxel_size[1:]) <= ISOTROPIC


class FlipTurn:
    """Flips on every axis (p = 0.5 each) and 0–3 quarter turns in xy (square xy only); the arrays
    it returns are views (no copy)."""

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
            return a  # a view: later stages read it as it is, the dataset copies its outputs once

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
    return np.stack([ndimage.map_coordinates(eye[j], pos, order=3, mode="nearest") for j in range(n_grid)],
                    axis=1).astype(np.float32)


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
            field = np.clip(rng.normal(0.0, self.sigma, grid), -3 * self.sigma, 3 * self.sigma).astype(np.float32)
            # (gz, gy, gx) -> (nz, gy, gx) -> (nz, ny, gx) -> (nz, ny, nx): three small matrix products
            field = (mats[0] @ field.reshape(grid[0], -1)).reshape(-1, grid[1], grid[2])
            out.append((mats[1] @ field) @ mats[2].T)
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
        mat = (_rotation(angle, *tilts) * zoom).astype(np.float32)  # float32 maps: positions to 1e-7 of the window
        rel = [((np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)) * np.float32(s)).reshape(
               [-1 if k == a else 1 for k in range(3)]) for a, (n, s) in enumerate(zip(out_shape, v))]
        out: list[np.ndarray] = []
        if not iso:
            out.append(np.arange(out_shape[0]).reshape(-1, 1, 1) + int(offset[0]))
            rel[0] = np.zeros((1, 1, 1), np.float32)
        for axis in range(0 if iso else 1, 3):
            pos = sum(mat[axis, k] * rel[k] for k in range(3) if mat[axis, k] != 0)
            if elastic is not None:
                pos = pos + elastic[axis - (0 if iso else 1)]
            pos = np.broadcast_to(pos, field) * np.float32(1 / v[axis])
            out.append(pos + np.float32((in_shape[axis] - 1) / 2))
        return out

    reads_windows = True  # a planar warp reads only the box of each label window its map reaches

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
    zc = coords[0]
    if (np.issubdtype(zc.dtype, np.integer) and zc.shape[1:] == (1, 1)
            and all(c.shape[0] == 1 for c in coords[1:])):
        return _remap_planar(sample, zc.reshape(-1), coords[1], coords[2], out_shape)
    sample = materialize(sample)
    terms = [_axis(c, n) for c, n in zip(coords, shape)]
    inside = np.broadcast_to(terms[0][3] & terms[1][3] & terms[2][3], out_shape)
    if terms[0][1] is not None:  # z interpolated too: trilinear
        return _remap_3d(sample, terms, inside, out_shape)

    def take(a: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        idx = (terms[0][2] * shape[1] + y) * shape[2] + x
        return np.take(np.ascontiguousarray(a).reshape(-1), np.broadcast_to(idx, out_shape))

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


def _sections(a: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Sections ``rows`` of ``a`` as a (sections, span) view whose element ``y * sy + x * sx`` is
    ``a[z, y, x]``; no copy for any slice of a larger array (positive y and x strides)."""
    it = a.itemsize
    if a.strides[1] <= 0 or a.strides[2] <= 0 or any(s % it for s in a.strides):
        a = np.ascontiguousarray(a)
    sy, sx = a.strides[1] // it, a.strides[2] // it
    span = (a.shape[1] - 1) * sy + (a.shape[2] - 1) * sx + 1
    flat = np.lib.stride_tricks.as_strided(a, (a.shape[0], span), (a.strides[0], it), writeable=False)
    z0 = int(rows[0]) if len(rows) else 0
    if len(rows) and np.array_equal(rows, np.arange(z0, z0 + len(rows))):
        return flat[z0:z0 + len(rows)], sy, sx  # a view, not a gather
    return flat[rows], sy, sx


def _remap_planar(sample: Sample, rows: np.ndarray, ymap: np.ndarray, xmap: np.ndarray, out_shape: Zyx) -> Sample:
    """One (y, x) source map for every output section (section ``z`` read from input section
    ``rows[z]``): the bilinear corners, their weights and the nearest voxel are worked out once
    on the 2D map as flat indices, then every array is gathered section by section with
    ``np.take`` (raw: 4 gathers and a weighted sum in float32; labels and validity: 1 gather)."""
    _, ny, nx = sample.shape
    plane = out_shape[1:]
    ymap, xmap = np.broadcast_to(ymap, (1, *plane))[0], np.broadcast_to(xmap, (1, *plane))[0]
    ylo, wy, yn, yin, yhi = _axis(ymap, ny)
    xlo, wx, xn, xin, xhi = _axis(xmap, nx)
    inside = yin & xin & ((rows >= 0) & (rows < sample.shape[0]))[:, None, None]
    rows = np.clip(rows, 0, sample.shape[0] - 1)

    def gather(a: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        if isinstance(a, Window):  # read just the box the map reaches
            z0, z1 = int(rows.min()), int(rows.max()) + 1
            y0, y1, x0, x1 = int(y.min()), int(y.max()) + 1, int(x.min()), int(x.max()) + 1
            a = a.read((slice(z0, z1), slice(y0, y1), slice(x0, x1)))
            return gather_from(a, rows - z0, y - y0, x - x0)
        return gather_from(a, rows, y, x)

    def gather_from(a: np.ndarray, rows: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        src, sy, sx = _sections(a, rows)
        idx = (y * sy + x * sx).reshape(-1)
        return np.take(src, idx, axis=1).reshape(out_shape)

    labels = {k: gather(v, yn, xn) for k, v in sample.labels.items()}
    valid = (gather(sample.valid, yn, xn) if not sample.valid.all() else np.ones(out_shape, bool)) & inside
    raw = sample.raw
    if wy is None and wx is None:
        return Sample(gather(raw, yn, xn), labels, valid, sample.voxel_size)
    torch = _torch()
    if torch is not None and ny > 1 and nx > 1:
        return Sample(_back(_bilinear_torch(torch, raw, rows, ymap, xmap), raw.dtype), labels, valid,
                      sample.voxel_size)
    wy = np.zeros(plane, np.float32) if wy is None else wy.astype(np.float32, copy=False)
    wx = np.zeros(plane, np.float32) if wx is None else wx.astype(np.float32, copy=False)
    vy, vx = 1 - wy, 1 - wx
    out = np.multiply(gather(raw, ylo, xlo), vy * vx, dtype=np.float32)
    part = np.empty(out_shape, np.float32)
    for y, x, w in ((ylo, xhi, vy * wx), (yhi, xlo, wy * vx), (yhi, xhi, wy * wx)):
        np.multiply(gather(raw, y, x), w, out=part, dtype=np.float32)
        out += part
    return Sample(_back(out, raw.dtype), labels, valid, sample.voxel_size)


def _torch():  # type: ignore[no-untyped-def]
    """torch when it is installed (its grid_sample interpolates about twice as fast as numpy gathers)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _bilinear_torch(torch, raw: np.ndarray, rows: np.ndarray, ymap: np.ndarray,  # type: ignore[no-untyped-def]
                    xmap: np.ndarray) -> np.ndarray:
    """Raw sections ``rows`` read bilinearly at (``ymap``, ``xmap``) (positions clamped to the
    section, as the numpy path does) with ``torch.nn.functional.grid_sample``: the sections are
    the channels of one image, so the weights are worked out once per output pixel."""
    z0 = int(rows[0])
    src = raw[z0:z0 + len(rows)] if np.array_equal(rows, np.arange(z0, z0 + len(rows))) else raw[rows]
    # only the box the map reaches is converted to float
    y0, x0 = (max(int(np.floor(m.min())), 0) for m in (ymap, xmap))
    y1, x1 = (min(int(np.ceil(m.max())) + 1, n) for m, n in zip((ymap, xmap), raw.shape[1:]))
    if y1 - y0 > 1 and x1 - x0 > 1 and (y0, x0, y1, x1) != (0, 0, *raw.shape[1:]):
        src, ymap, xmap = src[:, y0:y1, x0:x1], ymap - np.float32(y0), xmap - np.float32(x0)
    _, ny, nx = src.shape
    image = torch.from_numpy(np.ascontiguousarray(src)).to(torch.float32)[None]
    grid = np.stack([np.broadcast_to(xmap, ymap.shape) * np.float32(2 / (nx - 1)) - 1,
                     ymap * np.float32(2 / (ny - 1)) - 1], axis=-1)
    out = torch.nn.functional.grid_sample(image, torch.from_numpy(grid.astype(np.float32))[None], mode="bilinear",
                                          padding_mode="border", align_corners=True)
    return out[0].numpy()


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


_CV2: list = []


def _cv2():  # type: ignore[no-untyped-def]
    """OpenCV when it is installed (the ``torch`` extra brings it), else None. Its ``remap``
    interpolates 8-bit raw in fixed point and its ``LUT`` looks up 8-bit values faster than numpy.
    On first use it is set to one thread (``cv2.setNumThreads(1)``): patches are small, and a
    loader runs one process or thread per core already."""
    if not _CV2:
        try:
            import cv2

            cv2.setNumThreads(1)
        except ImportError:
            cv2 = None
        _CV2.append(cv2)
    return _CV2[0]


CV2_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))


def remap_sections(raw: np.ndarray, rows: np.ndarray, ymap: np.ndarray, xmap: np.ndarray,
                   shifts: np.ndarray | None = None) -> np.ndarray | None:
    """Raw sections ``rows`` read bilinearly at (``ymap``, ``xmap``) (2D float32 positions, clamped
    to the section; section ``z`` moved by the whole voxels ``shifts[z]`` (y, x) when given) with
    OpenCV's ``remap``; None when OpenCV is missing or cannot take raw's dtype. The maps are given
    as float32, not converted to fixed-point tables: OpenCV 5 then interpolates in float (a value
    is the float computation rounded, and faster than with tables); OpenCV 4 converts them to
    1/32-voxel weights itself (a value within 1/64 of the step between neighbours, plus rounding).

    Example:
        >>> raw = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4) * 4
        >>> y, x = np.full((1, 1), 1.5, np.float32), np.full((1, 1), 2.0, np.float32)
        >>> remap_sections(raw, np.array([1, 0]), y, x)[:, 0, 0].tolist()  # (z * 16 + 1.5 * 4 + 2) * 4
        [96, 32]
    """
    cv2 = _cv2()
    if cv2 is None or raw.dtype not in CV2_DTYPES or raw.ndim != 3 or min(raw.shape[1:]) < 2:
        return None
    out = np.empty((len(rows), *ymap.shape), raw.dtype)
    xm, ym = np.ascontiguousarray(xmap, np.float32), np.ascontiguousarray(ymap, np.float32)
    if shifts is None or not shifts.any():
        for z, r in enumerate(rows):
            cv2.remap(raw[r], xm, ym, cv2.INTER_LINEAR, dst=out[z], borderMode=cv2.BORDER_REPLICATE)
        return out
    if (shifts >= 0).all():  # a shifted section is the section seen from its shift on: the same map
        for z, (r, (dy, dx)) in enumerate(zip(rows, shifts)):
            cv2.remap(raw[r, dy:, dx:], xm, ym, cv2.INTER_LINEAR, dst=out[z], borderMode=cv2.BORDER_REPLICATE)
        return out
    for z, (r, (dy, dx)) in enumerate(zip(rows, shifts)):
        cv2.remap(raw[r], xm + np.float32(dx), ym + np.float32(dy), cv2.INTER_LINEAR, dst=out[z],
                  borderMode=cv2.BORDER_REPLICATE)
    return out


def _nearest(c: np.ndarray) -> np.ndarray:
    """The nearest whole voxel of positions ``c`` (halves up), as :func:`_axis` picks it inside the window."""
    if np.issubdtype(c.dtype, np.integer):
        return c.astype(np.intp, copy=False)
    return np.floor(c + np.float32(0.5)).astype(np.intp)


def geometric_run(transforms: list, start: int) -> int:
    """The end of the run of ``transforms`` from ``start`` that :func:`fused_geometry` may apply at
    once (misalignments, a warp, flips and turns, in that order); ``start`` when there is none."""
    from emdata.torch.augment.defects import Misalign

    j = start
    while j < len(transforms) and type(transforms[j]) is Misalign:
        j += 1
    for kind in (Warp, FlipTurn):
        if j < len(transforms) and type(transforms[j]) is kind:
            j += 1
    has_warp = any(type(t) is Warp for t in transforms[start:j])
    return j if j - start >= 2 or has_warp else start


@lru_cache(maxsize=8)
def _grid(plane: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The (y, x) index grids of ``plane`` (read-only, shared)."""
    grids = np.indices(plane, dtype=np.intp)
    grids.flags.writeable = False
    return grids[0], grids[1]


def fused_geometry(transforms: list, sample: Sample, rng: np.random.Generator,
                   shapes: list[Zyx]) -> Sample | None:
    """``transforms`` (misalignments, then at most one section-exact :class:`Warp`, then at most
    one :class:`FlipTurn`, as :func:`~emdata.torch.augment.em_augment` orders them) applied as ONE
    coordinate map: the same random draws in the same order as applying them one by one, composed
    backwards into one (y, x) map shared by every section plus whole-voxel shifts per section.
    Raw is interpolated once (:func:`remap_sections`), labels and validity gathered once from the
    nearest voxel, so the result equals the one-by-one result exactly on labels and validity and up
    to rounding on raw. ``shapes``: the input shape, then each transform's
    output shape. None (and ``rng`` untouched) when the run does not take this form or a position
    would need clamping at the window's edge: the caller then applies the transforms one by one.

    Example:
        >>> ids = np.arange(2 * 60 * 60, dtype=np.uint64).reshape(2, 60, 60)
        >>> s = Sample(ids.astype(np.uint8), {"cells": ids}, np.ones(ids.shape, bool), (30.0, 6.0, 6.0))
        >>> ts = [Warp(rotation_deg=90, scale=0.1, elastic_sigma_nm=6), FlipTurn()]
        >>> out = fused_geometry(ts, s, np.random.default_rng(1), [(2, 60, 60), (2, 32, 32), (2, 32, 32)])
        >>> out.raw.shape, bool(np.isin(out.labels["cells"], ids).all())
        ((2, 32, 32), True)
    """
    from emdata.torch.augment.defects import Misalign

    kinds = [type(t) for t in transforms]
    n_shift = 0
    while n_shift < len(kinds) and kinds[n_shift] is Misalign:
        n_shift += 1
    rest = kinds[n_shift:]
    if rest not in ([Warp, FlipTurn], [Warp], [FlipTurn], []) or (len(transforms) < 2 and Warp not in rest):
        return None
    warp = transforms[n_shift] if rest[:1] == [Warp] else None
    vs = sample.voxel_size
    if (warp is not None and warp._mixes_z(vs)) or sample.raw.ndim != 3:
        return None
    state = rng.bit_generator.state
    # the draws, in the order the transforms make them one by one
    shifts = [t.draw(rng, shapes[k + 1], vs) for k, t in enumerate(transforms[:n_shift])]
    coords = None
    if warp is not None:
        w_in, w_out = shapes[n_shift], shapes[n_shift + 1]
        if not (warp.p < 1 and rng.random() >= warp.p):
            coords = warp.coordinates(w_in, w_out, vs, rng)
    flips, turns = [], 0
    out_shape = shapes[-1]
    if rest[-1:] == [FlipTurn]:
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        turns = int(rng.integers(4)) if out_shape[1] == out_shape[2] else 0
    # backwards from the output grid: flips and turns permute it (a permutation of the output
    # grid read through a map is the map permuted: views, no indexing) ...
    nz = out_shape[0]
    zz = np.arange(nz)[::-1] if 0 in flips else np.arange(nz)
    plane_flips = tuple(axis - 1 for axis in (1, 2) if axis in flips)

    def permute(a: np.ndarray) -> np.ndarray:
        if plane_flips:
            a = np.flip(a, plane_flips)
        return np.rot90(a, turns) if turns else a

    # ... the warp maps it into its input window (or crops it) ...
    stage = n_shift
    if warp is not None and coords is not None:
        w_out = shapes[stage + 1]
        zz = np.broadcast_to(coords[0], (w_out[0], 1, 1)).reshape(-1)[zz]
        yy = permute(np.broadcast_to(coords[1], (1, *w_out[1:]))[0])
        xx = permute(np.broadcast_to(coords[2], (1, *w_out[1:]))[0])
    else:
        yy, xx = (permute(g) for g in _grid(out_shape[1:]))
        if warp is not None:
            m = [(a - b) // 2 for a, b in zip(shapes[stage], shapes[stage + 1])]
            zz, yy, xx = zz + m[0], yy + m[1], xx + m[2]
    # ... and the misalignments shift whole sections
    off = np.zeros((nz, 2), np.intp)
    for k in reversed(range(n_shift)):
        inner, outer = shapes[k + 1], shapes[k]
        if shifts[k] is not None:
            moved, dy, dx = shifts[k]
            hit = np.zeros(inner[0], bool)
            hit[moved] = True
            off[hit[zz]] += (dy, dx)
        m = [(a - b) // 2 for a, b in zip(outer, inner)]
        zz = zz + m[0]
        off += (m[1], m[2])
    return _apply_map(sample, state, rng, zz, yy, xx, off, out_shape)


def _gather(a: np.ndarray | Window, rows: np.ndarray, yn: np.ndarray, xn: np.ndarray, off: np.ndarray,
            out_shape: Zyx, reach: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None) -> np.ndarray:
    """``a[rows[z], yn + off[z, 0], xn + off[z, 1]]`` for every section ``z`` (positions inside ``a``),
    one ``np.take`` per section from a flat view (a window is read only over the box reached:
    ``reach``, the first and last voxel (z, y, x) read, when the caller knows it)."""
    if isinstance(a, Window):
        if reach is None:
            reach = _reach(rows, yn, xn, off)
        lo, last = reach
        a = a.read(tuple(slice(b, e + 1) for b, e in zip(lo, last)))
        rows, off = rows - lo[0], off - np.array(lo[1:])
    a = np.ascontiguousarray(a)  # np.take is several times slower from a strided view
    sz, sy, sx = (s // a.itemsize for s in a.strides)
    idx = (yn * sy + xn * sx).reshape(-1)
    out = np.empty(out_shape, a.dtype)
    plane = out.reshape(out_shape[0], -1)
    z0 = int(rows[0])
    if (off == off[0]).all() and np.array_equal(rows, np.arange(z0, z0 + len(rows))):  # one take for all
        shift = int(off[0, 0] * sy + off[0, 1] * sx)
        np.take(a.reshape(a.shape[0], -1)[z0:z0 + len(rows)], idx + shift if shift else idx, axis=1,
                out=plane, mode="clip")
        return out
    # section by section (flipped z, shifted sections): each take reads a view that starts where
    # the section's first index does, so the one index array serves every section as it is
    flat = a.reshape(-1)
    first = int(idx.min())
    if first:
        idx = idx - first
    base = rows * sz + off[:, 0] * sy + off[:, 1] * sx + first
    for z, b in enumerate(base.tolist()):
        np.take(flat[b:], idx, out=plane[z], mode="clip")  # in range: 'clip' is not buffered
    return out


def _reach(rows: np.ndarray, yn: np.ndarray, xn: np.ndarray,
           off: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The first and the last voxel (z, y, x) that :func:`_gather` reads."""
    low, high = off.min(axis=0), off.max(axis=0)
    return ((int(rows.min()), int(yn.min() + low[0]), int(xn.min() + low[1])),
            (int(rows.max()), int(yn.max() + high[0]), int(xn.max() + high[1])))


def _apply_map(sample: Sample, state: dict, rng: np.random.Generator, rows: np.ndarray, ymap: np.ndarray,
               xmap: np.ndarray, off: np.ndarray, out_shape: Zyx) -> Sample | None:
    """:func:`fused_geometry`'s resampling; None (``rng`` back at ``state``) when it cannot be done exactly here."""
    n = sample.shape
    whole = np.issubdtype(ymap.dtype, np.integer) and np.issubdtype(xmap.dtype, np.integer)
    # the map's extent, once: min and max of each map, of the rows, of the shifts
    (y0, y1), (x0, x1) = ((m.min(), m.max()) for m in (ymap, xmap))
    low, high = off.min(axis=0), off.max(axis=0)
    r0, r1 = int(rows.min()), int(rows.max())
    inside = (r0 >= 0 and r1 < n[0] and y0 + low[0] >= 0 and y1 + high[0] <= n[1] - 1
              and x0 + low[1] >= 0 and x1 + high[1] <= n[2] - 1)
    raw = None
    if inside and not whole:
        source, shifts, at = sample.raw, off, (rows, ymap, xmap)
        if isinstance(source, Window):  # read the box the map reaches (its bilinear neighbours included)
            fy, fx = int(np.floor(y0)), int(np.floor(x0))
            box = (slice(r0, r1 + 1),
                   slice(fy + int(low[0]), min(int(np.floor(y1)) + 2 + int(high[0]), n[1])),
                   slice(fx + int(low[1]), min(int(np.floor(x1)) + 2 + int(high[1]), n[2])))
            source = source.read(box)
            at, shifts = (rows - r0, ymap - np.float32(fy), xmap - np.float32(fx)), off - low
        raw = remap_sections(source, *at, shifts if shifts.any() else None)
    if not inside or (raw is None and not whole):
        rng.bit_generator.state = state
        return None
    yn, xn = _nearest(ymap), _nearest(xmap)
    # nearest voxels are monotone in the positions: their extent is the extent's nearest voxels
    reach = ((r0, int(_nearest(np.asarray(y0))) + int(low[0]), int(_nearest(np.asarray(x0))) + int(low[1])),
             (r1, int(_nearest(np.asarray(y1))) + int(high[0]), int(_nearest(np.asarray(x1))) + int(high[1])))
    if raw is None:
        raw = _gather(sample.raw, rows, yn, xn, off, out_shape, reach)
    labels = {k: _gather(v, rows, yn, xn, off, out_shape, reach) for k, v in sample.labels.items()}
    valid = sample.valid
    valid = np.ones(out_shape, bool) if valid.all() else _gather(valid, rows, yn, xn, off, out_shape, reach)
    return Sample(raw, labels, valid, sample.voxel_size)
