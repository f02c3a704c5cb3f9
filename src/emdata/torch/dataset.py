"""Patches in physical units from canonical volumes, reproducible and fast.

Sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the DataLoader's sampler
(:class:`EpochSampler`) yields ``(e, i)`` pairs, so any worker count, start method (fork,
spawn, forkserver) or DDP rank split gives the same samples. Volumes open lazily in each
worker. Patches are given in voxels at a target voxel size (default: each volume's own); the
nearest pyramid level at least as fine as the target is read and resampled axis by axis
(linear for raw, nearest for labels), so z never mixes into xy.

Example:
    >>> import tempfile, numpy as np
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> cells = np.zeros((8, 64, 64), "u4"); cells[:, 8:40, 8:40] = 7
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.full((8, 64, 64), 90, "u1"), (30, 6, 6),
    ...                     labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> ds = PatchDataset([path], (4, 32, 32), voxel_size=(30, 12, 12), targets=["semantic", "boundaries"],
    ...                   sampler=Foreground("cells"), samples_per_epoch=4)
    >>> batch = next(iter(make_loader(ds, batch_size=4)))
    >>> tuple(batch["raw"].shape), batch["raw"].dtype, ds.class_names
    ((4, 1, 4, 32, 32), torch.uint8, {0: 'background', 1: 'neuron'})
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emdata.labels.ontology import ontology
from emdata.store.fgindex import foreground_index
from emdata.store.intensity import estimate_intensity
from emdata.store.volume import Volume, open_volume
from emdata.torch.reader import VolumeReader
from emdata.torch.resample import resample
from emdata.torch.targets import (
    IGNORE,
    LabelSpace,
    VolumeLabels,
    affinities,
    boundaries,
    classes_target,
    plan_labels,
    semantic_target,
)

log = logging.getLogger(__name__)
Zyx = tuple[int, int, int]
RegionNm = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
TARGETS = ("semantic", "classes", "instances", "foreground", "boundaries", "affinities")
NORMALIZE = ("dtype", "percentile")
PERCENTILE_KEYS = ("0.5", "99.5")


class NoValidLocationError(ValueError):
    """No volume has a location where the requested patch (and sampler) fits."""


def _check_weights(what: str, weights: Sequence[float]) -> np.ndarray:
    """Finite, non-negative weights with a positive sum, as float64."""
    values = np.array([float(w) for w in weights], dtype=np.float64)
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ValueError(f"{what} must be finite, non-negative and not all zero, got {values.tolist()}")
    return values


def _check_sizes(what: str, values: Sequence[float], lengths: tuple[int, ...] = (3,)) -> tuple[float, ...]:
    """Positive finite numbers, as many as one of ``lengths``."""
    out = tuple(float(v) for v in values)
    if len(out) not in lengths or not all(math.isfinite(v) and v > 0 for v in out):
        count = " or ".join(map(str, lengths))
        raise ValueError(f"{what} must be {count} positive finite numbers (z, y, x), got {tuple(values)}")
    return out


# ---------------------------------------------------------------------------------------------
# samplers: where a patch goes, without unbounded rejection


@dataclass(frozen=True)
class Uniform:
    """Every valid patch origin equally likely."""


@dataclass(frozen=True)
class Foreground:
    """Centre the patch on a voxel of a chosen class of ``layer``.

    ``class_probs`` maps native values of a semantic layer (or ``1`` = any instance of an
    instance layer) to probabilities; classes absent from a volume are dropped and the rest
    renormalised. ``p_uniform`` mixes in uniform draws. Blocks are drawn from the foreground
    index in proportion to class counts (only voxels a valid patch can hold), then a voxel of
    that class inside the block: no rejection loop.

    Example:
        >>> Foreground("mito", {1: 1.0}, p_uniform=0.2).p_uniform
        0.2
    """

    layer: str
    class_probs: Mapping[int, float] | None = None
    p_uniform: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.p_uniform) <= 1.0:
            raise ValueError(f"Foreground({self.layer!r}): p_uniform must be in [0, 1], got {self.p_uniform}")
        if self.class_probs is not None:
            _check_weights(f"Foreground({self.layer!r}) class_probs", list(self.class_probs.values()))


@dataclass(frozen=True)
class MinInstances:
    """Patches holding at least ``k`` distinct instances of ``layer`` (a bounded number of
    foreground draws; a sample that still has fewer reports ``sampler_ok=False``).

    Example:
        >>> MinInstances("cells", k=3).max_tries
        16
    """

    layer: str
    k: int = 2
    max_tries: int = 16

    def __post_init__(self) -> None:
        if self.k < 1 or self.max_tries < 1:
            raise ValueError(f"MinInstances({self.layer!r}): k and max_tries must be at least 1, "
                             f"got k={self.k}, max_tries={self.max_tries}")


# ---------------------------------------------------------------------------------------------
# per-volume geometry


@dataclass
class _Plan:
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


def _choose_level(levels: list[dict[str, Any]], target: Sequence[float]) -> int:
    """The coarsest level whose voxel is at most the target on every axis (else level 0)."""
    best = 0
    for i, lv in enumerate(levels):
        if all(s <= t * (1 + 1e-6) for s, t in zip(lv["scale"], target)):
            best = i
    return best


def _positions(origin: int, n: int, t: float, s: float, centre0: float) -> np.ndarray:
    """Source indices (float) in a level of voxel ``s`` whose voxel 0 is centred at ``centre0`` nm."""
    return ((origin + np.arange(n) + 0.5) * t - centre0) / s


def target_voxel(voxel0: np.ndarray, vs0: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """The target-grid voxel holding the centre of level-0 voxel ``voxel0`` (per axis).

    Example:
        >>> target_voxel([127, 126, 0], (6, 6, 6), (10, 10, 10)).tolist()  # centres at 765, 759 and 3 nm
        [76, 75, 0]
    """
    return np.floor((np.asarray(voxel0) + 0.5) * np.asarray(vs0, dtype=np.float64) / np.asarray(target)).astype(int)


def origin_range(extent_nm: float, target: float, patch: int, region: tuple[float, float] | None) -> tuple[int, int]:
    """Valid patch origins ``[lo, hi]`` (target voxels) along one axis: whole target voxels
    inside the volume's extent and inside ``region`` (nm from the volume's first voxel edge).

    Example:
        >>> origin_range(768, 10, 64, None)  # 128 voxels of 6 nm hold 76 whole voxels of 10 nm
        (0, 12)
        >>> origin_range(720, 30, 4, (600, 720))
        (20, 20)
    """
    a, b = region if region is not None else (0.0, extent_nm)
    n_target = math.floor(min(b, extent_nm) / target + 1e-9)
    return math.ceil(max(a, 0.0) / target - 1e-9), n_target - patch


def reach_range(n0: int, vs0: float, target: float, lo: int, hi: int, patch: int) -> tuple[int, int]:
    """Level-0 voxels ``[a, b)`` whose centre lies in a patch with origin in ``[lo, hi]``.

    Example:
        >>> reach_range(128, 6, 10, 0, 12, 64)  # voxel 127 (centre 765 nm) is past the last 10 nm voxel
        (0, 127)
    """
    g = target_voxel(np.arange(n0), (vs0,), (target,))
    inside = np.flatnonzero((g >= lo) & (g <= hi + patch - 1))
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


def _reachable_counts(counts: np.ndarray, block: Zyx, shape: Zyx, reach: tuple[tuple[int, int], ...],
                      count_in: Any) -> np.ndarray:
    """Per-block counts restricted to the ``reach`` box: blocks inside keep the index counts,
    blocks outside get 0, blocks cut by its faces are counted exactly (``count_in(box)``)."""
    out = counts.astype(np.float64)
    inside = np.ones(counts.shape, dtype=bool)
    for axis, (b, n, (lo, hi)) in enumerate(zip(block, shape, reach)):
        starts = np.arange(counts.shape[axis]) * b
        stops = np.minimum(starts + b, n)
        view = [1, 1, 1]
        view[axis] = -1
        out[np.broadcast_to(((stops <= lo) | (starts >= hi)).reshape(view), out.shape)] = 0
        inside &= ((starts >= lo) & (stops <= hi)).reshape(view)
    for key in zip(*np.nonzero((out > 0) & ~inside)):
        box = tuple(slice(max(k * b, lo), min((k + 1) * b, n, hi))
                    for k, b, n, (lo, hi) in zip(key, block, shape, reach))
        out[key] = count_in(box)
    return out


class PatchDataset:
    """Random patches from one or more prepared volumes.

    ``volumes``: ``Volume`` objects or ``*.ome.zarr`` paths. ``patch_shape``: voxels at
    ``voxel_size`` (nm, (z, y, x); default: the first volume's level-0 voxel), 2 entries
    for 2D patches. ``patch_size_nm`` instead gives the extent in nm. ``labels``: label
    layers returned as they are (``"labels/<name>"``, int64; uint64 ids keep their bits).
    ``targets``: any of ``semantic``, ``classes``, ``instances``, ``foreground``,
    ``boundaries``, ``affinities`` (with ``affinity_offsets``). ``label_space`` defaults to
    every class the volumes annotate (:attr:`class_names` maps target indices to classes).

    Raw keeps its integer dtype by default; volumes of different raw dtypes are then refused
    (a batch would silently promote one to the other's range). ``raw_dtype="float32"`` gives
    float raw, ``normalize`` says how: ``"dtype"`` (the default) maps the dtype's range to
    [0, 1] (uint8 / 255, uint16 / 65535; float raw: its recorded min and max);
    ``"percentile"`` maps each volume's 0.5 and 99.5 percentiles (recorded when it was
    prepared; estimated from a stored level otherwise) to 0 and 1, clipped, so volumes of
    different bit depth and contrast share one scale.

    ``augment`` flips (all axes) and rotates by 90° in the xy plane only (z is never mixed in).
    Volumes are drawn in proportion to their valid positions, or by ``volume_weights``.
    ``regions_nm`` (one per volume, None = whole) keeps every patch inside a box
    ``((z0, z1), (y0, y1), (x0, x1))`` in nm from the volume's first voxel edge (held-out slabs).
    """

    def __init__(self, volumes: Sequence[Volume | str | Path], patch_shape: Sequence[int] | None = None, *,
                 voxel_size: Sequence[float] | None = None, patch_size_nm: Sequence[float] | None = None,
                 labels: Sequence[str] = (), targets: Sequence[str] = (), label_space: Sequence[str] | None = None,
                 ignore_classes: Sequence[str] = (), ignore_mode: str = "background", ignore_value: int = IGNORE,
                 affinity_offsets: Sequence[tuple[int, int, int]] = ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                 sampler: Uniform | Foreground | MinInstances = Uniform(), samples_per_epoch: int = 1000,
                 seed: int = 0, raw_dtype: str | None = None, normalize: str | None = None, augment: bool = False,
                 volume_weights: Sequence[float] | None = None, regions_nm: Sequence[RegionNm | None] | None = None,
                 memory_budget: int = 4 << 30) -> None:
        vols = [v if isinstance(v, Volume) else open_volume(v) for v in volumes]
        if not vols:
            raise ValueError("PatchDataset needs at least one volume")
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; choose from {TARGETS}")
        if int(samples_per_epoch) < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, got {samples_per_epoch}")
        if raw_dtype not in (None, "float32"):
            raise ValueError(f"raw_dtype must be None (keep the stored integers) or 'float32', got {raw_dtype!r}")
        if normalize not in (None, *NORMALIZE):
            raise ValueError(f"normalize must be one of {NORMALIZE} (or None), got {normalize!r}")
        if volume_weights is not None:
            if len(volume_weights) != len(vols):
                raise ValueError(f"volume_weights has {len(volume_weights)} entries for {len(vols)} volumes")
            volume_weights = _check_weights("volume_weights", volume_weights).tolist()
        if regions_nm is not None and len(regions_nm) != len(vols):
            raise ValueError(f"regions_nm has {len(regions_nm)} entries for {len(vols)} volumes")
        self.is_2d = (patch_shape is not None and len(patch_shape) == 2) or (
            patch_size_nm is not None and len(patch_size_nm) == 2)
        self.targets = list(targets)
        self.label_layers = list(labels)
        self.sampler = sampler
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.normalize = normalize or ("dtype" if raw_dtype else None)
        self.raw_dtype = "float32" if self.normalize else None
        self.augment = augment
        self.affinity_offsets = [tuple(o) for o in affinity_offsets]
        target = _check_sizes("voxel_size", voxel_size if voxel_size is not None else vols[0].voxel_size)
        if patch_shape is None and patch_size_nm is None:
            raise ValueError("give patch_shape (voxels at voxel_size) or patch_size_nm")
        if patch_shape is not None:
            sizes = _check_sizes("patch_shape", patch_shape, (2, 3))
            if any(v != int(v) for v in sizes):
                raise ValueError(f"patch_shape must be whole voxels, got {tuple(patch_shape)}")
            shape = (1, *sizes) if len(sizes) == 2 else sizes
        else:
            nm = _check_sizes("patch_size_nm", patch_size_nm, (2, 3))  # type: ignore[arg-type]
            nm = (target[0], *nm) if len(nm) == 2 else nm
            shape = tuple(max(1, round(n / t)) for n, t in zip(nm, target))
        self.patch_shape: Zyx = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.voxel_size: tuple[float, float, float] = target  # type: ignore[assignment]
        self.explicit_space = label_space is not None
        annotated = sorted({c for v in vols for la in v.meta["labels"].values() for c in la.get("annotates", [])},
                           key=lambda name: ontology().resolve(name).id)
        space = list(label_space) if label_space else ["background", *[c for c in annotated if c != "background"]]
        self.space = LabelSpace(space, ignore_classes, ignore_mode, ignore_value)
        self.memory_budget = memory_budget
        self._plans, excluded = self._plan(vols, volume_weights, regions_nm)
        for why in excluded:
            log.warning("%s", why)
        if not self._plans:
            raise NoValidLocationError("no volume can provide these patches: " + "; ".join(excluded))
        dtypes = list(dict.fromkeys(p.raw_dtype for p in self._plans))
        if self.raw_dtype is None and len(dtypes) > 1:
            by_dtype = "; ".join(f"{d}: {', '.join(p.dataset + '/' + p.name for p in self._plans if p.raw_dtype == d)}"
                                 for d in dtypes)
            raise ValueError(f"the volumes store raw as different dtypes ({by_dtype}): a batch would silently promote "
                             "one to the other's range; pass raw_dtype='float32' (with normalize='percentile' or "
                             "'dtype') to bring them to one scale")
        weights = _check_weights("the weights of the usable volumes", [p.weight for p in self._plans])
        self._volume_p = weights / weights.sum()
        self._readers: dict[str, VolumeReader] = {}
        self._lock = threading.Lock()

    # -- description ------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names of the label space, in target-index order."""
        return list(self.space.classes)

    @property
    def class_names(self) -> dict[int, str]:
        """Target index → union-ontology class name (``semantic`` values; ``classes`` channel
        ``c`` is index ``c + 1``)."""
        return dict(enumerate(self.space.classes))

    @property
    def output_raw_dtype(self) -> str:
        """The dtype of ``raw`` in every sample."""
        return self.raw_dtype or (self._plans[0].raw_dtype if getattr(self, "_plans", None) else "?")

    def __repr__(self) -> str:
        names = [f"{p.dataset}/{p.name}" for p in self._plans]
        shown = ", ".join(names[:3]) + (f", … ({len(names) - 3} more)" if len(names) > 3 else "")
        raw = self.output_raw_dtype + (f" (normalize={self.normalize!r})" if self.normalize else "")
        classes = ", ".join(f"{i} {c}" for i, c in self.class_names.items())
        return (f"PatchDataset({len(names)} volume{'s' if len(names) != 1 else ''}: {shown}; patch {self.patch_shape} "
                f"voxels at {self.voxel_size} nm; raw {raw}; targets {self.targets}; labels {self.label_layers}; "
                f"classes [{classes}]; sampler {self.sampler!r}; samples_per_epoch={self.samples_per_epoch}, "
                f"seed={self.seed})")

    def set_label_space(self, classes: Sequence[str]) -> None:
        """Use ``classes`` as the label space (same ignore settings); mixing datasets calls this
        to give every part one space."""
        self.space = LabelSpace(list(classes), self.space.ignore_classes, self.space.ignore_mode,
                                self.space.ignore_value)
        for plan in self._plans:
            plan.labels = plan_labels(plan.meta_labels, self.space)

    # -- planning ---------------------------------------------------------------------------

    def _plan(self, vols: list[Volume], weights: Sequence[float] | None,
              regions: Sequence[RegionNm | None] | None) -> tuple[list[_Plan], list[str]]:
        plans, excluded = [], []
        sampler_layer = getattr(self.sampler, "layer", None)
        needed = set(self.label_layers) | ({sampler_layer} if sampler_layer else set())
        for n, vol in enumerate(vols):
            where = f"{vol.dataset}/{vol.name}"
            levels = vol.meta["raw"]["levels"]
            level = _choose_level(levels, self.voxel_size)
            extent = [s * v for s, v in zip(vol.shape, vol.voxel_size)]
            region = regions[n] if regions is not None else None
            if region is not None and not all(len(r) == 2 and 0 <= r[0] < r[1] for r in region):
                raise ValueError(f"{where}: regions_nm must be ((z0, z1), (y0, y1), (x0, x1)) with 0 <= start < stop "
                                 f"in nm, got {region}")
            ranges = [origin_range(e, t, p, region[i] if region is not None else None)
                      for i, (e, t, p) in enumerate(zip(extent, self.voxel_size, self.patch_shape))]
            missing = sorted(needed - set(vol.meta["labels"]))
            if missing:
                excluded.append(f"{where} excluded: it has no label layer(s) {missing}")
                continue
            if any(hi < lo for lo, hi in ranges):
                inside = f"its region {region} nm" if region is not None else \
                    f"its extent {tuple(round(e) for e in extent)} nm"
                excluded.append(f"{where} excluded: {self.patch_shape} voxels at {self.voxel_size} nm do not fit "
                                f"{inside}")
                continue
            reach = tuple(reach_range(n0, v0, t, lo, hi, p) for n0, v0, t, (lo, hi), p in
                          zip(vol.shape, vol.voxel_size, self.voxel_size, ranges, self.patch_shape))
            if self.targets:
                layers = list(vol.meta["labels"])
            else:
                layers = sorted(set(self.label_layers) | ({sampler_layer} if isinstance(self.sampler, MinInstances)
                                                          else set()))
            weight = float(weights[n]) if weights is not None else float(np.prod([hi - lo + 1 for lo, hi in ranges]))
            plan = _Plan(str(vol.path), vol.dataset, vol.name, level, tuple(levels[level]["scale"]),  # type: ignore[arg-type]
                         self.voxel_size, vol.voxel_size,
                         tuple(levels[level]["translation"] or (0.0, 0.0, 0.0)),  # type: ignore[arg-type]
                         tuple(lo for lo, _ in ranges), tuple(hi for _, hi in ranges), reach,  # type: ignore[arg-type]
                         tuple(levels[level]["shape"]),  # type: ignore[arg-type]
                         vol.meta["labels"], plan_labels(vol.meta["labels"], self.space), layers, weight,
                         str(vol.meta["raw"]["dtype"]))
            if isinstance(self.sampler, Foreground | MinInstances):
                why = self._plan_foreground(plan, vol)
                if why:
                    excluded.append(f"{where} excluded: {why}")
                    continue
            if self.normalize:
                plan.intensity = self._intensity(vol)
            plans.append(plan)
        return plans, excluded

    def _plan_foreground(self, plan: _Plan, vol: Volume) -> str | None:
        """Per-block sampler weights of the voxels a valid patch can hold; why not, if none."""
        layer = self.sampler.layer  # type: ignore[union-attr]
        index = foreground_index(vol, layer)
        wanted: list[int | None] = [None]
        if isinstance(self.sampler, Foreground) and index.kind == "semantic":
            wanted += [int(v) for v, p in (self.sampler.class_probs or {}).items() if p > 0]
        labels = vol.labels[layer]
        plan.block_shape = index.block_shape
        plan.fg_weights = {}
        for value in wanted:
            counts = index.foreground_counts() if value is None else index.value_counts(value)

            def count_in(box: tuple[slice, ...], value: int | None = value) -> int:
                data = np.asarray(labels[box])
                return int(np.count_nonzero(data if value is None else data == value))

            plan.fg_weights[value] = _reachable_counts(counts, index.block_shape, index.shape, plan.reach, count_in)
        if not plan.fg_weights[None].any():
            return f"layer {layer!r} has no foreground inside the region patches can come from"
        if len(wanted) > 1 and not any(plan.fg_weights[v].any() for v in wanted[1:]):
            return f"layer {layer!r} has none of the classes {sorted(wanted[1:])} the sampler asks for"  # type: ignore[type-var]
        return None

    def _intensity(self, vol: Volume) -> tuple[float, float]:
        """The raw values ``normalize`` maps to 0 and 1 for this volume."""
        dtype = np.dtype(vol.meta["raw"]["dtype"])
        stats = vol.meta["raw"].get("intensity")
        if self.normalize == "dtype" and dtype.kind in "ui":
            info = np.iinfo(dtype)
            return float(info.min), float(info.max)
        if stats is None:
            log.info("%s/%s: no recorded raw percentiles (prepared by an older emdata); estimating them",
                     vol.dataset, vol.name)
            stats = estimate_intensity([vol.level(i) for i in range(vol.n_levels)])
        lo, hi = (float(stats["percentiles"][k]) for k in PERCENTILE_KEYS) if self.normalize == "percentile" else (
            float(stats["min"]), float(stats["max"]))
        if hi <= lo:
            lo, hi = float(stats["min"]), float(stats["max"])
        return (lo, hi) if hi > lo else (lo, lo + 1.0)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_lock"] = {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------------

    def _reader(self, plan: _Plan) -> VolumeReader:
        reader = self._readers.get(plan.path)
        if reader is None:
            with self._lock:  # threads of a ThreadedLoader open each volume once
                reader = self._readers.get(plan.path)
                if reader is None:
                    reader = VolumeReader(plan.path, memory_budget=self.memory_budget)
                    reader.preload("raw", plan.level)
                    for layer in plan.layers:
                        reader.preload(layer, plan.level)
                    self._readers[plan.path] = reader
        return reader

    def _read(self, plan: _Plan, layer: str, origin: Zyx) -> np.ndarray:
        reader = self._reader(plan)
        is_raw = layer == "raw"
        if plan.target == plan.scale and (is_raw or plan.scale == plan.vs0):
            # target grid = level grid: raw levels are centred block means, so voxel o is exactly
            # target voxel o; strided label levels are exact only at level 0
            return reader.read(layer, plan.level, tuple(  # type: ignore[arg-type]
                slice(o, o + n) for o, n in zip(origin, self.patch_shape)))
        arr_shape = plan.level_shape
        translation = plan.raw_translation if is_raw else (0.0, 0.0, 0.0)
        positions, window = [], []
        for o, n, t, s, v0, tr, size in zip(origin, self.patch_shape, self.voxel_size, plan.scale, plan.vs0,
                                            translation, arr_shape):
            pos = _positions(o, n, t, s, tr + 0.5 * v0)
            lo = max(math.floor(pos.min()), 0)
            hi = min(math.ceil(pos.max()) + 1, size)
            positions.append(pos - lo)
            window.append(slice(lo, hi))
        block = reader.read(layer, plan.level, tuple(window))  # type: ignore[arg-type]
        if is_raw and self.raw_dtype:
            block = block.astype(np.float32)  # interpolate without rounding to the stored integers
        return resample_at(block, positions, linear=is_raw)

    def _raw_out(self, plan: _Plan, raw: np.ndarray) -> np.ndarray:
        if not self.raw_dtype:
            return raw
        lo, hi = plan.intensity  # type: ignore[misc]
        out = (raw.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)
        return np.clip(out, 0.0, 1.0, out=out) if self.normalize == "percentile" else out

    # -- sampling ---------------------------------------------------------------------------

    def _origin_around(self, plan: _Plan, voxel0: np.ndarray, rng: np.random.Generator) -> Zyx:
        """A valid patch origin (target voxels) whose patch holds level-0 voxel ``voxel0``
        (one inside ``plan.reach``; a voxel outside it gets the nearest valid origin)."""
        g = target_voxel(voxel0, plan.vs0, self.voxel_size)
        p = np.array(self.patch_shape)
        lo_valid, hi_valid = np.array(plan.min_origin), np.array(plan.max_origin)
        lo = np.clip(g - p + 1, lo_valid, hi_valid)
        hi = np.clip(g, lo, hi_valid)
        return tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def _foreground_voxel(self, plan: _Plan, layer: str, value: int | None, rng: np.random.Generator) -> np.ndarray:
        weights = plan.fg_weights[value]  # type: ignore[index]
        flat = weights.reshape(-1)
        block = np.unravel_index(rng.choice(flat.size, p=flat / flat.sum()), weights.shape)
        box = tuple(slice(max(int(k) * b, lo), min((int(k) + 1) * b, hi))
                    for k, b, (lo, hi) in zip(block, plan.block_shape, plan.reach))  # type: ignore[arg-type]
        labels = self._reader(plan).read(layer, 0, box)  # type: ignore[arg-type]
        hits = np.array(np.unravel_index(np.flatnonzero(labels != 0 if value is None else labels == value),
                                         labels.shape)).T + np.array([s.start for s in box])
        sampled = hits[self._on_grid(plan, hits)]  # voxels the target grid actually reads
        pool = sampled if len(sampled) else hits
        return pool[rng.integers(len(pool))]

    def _on_grid(self, plan: _Plan, voxels: np.ndarray) -> np.ndarray:
        """Which level-0 voxels are the ones nearest-neighbour label sampling reads."""
        t, vs0, s = np.array(self.voxel_size), np.array(plan.vs0), np.array(plan.scale)
        g = target_voxel(voxels, vs0, t)
        source = np.rint(((g + 0.5) * t - 0.5 * vs0) / s) * np.rint(s / vs0)
        return (source == voxels).all(axis=1)

    def _origin(self, plan: _Plan, rng: np.random.Generator) -> Zyx:
        sampler = self.sampler
        if isinstance(sampler, Foreground) and rng.random() >= sampler.p_uniform:
            value = None
            present = {v: p for v, p in (sampler.class_probs or {}).items()
                       if p > 0 and v in plan.fg_weights and plan.fg_weights[v].any()}  # type: ignore[operator,union-attr]
            if present:
                keys = sorted(present)
                probs = np.array([present[k] for k in keys], dtype=np.float64)
                value = keys[int(rng.choice(len(keys), p=probs / probs.sum()))]
            return self._origin_around(plan, self._foreground_voxel(plan, sampler.layer, value, rng), rng)
        if isinstance(sampler, MinInstances):
            return self._origin_around(plan, self._foreground_voxel(plan, sampler.layer, None, rng), rng)
        return tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(plan.min_origin, plan.max_origin))  # type: ignore[return-value]

    def sample(self, epoch: int, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The sample for ``(epoch, index)`` as numpy arrays (``__getitem__`` adds torch)."""
        rng = rng or np.random.default_rng([self.seed, epoch, index])
        plan = self._plans[int(rng.choice(len(self._plans), p=self._volume_p))]
        origin = self._origin(plan, rng)
        labels = {name: self._read(plan, name, origin) for name in plan.layers}
        ok = True
        if isinstance(self.sampler, MinInstances):
            for _ in range(self.sampler.max_tries):
                if len(np.unique(labels[self.sampler.layer][labels[self.sampler.layer] != 0])) >= self.sampler.k:
                    break
                origin = self._origin(plan, rng)
                labels = {name: self._read(plan, name, origin) for name in plan.layers}
            else:
                ok = False
        raw = self._raw_out(plan, self._read(plan, "raw", origin))
        if self.augment:
            raw, labels = _augment(raw, labels, rng, isotropic_xy=True)
        out: dict[str, Any] = {"raw": _channel(raw)}
        for name in self.label_layers:
            data = labels[name]
            out[f"labels/{name}"] = as_int64(data)
        out.update(self._targets(plan, labels))
        out["annotated"] = plan.labels.annotated.copy()
        out["meta"] = {"dataset": plan.dataset, "volume": plan.name, "level": plan.level,
                       "offset_nm": np.array(origin, dtype=np.float64) * np.array(self.voxel_size),
                       "voxel_size_nm": np.array(self.voxel_size), "sampler_ok": ok}
        if self.is_2d:
            out = {k: (v[..., 0, :, :] if isinstance(v, np.ndarray) and v.ndim >= 3 else v) for k, v in out.items()}
        return out

    def _targets(self, plan: _Plan, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if not self.targets:
            return out
        shape = self.patch_shape
        if {"semantic", "classes"} & set(self.targets):
            sem = semantic_target(labels, plan.labels, self.space) if labels else np.full(
                shape, self.space.ignore_value, np.int64)
            if "semantic" in self.targets:
                out["semantic"] = sem
            if "classes" in self.targets:
                out["classes"] = classes_target(sem, self.space)
                out["classes_ignore"] = (sem == self.space.ignore_value).astype(np.uint8)
        inst_layer = next((name for name, _, _ in plan.labels.instance_layers), None)
        inst = as_int64(labels[inst_layer]) if inst_layer else None
        if "instances" in self.targets:
            out["instances"] = inst if inst is not None else np.full(shape, self.space.ignore_value, np.int64)
        if "foreground" in self.targets:
            out["foreground"] = ((inst != 0).astype(np.uint8) if inst is not None
                                 else np.zeros(shape, np.uint8)).reshape(1, *shape)
        if "boundaries" in self.targets:
            out["boundaries"] = (boundaries(inst) if inst is not None else np.zeros(shape, np.uint8)).reshape(1, *shape)
        if "affinities" in self.targets:
            base = inst if inst is not None else np.zeros(shape, np.int64)
            out["affinities"], out["affinities_mask"] = affinities(base, self.affinity_offsets)
            if inst is None:
                out["affinities_mask"][:] = 0
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``(epoch, index)`` (or ``index`` of epoch 0) as numpy arrays; the loader's
        :func:`collate_patches` turns batches into torch tensors."""
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        return self.sample(int(epoch), int(index))


def _channel(data: np.ndarray) -> np.ndarray:
    """Add a leading channel axis with real strides (numpy's newaxis stride 0 sends torch.stack
    down a slow path)."""
    return data.reshape(1, *data.shape)


def as_int64(ids: np.ndarray) -> np.ndarray:
    """Label values as int64 without a copy where possible: uint64 ids keep their bits (ids ≥ 2**63
    read as negative numbers, identity preserved); use ``targets.relabel`` for ids 1..n."""
    if ids.dtype == np.uint64:
        return ids.view(np.int64)
    return ids.astype(np.int64, copy=False)


def resample_at(block: np.ndarray, positions: list[np.ndarray], linear: bool) -> np.ndarray:
    """Resample ``block`` at evenly spaced per-axis source ``positions`` (relative to the block),
    all axes in one pass so integer raw is rounded once."""
    steps, starts = [], []
    for pos in positions:
        step = float(pos[1] - pos[0]) if len(pos) > 1 else 1.0
        steps.append(step)
        starts.append(float(pos[0]) - 0.5 * step + 0.5)
    shape = tuple(len(p) for p in positions)
    return resample(block, shape, tuple(steps), tuple(starts), linear)  # type: ignore[arg-type]


def _augment(raw: np.ndarray, labels: dict[str, np.ndarray], rng: np.random.Generator,
             isotropic_xy: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flips on every axis and 90° turns in the xy plane, identical for raw and labels."""
    flips = [axis for axis in range(3) if rng.random() < 0.5]
    turns = int(rng.integers(4)) if isotropic_xy and raw.shape[1] == raw.shape[2] else 0

    def apply(a: np.ndarray) -> np.ndarray:
        if flips:
            a = np.flip(a, axis=flips)
        if turns:
            a = np.rot90(a, turns, axes=(1, 2))
        return np.ascontiguousarray(a)

    return apply(raw), {k: apply(v) for k, v in labels.items()}


def collate_patches(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: arrays stacked by numpy, then wrapped by torch without a copy (torch.stack
    on fresh buffers costs several times more); uint8 and uint16 raw keep their dtype."""
    import torch

    out: dict[str, Any] = {}
    for key, value in samples[0].items():
        items = [s[key] for s in samples]
        if isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(np.stack(items))
        elif isinstance(value, dict):
            out[key] = collate_patches(items)
        elif isinstance(value, bool | int | float | np.number | np.bool_):
            out[key] = torch.as_tensor(np.array(items))
        else:
            out[key] = items
    return out


class MixedPatchDataset:
    """Draws from several datasets with true probabilities ``weights`` (independent of their sizes).

    The parts must give batches that stack: the same patch shape, targets, label layers and
    raw dtype (float raw for volumes of different bit depth). Their label spaces are unified:
    parts built without an explicit ``label_space`` switch to the union of the classes all
    parts annotate (or to the explicit space some parts share); explicit spaces that differ
    are refused. :attr:`class_names` maps target indices to classes. Usage:
    ``MixedPatchDataset({"snemi3d": (snemi, 1.0), "mitoem2": (mito, 2.0)}, samples_per_epoch=4000)``.
    """

    def __init__(self, datasets: Mapping[str, tuple[PatchDataset, float]], samples_per_epoch: int = 1000,
                 seed: int = 0) -> None:
        if not datasets:
            raise ValueError("MixedPatchDataset needs at least one dataset")
        if int(samples_per_epoch) < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, got {samples_per_epoch}")
        self.names = list(datasets)
        self.datasets = [datasets[n][0] for n in self.names]
        weights = [datasets[n][1] for n in self.names]
        self.p = _check_weights(f"mixing weights {dict(zip(self.names, weights))}", weights)
        self.p = self.p / self.p.sum()
        self._check_stackable()
        self._unify_label_spaces()
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = seed

    def _check_stackable(self) -> None:
        for what, get in (("patch shape", lambda d: (d.patch_shape, d.is_2d)), ("targets", lambda d: d.targets),
                          ("label layers", lambda d: d.label_layers), ("raw dtype", lambda d: d.output_raw_dtype)):
            values = {n: get(d) for n, d in zip(self.names, self.datasets)}
            if len({repr(v) for v in values.values()}) > 1:
                hint = " (pass raw_dtype='float32' with normalize='percentile' or 'dtype' to every part)" \
                    if what == "raw dtype" else ""
                raise ValueError(f"cannot mix datasets whose {what} differ, batches would not stack: "
                                 f"{', '.join(f'{n!r}: {v}' for n, v in values.items())}{hint}")

    def _unify_label_spaces(self) -> None:
        settings = {n: (sorted(d.space.ignore_classes), d.space.ignore_mode, d.space.ignore_value)
                    for n, d in zip(self.names, self.datasets)}
        if len({repr(v) for v in settings.values()}) > 1:
            raise ValueError("cannot mix datasets with different ignore_classes/ignore_mode/ignore_value: "
                             + ", ".join(f"{n!r}: {v}" for n, v in settings.items()))
        explicit = {n: d.classes for n, d in zip(self.names, self.datasets) if d.explicit_space}
        if len({tuple(c) for c in explicit.values()}) > 1:
            spaces = ", ".join(f"{n!r} has {c}" for n, c in explicit.items())
            raise ValueError(f"the parts' label spaces differ: {spaces}"
                             "; give every part the same label_space, or none for the union of what they annotate")
        if explicit:
            classes = next(iter(explicit.values()))
        else:
            union = {c for d in self.datasets for c in d.classes if c != "background"}
            classes = ["background", *sorted(union, key=lambda name: ontology().resolve(name).id)]
        for name, ds in zip(self.names, self.datasets):
            if ds.classes != classes:
                log.info("%s: label space %s widened to %s for mixing", name, ds.classes, classes)
                ds.set_label_space(classes)

    @property
    def class_names(self) -> dict[int, str]:
        """Target index → class name, shared by every part."""
        return self.datasets[0].class_names

    def __repr__(self) -> str:
        parts = ", ".join(f"{n!r}: p={p:.3g}" for n, p in zip(self.names, self.p))
        return (f"MixedPatchDataset({parts}; classes {self.class_names}; samples_per_epoch={self.samples_per_epoch}, "
                f"seed={self.seed})")

    def __len__(self) -> int:
        return self.samples_per_epoch

    def sample(self, epoch: int, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, epoch, index])
        k = int(rng.choice(len(self.datasets), p=self.p))
        out = self.datasets[k].sample(epoch, index, rng)
        out["meta"]["source"] = self.names[k]
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``(epoch, index)`` (or ``index`` of epoch 0) as numpy arrays; the loader's
        :func:`collate_patches` turns batches into torch tensors."""
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        return self.sample(int(epoch), int(index))


try:  # a DistributedSampler is left alone by Lightning: it never splits our rank shares again
    from torch.utils.data import DistributedSampler as _SamplerBase
except ImportError:  # numpy-only use of PatchDataset
    _SamplerBase = object  # type: ignore[assignment,misc]


class EpochSampler(_SamplerBase):  # type: ignore[misc,valid-type]
    """Yields ``(epoch, i)``: this rank's share (``i = rank, rank + world_size, …``) of the epoch.

    Each new iteration draws the next epoch (0, 1, 2, …), so a plain ``for epoch …: for batch
    in loader`` loop sees new patches every epoch. ``set_epoch(e)`` (Lightning calls it before
    every epoch) fixes the epoch of the next iteration; counting resumes from there. The
    sampler is iterated in the main process only, so worker processes and DDP ranks (which
    iterate equally often) agree. ``advance=False`` draws the same epoch every time
    (validation: the same patches each epoch); ``set_epoch`` then changes nothing.

    Example:
        >>> sampler = EpochSampler(4, rank=1, world_size=2)
        >>> list(sampler), list(sampler)
        ([(0, 1), (0, 3)], [(1, 1), (1, 3)])
        >>> sampler.set_epoch(7); list(sampler)
        [(7, 1), (7, 3)]
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, epoch: int = 0, advance: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if n < 1:
            raise ValueError(f"an epoch needs at least one sample, got n={n}")
        self.n, self.rank, self.world_size, self.epoch = n, rank, world_size, epoch
        self.num_replicas, self.shuffle, self.drop_last, self.seed = world_size, False, False, 0  # DistributedSampler's
        self.advance = advance
        self._next = epoch

    def set_epoch(self, epoch: int) -> None:
        if self.advance:
            self.epoch = self._next = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch = self._next
        if self.advance:
            self._next = epoch + 1
        return ((epoch, i) for i in range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class ThreadedLoader:
    """Batches built by a pool of threads, in order, with a bounded prefetch window.

    For volumes held in memory, threads beat worker processes: numpy copies release the GIL
    and no patch has to cross a process boundary. Same samples as any DataLoader setup.
    """

    def __init__(self, dataset: Any, batch_size: int, sampler: EpochSampler, threads: int = 2,
                 prefetch: int = 4, collate: Any = None) -> None:
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.threads, self.prefetch = threads, prefetch
        self.collate = collate or collate_patches

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def _batch(self, keys: list[tuple[int, int]]) -> dict[str, Any]:
        return self.collate([self.dataset[k] for k in keys])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        keys = list(self.sampler)
        chunks = [keys[i: i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        with ThreadPoolExecutor(self.threads) as pool:
            pending: deque[Any] = deque()
            for chunk in chunks:
                pending.append(pool.submit(self._batch, chunk))
                if len(pending) >= self.threads * self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def make_loader(dataset: PatchDataset | MixedPatchDataset, batch_size: int = 1, num_workers: int = 0,
                multiprocessing_context: str | None = None, rank: int | None = None,
                world_size: int | None = None, worker_type: str = "process", advance_epochs: bool = True,
                **kwargs: Any) -> Any:
    """A loader drawing this rank's samples of each epoch (rank/world from torch.distributed
    when initialised). ``worker_type="process"``: a torch DataLoader whose workers persist
    across epochs (``multiprocessing_context`` ``"fork"``, ``"spawn"`` or ``"forkserver"``);
    ``"thread"``: a :class:`ThreadedLoader` with ``num_workers`` threads (best for volumes
    held in memory). Every new pass over the loader is the next epoch (see
    :class:`EpochSampler`; ``advance_epochs=False`` repeats epoch 0, e.g. for validation).

    Example:
        >>> loader = make_loader(range(4), batch_size=2)  # any sized dataset taking (epoch, i) keys
        >>> len(loader), [key for key in loader.sampler]
        (2, [(0, 0), (0, 1), (0, 2), (0, 3)])
    """
    import torch
    from torch.utils.data import DataLoader

    if rank is None or world_size is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if ready else 0
        world_size = dist.get_world_size() if ready else 1
    sampler = EpochSampler(len(dataset), rank, world_size, advance=advance_epochs)
    if worker_type == "thread":
        return ThreadedLoader(dataset, batch_size, sampler, threads=max(num_workers, 1),
                              collate=kwargs.get("collate_fn"))
    if worker_type != "process":
        raise ValueError(f"worker_type must be 'process' or 'thread', got {worker_type!r}")
    if num_workers:
        kwargs.setdefault("persistent_workers", True)
        kwargs.setdefault("prefetch_factor", 4)
    kwargs.setdefault("collate_fn", collate_patches)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,  # type: ignore[arg-type]
                      multiprocessing_context=multiprocessing_context if num_workers else None, **kwargs)
