"""seed 004's CombineDataModule over prepared replicas, and a real Trainer.fit."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import lightning as L
import torch

from emdata.lightning import CombineDataModule, CREMIDataModule, MitoEM2DataModule, SNEMI3DDataModule
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


def test_combine_datamodule_shape_of_seed_004(home: Path) -> None:
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
            if not annotated.all():  # a dataset missing some union class never calls voxels background …
                assert not ((target == 0) & ~torch.isin(target, torch.tensor([IGNORE]))).any() or source == "mitoem2"
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

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit_runs(home: Path) -> None:
    dm = combine(home)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, accelerator="cpu",
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(_Tiny(), datamodule=dm)
    assert trainer.global_step == 3
