"""Intensity transforms on raw only (labels and validity untouched), in the raw's own range:
integer raw is scaled to [0, 1] by its dtype's range, changed, rounded and clipped back once;
float raw (``raw_dtype="float32"``) is changed as it is. Strength 0 is the identity.

Example:
    >>> import numpy as np
    >>> from emdata.torch.augment.compose import Sample
    >>> s = Sample(np.full((1, 4, 4), 100, np.uint8), {}, np.ones((1, 4, 4), bool), (30.0, 6.0, 6.0))
    >>> ContrastBrightness(contrast=0.0, brightness=0.0)(s, np.random.default_rng(0), (1, 4, 4)).raw[0, 0, 0]
    np.uint8(100)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from emdata.torch.augment.compose import PointTransform, Sample, Zyx
from emdata.torch.augment.geometric import is_isotropic


def in_unit_range(raw: np.ndarray, change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``change`` applied to raw as float32 in [0, 1] (integer dtypes by their range), back in raw's dtype."""
    if not np.issubdtype(raw.dtype, np.integer):
        return change(raw.astype(np.float32, copy=False)).astype(raw.dtype, copy=False)
    info = np.iinfo(raw.dtype)
    span = np.float32(float(info.max) - float(info.min))
    unit = (raw.astype(np.float32) - np.float32(info.min)) / span
    out = change(unit) * span + np.float32(info.min)
    return np.clip(np.rint(out), info.min, info.max).astype(raw.dtype)


class _Intensity(PointTransform):
    p: float = 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        raise NotImplementedError

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        if self.p < 1 and rng.random() >= self.p:
            return sample
        change = self.change(rng, sample)
        return sample if change is None else replace(sample, raw=in_unit_range(sample.raw, change))


@dataclass(repr=False)
class Gamma(_Intensity):
    """``x ** g`` with log g uniform in ±log(1 + strength) (gunpowder's IntensityAugment / pytorch_connectomics'
    Grayscale use gamma 0.7–1.4-like ranges)."""

    strength: float = 0.3
    p: float = 1.0

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

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not (self.contrast or self.brightness):
            return None
        c = np.float32(rng.uniform(1 - self.contrast, 1 + self.contrast))
        b = np.float32(rng.uniform(-self.brightness, self.brightness))
        return lambda x: (x - np.float32(0.5)) * c + np.float32(0.5) + b


@dataclass(repr=False)
class GaussianNoise(_Intensity):
    """Additive noise, standard deviation uniform in [0, sigma] (unit range)."""

    sigma: float = 0.05
    p: float = 1.0

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.sigma:
            return None
        s = np.float32(rng.uniform(0, self.sigma))
        noise = rng.standard_normal(sample.shape, dtype=np.float32) * s
        return lambda x: x + noise


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
        return lambda x: ndimage.gaussian_filter(x, sigmas, mode="reflect", truncate=3.0)


@dataclass(repr=False)
class LocalContrast(_Intensity):
    """CLAHE-like local contrast, per section: ``x`` pulled towards ``(x - local mean) / local std``
    rescaled to the section's global spread, by a weight uniform in [0, strength]; local
    statistics over square windows of ``size_nm`` (box filters: cost independent of the size)."""

    strength: float = 0.5
    size_nm: float = 200.0
    p: float = 1.0

    def change(self, rng: np.random.Generator, sample: Sample) -> Callable[[np.ndarray], np.ndarray] | None:
        if not self.strength:
            return None
        w = np.float32(rng.uniform(0, self.strength))
        size = (1, *(max(1, round(self.size_nm / v)) for v in sample.voxel_size[1:]))

        def change(x: np.ndarray) -> np.ndarray:
            mean = ndimage.uniform_filter(x, size, mode="reflect")
            std = np.sqrt(np.maximum(ndimage.uniform_filter(x * x, size, mode="reflect") - mean * mean, 1e-6))
            spread = x.std(axis=(1, 2), keepdims=True)
            centre = x.mean(axis=(1, 2), keepdims=True)
            local = (x - mean) / std * spread + centre
            return x + w * (local - x)

        return change
