"""Lightning DataModules over prepared datasets, and seed 004's ``CombineDataModule``
(extra ``emdata[lightning]``).

``prepare_data`` fetches and converts (once, rank 0); ``setup`` builds the patch datasets on
every process. Each rank draws its own disjoint share of every epoch's samples — train with
``Trainer(use_distributed_sampler=False)`` so Lightning does not split them a second time.

Example:
    >>> from emdata.lightning import CombineDataModule, SNEMI3DDataModule, MitoEM2DataModule
    >>> combine = CombineDataModule(
    ...     datamodules={"snemi3d": (SNEMI3DDataModule(data_root="data"), 1.0),
    ...                  "mitoem2": (MitoEM2DataModule(data_root="data"), 2.0)},
    ...     ignore_classes={"mito_boundary"}, patch_shape=(16, 128, 128))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

from emdata.torch.dataset import MixedPatchDataset, PatchDataset, Uniform, make_loader
from emdata.torch.targets import IGNORE, SEED_004_SPACE


@contextmanager
def _home(data_root: str | Path | None) -> Iterator[None]:
    """Use ``data_root`` as EMDATA_HOME for the duration (None: leave it)."""
    if data_root is None:
        yield
        return
    old = os.environ.get("EMDATA_HOME")
    os.environ["EMDATA_HOME"] = str(Path(data_root).expanduser())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("EMDATA_HOME", None)
        else:
            os.environ["EMDATA_HOME"] = old


class _Loaders(L.LightningDataModule):
    """Train/val loaders over ``train_set``/``val_set``, each rank drawing its own share."""

    train_set: Any
    val_set: Any
    batch_size: int
    num_workers: int
    context: str | None

    def _loader(self, dataset: Any) -> Any:
        rank, world = _rank_and_world(self)
        return make_loader(dataset, self.batch_size, self.num_workers, self.context, rank=rank, world_size=world)

    def train_dataloader(self) -> Any:
        return self._loader(self.train_set)

    def val_dataloader(self) -> Any:
        return self._loader(self.val_set) if self.val_set is not None else []


class EMDataModule(_Loaders):
    """One prepared dataset as a DataModule.

    ``data_root`` is the emdata home holding ``prepared/<dataset>`` (default: EMDATA_HOME).
    ``prepare_options`` go to ``emdata.prepare`` (e.g. ``{"subset": ["beta"]}``);
    ``dataset_options`` to :class:`~emdata.torch.PatchDataset`.
    """

    dataset_id: str = ""

    def __init__(self, data_root: str | Path | None = None, *, dataset_id: str | None = None,
                 patch_shape: Sequence[int] = (16, 128, 128), voxel_size: Sequence[float] | None = None,
                 targets: Sequence[str] = ("semantic",), batch_size: int = 4, num_workers: int = 0,
                 multiprocessing_context: str | None = None, samples_per_epoch: int = 1000,
                 val_samples: int = 100, seed: int = 0, prepare_options: Mapping[str, Any] | None = None,
                 **dataset_options: Any) -> None:
        super().__init__()
        self.dataset_id = dataset_id or self.dataset_id
        if not self.dataset_id:
            raise ValueError("EMDataModule needs a dataset_id (or use a per-dataset subclass)")
        self.data_root = data_root
        self.patch_shape, self.voxel_size, self.targets = tuple(patch_shape), voxel_size, tuple(targets)
        self.batch_size, self.num_workers, self.context = batch_size, num_workers, multiprocessing_context
        self.samples_per_epoch, self.val_samples, self.seed = samples_per_epoch, val_samples, seed
        self.prepare_options = dict(prepare_options or {})
        self.dataset_options = dataset_options
        self.train_set: PatchDataset | None = None
        self.val_set: PatchDataset | None = None

    def prepare_data(self) -> None:
        import emdata

        with _home(self.data_root):
            emdata.prepare(self.dataset_id, **self.prepare_options)

    def volumes(self, split: str) -> list[Any]:
        import emdata

        with _home(self.data_root):  # weight maps stored as volumes (role "weights") are not samples
            return [v for v in emdata.volumes(self.dataset_id, split=split) if v.meta.get("role") != "weights"]

    def build_dataset(self, split: str, n: int, **overrides: Any) -> PatchDataset | None:
        """The patch dataset of ``split`` (None when the dataset has no volume of that split)."""
        vols = self.volumes(split)
        if not vols:
            return None
        options = {"voxel_size": self.voxel_size, "targets": self.targets, "samples_per_epoch": n,
                   "seed": self.seed, **self.dataset_options, **overrides}
        patch_shape = options.pop("patch_shape", self.patch_shape)
        return PatchDataset(vols, patch_shape, **options)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self.build_dataset("train", self.samples_per_epoch)
        if self.train_set is None:
            raise ValueError(f"{self.dataset_id} has no prepared train volume; run prepare_data() first")
        self.val_set = self.build_dataset("val", self.val_samples, sampler=Uniform())



def _rank_and_world(dm: L.LightningDataModule) -> tuple[int | None, int | None]:
    trainer = getattr(dm, "trainer", None)
    if trainer is None:
        return None, None  # make_loader asks torch.distributed
    if trainer.world_size > 1 and getattr(trainer._accelerator_connector, "use_distributed_sampler", False):
        raise RuntimeError("emdata already gives each rank its own share of every epoch: create the Trainer with "
                           "use_distributed_sampler=False so Lightning does not split (and freeze) the samples again")
    return trainer.global_rank, trainer.world_size


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

    Targets live in ``label_space`` (default: seed 004's union: background, neuron, cleft,
    mitochondria, mito_boundary). ``ignore_classes`` become background (seed 004's documented
    behaviour) or, with ``ignore_mode="ignore"``, the ignore value. Classes a dataset does not
    annotate are masked (ignore value / ``annotated`` flags), never called background.
    """

    def __init__(self, datamodules: Mapping[str, tuple[EMDataModule, float]], *,
                 ignore_classes: Sequence[str] | set[str] = (), ignore_mode: str = "background",
                 label_space: Sequence[str] = SEED_004_SPACE, ignore_value: int = IGNORE,
                 patch_shape: Sequence[int] | None = None, voxel_size: Sequence[float] | None = None,
                 targets: Sequence[str] | None = None, batch_size: int = 4, num_workers: int = 0,
                 multiprocessing_context: str | None = None, samples_per_epoch: int = 1000,
                 val_samples: int = 100, seed: int = 0) -> None:
        super().__init__()
        if not datamodules:
            raise ValueError("CombineDataModule needs at least one datamodule")
        self.datamodules = dict(datamodules)
        self.shared = {"label_space": list(label_space), "ignore_classes": sorted(ignore_classes),
                       "ignore_mode": ignore_mode, "ignore_value": ignore_value}
        first = next(iter(self.datamodules.values()))[0]
        self.patch_shape = tuple(patch_shape or first.patch_shape)
        self.voxel_size, self.targets = voxel_size, targets
        self.batch_size, self.num_workers, self.context = batch_size, num_workers, multiprocessing_context
        self.samples_per_epoch, self.val_samples, self.seed = samples_per_epoch, val_samples, seed
        self.train_set: MixedPatchDataset | None = None
        self.val_set: MixedPatchDataset | None = None

    def prepare_data(self) -> None:
        for dm, _ in self.datamodules.values():
            dm.prepare_data()

    def _mixed(self, split: str, n: int) -> MixedPatchDataset | None:
        parts = {}
        for name, (dm, weight) in self.datamodules.items():
            overrides: dict[str, Any] = {**self.shared, "patch_shape": self.patch_shape}
            if self.voxel_size is not None:
                overrides["voxel_size"] = self.voxel_size
            if self.targets is not None:
                overrides["targets"] = self.targets
            if split != "train":
                overrides["sampler"] = Uniform()
            ds = dm.build_dataset(split, n, **overrides)
            if ds is not None:
                parts[name] = (ds, weight)
        return MixedPatchDataset(parts, samples_per_epoch=n, seed=self.seed) if parts else None

    def setup(self, stage: str | None = None) -> None:
        self.train_set = self._mixed("train", self.samples_per_epoch)
        if self.train_set is None:
            raise ValueError(f"none of {list(self.datamodules)} has a prepared train volume; run prepare_data()")
        self.val_set = self._mixed("val", self.val_samples)

