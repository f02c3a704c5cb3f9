"""Section defects of serial-section EM, along z only: missing and low-contrast sections, motion
blur and inserted artefacts change raw alone; misalignment (every section above a cut shifted)
and slip (one section shifted) move raw, labels and validity together, reading the margin
they declare so shifted-in voxels are real data. Probabilities are per section (per sample
for a misalignment). The defaults of the missing and low-contrast sections are gunpowder's
DefectAugment's (funkelab/gunpowder: 0.05 each, contrast scale 0.1).

Example:
    >>> import numpy as np
    >>> from emdata.torch.augment.compose import Sample
    >>> raw = np.full((3, 8, 8), 200, np.uint8)
    >>> out = MissingSection(p=1.0)(Sample(raw, {}, np.ones(raw.shape, bool), (30.0, 6.0, 6.0)),
    ...                             np.random.default_rng(0), (3, 8, 8))
    >>> out.raw[:, 0, 0].tolist()
    [0, 0, 0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from emdata.torch.augment.compose import Nm, PointTransform, Sample, Zyx, center_crop
from emdata.torch.augment.intensity import in_unit_range


def _sections(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Which of ``n`` sections get a defect (each with probability ``p``)."""
    return np.flatnonzero(rng.random(n) < p) if p else np.zeros(0, np.intp)


@dataclass
class MissingSection(PointTransform):
    """A section lost: ``"blank"`` (raw's minimum) or ``"interpolate"`` (mean of its neighbours)."""

    p: float = 0.05
    mode: str = "blank"

    def __post_init__(self) -> None:
        if self.mode not in ("blank", "interpolate"):
            raise ValueError(f"MissingSection mode must be 'blank' or 'interpolate', got {self.mode!r}")

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        hit = _sections(rng, sample.shape[0], self.p)
        if not len(hit):
            return sample
        raw = sample.raw.copy()
        low = np.iinfo(raw.dtype).min if np.issubdtype(raw.dtype, np.integer) else 0
        for z in hit:
            if self.mode == "blank" or sample.shape[0] < 2:
                raw[z] = low
            else:
                near = [k for k in (z - 1, z + 1) if 0 <= k < sample.shape[0]]
                raw[z] = np.mean([sample.raw[k].astype(np.float32) for k in near], axis=0).round().astype(raw.dtype)
        return replace(sample, raw=raw)


@dataclass
class LowContrast(PointTransform):
    """A section's contrast around its mean scaled by ``factor``."""

    p: float = 0.05
    factor: float = 0.1

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        hit = _sections(rng, sample.shape[0], self.p)
        if not len(hit) or self.factor == 1:
            return sample
        raw = sample.raw.copy()
        f = np.float32(self.factor)
        raw[hit] = in_unit_range(raw[hit], lambda x: (x - x.mean(axis=(1, 2), keepdims=True)) * f
                                 + x.mean(axis=(1, 2), keepdims=True))
        return replace(sample, raw=raw)


@dataclass
class MotionBlur(PointTransform):
    """A section smeared along y or x by a line of 2 voxels up to ``length_nm``."""

    p: float = 0.05
    length_nm: float = 60.0

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        hit = _sections(rng, sample.shape[0], self.p)
        if not len(hit):
            return sample
        raw = sample.raw.copy()
        for z in hit:
            axis = int(rng.integers(2))
            longest = round(self.length_nm / sample.voxel_size[1 + axis])
            size = int(rng.integers(2, longest + 1)) if longest >= 2 else 1  # a line of 2 or more voxels
            if size > 1:
                raw[z] = in_unit_range(raw[z], lambda x, a=axis, s=size: ndimage.uniform_filter1d(x, s, axis=a))
        return replace(sample, raw=raw)


class Artefacts(PointTransform):
    """Artefact patches (2D, raw's dtype and range; with optional alphas in [0, 1]) blended into
    sections at random places, e.g. the defect sections some datasets ship."""

    def __init__(self, artefacts: Sequence[np.ndarray], alphas: Sequence[np.ndarray] | None = None,
                 p: float = 0.05) -> None:
        if not artefacts or any(np.ndim(a) != 2 for a in artefacts):
            raise ValueError("Artefacts needs a non-empty list of 2D (y, x) artefact patches")
        if alphas is not None and [np.shape(a) for a in alphas] != [np.shape(a) for a in artefacts]:
            raise ValueError("Artefacts: each alpha must have its artefact's shape")
        self.artefacts = [np.asarray(a) for a in artefacts]
        self.alphas = [np.asarray(a, np.float32) for a in alphas] if alphas is not None else None
        self.p = float(p)

    def __repr__(self) -> str:
        return f"Artefacts({len(self.artefacts)} patches, p={self.p})"

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        hit = _sections(rng, sample.shape[0], self.p)
        if not len(hit):
            return sample
        raw = sample.raw.copy()
        _, ny, nx = sample.shape
        for z in hit:
            k = int(rng.integers(len(self.artefacts)))
            art = self.artefacts[k]
            alpha = self.alphas[k] if self.alphas is not None else np.ones(art.shape, np.float32)
            ay, ax = (int(rng.integers(0, max(a - n, 0) + 1)) for a, n in zip(art.shape, (ny, nx)))  # crop of a big one
            art, alpha = art[ay:ay + ny, ax:ax + nx], alpha[ay:ay + ny, ax:ax + nx]
            oy, ox = (int(rng.integers(0, n - a + 1)) for a, n in zip(art.shape, (ny, nx)))
            box = (z, slice(oy, oy + art.shape[0]), slice(ox, ox + art.shape[1]))
            mixed = (1 - alpha) * raw[box].astype(np.float32) + alpha * art.astype(np.float32)
            if np.issubdtype(raw.dtype, np.integer):
                info = np.iinfo(raw.dtype)
                mixed = np.clip(np.rint(mixed), info.min, info.max)
            raw[box] = mixed.astype(raw.dtype)
        return replace(sample, raw=raw)


class Misalign:
    """Sections shifted in xy by up to ``max_shift_nm`` (uniform, whole voxels), raw, labels and
    validity together: ``slip=False`` shifts every section above a random cut (a misalignment),
    ``slip=True`` one section. ``p``: probability per sample."""

    def __init__(self, max_shift_nm: float = 60.0, p: float = 0.1, slip: bool = False) -> None:
        if max_shift_nm < 0 or not 0 <= p <= 1:
            raise ValueError(f"Misalign needs max_shift_nm >= 0 and 0 <= p <= 1, got {max_shift_nm}, {p}")
        self.max_shift_nm, self.p, self.slip = float(max_shift_nm), float(p), bool(slip)

    reads_windows = True  # slices, then reads: label windows are read only where they land

    def __repr__(self) -> str:
        return f"Misalign(max_shift_nm={self.max_shift_nm:g}, p={self.p:g}, slip={self.slip})"

    def margin(self, out_shape: Zyx, voxel_size: Nm) -> Zyx:
        if not self.p:
            return (0, 0, 0)
        return (0, *(math.floor(self.max_shift_nm / v + 1e-9) for v in voxel_size[1:]))  # type: ignore[return-value]

    def draw(self, rng: np.random.Generator, out_shape: Zyx, voxel_size: Nm) -> tuple[slice, int, int] | None:
        """The sections moved and the shift (y, x) in voxels; None for no change."""
        if out_shape[0] < 2 or not self.p or rng.random() >= self.p:
            return None
        _, my, mx = self.margin(out_shape, voxel_size)
        dy, dx = int(rng.integers(-my, my + 1)), int(rng.integers(-mx, mx + 1))
        if self.slip:
            z = int(rng.integers(out_shape[0]))
            return slice(z, z + 1), dy, dx
        return slice(int(rng.integers(1, out_shape[0])), None), dy, dx

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample:
        drawn = self.draw(rng, out_shape, sample.voxel_size)
        if drawn is None:
            return center_crop(sample, out_shape)
        moved, dy, dx = drawn
        _, my, mx = ((a - b) // 2 for a, b in zip(sample.shape, out_shape))
        still = (slice(None), slice(my, my + out_shape[1]), slice(mx, mx + out_shape[2]))
        shifted = (moved, slice(my + dy, my + dy + out_shape[1]), slice(mx + dx, mx + dx + out_shape[2]))

        def apply(a: np.ndarray) -> np.ndarray:
            out = np.array(a[still])
            out[moved] = np.asarray(a[shifted])
            return out

        return sample.map_arrays(apply)
