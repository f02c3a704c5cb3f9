"""`emdata.testing.serve_replicas`: every dataset with a recipe has a replica that the real `prepare`
turns into verified volumes, offline, and the environment is restored afterwards."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

import emdata
from emdata import config
from emdata.datasets import preparable
from emdata.store.verify import verify_volume
from emdata.testing import serve_replicas
from emdata.testing.replica_sets import REPLICA_SETS

PRECOMPUTED = {"microns-minnie65", "microns-layer23", "h01", "j0126", "hemibrain", "kasthuri"}


def test_every_recipe_has_a_replica_and_nothing_else_does() -> None:
    assert sorted(REPLICA_SETS) == sorted(preparable())


@pytest.mark.parametrize("dataset", preparable())
def test_each_recipe_prepares_from_its_replica(dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if dataset in PRECOMPUTED and find_spec("cloudvolume") is None:
        pytest.skip("precomputed replicas are written with emdata[precomputed]")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # cloudvolume writes ~/.cloudvolume
    before = config.current()
    with serve_replicas([dataset], tmp_path / "kit", small=True) as served:
        assert config.emdata_home() == served.home and config.mirror() == served.url
        vols = emdata.prepare(dataset, **served.options[dataset])
        assert served.server.log or dataset in {"nucmm", "tem-neutrostruct"}  # hand-placed: no request
        assert_bbox_spells_out_the_em(dataset, served.options[dataset], served.truth[dataset])
    assert config.current() == before
    assert vols and all(v.dataset == dataset for v in vols)
    assert all(str(v.path).startswith(str(tmp_path / "kit" / "prepared")) for v in vols)
    for vol in vols:
        report = verify_volume(vol.path)
        assert report.ok, report.problems


def test_unknown_ids_are_refused_naming_the_known(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no replica for nope; replicas exist for: .*platelet-em"), \
            serve_replicas(["nope"], tmp_path):
        pass


def assert_bbox_spells_out_the_em(dataset: str, options: dict[str, Any], truth: Any) -> None:
    """A precomputed replica's bbox is all of its EM, spelled out (so a rerun reads nothing)."""
    if dataset in PRECOMPUTED:
        em_bbox = ",".join(f"{s.start}:{s.stop}" for s in truth["em"].bounds)
        assert options["bbox"] == em_bbox, f"{dataset}: bbox {options['bbox']} is not the replica's EM {em_bbox}"


PATCH_SIZED = ["snemi3d", "cremi", "lucchi-pp", "kasthuri-pp", "isbi2012", "fib25", "mitoem2", "mitoem", "densecell",
               "human-liver-em", "parlakgul-liver", "platelet-em", "axonem", "nucmm", *sorted(PRECOMPUTED)]
IMAGE_SIZED = ["tem-neutrostruct"]  # 2D images: each fits a 128×128 patch
CROP_SIZED = ["cellmap"]  # annotated crops, small by nature (the README says so): patches up to the crop


@pytest.mark.parametrize("dataset", PATCH_SIZED + IMAGE_SIZED)
def test_default_replicas_fit_a_16x128x128_patch(dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if dataset in PRECOMPUTED and find_spec("cloudvolume") is None:
        pytest.skip("precomputed replicas are written with emdata[precomputed]")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # cloudvolume writes ~/.cloudvolume
    with serve_replicas([dataset], tmp_path / "kit") as served:
        vols = emdata.prepare(dataset, **served.options[dataset])
        assert_bbox_spells_out_the_em(dataset, served.options[dataset], served.truth[dataset])
    assert vols
    patch = (1, 128, 128) if dataset in IMAGE_SIZED else (16, 128, 128)
    for vol in vols:
        assert all(n >= p for n, p in zip(vol.shape, patch)), (vol.name, vol.shape)


def test_every_default_replica_fits_the_readme_patch() -> None:
    assert sorted(PATCH_SIZED + IMAGE_SIZED + CROP_SIZED) == sorted(REPLICA_SETS)
