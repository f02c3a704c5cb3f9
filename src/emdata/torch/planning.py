"""Per-volume plans: which pyramid level a patch is read from, where its origin may go, and
how raw intensities are scaled.

:func:`plan_volumes` turns each volume into a :class:`VolumePlan` once, when a dataset is
built: the level (:func:`choose_level`, the coarsest one at least as fine as the target
voxel), the valid origins inside the volume or its region (held-out slabs), the level-0
voxels those patches can hold, the foreground-index weights a :class:`~emdata.torch.samplers.Foreground`
or :class:`~emdata.torch.samplers.MinInstances` sampler draws blocks from, and the raw values
``normalize`` maps to 0 and 1. A volume that cannot give the patches is excluded, with the
reason. :meth:`VolumePlan.draw_origin` then draws a patch origin with the dataset's sampler.

Example:
    >>> choose_level([{"scale": (30, 6, 6)}, {"scale": (30, 12, 12)}, {"scale": (60, 24, 24)}], (30, 16, 16))
    1
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emdata.store.fgindex import foreground_index
from emdata.store.intensity import estimate_intensity
from emdata.store.volume import Volume
from emdata.torch.samplers import (
    Foreground,
    MinInstances,
    Sampler,
    Zyx,
    origin_range,
    reach_range,
    reachable_counts,
    target_voxel,
)
from emdata.torch.targets import LabelSpace, VolumeLabels, plan_labels

log = logging.getLogger(__name__)
RegionNm = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
NORMALIZE = ("dtype", "percentile")
PERCENTILE_KEYS = ("0.5", "99.5")
ReadLevel0 = Callable[[str, int, tuple[slice, ...]], np.ndarray]  # (layer, level, box) -> array


class NoValidLocationError(ValueError):
    """No volume has a location where the requested patch (and sampler) fits."""


def choose_level(levels: list[dict[str, Any]], target: Sequence[float]) -> int:
    """The coarsest level whose voxel is at most the target on every axis (else level 0).

    Example:
        >>> choose_level([{"scale": (30, 6, 6)}, {"scale": (30, 12, 12)}], (30, 8, 8))
        0
    """
    best = 0
    for i, lv in enumerate(levels):
        if all(s <= t * (1 + 1e-6) for s, t in zip(lv["scale"], target)):
            best = i
    return best


@dataclass
class VolumePlan:
    """One volume as a dataset reads it: level, target grid, valid origins and sampler weights."""

    path: str
    dataset: str
    name: str
    level: int
    scale: tuple[float, float, float]
    target: tuple[float, float, float]
    vs0: tuple[float, float, float]
    raw_translation: tuple[float, float, float]
    min_origin: Zyx  # inclusive, in target voxels
    max_origin: Zyx  # inclusive, in target voxels
    reach: tuple[tuple[int, int], ...]  # level-0 voxels [lo, hi) per axis that some valid patch holds
    level_shape: Zyx
    meta_labels: dict[str, Any]
    labels: VolumeLabels
    layers: list[str]
    weight: float
    raw_dtype: str
    intensity: tuple[float, float] | None = None  # raw value mapped to 0 and to 1
    block_shape: Zyx | None = None  # foreground index blocks (level 0)
    fg_weights: dict[int | None, np.ndarray] | None = None  # per block: sampler voxels inside ``reach``

    def draw_origin(self, sampler: Sampler, patch_shape: Zyx, read: ReadLevel0, rng: np.random.Generator) -> Zyx:
        """A patch origin (target voxels) drawn as ``sampler`` says; ``read`` reads label boxes."""
        if isinstance(sampler, Foreground) and rng.random() >= sampler.p_uniform:
            value = None
            present = {v: p for v, p in (sampler.class_probs or {}).items()
                       if p > 0 and v in self.fg_weights and self.fg_weights[v].any()}  # type: ignore[operator,index]
            if present:
                keys = sorted(present)
                probs = np.array([present[k] for k in keys], dtype=np.float64)
                value = keys[int(rng.choice(len(keys), p=probs / probs.sum()))]
            return self._origin_around(self._foreground_voxel(sampler.layer, value, read, rng), patch_shape, rng)
        if isinstance(sampler, MinInstances):
            return self._origin_around(self._foreground_voxel(sampler.layer, None, read, rng), patch_shape, rng)
        return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(self.min_origin, self.max_origin))  # type: ignore[return-value]

    def _origin_around(self, voxel0: np.ndarray, patch_shape: Zyx, rng: np.random.Generator) -> Zyx:
        """A valid patch origin (target voxels) whose patch holds level-0 voxel ``voxel0``
        (one inside ``reach``; a voxel outside it gets the nearest valid origin)."""
        g = target_voxel(voxel0, self.vs0, self.target)
        p = np.array(patch_shape)
        lo_valid, hi_valid = np.array(self.min_origin), np.array(self.max_origin)
        lo = np.clip(g - p + 1, lo_valid, hi_valid)
        hi = np.clip(g, lo, hi_valid)
        return tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def _foreground_voxel(self, layer: str, value: int | None, read: ReadLevel0,
                          rng: np.random.Generator) -> np.ndarray:
        weights = self.fg_weights[value]  # type: ignore[index]
        flat = weights.reshape(-1)
        block = np.unravel_index(rng.choice(flat.size, p=flat / flat.sum()), weights.shape)
        box = tuple(slice(max(int(k) * b, lo), min((int(k) + 1) * b, hi))
                    for k, b, (lo, hi) in zip(block, self.block_shape, self.reach))  # type: ignore[arg-type]
        labels = read(layer, 0, box)
        hits = np.array(np.unravel_index(np.flatnonzero(labels != 0 if value is None else labels == value),
                                         labels.shape)).T + np.array([s.start for s in box])
        sampled = hits[self._on_grid(hits)]  # voxels the target grid actually reads
        pool = sampled if len(sampled) else hits
        return pool[rng.integers(len(pool))]

    def _on_grid(self, voxels: np.ndarray) -> np.ndarray:
        """Which level-0 voxels are the ones nearest-neighbour label sampling reads."""
        t, vs0, s = np.array(self.target), np.array(self.vs0), np.array(self.scale)
        g = target_voxel(voxels, vs0, t)
        source = np.rint(((g + 0.5) * t - 0.5 * vs0) / s) * np.rint(s / vs0)
        return (source == voxels).all(axis=1)


def plan_volumes(vols: list[Volume], *, voxel_size: tuple[float, float, float], patch_shape: Zyx,
                 sampler: Sampler, label_layers: Sequence[str], with_targets: bool, space: LabelSpace,
                 normalize: str | None, weights: Sequence[float] | None,
                 regions: Sequence[RegionNm | None] | None) -> tuple[list[VolumePlan], list[str]]:
    """A plan for every volume that can give ``patch_shape`` voxels at ``voxel_size``, and why
    each other one is excluded. ``with_targets``: read every label layer (targets need them).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from emdata.store.volume import open_volume
        >>> from emdata.store.writer import write_volume
        >>> from emdata.torch.samplers import Uniform
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.zeros((4, 64, 64), "u1"), (30, 6, 6),
        ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> plans, excluded = plan_volumes([open_volume(path)], voxel_size=(30.0, 12.0, 12.0), patch_shape=(2, 16, 16),
        ...                                sampler=Uniform(), label_layers=[], with_targets=False,
        ...                                space=LabelSpace(["background"]), normalize=None, weights=None, regions=None)
        >>> plans[0].min_origin, plans[0].max_origin, plans[0].weight, excluded  # 3 * 17 * 17 valid origins
        ((0, 0, 0), (2, 16, 16), 867.0, [])
    """
    plans, excluded = [], []
    sampler_layer = getattr(sampler, "layer", None)
    needed = set(label_layers) | ({sampler_layer} if sampler_layer else set())
    for n, vol in enumerate(vols):
        where = f"{vol.dataset}/{vol.name}"
        levels = vol.meta["raw"]["levels"]
        level = choose_level(levels, voxel_size)
        extent = [s * v for s, v in zip(vol.shape, vol.voxel_size)]
        region = regions[n] if regions is not None else None
        if region is not None and not all(len(r) == 2 and 0 <= r[0] < r[1] for r in region):
            raise ValueError(f"{where}: regions_nm must be ((z0, z1), (y0, y1), (x0, x1)) with 0 <= start < stop "
                             f"in nm, got {region}")
        ranges = [origin_range(e, t, p, region[i] if region is not None else None)
                  for i, (e, t, p) in enumerate(zip(extent, voxel_size, patch_shape))]
        missing = sorted(needed - set(vol.meta["labels"]))
        if missing:
            excluded.append(f"{where} excluded: it has no label layer(s) {missing}")
            continue
        if any(hi < lo for lo, hi in ranges):
            inside = f"its region {region} nm" if region is not None else \
                f"its extent {tuple(round(e) for e in extent)} nm"
            excluded.append(f"{where} excluded: {patch_shape} voxels at {voxel_size} nm do not fit {inside}")
            continue
        reach = tuple(reach_range(n0, v0, t, lo, hi, p) for n0, v0, t, (lo, hi), p in
                      zip(vol.shape, vol.voxel_size, voxel_size, ranges, patch_shape))
        if with_targets:
            layers = list(vol.meta["labels"])
        else:
            layers = sorted(set(label_layers) | ({sampler_layer} if isinstance(sampler, MinInstances) else set()))
        weight = float(weights[n]) if weights is not None else float(np.prod([hi - lo + 1 for lo, hi in ranges]))
        plan = VolumePlan(str(vol.folder), vol.dataset, vol.name, level, tuple(levels[level]["scale"]),  # type: ignore[arg-type]
                          voxel_size, vol.voxel_size,
                          tuple(levels[level]["translation"] or (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
                          tuple(lo for lo, _ in ranges), tuple(hi for _, hi in ranges), reach,  # type: ignore[arg-type]
                          tuple(levels[level]["shape"]),  # type: ignore[arg-type]
                          vol.meta["labels"], plan_labels(vol.meta["labels"], space), layers, weight,
                          str(vol.meta["raw"]["dtype"]))
        if isinstance(sampler, Foreground | MinInstances):
            why = _plan_foreground(plan, vol, sampler)
            if why:
                excluded.append(f"{where} excluded: {why}")
                continue
        if normalize:
            plan.intensity = intensity_range(vol, normalize)
        plans.append(plan)
    return plans, excluded


def _plan_foreground(plan: VolumePlan, vol: Volume, sampler: Foreground | MinInstances) -> str | None:
    """Per-block sampler weights of the voxels a valid patch can hold; why not, if none."""
    layer = sampler.layer
    index = foreground_index(vol, layer)
    wanted: list[int | None] = [None]
    if isinstance(sampler, Foreground) and index.kind == "semantic":
        wanted += [int(v) for v, p in (sampler.class_probs or {}).items() if p > 0]
    labels = vol.labels[layer]
    plan.block_shape = index.block_shape
    plan.fg_weights = {}
    for value in wanted:
        counts = index.foreground_counts() if value is None else index.value_counts(value)

        def count_in(box: tuple[slice, ...], value: int | None = value) -> int:
            data = np.asarray(labels[box])
            return int(np.count_nonzero(data if value is None else data == value))

        plan.fg_weights[value] = reachable_counts(counts, index.block_shape, index.shape, plan.reach, count_in)
    if not plan.fg_weights[None].any():
        return f"layer {layer!r} has no foreground inside the region patches can come from"
    if len(wanted) > 1 and not any(plan.fg_weights[v].any() for v in wanted[1:]):
        return f"layer {layer!r} has none of the classes {sorted(wanted[1:])} the sampler asks for"  # type: ignore[type-var]
    return None


def intensity_range(vol: Volume, normalize: str) -> tuple[float, float]:
    """The raw values ``normalize`` (``"dtype"`` or ``"percentile"``) maps to 0 and 1 for ``vol``: one rule
    for training patches and for :func:`emdata.predict`."""
    dtype = np.dtype(vol.meta["raw"]["dtype"])
    stats = vol.meta["raw"].get("intensity")
    if normalize == "dtype" and dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if stats is None:
        log.info("%s/%s: no recorded raw percentiles (prepared by an older emdata); estimating them",
                 vol.dataset, vol.name)
        stats = estimate_intensity([vol.level(i) for i in range(vol.n_levels)])
    lo, hi = (float(stats["percentiles"][k]) for k in PERCENTILE_KEYS) if normalize == "percentile" else (
        float(stats["min"]), float(stats["max"]))
    if hi <= lo:
        lo, hi = float(stats["min"]), float(stats["max"])
    return (lo, hi) if hi > lo else (lo, lo + 1.0)
