"""Open a canonical volume for reading.

A :class:`Volume` reads the version that was published when it first touched the data and
pins it (see :mod:`emdata.store.publish`): a ``prepare --force`` replacing the volume
meanwhile does not change what it reads; if that version is deleted anyway (``emdata cache
clean``), reads raise :class:`~emdata.store.publish.VolumeReplacedError` instead of returning
fill values.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.writer import write_volume
    >>> path = Path(tempfile.mkdtemp()) / "v.ome.zarr"
    >>> _ = write_volume(path, np.ones((4, 32, 32), "u1"), (30, 6, 6),
    ...                  meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> vol = open_volume(path)
    >>> vol.raw.shape, vol.voxel_size, int(vol.raw[0, 0, 0])
    ((4, 32, 32), (30.0, 6.0, 6.0), 1)
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from zarr.storage import LocalStore

from emdata.store.publish import COMPLETE_MARKER, VolumeReplacedError, pin, resolve


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
        self._pin: int | None = None
        self._fixed = False  # True when the version to read was fixed elsewhere (unpickled)

    def __getstate__(self) -> dict[str, Any]:
        folder = self.__dict__.get("folder")
        return {"path": self.path, **({"folder": folder} if folder is not None else {})}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]
        if "folder" in state:
            self.__dict__["folder"] = state["folder"]
            self._fixed = True

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Release the pin on the version being read (done on garbage collection too)."""
        fd, self._pin = getattr(self, "_pin", None), None
        if fd is not None:
            try:
                os.close(fd)
            except Exception:  # already closed, or the interpreter is shutting down
                return

    @cached_property
    def folder(self) -> Path:
        """The version folder read (the target of the ``<name>.ome.zarr`` link, or the path itself)."""
        return resolve(self.path)

    def __repr__(self) -> str:
        return (f"Volume({self.meta['dataset']}/{self.name}, split={self.split}, shape={tuple(self.shape)}, "
                f"voxel_size={self.voxel_size} nm, labels={list(self.meta['labels'])})")

    @cached_property
    def _root(self) -> Any:
        import zarr

        if self._pin is None:
            self._pin = pin(self.folder)
            for _ in range(20):  # replaced between resolving the link and pinning: take the new version
                if self._pin is not None or self._fixed or resolve(self.path) == self.folder:
                    break
                self.__dict__["folder"] = resolve(self.path)
                self._pin = pin(self.folder)
        if not (self.folder / COMPLETE_MARKER).is_file():
            raise VolumeReplacedError(f"{self.path}: the version {self.folder.name} opened earlier was replaced "
                                      "or removed; open the volume again")
        # each array's own zarr.json, not the root's consolidated copy: a missing array stays an error
        return zarr.open_group(_PinnedStore(self.folder, read_only=True), mode="r", use_consolidated=False)

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

    def _array(self, key: str) -> Any:
        try:
            return self._root[key]
        except KeyError:
            raise KeyError(f"{self.folder / key}: array missing from {self.path}; run `emdata verify {self.path}` "
                           f"and `emdata prepare {self.dataset} --force` to rebuild it") from None

    def level(self, i: int) -> Any:
        return self._array(str(i))

    @cached_property
    def labels(self) -> dict[str, Any]:
        """Level-0 label arrays by layer name."""
        return {name: self._array(f"labels/{name}/0") for name in self.meta["labels"]}

    def label_level(self, name: str, i: int) -> Any:
        return self._array(f"labels/{name}/{i}")

    @property
    def predictions(self) -> dict[str, Any]:
        """Prediction layers stored with the volume (``emdata.predictions``: kind, path, provenance, …)."""
        return dict(self.meta.get("predictions", {}))

    def prediction(self, name: str, level: int = 0) -> Any:
        """Level ``level`` of prediction layer ``name`` (``(z, y, x)`` labels or ``(c, z, y, x)`` probabilities)."""
        if name not in self.predictions:
            raise KeyError(f"{self.path}: no prediction layer {name!r}; predictions: {sorted(self.predictions)}")
        return self._array(f"{self.predictions[name]['path']}/{level}")

    def classes(self, name: str) -> list[dict[str, Any]]:
        """Class table of label layer ``name`` (value, name, ontology, ontology_id)."""
        if name not in self.meta["labels"]:
            raise KeyError(f"{self.path}: no label layer {name!r}; layers: {list(self.meta['labels'])}")
        return list(self.meta["labels"][name]["classes"])


class _PinnedStore(LocalStore):
    """A read-only local store that tells a missing chunk (fill value) from a deleted version."""

    def _check(self, key: str) -> None:
        if not (Path(self.root) / COMPLETE_MARKER).is_file():
            raise VolumeReplacedError(f"{Path(self.root)}: this version of the volume was removed while being read "
                                      f"(reading {key}); open the volume again")

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        value = await super().get(key, prototype, byte_range)
        if value is None:
            self._check(key)
        return value

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
        key_ranges = list(key_ranges)
        values = await super().get_partial_values(prototype, key_ranges)
        for (key, _), value in zip(key_ranges, values):
            if value is None:
                self._check(key)
        return values


def open_volume(path: str | Path, *, missing: str | None = None, cache_bytes: int | None = None) -> Volume:
    """Open a complete volume; a missing or incomplete one is an error that says what to do.

    ``path`` is a local ``*.ome.zarr`` folder or the URL of one (``https://``, ``http://``,
    ``s3://``, ``gs://``): a URL gives a :class:`~emdata.store.remote.RemoteVolume`, read
    without a full copy; ``missing`` (``"error"`` or ``"ignore"``) and ``cache_bytes`` apply to
    URLs only (see :mod:`emdata.store.remote`). A ``precomputed://`` locator (the ``folder`` of a
    :class:`~emdata.store.precomputed.PrecomputedVolume`) re-opens precomputed layers.
    """
    from emdata.store.remote import is_url, open_remote

    if isinstance(path, str) and path.startswith("precomputed://"):
        from emdata.store.precomputed import open_precomputed_locator

        if missing is not None or cache_bytes is not None:
            raise ValueError(f"{path}: open precomputed layers with emdata.store.precomputed.open_precomputed "
                             "(its missing= option); cache_bytes= applies to OME-Zarr URLs")
        return open_precomputed_locator(path)
    if is_url(path):
        return open_remote(str(path), missing=missing, cache_bytes=cache_bytes)
    if missing is not None or cache_bytes is not None:
        raise ValueError(f"{path}: missing= and cache_bytes= apply to remote volumes (URLs) only; a local volume "
                         "reads its chunks from disk")
    path = Path(path).expanduser()
    if not (path / "zarr.json").is_file():
        raise VolumeNotFoundError(f"{path}: no OME-Zarr volume here (no zarr.json); "
                                  "run `emdata prepare <dataset>` first or check the path")
    if not (path / COMPLETE_MARKER).is_file():
        raise IncompleteVolumeError(
            f"{path}: incomplete volume (no {COMPLETE_MARKER}); it was interrupted while being written. "
            "Re-run `emdata prepare <dataset>` to rebuild it.")
    return Volume(path)
