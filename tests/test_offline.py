"""offline_replica: the recipes' docstring examples run against it, so it must leave no trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emdata.testing.offline import offline_replica


def test_environment_and_folder_are_restored(emdata_home: Path) -> None:
    before = {k: os.environ.get(k) for k in ("EMDATA_HOME", "EMDATA_MIRROR", "EMDATA_CHECKSUMS", "EMDATA_OFFLINE")}
    with offline_replica("isbi2012", shape=(2, 16, 16)) as truth:
        home = Path(os.environ["EMDATA_HOME"])
        assert home != emdata_home and home.is_dir()
        assert os.environ["EMDATA_MIRROR"].startswith("http://127.0.0.1:")
        assert Path(os.environ["EMDATA_CHECKSUMS"]).is_file() and truth["path"].is_file()
    assert {k: os.environ.get(k) for k in before} == before
    assert not home.exists() and not truth["path"].exists()


def test_unknown_dataset_names_the_known_ones() -> None:
    error = r"no replica writer for 'snemi3df'; replicas exist for: .*snemi3d"
    with pytest.raises(ValueError, match=error), offline_replica("snemi3df"):
        pass
