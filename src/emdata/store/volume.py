"""Open a canonical volume for reading.

Example:
    >>> vol = open_volume("~/.local/share/emdata/prepared/snemi3d/train.ome.zarr")  # doctest: +SKIP
    >>> vol.raw.shape, vol.voxel_size, list(vol.labels)  # doctest: +SKIP
    ((100, 1024, 1024), (30.0, 6.0, 6.0), ['neurons'])
    >>> vol.labels["neurons"][0:4, :64, :64]  # doctest: +SKIP
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from emdata.store.writer import COMPLETE_MARKER


class IncompleteVolumeError(RuntimeError):
    """The volume exists but was never completed (interrupted write)."""


class VolumeNotFoundError(FileNotFoundError):
    """No canonical volume at this path."""


class Volume:
    """A prepared volume: raw pyramid, label pyramids and the ``emdata`` metadata block.

    Arrays are zarr arrays (sliced lazily, ``(z, y, x)``); ``.raw`` and ``.labels[name]``
    are level 0, ``.level(i)`` / ``.label_level(name, i)`` the coarser levels.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return (f"Volume({self.meta['dataset']}/{self.name}, split={self.split}, shape={tuple(self.shape)}, "
                f"voxel_size={self.voxel_size} nm, labels={list(self.meta['labels'])})")

    @cached_property
    def _root(self) -> Any:
        import zarr

        return zarr.open_group(str(self.path), mode="r")

    @cached_property
    def meta(self) -> dict[str, Any]:
        """The ``emdata`` metadata block (dataset, split, voxel size, labels, provenance)."""
        return dict(self._root.attrs["emdata"])

    @property
    def name(self) -> str:
        return self.meta["volume"]

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def split(self) -> str:
        return self.meta["split"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Level-0 voxel size in nm, (z, y, x)."""
        z, y, x = self.meta["voxel_size_nm"]
        return (z, y, x)

    @property
    def n_levels(self) -> int:
        return len(self.meta["raw"]["levels"])

    @property
    def raw(self) -> Any:
        return self.level(0)

    def level(self, i: int) -> Any:
        return self._root[str(i)]

    @cached_property
    def labels(self) -> dict[str, Any]:
        """Level-0 label arrays by layer name."""
        return {name: self._root[f"labels/{name}/0"] for name in self.meta["labels"]}

    def label_level(self, name: str, i: int) -> Any:
        return self._root[f"labels/{name}/{i}"]

    def classes(self, name: str) -> list[dict[str, Any]]:
        """Class table of label layer ``name`` (value, name, ontology, ontology_id)."""
        if name not in self.meta["labels"]:
            raise KeyError(f"{self.path}: no label layer {name!r}; layers: {list(self.meta['labels'])}")
        return list(self.meta["labels"][name]["classes"])


def open_volume(path: str | Path) -> Volume:
    """Open a complete volume; a missing or incomplete one is an error that says what to do."""
    path = Path(path).expanduser()
    if not (path / "zarr.json").is_file():
        raise VolumeNotFoundError(f"{path}: no OME-Zarr volume here (no zarr.json); "
                                  "run `emdata prepare <dataset>` first or check the path")
    if not (path / COMPLETE_MARKER).is_file():
        raise IncompleteVolumeError(
            f"{path}: incomplete volume (no {COMPLETE_MARKER}); it was interrupted while being written. "
            "Re-run `emdata prepare <dataset>` to rebuild it.")
    return Volume(path)
