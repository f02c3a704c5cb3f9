"""The transform protocol: a :class:`Sample` (raw, label layers, validity, voxel size) that each
transform changes, the read margin each one declares, and :class:`Compose`.

A transform is called as ``t(sample, rng, out_shape)`` and returns a sample of ``out_shape``
voxels; it declares with ``margin(out_shape, voxel_size)`` how many voxels per side (z, y, x) it
needs around its output. :class:`Compose` adds the margins up, so the dataset offers
``patch + 2 * margin`` and every stage shrinks the window to the next one's input. Label layers
may come as :class:`Window` objects, read only where a transform looks; a transform that does
not declare ``reads_windows = True`` is given plain arrays.

Example:
    >>> import numpy as np
    >>> s = Sample(np.arange(8, dtype=np.uint8).reshape(2, 2, 2), {}, np.ones((2, 2, 2), bool), (30.0, 6.0, 6.0))
    >>> center_crop(s, (2, 1, 1)).raw.ravel().tolist()
    [0, 4]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

Zyx = tuple[int, int, int]
Nm = tuple[float, float, float]


@dataclass
class Sample:
    """One patch under augmentation: ``raw`` (z, y, x; the dataset may hand it over as a
    :class:`Window`, read when a transform needs it), ``labels`` (layer → ids, same shape),
    ``valid`` (False where the voxel came from outside the volume or the region) and the voxel
    size in nm."""

    raw: np.ndarray
    labels: dict[str, np.ndarray]
    valid: np.ndarray
    voxel_size: Nm

    @property
    def shape(self) -> Zyx:
        return tuple(self.raw.shape)  # type: ignore[return-value]

    def map_arrays(self, fn) -> Sample:  # type: ignore[no-untyped-def]
        """The same geometric change ``fn`` applied to raw, every label layer and ``valid``."""
        return replace(self, raw=fn(self.raw), labels={k: fn(v) for k, v in self.labels.items()}, valid=fn(self.valid))


class Window:
    """A label layer around the patch, read only where a transform looks: ``read(box)`` gives the
    voxels of ``box`` (slices in window coordinates). Slicing gives a smaller window without
    reading; ``np.asarray`` reads the whole window. The dataset hands label layers over like
    this, so a warp reads the box its coordinates reach, not the worst-case margin.

    Example:
        >>> data = np.arange(4 * 6 * 6).reshape(4, 6, 6)
        >>> w = Window(lambda box: data[box], data.shape, data.dtype)
        >>> part = w[1:3, 2:5, 2:5]
        >>> part.shape, np.array_equal(np.asarray(part), data[1:3, 2:5, 2:5])
        ((2, 3, 3), True)
    """

    ndim = 3

    def __init__(self, read, shape: Sequence[int], dtype: np.dtype,  # type: ignore[no-untyped-def]
                 origin: Sequence[int] = (0, 0, 0)) -> None:
        self._read, self.shape, self.dtype = read, tuple(int(n) for n in shape), np.dtype(dtype)
        self.origin = tuple(int(o) for o in origin)

    def __repr__(self) -> str:
        return f"Window(shape={self.shape}, dtype={self.dtype}, origin={self.origin})"

    def read(self, box: Sequence[slice]) -> np.ndarray:
        """The voxels of ``box`` (slices with start and stop, inside the window)."""
        return self._read(tuple(slice(o + b.start, o + b.stop) for o, b in zip(self.origin, box)))

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        if len(key) == 3 and all(isinstance(k, slice) for k in key):
            ranges = [k.indices(n) for k, n in zip(key, self.shape)]
            if all(step == 1 for _, _, step in ranges):
                return Window(self._read, [max(b - a, 0) for a, b, _ in ranges], self.dtype,
                              [o + a for o, (a, _, _) in zip(self.origin, ranges)])
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # type: ignore[no-untyped-def]
        out = self.read(tuple(slice(0, n) for n in self.shape))
        return out if dtype is None else out.astype(dtype)

    def copy(self) -> np.ndarray:
        return np.asarray(self)


def materialize(sample: Sample, labels: bool = True) -> Sample:
    """``sample`` with raw (and with ``labels`` every label layer) an array (windows read whole)."""
    if isinstance(sample.raw, Window):
        sample = replace(sample, raw=np.asarray(sample.raw))
    if not labels or not any(isinstance(v, Window) for v in sample.labels.values()):
        return sample
    return replace(sample, labels={k: np.asarray(v) for k, v in sample.labels.items()})


@runtime_checkable
class Transform(Protocol):
    """What a transform provides (see the module docstring)."""

    def margin(self, out_shape: Zyx, voxel_size: Nm) -> Zyx: ...

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Zyx) -> Sample: ...


class PointTransform:
    """A transform that keeps the shape and needs no margin (intensity, section defects)."""

    reads_windows = True  # changes raw only: label layers may stay unread windows

    def margin(self, out_shape: Zyx, voxel_size: Nm) -> Zyx:
        return (0, 0, 0)


def center_crop(sample: Sample, out_shape: Sequence[int]) -> Sample:
    """The central ``out_shape`` voxels of every array of ``sample``."""
    if tuple(out_shape) == sample.shape:
        return sample
    box = tuple(slice((n - o) // 2, (n - o) // 2 + o) for n, o in zip(sample.shape, out_shape))
    return sample.map_arrays(lambda a: a[box])


class Compose:
    """Transforms applied in order; ``margin`` is the sum of theirs.

    Example:
        >>> from emdata.torch.augment.intensity import Gamma
        >>> from emdata.torch.augment.geometric import Warp
        >>> aug = Compose([Warp(rotation_deg=0, scale=0, elastic_sigma_nm=0), Gamma(0.0)])
        >>> aug.margin((4, 32, 32), (30.0, 6.0, 6.0))
        (0, 0, 0)
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Compose takes transforms with margin() and __call__(sample, rng, out_shape); "
                                f"got {t!r}")
        self.transforms = list(transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"

    def shapes(self, out_shape: Sequence[int], voxel_size: Nm) -> list[Zyx]:
        """The input shape of every stage, then the output shape (last)."""
        key = (tuple(int(s) for s in out_shape), tuple(voxel_size), tuple(id(t) for t in self.transforms))
        cache = self.__dict__.setdefault("_shape_cache", {})
        if key not in cache:
            cache[key] = self._stage_shapes(out_shape, voxel_size)
        return list(cache[key])

    def _stage_shapes(self, out_shape: Sequence[int], voxel_size: Nm) -> list[Zyx]:
        shapes = [tuple(int(s) for s in out_shape)]
        for t in reversed(self.transforms):
            m = t.margin(shapes[0], voxel_size)  # type: ignore[arg-type]
            shapes.insert(0, tuple(s + 2 * int(k) for s, k in zip(shapes[0], m)))
        return shapes  # type: ignore[return-value]

    def margin(self, out_shape: Sequence[int], voxel_size: Nm) -> Zyx:
        first = self.shapes(out_shape, voxel_size)[0]
        return tuple((a - b) // 2 for a, b in zip(first, out_shape))  # type: ignore[return-value]

    def __call__(self, sample: Sample, rng: np.random.Generator, out_shape: Sequence[int]) -> Sample:
        from emdata.torch.augment.geometric import fused_geometry, geometric_run
        from emdata.torch.augment.intensity import fused_tables, table_run

        shapes = self.shapes(out_shape, sample.voxel_size)
        sample = center_crop(sample, shapes[0])
        ts, i = self.transforms, 0
        while i < len(ts):
            # runs of geometric transforms resample once; runs of pointwise intensity changes look up once
            for run, fused in ((geometric_run, fused_geometry), (table_run, fused_tables)):
                j = run(ts, i)
                if j > i:
                    out = fused(ts[i:j], sample if fused is fused_geometry else materialize(sample, labels=False),
                                rng, shapes[i:j + 1])
                    if out is not None:
                        sample, i = out, j
                        break
            else:
                t, shape = ts[i], shapes[i + 1]
                # raw is always an array here; label layers stay windows for a transform that reads them
                sample = materialize(sample, labels=not getattr(t, "reads_windows", False))
                sample = t(sample, rng, shape)
                if sample.shape != shape:
                    raise ValueError(f"{t!r} returned shape {sample.shape}, expected {shape}")
                i += 1
        return materialize(sample)
