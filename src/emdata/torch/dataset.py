"""Patches in physical units from canonical volumes, reproducible and fast.

Sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the DataLoader's sampler
(:class:`EpochSampler`) yields ``(e, i)`` pairs, so any worker count, start method (fork,
spawn, forkserver) or DDP rank split gives the same samples. Volumes open lazily in each
worker. Patches are given in voxels at a target voxel size (default: each volume's own); the
nearest pyramid level at least as fine as the target is read and resampled axis by axis
(linear for raw, nearest for labels), so z never mixes into xy.

Example:
    >>> ds = PatchDataset(["prepared/snemi3d/train.ome.zarr"], patch_shape=(16, 128, 128),
    ...                   voxel_size=(30, 12, 12), targets=["semantic", "boundaries"])  # doctest: +SKIP
    >>> loader = make_loader(ds, batch_size=4, num_workers=2)  # doctest: +SKIP
    >>> batch = next(iter(loader)); batch["raw"].shape, batch["raw"].dtype  # doctest: +SKIP
    (torch.Size([4, 1, 16, 128, 128]), torch.uint8)
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
from emdata.store.fgindex import ForegroundIndex, foreground_index
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
TARGETS = ("semantic", "classes", "instances", "foreground", "boundaries", "affinities")


class NoValidLocationError(ValueError):
    """No volume has a location where the requested patch (and sampler) fits."""


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
    renormalised. ``p_uniform`` mixes in uniform draws. Blocks are drawn from the stored
    foreground index in proportion to class counts, then a voxel of that class inside the
    block: no rejection loop.
    """

    layer: str
    class_probs: Mapping[int, float] | None = None
    p_uniform: float = 0.0


@dataclass(frozen=True)
class MinInstances:
    """Patches holding at least ``k`` distinct instances of ``layer`` (a bounded number of
    foreground draws; a sample that still has fewer reports ``sampler_ok=False``)."""

    layer: str
    k: int = 2
    max_tries: int = 16


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
    max_origin: Zyx  # inclusive, in target voxels
    level_shape: Zyx
    labels: VolumeLabels
    layers: list[str]
    weight: float


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


class PatchDataset:
    """Random patches from one or more prepared volumes.

    ``volumes``: ``Volume`` objects or ``*.ome.zarr`` paths. ``patch_shape``: voxels at
    ``voxel_size`` (nm, (z, y, x); default: the first volume's level-0 voxel), 2 entries
    for 2D patches. ``patch_size_nm`` instead gives the extent in nm. ``labels``: label
    layers returned as they are (``"labels/<name>"``, int64; uint64 ids keep their bits).
    ``targets``: any of ``semantic``, ``classes``, ``instances``, ``foreground``,
    ``boundaries``, ``affinities`` (with ``affinity_offsets``). ``label_space`` defaults to
    every class the volumes annotate. ``raw_dtype="float32"`` scales raw to [0, 1]; by
    default raw keeps its integer dtype. ``augment`` flips (all axes) and rotates by 90° in
    the xy plane only (z is never mixed in). Volumes are drawn in proportion to their valid
    positions, or by ``volume_weights``.
    """

    def __init__(self, volumes: Sequence[Volume | str | Path], patch_shape: Sequence[int] | None = None, *,
                 voxel_size: Sequence[float] | None = None, patch_size_nm: Sequence[float] | None = None,
                 labels: Sequence[str] = (), targets: Sequence[str] = (), label_space: Sequence[str] | None = None,
                 ignore_classes: Sequence[str] = (), ignore_mode: str = "background", ignore_value: int = IGNORE,
                 affinity_offsets: Sequence[tuple[int, int, int]] = ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                 sampler: Uniform | Foreground | MinInstances = Uniform(), samples_per_epoch: int = 1000,
                 seed: int = 0, raw_dtype: str | None = None, augment: bool = False,
                 volume_weights: Sequence[float] | None = None, memory_budget: int = 4 << 30) -> None:
        vols = [v if isinstance(v, Volume) else open_volume(v) for v in volumes]
        if not vols:
            raise ValueError("PatchDataset needs at least one volume")
        self.is_2d = (patch_shape is not None and len(patch_shape) == 2) or (
            patch_size_nm is not None and len(patch_size_nm) == 2)
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"unknown target(s) {unknown}; choose from {TARGETS}")
        self.targets = list(targets)
        self.label_layers = list(labels)
        self.sampler = sampler
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.raw_dtype = raw_dtype
        self.augment = augment
        self.affinity_offsets = [tuple(o) for o in affinity_offsets]
        target = tuple(float(v) for v in (voxel_size or vols[0].voxel_size))
        if patch_shape is None and patch_size_nm is None:
            raise ValueError("give patch_shape (voxels at voxel_size) or patch_size_nm")
        if patch_shape is not None:
            shape = (1, *patch_shape) if len(patch_shape) == 2 else tuple(patch_shape)
        else:
            nm = (target[0], *patch_size_nm) if len(patch_size_nm) == 2 else tuple(patch_size_nm)  # type: ignore[arg-type]
            shape = tuple(max(1, round(n / t)) for n, t in zip(nm, target))
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"patch shape must be 2 or 3 positive sizes, got {patch_shape or patch_size_nm}")
        self.patch_shape: Zyx = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.voxel_size = target
        annotated = sorted({c for v in vols for la in v.meta["labels"].values() for c in la.get("annotates", [])},
                           key=lambda name: ontology().resolve(name).id)
        space = list(label_space) if label_space else ["background", *[c for c in annotated if c != "background"]]
        self.space = LabelSpace(space, ignore_classes, ignore_mode, ignore_value)
        self.memory_budget = memory_budget
        self._plans, excluded = self._plan(vols, volume_weights)
        for why in excluded:
            log.warning("%s", why)
        if not self._plans:
            raise NoValidLocationError("no volume can provide these patches: " + "; ".join(excluded))
        weights = np.array([p.weight for p in self._plans], dtype=np.float64)
        self._volume_p = weights / weights.sum()
        self._readers: dict[str, VolumeReader] = {}
        self._indices: dict[tuple[str, str], ForegroundIndex] = {}
        self._lock = threading.Lock()

    # -- planning ---------------------------------------------------------------------------

    def _plan(self, vols: list[Volume], weights: Sequence[float] | None) -> tuple[list[_Plan], list[str]]:
        plans, excluded = [], []
        needed = set(self.label_layers) | ({self.sampler.layer} if hasattr(self.sampler, "layer") else set())
        for n, vol in enumerate(vols):
            where = f"{vol.dataset}/{vol.name}"
            levels = vol.meta["raw"]["levels"]
            level = _choose_level(levels, self.voxel_size)
            extent = [s * v for s, v in zip(vol.shape, vol.voxel_size)]
            n_target = [math.floor(e / t + 1e-9) for e, t in zip(extent, self.voxel_size)]
            max_origin = tuple(nt - p for nt, p in zip(n_target, self.patch_shape))
            missing = sorted(needed - set(vol.meta["labels"]))
            if missing:
                excluded.append(f"{where} excluded: it has no label layer(s) {missing}")
                continue
            if min(max_origin) < 0:
                excluded.append(f"{where} excluded: {self.patch_shape} voxels at {self.voxel_size} nm do not fit "
                                f"its extent {tuple(round(e) for e in extent)} nm")
                continue
            if not self.label_layers and not self.targets:
                layers: list[str] = []
            else:
                layers = list(vol.meta["labels"])
            if isinstance(self.sampler, Foreground | MinInstances):
                index = foreground_index(vol, self.sampler.layer)
                if not index.foreground_counts().any():
                    excluded.append(f"{where} excluded: layer {self.sampler.layer!r} has no foreground to sample")
                    continue
                wanted = [v for v, p in (getattr(self.sampler, "class_probs", None) or {}).items() if p > 0]
                if wanted and index.kind == "semantic" and not any(index.value_counts(v).any() for v in wanted):
                    excluded.append(f"{where} excluded: layer {self.sampler.layer!r} has none of the classes "
                                    f"{sorted(wanted)} the sampler asks for")
                    continue
            weight = float(weights[n]) if weights is not None else float(np.prod([m + 1 for m in max_origin]))
            plans.append(_Plan(str(vol.path), vol.dataset, vol.name, level, tuple(levels[level]["scale"]),
                               self.voxel_size, vol.voxel_size,
                               tuple(levels[level]["translation"] or (0.0, 0.0, 0.0)), max_origin,  # type: ignore[arg-type]
                               tuple(levels[level]["shape"]),  # type: ignore[arg-type]
                               plan_labels(vol.meta["labels"], self.space), layers, weight))
        return plans, excluded

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_indices"], state["_lock"] = {}, {}, None
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

    def _index(self, plan: _Plan, layer: str) -> ForegroundIndex:
        key = (plan.path, layer)
        if key not in self._indices:
            index = foreground_index(self._reader(plan).volume, layer)
            with self._lock:
                self._indices.setdefault(key, index)
        return self._indices[key]

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
        return resample_at(block, positions, linear=is_raw)

    # -- sampling ---------------------------------------------------------------------------

    def _origin_around(self, plan: _Plan, voxel0: np.ndarray, rng: np.random.Generator) -> Zyx:
        """A patch origin (target voxels) whose patch contains level-0 voxel ``voxel0``."""
        centre_nm = (voxel0 + 0.5) * np.array(plan.vs0)
        g = np.floor(centre_nm / np.array(self.voxel_size)).astype(int)
        p = np.array(self.patch_shape)
        lo = np.maximum(g - p + 1, 0)
        hi = np.minimum(g, np.array(plan.max_origin))
        return tuple(int(rng.integers(a, b + 1)) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def _foreground_voxel(self, plan: _Plan, layer: str, value: int | None, rng: np.random.Generator) -> np.ndarray:
        index = self._index(plan, layer)
        counts = index.foreground_counts() if value is None else index.value_counts(value)
        flat = counts.reshape(-1).astype(np.float64)
        block = np.unravel_index(rng.choice(flat.size, p=flat / flat.sum()), counts.shape)
        box = index.block_box(tuple(int(b) for b in block))  # type: ignore[arg-type]
        labels = self._reader(plan).read(layer, 0, box)
        hits = np.array(np.unravel_index(np.flatnonzero(labels != 0 if value is None else labels == value),
                                         labels.shape)).T + np.array([s.start for s in box])
        sampled = hits[self._on_grid(plan, hits)]  # voxels the target grid actually reads
        pool = sampled if len(sampled) else hits
        return pool[rng.integers(len(pool))]

    def _on_grid(self, plan: _Plan, voxels: np.ndarray) -> np.ndarray:
        """Which level-0 voxels are the ones nearest-neighbour label sampling reads."""
        t, vs0, s = np.array(self.voxel_size), np.array(plan.vs0), np.array(plan.scale)
        g = np.floor((voxels + 0.5) * vs0 / t)
        source = np.rint(((g + 0.5) * t - 0.5 * vs0) / s) * np.rint(s / vs0)
        return (source == voxels).all(axis=1)

    def _origin(self, plan: _Plan, rng: np.random.Generator) -> Zyx:
        sampler = self.sampler
        if isinstance(sampler, Foreground) and rng.random() >= sampler.p_uniform:
            index = self._index(plan, sampler.layer)
            value = None
            if sampler.class_probs:
                present = {v: p for v, p in sampler.class_probs.items() if index.value_counts(v).any() and p > 0}
                if present:
                    keys = sorted(present)
                    probs = np.array([present[k] for k in keys], dtype=np.float64)
                    value = keys[int(rng.choice(len(keys), p=probs / probs.sum()))]
            if index.kind == "instance":
                value = None
            return self._origin_around(plan, self._foreground_voxel(plan, sampler.layer, value, rng), rng)
        if isinstance(sampler, MinInstances):
            return self._origin_around(plan, self._foreground_voxel(plan, sampler.layer, None, rng), rng)
        return tuple(int(rng.integers(0, m + 1)) for m in plan.max_origin)  # type: ignore[return-value]

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
        raw = self._read(plan, "raw", origin)
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

    Example:
        >>> mixed = MixedPatchDataset({"snemi3d": (snemi, 1.0), "mitoem2": (mito, 2.0)})  # doctest: +SKIP
    """

    def __init__(self, datasets: Mapping[str, tuple[PatchDataset, float]], samples_per_epoch: int = 1000,
                 seed: int = 0) -> None:
        if not datasets:
            raise ValueError("MixedPatchDataset needs at least one dataset")
        self.names = list(datasets)
        self.datasets = [datasets[n][0] for n in self.names]
        weights = np.array([float(datasets[n][1]) for n in self.names])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {dict(zip(self.names, weights))}")
        self.p = weights / weights.sum()
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed

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
