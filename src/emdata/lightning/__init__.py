"""Lightning DataModules over prepared datasets, and ``CombineDataModule`` to mix them with
true sampling probabilities (extra ``emdata[lightning]``).

``prepare_data`` fetches and converts (once, rank 0); ``setup`` builds the patch datasets on
every process. Each rank draws its own disjoint share of every epoch's samples; the loaders'
sampler is a ``DistributedSampler``, so Lightning never splits those shares a second time.

Train/validation split (deterministic, documented by :func:`split_volumes`): a dataset's
``val`` volumes when it has some, else the volumes named in ``val_volumes``, else a held-out
slab at the end of z of every training volume (``val_fraction`` of its depth, at least one
patch deep plus one voxel). Training patches never reach into a held-out slab. Validation
draws the same patches every epoch.

Batches travel compact (``semantic`` uint8, ids in the smallest dtype that holds them, see
:mod:`emdata.torch.collate`); ``on_after_batch_transfer`` widens them on the device, so the
LightningModule sees int64 ``semantic``, ``instances`` and ``labels/*`` with the ignore value
where unknown or warped in from outside the volume.

Example:
    >>> from emdata.lightning import CombineDataModule, SNEMI3DDataModule, MitoEM2DataModule
    >>> combine = CombineDataModule(
    ...     datamodules={"snemi3d": (SNEMI3DDataModule(data_root="data"), 1.0),
    ...                  "mitoem2": (MitoEM2DataModule(data_root="data"), 2.0)},
    ...     ignore_classes={"mito_boundary"}, patch_shape=(16, 128, 128))
    >>> combine.shared["label_space"]
    ['background', 'neuron', 'cleft', 'mitochondria', 'mito_boundary']
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L

from emdata import config
from emdata.torch import MixedPatchDataset, NoValidLocationError, PatchDataset, Uniform, make_loader, widen
from emdata.torch.targets import CONNECTOMICS_LABEL_SPACE, IGNORE

log = logging.getLogger(__name__)
Region = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
Part = list[tuple[Any, Region | None]]


def _home(data_root: str | Path | None) -> AbstractContextManager[Any]:
    """Use ``data_root`` as the emdata home for the duration (None: leave it)."""
    return nullcontext() if data_root is None else config.using(home=Path(data_root).expanduser())


def split_volumes(volumes: Sequence[Any], *, val_volumes: Sequence[str] = (), val_fraction: float = 0.1,
                  min_slab_nm: float = 0.0) -> tuple[Part, Part]:
    """``(train, val)``: lists of ``(volume, region_nm or None)`` for :class:`PatchDataset`.

    Training volumes are those of split ``train`` (else ``all``: datasets released without a
    split). Validation: the ``val`` volumes if any; else the volumes named in ``val_volumes``
    (taken out of training); else the last ``val_fraction`` of every training volume's z
    extent, at least ``min_slab_nm`` (rounded up to whole voxels), with training kept to
    the rest. A volume too thin for both stays whole in training (logged).

    Example:
        >>> from types import SimpleNamespace as V
        >>> vol = V(name="v", split="all", shape=(100, 64, 64), voxel_size=(30.0, 6.0, 6.0))
        >>> train, val = split_volumes([vol], val_fraction=0.1)
        >>> train[0][1][0], val[0][1][0]
        ((0.0, 2700.0), (2700.0, 3000.0))
    """
    if not 0.0 <= val_fraction < 1.0 or not math.isfinite(val_fraction):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_split: dict[str, list[Any]] = {}
    for vol in volumes:
        by_split.setdefault(vol.split, []).append(vol)
    source = by_split.get("train") or by_split.get("all") or []
    names = {v.name for v in source} | {v.name for v in by_split.get("val", [])}
    unknown = sorted(set(val_volumes) - names)
    if unknown:
        raise ValueError(f"val_volumes {unknown} are not train/all/val volumes of this dataset; choose from "
                         f"{sorted(names)}")
    if val_volumes:
        chosen = [v for v in source + by_split.get("val", []) if v.name in set(val_volumes)]
        train = [(v, None) for v in source if v.name not in set(val_volumes)]
        return train, [(v, None) for v in chosen]
    if by_split.get("val"):
        return [(v, None) for v in source], [(v, None) for v in by_split["val"]]
    train: Part = []
    val: Part = []
    for vol in source:
        extent = [n * s for n, s in zip(vol.shape, vol.voxel_size)]
        whole = ((0.0, extent[1]), (0.0, extent[2]))
        slab = math.ceil(max(val_fraction * extent[0], min_slab_nm) / vol.voxel_size[0] - 1e-9) * vol.voxel_size[0]
        split_at = extent[0] - slab
        if val_fraction == 0 or split_at < min_slab_nm:
            if val_fraction:
                log.info("%s: too thin to hold out a validation slab of %.0f nm; used for training only", vol.name,
                         slab)
            train.append((vol, None))
            continue
        train.append((vol, ((0.0, split_at), *whole)))
        val.append((vol, ((split_at, extent[0]), *whole)))
    return train, val


class _Loaders(L.LightningDataModule):
    """Train/val loaders over ``train_set``/``val_set``, each rank drawing its own share."""

    train_set: Any
    val_set: Any
    batch_size: int
    num_workers: int
    context: str | None

    def _loader(self, dataset: Any, advance_epochs: bool) -> Any:
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (None, None)
        return make_loader(dataset, self.batch_size, self.num_workers, self.context, rank=rank, world_size=world,
                           advance_epochs=advance_epochs)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Widen the compact batch on the device (:func:`emdata.torch.collate.widen`)."""
        if not isinstance(batch, dict):
            return batch
        dataset = getattr(self, "train_set", None) or getattr(self, "val_set", None)
        parts = getattr(dataset, "datasets", [dataset])  # a MixedPatchDataset's parts share one ignore value
        space = getattr(parts[0], "space", None)
        return widen(batch, space.ignore_value if space is not None else IGNORE)

    def train_dataloader(self) -> Any:
        return self._loader(self.train_set, advance_epochs=True)

    def val_dataloader(self) -> Any:
        return self._loader(self.val_set, advance_epochs=False) if self.val_set is not None else []


def _check_loader_options(batch_size: int, num_workers: int, samples_per_epoch: int, val_samples: int) -> None:
    if batch_size < 1 or num_workers < 0 or samples_per_epoch < 1 or val_samples < 0:
        raise ValueError(f"need batch_size >= 1, num_workers >= 0, samples_per_epoch >= 1 and val_samples >= 0; got "
                         f"{batch_size}, {num_workers}, {samples_per_epoch}, {val_samples}")


class EMDataModule(_Loaders):
    """One prepared dataset as a DataModule.

    ``data_root`` is the emdata home holding ``prepared/<dataset>`` (default: EMDATA_HOME).
    ``prepare_options`` go to ``emdata.prepare`` (e.g. ``{"subset": ["beta"]}``);
    ``dataset_options`` to :class:`~emdata.torch.PatchDataset`. ``val_volumes`` and
    ``val_fraction`` choose the validation data (:func:`split_volumes`; ``val_fraction=0``
    and no ``val`` volumes: no validation). ``num_workers`` > 0 gives loaders whose worker
    processes build whole batches into reused shared memory
    (:class:`~emdata.torch.loaders.ProcessLoader`, started with ``multiprocessing_context``).

    Example:
        >>> dm = SNEMI3DDataModule(data_root="data", patch_shape=(8, 64, 64), val_fraction=0.2)
        >>> dm.dataset_id, dm.val_fraction
        ('snemi3d', 0.2)
    """

    dataset_id: str = ""

    def __init__(self, data_root: str | Path | None = None, *, dataset_id: str | None = None,
                 patch_shape: Sequence[int] = (16, 128, 128), voxel_size: Sequence[float] | None = None,
                 targets: Sequence[str] = ("semantic",), batch_size: int = 4, num_workers: int = 0,
                 multiprocessing_context: str | None = None, samples_per_epoch: int = 1000,
                 val_samples: int = 100, seed: int = 0, val_volumes: Sequence[str] = (), val_fraction: float = 0.1,
                 prepare_options: Mapping[str, Any] | None = None, **dataset_options: Any) -> None:
        super().__init__()
        self.dataset_id = dataset_id or self.dataset_id
        if not self.dataset_id:
            raise ValueError("EMDataModule needs a dataset_id (or use a per-dataset subclass)")
        _check_loader_options(batch_size, num_workers, samples_per_epoch, val_samples)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_root = data_root
        self.patch_shape, self.voxel_size, self.targets = tuple(patch_shape), voxel_size, tuple(targets)
        self.batch_size, self.num_workers, self.context = batch_size, num_workers, multiprocessing_context
        self.samples_per_epoch, self.val_samples, self.seed = samples_per_epoch, val_samples, seed
        self.val_volumes, self.val_fraction = tuple(val_volumes), float(val_fraction)
        self.prepare_options = dict(prepare_options or {})
        self.dataset_options = dataset_options
        self.train_set: PatchDataset | None = None
        self.val_set: PatchDataset | None = None

    def prepare_data(self) -> None:
        import emdata

        with _home(self.data_root):
            emdata.prepare(self.dataset_id, **self.prepare_options)

    def volumes(self, split: str | None = None) -> list[Any]:
        """Prepared sample volumes of ``split`` (None: every split)."""
        import emdata

        with _home(self.data_root):  # weight maps stored as volumes (role "weights") are not samples
            try:
                vols = emdata.volumes(self.dataset_id, split=split)
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"{exc} (or call prepare_data() on the DataModule)") from exc
            return [v for v in vols if v.meta.get("role") != "weights"]

    def build_dataset(self, part: str, n: int, **overrides: Any) -> PatchDataset | None:
        """The patch dataset of ``part`` (``"train"`` or ``"val"``, see :func:`split_volumes`);
        None when that part has no volume (a dataset without training volumes is an error)."""
        if part not in ("train", "val"):
            raise ValueError(f"part must be 'train' or 'val', got {part!r}")
        options = {"voxel_size": self.voxel_size, "targets": self.targets, "samples_per_epoch": n,
                   "seed": self.seed, **self.dataset_options, **overrides}
        patch_shape = tuple(options.pop("patch_shape", self.patch_shape))
        vols = self.volumes()
        target_z = (options["voxel_size"] or vols[0].voxel_size)[0] if vols else 0.0
        depth = patch_shape[0] if len(patch_shape) == 3 else 1
        train, val = split_volumes(vols, val_volumes=self.val_volumes, val_fraction=self.val_fraction,
                                   min_slab_nm=(depth + 1) * target_z)
        if not train:
            splits = sorted({v.split for v in vols})
            raise ValueError(f"{self.dataset_id} has no training volume (its prepared splits: {splits}); training "
                             "uses split 'train', else 'all'")
        chosen = train if part == "train" else val
        if not chosen or n == 0:
            return None
        regions = [r for _, r in chosen]
        with _home(self.data_root):  # an index computed for an older volume is cached under this home
            return PatchDataset([v for v, _ in chosen], patch_shape, regions_nm=regions if any(regions) else None,
                                **options)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self.build_dataset("train", self.samples_per_epoch)
        self.val_set = self.build_dataset("val", self.val_samples, sampler=Uniform())


def _named(name: str, dataset_id: str) -> type[EMDataModule]:
    return type(name, (EMDataModule,), {"dataset_id": dataset_id, "__doc__": f"The {dataset_id} dataset."})


SNEMI3DDataModule = _named("SNEMI3DDataModule", "snemi3d")
CREMIDataModule = _named("CREMIDataModule", "cremi")
MitoEM2DataModule = _named("MitoEM2DataModule", "mitoem2")
MitoEMDataModule = _named("MitoEMDataModule", "mitoem")
MICrONSDataModule = _named("MICrONSDataModule", "microns-minnie65")
AxonEMDataModule = _named("AxonEMDataModule", "axonem")
LucchiPPDataModule = _named("LucchiPPDataModule", "lucchi-pp")


class CombineDataModule(_Loaders):
    """Mix DataModules with true sampling probabilities (weights are not multiplied by size).

    Targets live in ``label_space`` (default: :data:`~emdata.torch.CONNECTOMICS_LABEL_SPACE`,
    background, neuron, cleft, mitochondria, mito_boundary). ``ignore_classes`` become
    background or, with ``ignore_mode="ignore"``, the ignore value. Classes a dataset does not
    annotate are masked (ignore value / ``annotated`` flags), never called background.
    ``dataset_options`` (e.g. ``raw_dtype="float32", normalize="percentile"`` to mix 8- and
    16-bit raw) go to every part's :class:`~emdata.torch.PatchDataset`. Every dataset with a
    positive weight must contribute training patches, else ``setup`` fails naming it; one
    without validation patches is left out of validation with a warning.

    Example:
        >>> CombineDataModule({"snemi3d": (SNEMI3DDataModule(), 1.0)}, raw_dtype="float32").dataset_options
        {'raw_dtype': 'float32'}
    """

    def __init__(self, datamodules: Mapping[str, tuple[EMDataModule, float]], *,
                 ignore_classes: Sequence[str] | set[str] = (), ignore_mode: str = "background",
                 label_space: Sequence[str] = CONNECTOMICS_LABEL_SPACE, ignore_value: int = IGNORE,
                 patch_shape: Sequence[int] | None = None, voxel_size: Sequence[float] | None = None,
                 targets: Sequence[str] | None = None, batch_size: int = 4, num_workers: int = 0,
                 multiprocessing_context: str | None = None, samples_per_epoch: int = 1000,
                 val_samples: int = 100, seed: int = 0, **dataset_options: Any) -> None:
        super().__init__()
        if not datamodules:
            raise ValueError("CombineDataModule needs at least one datamodule")
        _check_loader_options(batch_size, num_workers, samples_per_epoch, val_samples)
        self.datamodules = dict(datamodules)
        weights = {name: float(w) for name, (_, w) in self.datamodules.items()}
        if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"datamodule weights must be finite, non-negative and not all zero, got {weights}")
        self.shared = {"label_space": list(label_space), "ignore_classes": sorted(ignore_classes),
                       "ignore_mode": ignore_mode, "ignore_value": ignore_value}
        first = next(iter(self.datamodules.values()))[0]
        self.patch_shape = tuple(patch_shape or first.patch_shape)
        self.voxel_size, self.targets = voxel_size, targets
        self.batch_size, self.num_workers, self.context = batch_size, num_workers, multiprocessing_context
        self.samples_per_epoch, self.val_samples, self.seed = samples_per_epoch, val_samples, seed
        self.dataset_options = dataset_options
        self.train_set: MixedPatchDataset | None = None
        self.val_set: MixedPatchDataset | None = None

    def prepare_data(self) -> None:
        for dm, _ in self.datamodules.values():
            dm.prepare_data()

    def _mixed(self, part: str, n: int) -> MixedPatchDataset | None:
        if n == 0:
            return None
        parts = {}
        for name, (dm, weight) in self.datamodules.items():
            if weight == 0:
                continue
            overrides: dict[str, Any] = {**self.dataset_options, **self.shared, "patch_shape": self.patch_shape}
            if self.voxel_size is not None:
                overrides["voxel_size"] = self.voxel_size
            if self.targets is not None:
                overrides["targets"] = self.targets
            if part != "train":
                overrides["sampler"] = Uniform()
            try:
                ds = dm.build_dataset(part, n, **overrides)
            except NoValidLocationError as exc:
                if part == "train":
                    raise NoValidLocationError(f"{name} (weight {weight}) gives no training patches: {exc}") from exc
                ds = None
            if ds is None:
                if part == "train":
                    raise ValueError(f"{name} (weight {weight}) has no training volumes")
                log.warning("%s (weight %s) has no validation patches; validation leaves it out", name, weight)
                continue
            parts[name] = (ds, weight)
        return MixedPatchDataset(parts, samples_per_epoch=n, seed=self.seed) if parts else None

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._mixed("train", self.samples_per_epoch)
        self.val_set = self._mixed("val", self.val_samples)
