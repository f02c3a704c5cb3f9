"""Intensity transforms on raw only (labels and validity untouched), in the raw's own range:
integer raw is scaled to [0, 1] by its dtype's range, changed, rounded and clipped back once;
float raw (``raw_dtype="float32"``) is changed as it is. Strength 0 is the identity.

Cost: a pointwise change (gamma, contrast and brightness) of 8- or 16-bit raw is a lookup table
over the dtype's values, so it costs one gather per voxel and gives exactly what the float
computation would (a run of them in a :class:`~emdata.torch.augment.Compose` is one composed
table, :func:`fused_tables`); noise on integer raw is a slice of a per-process bank of Gaussian
noise at a drawn offset (:func:`noise_bank`), on float raw 16 random bits per voxel through a
table of Gaussian quantiles; blur of anisotropic 8- and 16-bit raw is OpenCV's per section;
local contrast takes its statistics on a coarse grid of blocks and works on the grey levels
themselves.

Example:
    >>> import numpy as np
    >>> from emdata.torch.augment.compose import Sample
    >>> s = Sample(np.full((1, 4, 4), 100, np.uint8), {}, np.ones((1, 4, 4), bool), (30.0, 6.0, 6.0))
    >>> ContrastBrightness(contrast=0.0, brightness=0.0)(s, np.random.default_rng(0), (1, 4, 4)).raw[0, 0, 0]
    np.uint8(100)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import ndimage, special

from emdata.torch.augment.compose import PointTransform, Sample, Zyx
from emdata.torch.augment.geometric import _cv2, is_isotropic


def _to_unit(raw: np.ndarray) -> tuple[np.ndarray, float, float]:
    info = np.iinfo(raw.dtype)
    span = float(info.max) - float(info.min)
    unit = raw.astype(np.float32)
    if info.min:
        unit -= np.float32(info.min)
    unit *= np.float32(1 / span)
    return unit, float(info.min), span


def _from_unit(out: np.ndarray, dtype: np.dtype, low: float, span: float) -> np.ndarray:
    info = np.iinfo(dtype)
    out = np.multiply(out, np.float32(span), dtype=np.float32)
    if low:
        out += np.float32(low)
    np.rint(out, out=out)
    np.clip(out, info.min, info.max, out=out)
    return out.astype(dtype)


def in_unit_range(raw: np.ndarray, change: Callable[[np.ndarray], np.ndarray], pointwise: bool = False) -> np.ndarray:
    """``change`` applied to raw as float32 in [0, 1] (integer dtypes by their range), back in raw's dtype.
    ``pointwise``: ``change`` maps each value on its own, so 8- and 16-bit raw goes through a table of
    every value of its dtype (one gather per voxel, the same result).

    Example:
        >>> raw = np.array([[0, 64, 255]], np.uint8)
        >>> in_unit_range(raw, lambda x: x * 0.5, pointwise=True).tolist()
        [[0, 32, 128]]
    """
    if not np.issubdtype(raw.dtype, np.integer):
        return change(raw.astype(np.float32, copy=False)).astype(raw.dtype, copy=False)
    if pointwise and raw.dtype.itemsize <= 2:
        info = np.iinfo(raw.dtype)
        lut = in_unit_range(np.arange(info.min, info.max + 1, dtype=raw.dtype), change)
        return lut[raw] if info.min == 0 else lut[raw.astype(np.int32) - info.min]
    unit, low, span = _to_unit(raw)
    return _from_unit(change(unit), raw.dtype, low, span)


class _Intensity(PointTransform):
    p: float = 1.0
    pointwise = False  # the change maps each value on its own (a lookup table serves integer raw)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        raise NotImplementedError

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        if self.p < 1 and rng.random() >= self.p:
            return sample
        change = self.change(rng, sample)
        return sample if change is None else replace(sample, raw=in_unit_range(sample.raw, change, self.pointwise))


@dataclass(repr=False)
class Gamma(_Intensity):
    """``x ** g`` with log g uniform in ±log(1 + strength) (gunpowder's IntensityAugment / pytorch_connectomics'
    Grayscale use gamma 0.7–1.4-like ranges)."""

    strength: float = 0.3
    p: float = 1.0
    pointwise = True

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.strength:
            return None
        g = np.float32(np.exp(rng.uniform(-np.log1p(self.strength), np.log1p(self.strength))))
        return lambda x: np.power(np.clip(x, 0, None), g)


@dataclass(repr=False)
class ContrastBrightness(_Intensity):
    """``(x - 0.5) * c + 0.5 + b``, c uniform in 1 ± contrast, b in ± brightness (unit range)."""

    contrast: float = 0.3
    brightness: float = 0.1
    p: float = 1.0
    pointwise = True

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not (self.contrast or self.brightness):
            return None
        c = np.float32(rng.uniform(1 - self.contrast, 1 + self.contrast))
        b = np.float32(rng.uniform(-self.brightness, self.brightness))
        return lambda x: (x - np.float32(0.5)) * c + np.float32(0.5) + b


def table_run(transforms: list, start: int) -> int:
    """The end of the run of pointwise intensity changes (gamma, contrast and brightness) from
    ``start`` that :func:`fused_tables` applies as one lookup; ``start`` when there is none."""
    j = start
    while j < len(transforms) and isinstance(transforms[j], _Intensity) and transforms[j].pointwise:
        j += 1
    return j


def lookup(raw: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[raw]`` for 8- or 16-bit unsigned raw (OpenCV's ``LUT`` for 8 bits when installed)."""
    if raw.dtype == np.uint8:
        from emdata.torch.augment.geometric import _cv2

        cv2 = _cv2()
        if cv2 is not None and raw.ndim == 3 and raw.flags.c_contiguous:
            return cv2.LUT(raw.reshape(raw.shape[0], -1), table).reshape(raw.shape)
    return np.take(table, raw)


def fused_tables(transforms: list, sample: Sample, rng: np.random.Generator, shapes: list) -> Sample | None:
    """Pointwise ``transforms`` on 8- or 16-bit unsigned raw as ONE lookup: each draws as it would
    alone and its table over every value of the dtype is composed with the ones before, so the
    result equals applying them one by one, rounding included. None (nothing drawn) for other raw.

    Example:
        >>> raw = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
        >>> s = Sample(raw, {}, np.ones(raw.shape, bool), (30.0, 6.0, 6.0))
        >>> ts = [Gamma(0.3), ContrastBrightness(0.3, 0.1)]
        >>> one = fused_tables(ts, s, np.random.default_rng(0), [raw.shape] * 3).raw
        >>> rng = np.random.default_rng(0)
        >>> np.array_equal(one, ts[1](ts[0](s, rng, raw.shape), rng, raw.shape).raw)
        True
    """
    raw = sample.raw
    if raw.dtype not in (np.uint8, np.uint16):
        return None
    table = None
    values = np.arange(np.iinfo(raw.dtype).max + 1, dtype=raw.dtype)
    for t in transforms:
        if t.p < 1 and rng.random() >= t.p:
            continue
        change = t.change(rng, sample)
        if change is not None:
            step = in_unit_range(values, change)
            table = step if table is None else step[table]
    return sample if table is None else replace(sample, raw=lookup(raw, table))


@lru_cache(maxsize=1)
def _gaussian_quantiles() -> np.ndarray:
    """The standard normal's quantiles at the centres of 65536 equal-probability bins (±4.3 at the ends)."""
    return special.ndtri((np.arange(65536) + 0.5) / 65536).astype(np.float32)


def gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise by inverse transform sampling of 16 random bits per voxel (a
    few times faster than ``rng.standard_normal``; quantised to 65536 levels, tails cut at 4.3).

    Example:
        >>> noise = gaussian_noise(np.random.default_rng(0), (100_000,))
        >>> abs(float(noise.mean())) < 0.01, round(float(noise.std()), 2)
        (True, 1.0)
    """
    bits = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.uint16).reshape(shape)
    return _gaussian_quantiles()[bits]


BANK_SCALE = 1024.0  # the bank holds standard normal noise times this, rounded to int16
_BANK: list[np.ndarray] = []


def noise_bank(size: int) -> np.ndarray:
    """Standard normal noise × :data:`BANK_SCALE` as int16 (at least 2**22 values and 4 × ``size``),
    made once per process from a fixed seed: :class:`GaussianNoise` reads a sample's noise from it
    at an offset drawn from the sample's generator, so the noise stays a function of
    ``(seed, epoch, index)`` and costs no generation per sample.

    Example:
        >>> bank = noise_bank(1000)
        >>> bank.dtype, round(float(bank[:100_000].std()) / BANK_SCALE, 1)
        (dtype('int16'), 1.0)
    """
    if not _BANK or len(_BANK[0]) < 4 * size:
        n = max(1 << 22, 4 * size)
        normal = np.random.default_rng(0x5EED_0F_E3DA7A).standard_normal(n, dtype=np.float32)
        _BANK[:] = [np.rint(np.clip(normal, -4.5, 4.5) * np.float32(BANK_SCALE)).astype(np.int16)]
    return _BANK[0]


@dataclass(repr=False)
class GaussianNoise(_Intensity):
    """Additive Gaussian noise (:func:`gaussian_noise`), standard deviation uniform in [0, sigma] (unit range)."""

    sigma: float = 0.05
    p: float = 1.0

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        raw = sample.raw
        if not (raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2) or not self.sigma:
            return super().__call__(sample, rng, out_shape)
        if self.p < 1 and rng.random() >= self.p:
            return sample
        # integer raw: round(raw + s * noise), noise read from the bank at a drawn offset
        info = np.iinfo(raw.dtype)
        s = rng.uniform(0, self.sigma) * (float(info.max) - float(info.min))
        bank = noise_bank(raw.size)
        start = int(rng.integers(0, len(bank) - raw.size + 1))
        noise = bank[start:start + raw.size].reshape(raw.shape)
        cv2 = _cv2()
        if cv2 is not None and raw.dtype == np.uint8 and raw.ndim == 3:
            flat = (raw.shape[0], -1)
            out = cv2.addWeighted(raw.astype(np.int16).reshape(flat), 1.0, noise.reshape(flat), s / BANK_SCALE, 0.0,
                                  dtype=cv2.CV_8U)
            return replace(sample, raw=out.reshape(raw.shape))
        out = np.multiply(noise, np.float32(s / BANK_SCALE), dtype=np.float32)
        out += raw
        np.rint(out, out=out)
        return replace(sample, raw=np.clip(out, info.min, info.max, out=out).astype(raw.dtype))

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.sigma:
            return None
        s = np.float32(rng.uniform(0, self.sigma))
        noise = gaussian_noise(rng, sample.shape)
        noise *= s

        def change(x: np.ndarray) -> np.ndarray:
            x = x.copy() if not x.flags.writeable else x
            x += noise
            return x

        return change


def _blur_sections(cv2, raw: np.ndarray, sigmas: list[float]) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Each section blurred in xy by OpenCV (kernel to 3 sigma, reflecting edges as ``ndimage``'s
    ``"reflect"``), in raw's integer dtype (fixed-point weights for 8 bits)."""
    sy, sx = sigmas[1], sigmas[2]
    ky, kx = (2 * math.ceil(3 * s) + 1 if s > 0 else 1 for s in (sy, sx))
    out = np.empty_like(raw)
    for z in range(raw.shape[0]):
        cv2.GaussianBlur(raw[z], (kx, ky), sigmaX=max(sx, 1e-6), sigmaY=max(sy, 1e-6), dst=out[z],
                         borderType=cv2.BORDER_REFLECT)
    return out


@dataclass(repr=False)
class GaussianBlur(_Intensity):
    """Gaussian blur, sigma uniform in [0, sigma_nm] (xy only unless near-isotropic)."""

    sigma_nm: float = 12.0
    p: float = 1.0

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.sigma_nm:
            return None
        s = rng.uniform(0, self.sigma_nm)
        sigmas = [s / v for v in sample.voxel_size]
        if not is_isotropic(sample.voxel_size):
            sigmas[0] = 0.0

        def change(x: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(x, sigmas, mode="reflect", truncate=3.0)

        change.sigmas = sigmas  # type: ignore[attr-defined]
        return change

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        raw = sample.raw
        if raw.dtype.kind not in "ui" or not self.sigma_nm:
            return super().__call__(sample, rng, out_shape)
        if self.p < 1 and rng.random() >= self.p:
            return sample
        # a blur is linear: filter the integers themselves (no trip through [0, 1]), round once
        info = np.iinfo(raw.dtype)
        change = self.change(rng, sample)
        cv2 = _cv2()
        if cv2 is not None and raw.dtype in (np.uint8, np.uint16) and not is_isotropic(sample.voxel_size):
            return replace(sample, raw=_blur_sections(cv2, raw, change.sigmas))  # type: ignore[union-attr]
        out = change(raw.astype(np.float32))  # type: ignore[misc]
        np.rint(out, out=out)
        return replace(sample, raw=np.clip(out, info.min, info.max, out=out).astype(raw.dtype))


@lru_cache(maxsize=32)
def _upsample_matrix(n: int, block: int) -> np.ndarray:
    """(n, ceil(n / block)) weights of linear interpolation from block centres to voxel centres."""
    m = -(-n // block)
    pos = np.clip((np.arange(n) + 0.5) / block - 0.5, 0, m - 1)
    lo = np.minimum(pos.astype(int), max(m - 2, 0))
    w = pos - lo
    out = np.zeros((n, m), np.float32)
    out[np.arange(n), lo] += 1 - w
    out[np.arange(n), np.minimum(lo + 1, m - 1)] += w
    return out


@lru_cache(maxsize=32)
def _average_matrix(n: int, block: int) -> np.ndarray:
    """(ceil(n / block), n) weights of the means of ``block`` voxels (the last tile padded by repeating the edge)."""
    m = -(-n // block)
    out = np.zeros((m, n), np.float32)
    for k in range(m * block):
        out[k // block, min(k, n - 1)] += 1 / block
    return out


def _upsample(grids: np.ndarray, block: int, shape: tuple[int, ...]) -> np.ndarray:
    """(..., gy, gx) block-centre values interpolated linearly to every voxel of ``shape`` (y, x),
    edges held: :func:`_upsample_matrix` on both axes (OpenCV's ``resize`` or torch's
    ``interpolate``, which sample the same positions, when installed)."""
    from emdata.torch.augment.geometric import _torch

    ny, nx = shape
    gy, gx = grids.shape[-2:]
    fits = gy * block >= ny and gx * block >= nx
    cv2 = _cv2()
    if cv2 is not None and fits and grids.size // (gy * gx) <= 512:  # every grid a channel of one image
        channels = np.ascontiguousarray(grids.reshape(-1, gy, gx).transpose(1, 2, 0), np.float32)
        up = cv2.resize(channels, (gx * block, gy * block), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(gy * block, gx * block, -1)  # one channel comes back 2D
        return up[:ny, :nx].transpose(2, 0, 1).reshape(*grids.shape[:-2], ny, nx)
    torch = _torch()
    if torch is not None and fits:
        flat = torch.from_numpy(np.ascontiguousarray(grids, np.float32).reshape(1, -1, *grids.shape[-2:]))
        up = torch.nn.functional.interpolate(flat, scale_factor=block, mode="bilinear", align_corners=False)
        return up.numpy().reshape(*grids.shape[:-2], *up.shape[-2:])[..., :ny, :nx]
    return _upsample_matrix(ny, block) @ grids @ _upsample_matrix(nx, block).T


def _block_means(x: np.ndarray, block: int) -> np.ndarray:
    """(z, ceil(y / block), ceil(x / block)) means of ``block`` × ``block`` tiles (edge tiles padded
    by repeating), as two small matrix products per section."""
    _, ny, nx = x.shape
    return _average_matrix(ny, block) @ x @ _average_matrix(nx, block).T


@dataclass(repr=False)
class LocalContrast(_Intensity):
    """CLAHE-like local contrast, per section: ``x`` pulled towards ``(x - local mean) / local std``
    rescaled to the section's global spread, by a weight uniform in [0, strength]. Local
    statistics over square windows of ``size_nm``: means of tiles of a fifth of the window,
    box-filtered over the window and interpolated linearly back to every voxel, so the
    change is ``x * a + b`` with smooth ``a`` and ``b`` (cost independent of the size)."""

    strength: float = 0.5
    size_nm: float = 200.0
    p: float = 1.0

    def _draw(self, rng: np.random.Generator, sample: Sample) -> tuple[np.float32, int, tuple[int, int, int]]:
        """The weight, the tile size and the filter window (in tiles)."""
        w = np.float32(rng.uniform(0, self.strength))
        size = [max(1, round(self.size_nm / v)) for v in sample.voxel_size[1:]]
        block = max(1, min(size) // 5)
        return w, block, (1, *(max(1, round(s / block)) for s in size))  # type: ignore[return-value]

    @staticmethod
    def _gains(x: np.ndarray, square: np.ndarray, w: np.float32, block: int, window: tuple[int, int, int],
               centre: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per tile ``a`` and ``b`` of ``x * a + b`` from the tile means of ``x`` and ``x * x``."""
        mean = ndimage.uniform_filter(_block_means(x, block), window, mode="reflect")
        square = ndimage.uniform_filter(_block_means(square, block), window, mode="reflect")
        std = np.sqrt(np.maximum(square - mean * mean, np.float32(1e-6)))
        # x + w * ((x - mean) / std * spread + centre - x) = x * a + b
        return 1 - w + w * spread / std, w * (centre - mean * spread / std)

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.strength:
            return None
        w, block, window = self._draw(rng, sample)

        def change(x: np.ndarray) -> np.ndarray:
            a, b = self._gains(x, x * x, w, block, window, x.mean(axis=(1, 2), keepdims=True),
                               x.std(axis=(1, 2), keepdims=True))
            a_up, b_up = _upsample(np.stack([a, b]), block, x.shape[1:])
            out = np.multiply(a_up, x, dtype=np.float32)
            out += b_up
            return out

        return change

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        raw = sample.raw
        if raw.dtype.kind not in "ui" or not self.strength:
            return super().__call__(sample, rng, out_shape)
        if self.p < 1 and rng.random() >= self.p:
            return sample
        cv2 = _cv2()
        if cv2 is not None and raw.dtype in (np.uint8, np.uint16) and raw.ndim == 3 and 1 < raw.shape[0] <= 256:
            return replace(sample, raw=self._fast(cv2, raw, *self._draw(rng, sample)))
        # ``x * a + b`` with a scale-free ``a`` and ``b`` in x's units: the integers themselves, rounded once
        info = np.iinfo(raw.dtype)
        out = self.change(rng, sample)(raw.astype(np.float32))  # type: ignore[misc]
        np.rint(out, out=out)
        return replace(sample, raw=np.clip(out, info.min, info.max, out=out).astype(raw.dtype))

    def _fast(self, cv2, raw: np.ndarray, w: np.float32, block: int,  # type: ignore[no-untyped-def]
              window: tuple[int, int, int]) -> np.ndarray:
        """:meth:`change` on 8- or 16-bit raw: the same tiles and gains, the section's mean and spread
        from sums in float64, the gains brought back to every voxel by OpenCV's ``resize`` section by
        section (the positions :func:`_upsample` interpolates at), rounded once."""
        nz, ny, nx = raw.shape
        x = raw.astype(np.float32)
        square = x * x
        n = ny * nx
        centre = raw.reshape(nz, -1).sum(axis=1, dtype=np.float64) / n
        spread = np.sqrt(np.maximum(square.reshape(nz, -1).sum(axis=1, dtype=np.float64) / n - centre * centre, 0.0))
        a, b = self._gains(x, square, w, block, window, centre.astype(np.float32)[:, None, None],
                           spread.astype(np.float32)[:, None, None])
        gy, gx = a.shape[1:]
        up = np.empty((2, nz, gy * block, gx * block), np.float32)
        for k, g in enumerate((a, b)):
            for z in range(nz):
                cv2.resize(g[z], (gx * block, gy * block), dst=up[k, z], interpolation=cv2.INTER_LINEAR)
        out = np.multiply(up[0, :, :ny, :nx], x, out=square)
        out += up[1, :, :ny, :nx]
        np.rint(out, out=out)
        info = np.iinfo(raw.dtype)
        return np.clip(out, info.min, info.max, out=out).astype(raw.dtype)
