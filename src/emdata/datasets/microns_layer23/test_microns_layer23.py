"""microns-layer23: the shared recipe checks on its CloudVolume-written replica (the bbox recipe's own
behaviour is tested in ``emdata/datasets/test_precomputed_recipe.py``)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import pytest

from emdata.testing.harness import check_recipe

pytestmark = pytest.mark.skipif(find_spec("cloudvolume") is None, reason="needs emdata[precomputed]")


def test_shared_recipe_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # cloudvolume writes ~/.cloudvolume
    check_recipe("microns-layer23", tmp_path, expected=lambda t: {
        "z1-17_y96-160_x112-176": {"raw": t["em"].data,
                                   "segmentation": t["segmentation"].data.repeat(2, 1).repeat(2, 2)}
    })
