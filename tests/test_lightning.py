"""CombineDataModule over prepared replicas, train/val splits, and a real Trainer.fit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import lightning as L
import numpy as np
import torch

from emdata.config import prepared_dir
from emdata.lightning import CombineDataModule, CREMIDataModule, EMDataModule, MitoEM2DataModule, SNEMI3DDataModule
from emdata.store.manifest import record_volume
from emdata.store.volume import open_volume
from emdata.store.writer import LabelLayerData, write_volume
from emdata.testing.replica_sets import prepared_replicas
from emdata.torch import IGNORE


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lightning")
    with prepared_replicas(root, ["snemi3d", "mitoem2", "cremi"]):
        pass
    return root


@pytest.fixture(autouse=True)
def replica_checksums(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas were accepted under their own pinned sha256, and a cached file is checked on every use."""
    monkeypatch.setenv("EMDATA_CHECKSUMS", str(home / "replica-checksums.json"))


def combine(home: Path, **kwargs) -> CombineDataModule:
    return CombineDataModule(
        datamodules={"snemi3d": (SNEMI3DDataModule(data_root=home), 1.0),
                     "mitoem2": (MitoEM2DataModule(data_root=home, prepare_options={"subset": ["beta", "mossy"]}), 2.0),
                     "cremi": (CREMIDataModule(data_root=home, prepare_options={"volumes": ["A", "B"]}), 1.0)},
        ignore_classes={"mito_boundary"}, patch_shape=(2, 32, 32), targets=["semantic", "foreground"],
        batch_size=8, samples_per_epoch=400, **kwargs)


def test_combine_datamodule_mixes_three_datasets(home: Path) -> None:
    dm = combine(home)
    dm.prepare_data()  # finished volumes are reused: no network, no rework
    dm.setup("fit")
    shares: Counter[str] = Counter()
    for batch in dm.train_dataloader():
        assert batch["raw"].dtype == torch.uint8 and batch["raw"].shape == (8, 1, 2, 32, 32)
        sem = batch["semantic"]
        assert not (sem == 4).any(), "mito_boundary is turned into background (ignore_classes)"
        for source, annotated, target in zip(batch["meta"]["source"], batch["annotated"], sem):
            shares[source] += 1
            if not annotated.all() and source != "mitoem2":  # a dataset missing some union class never calls
                assert not (target == 0).any()  # voxels background (mitoem2's boundaries are merged into it)
    total = sum(shares.values())
    assert total == 400 and abs(shares["mitoem2"] / total - 0.5) < 0.08
    assert abs(shares["snemi3d"] / total - 0.25) < 0.08


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 5, 1)

    def training_step(self, batch, _):  # type: ignore[no-untyped-def]
        logits = self.conv(batch["raw"].float() / 255)
        return torch.nn.functional.cross_entropy(logits, batch["semantic"], ignore_index=IGNORE)

    def validation_step(self, batch, _):  # type: ignore[no-untyped-def]
        logits = self.conv(batch["raw"].float() / 255)
        known = batch["semantic"] != IGNORE
        loss = torch.nn.functional.cross_entropy(logits, batch["semantic"], ignore_index=IGNORE) if known.any() \
            else logits.sum() * 0
        self.log("val_loss", loss, batch_size=batch["raw"].shape[0])

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_runs_and_validates(home: Path) -> None:
    dm = combine(home, val_samples=16)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, limit_train_batches=3,
                        limit_val_batches=2)
    trainer.fit(_Tiny(), datamodule=dm)
    assert trainer.global_step == 3
    assert "val_loss" in trainer.callback_metrics, "validation runs on the held-out slabs"
    assert isinstance(dm.train_dataloader().sampler, torch.utils.data.DistributedSampler)  # Lightning leaves it be


# -- splits, on small volumes written straight into a dataset folder ---------------------------------

MITO = [{"value": 0, "name": "background", "ontology": "background"},
        {"value": 1, "name": "mito", "ontology": "mitochondria"}]


def _prepared(home: Path, dataset: str, split: str, names: tuple[str, ...], dtype: str = "uint8",
              shape: tuple[int, int, int] = (20, 48, 48)) -> None:
    """Volumes written with the real writer and recorded in the dataset's manifest."""
    import os

    os.environ["EMDATA_HOME"] = str(home)  # the autouse fixture restores it
    rng = np.random.default_rng(len(names))
    for name in names:
        raw = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
        sem = (rng.random(shape) < 0.05).astype(np.uint8)
        path = write_volume(prepared_dir(dataset) / f"{name}.ome.zarr", raw, (30, 8, 8),
                            labels=[LabelLayerData("mito", sem, "semantic", MITO)],
                            meta={"dataset": dataset, "volume": name, "split": split})
        record_volume(open_volume(path))


def _z_ranges(loader, depth_nm: float) -> set[tuple[str, float, float]]:
    return {(volume, float(z), float(z) + depth_nm) for batch in loader
            for volume, z in zip(batch["meta"]["volume"], batch["meta"]["offset_nm"][:, 0].tolist())}


def test_a_dataset_released_without_splits_trains_and_validates_on_disjoint_slabs(tmp_path: Path) -> None:
    _prepared(tmp_path, "platelet-em", "all", ("a", "b"), dtype="uint16")
    dm = EMDataModule(tmp_path, dataset_id="platelet-em", patch_shape=(2, 16, 16), samples_per_epoch=64,
                      val_samples=32, val_fraction=0.25, batch_size=8)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    split_at = 600 - 5 * 30  # 25% of 20 slices of 30 nm, rounded up to whole slices
    train = _z_ranges(dm.train_dataloader(), 60) | _z_ranges(dm.train_dataloader(), 60)
    val = _z_ranges(dm.val_dataloader(), 60)
    assert {v for v, _, _ in train} == {v for v, _, _ in val} == {"a", "b"}
    assert max(stop for _, _, stop in train) <= split_at <= min(start for _, start, _ in val)
    assert _z_ranges(dm.val_dataloader(), 60) == val, "validation draws the same patches every epoch"
    chosen = EMDataModule(tmp_path, dataset_id="platelet-em", patch_shape=(2, 16, 16), val_volumes=["b"])
    chosen.setup("fit")
    assert {p.name for p in chosen.train_set._plans} == {"a"} and {p.name for p in chosen.val_set._plans} == {"b"}


def test_combine_mixes_bit_depths_and_fails_on_datasets_that_give_nothing(tmp_path: Path) -> None:
    _prepared(tmp_path, "platelet-em", "all", ("p1",), dtype="uint16")
    _prepared(tmp_path, "snemi3d", "train", ("s1",))
    _prepared(tmp_path, "lucchi-pp", "test", ("t1",))
    parts = {"platelet": (EMDataModule(tmp_path, dataset_id="platelet-em"), 1.0),
             "snemi": (SNEMI3DDataModule(tmp_path), 1.0)}
    options = dict(patch_shape=(2, 16, 16), targets=["semantic"], samples_per_epoch=64, val_samples=16, batch_size=16)
    dm = CombineDataModule(parts, label_space=["background", "mitochondria"], raw_dtype="float32",
                           normalize="percentile", **options)
    dm.setup("fit")
    sources = [s for batch in dm.train_dataloader() for s in batch["meta"]["source"]]
    assert set(sources) == {"platelet", "snemi"} and 16 <= sources.count("platelet") <= 48
    batch = next(iter(dm.val_dataloader()))
    assert batch["raw"].dtype == torch.float32 and set(batch["meta"]["source"]) == {"platelet", "snemi"}
    with pytest.raises(ValueError, match=r"raw dtype.*uint16.*uint8.*raw_dtype='float32'"):
        CombineDataModule(parts, label_space=["background", "mitochondria"], **options).setup("fit")
    empty = {**parts, "lucchi": (EMDataModule(tmp_path, dataset_id="lucchi-pp"), 1.0)}
    with pytest.raises(ValueError, match=r"lucchi-pp has no training volume \(its prepared splits: \['test'\]\)"):
        CombineDataModule(empty, label_space=["background", "mitochondria"], raw_dtype="float32", **options).setup()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"samples_per_epoch": 0}, {"num_workers": -1},
                                    {"val_fraction": 1.0}, {"val_fraction": -0.1}])
def test_datamodules_check_their_inputs(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SNEMI3DDataModule(**kwargs)


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), -1.0])
def test_combine_checks_its_weights(weight: float) -> None:
    with pytest.raises(ValueError, match="weights"):
        CombineDataModule({"a": (SNEMI3DDataModule(), 1.0), "b": (SNEMI3DDataModule(), weight)})
