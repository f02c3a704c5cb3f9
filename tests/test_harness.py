"""The shared recipe checks (`emdata.testing.harness`) fail for a recipe that breaks its contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emdata.datasets.isbi2012 import recipe
from emdata.testing.harness import check_recipe


def exact(truth: dict) -> dict:
    return {"train": {"raw": truth["raw"], "gt_segmentation": truth["gt_segmentation"]}}


def test_a_correct_recipe_passes_and_its_volumes_are_returned(tmp_path: Path) -> None:
    result = check_recipe("isbi2012", tmp_path, expected=exact)
    assert [v.name for v in result.volumes] == ["train"] and result.options == {}
    assert np.array_equal(result.volumes[0].raw[...], result.truth["raw"])


def test_a_voxel_off_is_caught(tmp_path: Path) -> None:
    def one_voxel_off(truth: dict) -> dict:
        raw = truth["raw"].copy()
        raw[0, 0, 0] ^= 1
        return {"train": {"raw": raw}}

    with pytest.raises(AssertionError, match=r"isbi2012/train/raw: 1 voxel\(s\) differ from the replica"):
        check_recipe("isbi2012", tmp_path, expected=one_voxel_off)


def test_a_rerun_that_rewrites_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipe, "reusable", lambda path, prov: None)  # never reuse: every run rewrites
    with pytest.raises(AssertionError, match=r"isbi2012: a rerun rewrote \['.*train\.ome\.zarr"):
        check_recipe("isbi2012", tmp_path, expected=exact)


def test_a_layer_missing_from_the_card_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import emdata.catalog

    card = emdata.catalog.get_card("isbi2012")
    shorter = dataclasses.replace(card, labels=[la for la in card.labels if la.stored_name != "gt_segmentation"])
    monkeypatch.setattr(emdata.catalog, "get_card", lambda dataset: shorter)  # the card the harness reads
    with pytest.raises(AssertionError, match=r"isbi2012: prepare wrote label layer\(s\) \['gt_segmentation'\] not on"):
        check_recipe("isbi2012", tmp_path, expected=exact)
