"""Patches in physical units from canonical volumes, reproducible and fast.

Sample ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the DataLoader's sampler
(:class:`~emdata.torch.loaders.EpochSampler`) yields ``(e, i)`` pairs, so any worker count, start
method (fork, spawn, forkserver) or DDP rank split gives the same samples. Volumes open lazily in
each worker. Patches are given in voxels at a target voxel size (default: each volume's own); the
nearest pyramid level at least as fine as the target is read and resampled axis by axis
(linear for raw, nearest for labels), so z never mixes into xy.

Example:
    >>> import tempfile, numpy as np
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> from emdata.torch.loaders import make_loader
    >>> from emdata.torch.samplers import Foreground
    >>> cells = np.zeros((8, 64, 64), "u4"); cells[:, 8:40, 8:40] = 7
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.full((8, 64, 64), 90, "u1"), (30, 6, 6),
    ...                     labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> ds = PatchDataset([path], (4, 32, 32), voxel_size=(30, 12, 12), targets=["semantic", "boundaries"],
    ...                   sampler=Foreground("cells"), samples_per_epoch=4)
    >>> batch = next(iter(make_loader(ds, batch_size=4)))
    >>> tuple(batch["raw"].shape), batch["raw"].dtype, ds.class_names
    ((4, 1, 4, 32, 32), torch.uint8, {0: 'background', 1: 'neuron'})

Batches travel compact (``semantic`` uint8, ids in the smallest dtype); the int64 targets a loss
wants are made on the device:

    >>> from emdata.torch.collate import to_device
    >>> batch["semantic"].dtype, to_device(batch, "cpu", ds.space.ignore_value)["semantic"].dtype
    (torch.uint8, torch.int64)
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emdata.labels.ontology import ontology
from emdata.store.decoded_cache import cache_root
from emdata.store.remote import is_url
from emdata.store.volume import Volume, open_volume
from emdata.torch.collate import with_channel
from emdata.torch.planning import NORMALIZE, NoValidLocationError, RegionNm, VolumePlan, plan_volumes
from emdata.torch.reader import VolumeReader
from emdata.torch.resample import level_positions, resample_at
from emdata.torch.samplers import MinInstances, Sampler, Uniform, Zyx, check_weights
from emdata.torch.targets import (
    IGNORE,
    TARGETS,
    WIRE_IGNORE,
    LabelSpace,
    affinities,
    as_int64,
    compact_ids,
    plan_labels,
    sample_targets,
)

if TYPE_CHECKING:  # augmentation imports scipy: loaded only by datasets that augment (lighter loader workers)
    from emdata.torch.augment import Compose, Sample

log = logging.getLogger(__name__)
READ_AHEAD = 2  # samples whose remote chunks are fetched ahead of time
UNIFORM = Uniform()  # the default sampler; frozen, so one instance serves every dataset


def _check_sizes(what: str, values: Sequence[float], lengths: tuple[int, ...] = (3,)) -> tuple[float, ...]:
    """Positive finite numbers, as many as one of ``lengths``."""
    out = tuple(float(v) for v in values)
    if len(out) not in lengths or not all(math.isfinite(v) and v > 0 for v in out):
        count = " or ".join(map(str, lengths))
        raise ValueError(f"{what} must be {count} positive finite numbers (z, y, x), got {tuple(values)}")
    return out


class PatchDataset:
    """Random patches from one or more prepared volumes.

    ``volumes``: ``Volume`` objects or ``*.ome.zarr`` paths. ``patch_shape``: voxels at
    ``voxel_size`` (nm, (z, y, x); default: the first volume's level-0 voxel), 2 entries
    for 2D patches. ``patch_size_nm`` instead gives the extent in nm. ``labels``: label
    layers returned as they are (``"labels/<name>"``, the stored ids). ``targets``: any of
    ``semantic``, ``classes``, ``instances``, ``foreground``, ``boundaries``, ``affinities``
    (with ``affinity_offsets``). ``label_space`` defaults to every class the volumes annotate
    (:attr:`class_names` maps target indices to classes).

    ``compact`` (default True): samples leave the workers small and the int64 arrays a loss
    wants are made after the transfer by :func:`~emdata.torch.collate.widen` (or
    :func:`~emdata.torch.collate.to_device`; the Lightning DataModules do it in
    ``on_after_batch_transfer``): ``semantic`` uint8 with 255 for the ignore value;
    ``labels/<name>`` and ``instances`` in the smallest unsigned dtype holding the patch's ids
    (uint64 ids past 32 bits: int64, bits kept, never relabelled); voxels from outside the
    volume only marked 0 in ``valid`` (and 255 in ``semantic``). ``compact=False`` gives the
    widened arrays directly: int64 ``semantic``, ``instances`` and ``labels/*``, uint64 ids ≥
    2**63 reading negative, the ignore value where unknown or invalid.

    Raw keeps its integer dtype by default; volumes of different raw dtypes are then refused
    (a batch would silently promote one to the other's range). ``raw_dtype="float32"`` gives
    float raw, ``normalize`` says how: ``"dtype"`` (the default) maps the dtype's range to
    [0, 1] (uint8 / 255, uint16 / 65535; float raw: its recorded min and max);
    ``"percentile"`` maps each volume's 0.5 and 99.5 percentiles (recorded when it was
    prepared; estimated from a stored level otherwise) to 0 and 1, clipped, so volumes of
    different bit depth and contrast share one scale.

    ``augment``: ``True`` flips (all axes) and turns by 90° in xy; ``"em"`` the standard EM set
    (:func:`~emdata.torch.augment.em_augment`: warps, section defects, intensity); or any
    :class:`~emdata.torch.augment.Compose`. The margin a warp needs is read from the volume (never
    zero padding inside it); voxels warped in from outside the volume or region are the ignore
    value in ``labels/*``, ``semantic`` and ``instances`` (once widened), masked in ``classes_ignore`` and
    ``affinities_mask``, and 0 in the extra ``valid`` output (boundaries are not invented along
    that edge). Targets are computed after augmentation, from the augmented labels.
    Volumes are drawn in proportion to their valid positions, or by ``volume_weights``.
    ``regions_nm`` (one per volume, None = whole) keeps every patch inside a box
    ``((z0, z1), (y0, y1), (x0, x1))`` in nm from the volume's first voxel edge (held-out slabs).
    ``memory_budget``: bytes of decoded chunks kept, once for all volumes and DataLoader workers
    together, in the shared decoded cache under ``<EMDATA_HOME>/cache/decoded`` (see
    :mod:`emdata.torch.reader`); chunks are decoded on first touch, so workers start at once;
    0 keeps nothing (every patch reads and decodes its chunks).

    A volume may be a URL (``https://``, ``s3://``, ``gs://``; see :mod:`emdata.store.remote`):
    its chunks are fetched as patches need them, never the whole volume, and kept encoded in a
    bounded per-process cache, not in the decoded cache. A chunk missing from the remote copy
    raises; a volume opened with ``open_volume(url, missing="ignore")`` instead masks every voxel
    that depends on one: ``valid`` 0 and labels the ignore value, as for voxels warped in from
    outside the volume (samples of such a dataset always carry ``valid``).
    """

    def __init__(self, volumes: Sequence[Volume | str | Path], patch_shape: Sequence[int] | None = None, *,
                 voxel_size: Sequence[float] | None = None, patch_size_nm: Sequence[float] | None = None,
                 labels: Sequence[str] = (), targets: Sequence[str] = (), label_space: Sequence[str] | None = None,
                 ignore_classes: Sequence[str] = (), ignore_mode: str = "background", ignore_value: int = IGNORE,
                 affinity_offsets: Sequence[tuple[int, int, int]] = ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                 sampler: Sampler = UNIFORM, samples_per_epoch: int = 1000,
                 seed: int = 0, raw_dtype: str | None = None, normalize: str | None = None,
                 augment: bool | str | Compose = False,
                 volume_weights: Sequence[float] | None = None, regions_nm: Sequence[RegionNm | None] | None = None,
                 memory_budget: int = 4 << 30, compact: bool = True) -> None:
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
            volume_weights = check_weights("volume_weights", volume_weights).tolist()
        if regions_nm is not None and len(regions_nm) != len(vols):
            raise ValueError(f"regions_nm has {len(regions_nm)} entries for {len(vols)} volumes")
        self.is_2d = (patch_shape is not None and len(patch_shape) == 2) or (
            patch_size_nm is not None and len(patch_size_nm) == 2)
        self.targets = list(targets)
        self.label_layers = list(labels)
        self.compact = bool(compact)
        self.sampler = sampler
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = int(seed)
        self.normalize = normalize or ("dtype" if raw_dtype else None)
        self.raw_dtype = "float32" if self.normalize else None
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
        self.augment = self._augmentation(augment)
        self.margin: Zyx = self.augment.margin(self.patch_shape, target) if self.augment else (0, 0, 0)
        self.explicit_space = label_space is not None
        annotated = sorted({c for v in vols for la in v.meta["labels"].values() for c in la.get("annotates", [])},
                           key=lambda name: ontology().resolve(name).id)
        space = list(label_space) if label_space else ["background", *[c for c in annotated if c != "background"]]
        self.space = LabelSpace(space, ignore_classes, ignore_mode, ignore_value)
        self.memory_budget = int(memory_budget)
        self.cache_dir = str(cache_root()) if self.memory_budget else None  # fixed here: workers share it
        self._plans, excluded = plan_volumes(
            vols, voxel_size=self.voxel_size, patch_shape=self.patch_shape, sampler=self.sampler,
            label_layers=self.label_layers, with_targets=bool(self.targets), space=self.space,
            normalize=self.normalize, weights=volume_weights, regions=regions_nm)
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
        weights = check_weights("the weights of the usable volumes", [p.weight for p in self._plans])
        self._volume_p = weights / weights.sum()
        self._readers: dict[str, VolumeReader] = {}
        self._remote_volumes: dict[str, Any] = {}
        self._has_remote = any(is_url(p.path) for p in self._plans)
        self._last_key: tuple[int, int] | None = None
        self._ahead: tuple[int, ThreadPoolExecutor, dict[tuple[int, int], Any]] | None = None
        self._lock = threading.Lock()
        self.masks_missing = any(getattr(v, "missing", None) == "ignore" for v in vols)

    def _augmentation(self, augment: bool | str | Compose) -> Compose | None:
        if augment is False or augment is None:
            return None
        from emdata.torch.augment import Compose, em_augment, flip_turn

        if augment is True:
            return flip_turn()
        if augment == "em":
            return em_augment(self.voxel_size, planar=self.is_2d)
        if isinstance(augment, Compose):
            return augment
        raise ValueError(f"augment must be False, True (flips and 90° turns), 'em' (the standard EM set) or an "
                         f"emdata.torch.augment.Compose, got {augment!r}")

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

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_lock"], state["_remote_volumes"] = {}, None, {}
        state["_last_key"], state["_ahead"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- reading ----------------------------------------------------------------------------

    def _reader(self, plan: VolumePlan) -> VolumeReader:
        reader = self._readers.get(plan.path)
        if reader is None:
            with self._lock:  # threads of a ThreadedLoader open each volume once
                reader = self._readers.get(plan.path)
                if reader is None:
                    # chunks are decoded on first touch into the shared cache: no per-worker reload
                    reader = VolumeReader(plan.path, memory_budget=self.memory_budget, cache_dir=self.cache_dir)
                    self._readers[plan.path] = reader
        return reader

    def _source_window(self, plan: VolumePlan, layer: str, origin: Zyx,
                       shape: Zyx) -> tuple[tuple[slice, ...], list[np.ndarray] | None]:
        """The level box that target window (``origin``, ``shape``) is made from, and the per-axis
        positions to resample it at (None: the level grid is the target grid)."""
        is_raw = layer == "raw"
        if plan.target == plan.scale and (is_raw or plan.scale == plan.vs0):
            # target grid = level grid: raw levels are centred block means, so voxel o is exactly
            # target voxel o; strided label levels are exact only at level 0
            return tuple(slice(o, o + n) for o, n in zip(origin, shape)), None
        arr_shape = plan.level_shape
        translation = plan.raw_translation if is_raw else (0.0, 0.0, 0.0)
        positions, window = [], []
        for o, n, t, s, v0, tr, size in zip(origin, shape, self.voxel_size, plan.scale, plan.vs0,
                                            translation, arr_shape):
            pos = level_positions(o, n, t, s, tr + 0.5 * v0)
            lo = max(math.floor(pos.min()), 0)
            hi = min(math.ceil(pos.max()) + 1, size)
            positions.append(pos - lo)
            window.append(slice(lo, hi))
        return tuple(window), positions

    def _read(self, plan: VolumePlan, layer: str, origin: Zyx, shape: Zyx | None = None) -> np.ndarray:
        box, positions = self._source_window(plan, layer, origin, shape or self.patch_shape)
        block = self._reader(plan).read(layer, plan.level, box)  # type: ignore[arg-type]
        if positions is None:
            return block
        is_raw = layer == "raw"
        if is_raw and self.raw_dtype:
            block = block.astype(np.float32)  # interpolate without rounding to the stored integers
        return resample_at(block, positions, linear=is_raw)

    def _missing(self, plan: VolumePlan, layers: Sequence[str], origin: Zyx, shape: Zyx) -> np.ndarray | None:
        """Voxels of the target window that depend on a chunk missing from a remote volume opened with
        ``missing="ignore"`` (any source voxel with a non-zero interpolation weight counts); None when
        there are none."""
        if not self.masks_missing or not is_url(plan.path):
            return None
        volume = self._remote(plan)
        if volume.missing != "ignore":
            return None
        out = None
        for layer in layers:
            box, positions = self._source_window(plan, layer, origin, shape)
            boxes = volume.missing_boxes(layer, plan.level, box)
            if not boxes:
                continue
            level_mask = np.zeros(tuple(s.stop - s.start for s in box), bool)
            for chunk in boxes:
                level_mask[tuple(slice(max(c.start - s.start, 0), max(c.stop - s.start, 0))
                                 for c, s in zip(chunk, box))] = True
            mask = level_mask if positions is None else resample_at(level_mask.astype(np.float32), positions,
                                                                    linear=True) > 0
            out = mask if out is None else out | mask
        return out

    def _remote(self, plan: VolumePlan) -> Any:
        """The remote volume of ``plan`` in this process (the reader's when it exposes one): a
        :class:`~emdata.store.remote.RemoteVolume` or a precomputed one (``missing_boxes``, ``prefetch``)."""
        volume = self._remote_volumes.get(plan.path)
        if volume is None:
            volume = getattr(self._reader(plan), "volume", None)
            if not hasattr(volume, "missing_boxes"):
                volume = open_volume(plan.path)
            volume = self._remote_volumes.setdefault(plan.path, volume)
        return volume

    def _prefetch(self, plan: VolumePlan, layers: Sequence[str], origin: Zyx, shape: Zyx) -> None:
        """Remote volumes: fetch every chunk the window needs, of all layers, in one concurrent round trip."""
        if is_url(plan.path):
            self._remote(plan).prefetch([(layer, plan.level, self._source_window(plan, layer, origin, shape)[0])
                                         for layer in layers])

    def _prefetch_patch(self, plan: VolumePlan, origin: Zyx) -> None:
        start = tuple(o - m for o, m in zip(origin, self.margin))
        shape = tuple(n + 2 * m for n, m in zip(self.patch_shape, self.margin))
        self._prefetch(plan, ["raw", *plan.layers], start, shape)  # type: ignore[arg-type]

    def _read_ahead(self, epoch: int, index: int) -> None:
        """Remote volumes: start fetching, in background threads, the chunks of the :data:`READ_AHEAD`
        keys this process will most likely be asked for next (at the stride of its last two keys, else
        the next indices), so network waits overlap decoding. A wrong guess costs one patch of
        fetches, bounded by the cache."""
        with self._lock:  # a thread-pool loader calls this from several threads
            last, self._last_key = self._last_key, (epoch, index)
            step = index - last[1] if last is not None and last[0] == epoch else 0
            step = step if 0 < step <= 64 else 1
            if self._ahead is None or self._ahead[0] != os.getpid():  # new process: its own threads
                pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="emdata-read-ahead")
                self._ahead = (os.getpid(), pool, {})
            _, pool, submitted = self._ahead
            for key in [k for k in submitted if k[0] != epoch or k[1] <= index]:
                del submitted[key]
            for k in range(1, READ_AHEAD + 1):
                key = (epoch, index + k * step)
                if key[1] < self.samples_per_epoch and key not in submitted:
                    submitted[key] = pool.submit(self._fetch_ahead, *key)

    def _fetch_ahead(self, epoch: int, index: int) -> None:
        try:
            rng = np.random.default_rng([self.seed, epoch, index])
            plan = self._plans[int(rng.choice(len(self._plans), p=self._volume_p))]
            if is_url(plan.path):
                self._prefetch_patch(plan, self._origin(plan, rng))
        except Exception as exc:  # the read itself will raise it, where it belongs
            log.debug("read-ahead of sample (%d, %d) failed: %s", epoch, index, exc)

    def _read_window(self, plan: VolumePlan, layers: Sequence[str], origin: Zyx, shape: Zyx,
                     mask_layers: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``layers`` over a window that may reach past the volume (or region): the part inside is
        read, the rest repeats the nearest voxel inside (edge padding: ids warped in from outside
        are their nearest valid neighbour's, so no boundary is invented along the edge) and is
        False in the returned validity mask, as are voxels that depend on a missing chunk of any of
        ``mask_layers`` (default: ``layers``) of a remote volume opened with ``missing="ignore"``."""
        lo = [max(o, a) for o, a in zip(origin, plan.min_origin)]
        hi = [min(o + n, b + p) for o, n, b, p in zip(origin, shape, plan.max_origin, self.patch_shape)]
        inner = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, origin))
        valid = np.zeros(shape, bool)
        valid[inner] = True
        out = {}
        missing = self._missing(plan, mask_layers or layers, tuple(lo), tuple(b - a for a, b in zip(lo, hi)))  # type: ignore[arg-type]
        if missing is not None:
            valid[inner] &= ~missing
        for layer in layers:
            data = self._read(plan, layer, tuple(lo), tuple(b - a for a, b in zip(lo, hi)))  # type: ignore[arg-type]
            if data.shape != tuple(shape):
                data = np.pad(data, [(s.start, n - s.stop) for s, n in zip(inner, shape)], mode="edge")
            out[layer] = data
        return out, valid

    def _read_clamped(self, plan: VolumePlan, layer: str, start: Zyx, box: tuple[slice, ...]) -> np.ndarray:
        """``layer`` over ``box`` of a window whose first voxel is ``start``: what lies outside the
        volume (or region) repeats the nearest voxel inside, as in :meth:`_read_window`."""
        lows = plan.min_origin
        highs = [b + p for b, p in zip(plan.max_origin, self.patch_shape)]
        read_lo, read_hi, pads = [], [], []
        for b, s, low, high in zip(box, start, lows, highs):
            first, last = s + b.start, s + b.stop
            r0 = min(max(first, low), high - 1)
            r1 = max(min(last, high), r0 + 1)
            read_lo.append(r0)
            read_hi.append(r1)
            # voxels before and after the part read, each the nearest voxel read (edge padding)
            before = min(max(r0 - first, 0), last - first - (r1 - r0))
            pads.append((before, last - first - (r1 - r0) - before))
        data = self._read(plan, layer, tuple(read_lo), tuple(h - lo for lo, h in zip(read_lo, read_hi)))  # type: ignore[arg-type]
        if any(p != (0, 0) for p in pads):
            data = np.pad(data, pads, mode="edge")
        return data

    def _read_dtype(self, plan: VolumePlan, layer: str, origin: Zyx) -> np.dtype:
        """The dtype :meth:`_read` gives ``layer`` of ``plan`` (one voxel read once per volume and layer)."""
        dtypes = self.__dict__.setdefault("_dtypes", {})
        key = (plan.path, plan.level, layer)
        if key not in dtypes:
            dtypes[key] = self._read(plan, layer, origin, (1, 1, 1)).dtype
        return dtypes[key]

    def _augmented(self, plan: VolumePlan, origin: Zyx, labels: dict[str, np.ndarray] | None,
                   rng: np.random.Generator) -> Sample:
        """Raw and labels around ``origin`` (with the augmentation's margin), augmented."""
        from emdata.torch.augment import Sample
        from emdata.torch.augment.compose import Window

        if any(self.margin):
            start = tuple(o - m for o, m in zip(origin, self.margin))
            shape = tuple(n + 2 * m for n, m in zip(self.patch_shape, self.margin))
            _, valid = self._read_window(plan, [], start, shape,  # type: ignore[arg-type]
                                         mask_layers=["raw", *plan.layers])
            # raw and label layers are read only where the transforms look (a warp: the box its map reaches)
            raw = Window(lambda box: self._raw_out(plan, self._read_clamped(plan, "raw", start, box)), shape,
                         np.float32 if self.raw_dtype else self._read_dtype(plan, "raw", origin))
            labels = {layer: Window(partial(self._read_clamped, plan, layer, start), shape,
                                    self._read_dtype(plan, layer, origin)) for layer in plan.layers}
        else:
            raw, valid = self._read(plan, "raw", origin), np.ones(self.patch_shape, bool)
            if labels is None:
                labels = {name: self._read(plan, name, origin) for name in plan.layers}
            missing = self._missing(plan, ["raw", *plan.layers], origin, self.patch_shape)
            if missing is not None:
                valid &= ~missing
        raw = raw if isinstance(raw, Window) else self._raw_out(plan, raw)
        return self.augment(Sample(raw, labels, valid, self.voxel_size), rng, self.patch_shape)  # type: ignore[misc]

    def _mark_invalid(self, out: dict[str, Any], valid: np.ndarray) -> None:
        """Voxels warped in from outside the volume: ignore value, masked, never background."""
        out["valid"] = with_channel(valid.astype(np.uint8))
        if valid.all():
            return
        invalid = ~valid
        ignore = self.space.ignore_value
        if self.compact:  # ids cannot hold the ignore value: widen() marks them from ``valid``
            if "semantic" in out:
                out["semantic"] = np.where(invalid, WIRE_IGNORE if out["semantic"].dtype == np.uint8 else ignore,
                                           out["semantic"])
        else:
            for key in [f"labels/{name}" for name in self.label_layers] + ["semantic", "instances"]:
                if key in out:
                    out[key] = np.where(invalid, ignore, out[key])
        for key in ("foreground", "boundaries"):
            if key in out:
                out[key] = np.where(invalid, 0, out[key]).astype(np.uint8)
        if "classes" in out:
            out["classes_ignore"] = np.where(invalid, 1, out["classes_ignore"]).astype(np.uint8)
        if "affinities_mask" in out:
            both, _ = affinities(valid.astype(np.int64), self.affinity_offsets)
            out["affinities_mask"] = out["affinities_mask"] & both

    def _raw_out(self, plan: VolumePlan, raw: np.ndarray) -> np.ndarray:
        if not self.raw_dtype:
            return raw
        lo, hi = plan.intensity  # type: ignore[misc]
        out = (raw.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)
        return np.clip(out, 0.0, 1.0, out=out) if self.normalize == "percentile" else out

    # -- sampling ---------------------------------------------------------------------------

    def _origin(self, plan: VolumePlan, rng: np.random.Generator) -> Zyx:
        return plan.draw_origin(self.sampler, self.patch_shape, self._reader(plan).read, rng)  # type: ignore[arg-type]

    def sample(self, epoch: int, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The sample for ``(epoch, index)`` as numpy arrays (``__getitem__`` adds torch)."""
        by_key = rng is None
        rng = rng or np.random.default_rng([self.seed, epoch, index])
        plan = self._plans[int(rng.choice(len(self._plans), p=self._volume_p))]
        origin = self._origin(plan, rng)
        if by_key and self._has_remote:
            self._read_ahead(epoch, index)  # first: the next samples' fetches run while this one waits
        if is_url(plan.path):
            self._prefetch_patch(plan, origin)
        labels = None  # read once: with the augmentation's margin when there is one
        ok = True
        if isinstance(self.sampler, MinInstances):
            labels = {name: self._read(plan, name, origin) for name in plan.layers}
            for _ in range(self.sampler.max_tries):
                if len(np.unique(labels[self.sampler.layer][labels[self.sampler.layer] != 0])) >= self.sampler.k:
                    break
                origin = self._origin(plan, rng)
                labels = {name: self._read(plan, name, origin) for name in plan.layers}
            else:
                ok = False
        valid = None
        if self.augment is not None:
            augmented = self._augmented(plan, origin, labels, rng)
            raw, labels, valid = augmented.raw, augmented.labels, augmented.valid
        else:
            raw = self._raw_out(plan, self._read(plan, "raw", origin))
            if self.masks_missing:
                missing = self._missing(plan, ["raw", *plan.layers], origin, self.patch_shape)
                valid = np.ones(self.patch_shape, bool) if missing is None else ~missing
        if labels is None:
            labels = {name: self._read(plan, name, origin) for name in plan.layers}
        out: dict[str, Any] = {"raw": with_channel(raw)}
        ids = compact_ids if self.compact else as_int64
        for name in self.label_layers:
            out[f"labels/{name}"] = ids(labels[name])
        out.update(sample_targets(self.targets, labels, plan.labels, self.space, self.patch_shape,
                                  self.affinity_offsets, compact=self.compact))
        if valid is not None:
            self._mark_invalid(out, valid)
        out["annotated"] = plan.labels.annotated.copy()
        out["meta"] = {"dataset": plan.dataset, "volume": plan.name, "level": plan.level,
                       "offset_nm": np.array(origin, dtype=np.float64) * np.array(self.voxel_size),
                       "voxel_size_nm": np.array(self.voxel_size), "sampler_ok": ok}
        if self.is_2d:
            out = {k: (v[..., 0, :, :] if isinstance(v, np.ndarray) and v.ndim >= 3 else v) for k, v in out.items()}
        # flips hand on views: every array leaves as its own contiguous copy (a no-op when it is one)
        return {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in out.items()}

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``(epoch, index)`` (or ``index`` of epoch 0) as numpy arrays; the loader's
        :func:`~emdata.torch.collate.collate_patches` turns batches into torch tensors."""
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        return self.sample(int(epoch), int(index))

