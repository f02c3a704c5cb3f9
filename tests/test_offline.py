"""offline_replica: the recipes' docstring examples run against it, so it must leave no trace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emdata import config
from emdata.testing.offline import offline_replica


def test_settings_environment_and_folder_are_restored(emdata_home: Path) -> None:
    env_before, settings_before = dict(os.environ), config.current()
    with offline_replica("isbi2012", shape=(2, 16, 16)) as truth:
        inside = config.current()
        home = inside.home
        assert home != emdata_home and home.is_dir()
        assert inside.mirror.startswith("http://127.0.0.1:") and not inside.offline
        assert Path(inside.checksums).is_file() and truth["path"].is_file()
        assert dict(os.environ) == env_before  # settings travel by value, not through the environment
    assert config.current() == settings_before and dict(os.environ) == env_before
    assert not home.exists() and not truth["path"].exists()


def test_unknown_dataset_names_the_known_ones() -> None:
    error = r"no replica writer for 'snemi3df'; replicas exist for: .*snemi3d"
    with pytest.raises(ValueError, match=error), offline_replica("snemi3df"):
        pass
