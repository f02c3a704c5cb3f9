"""HDF5 datasets → numpy with their attributes; missing keys are errors listing what exists.

Example:
    >>> import h5py, tempfile
    >>> path = Path(tempfile.mkdtemp()) / "sample_A.hdf"
    >>> with h5py.File(path, "w") as f:
    ...     f.create_dataset("volumes/raw", data=np.zeros((5, 8, 8), np.uint8), fletcher32=True).attrs["resolution"] = (
    ...         40.0, 4.0, 4.0)
    >>> ds = read_dataset(path, "volumes/raw")
    >>> ds.data.shape, ds.attrs["resolution"]
    ((5, 8, 8), array([40.,  4.,  4.]))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class HDF5FormatError(ValueError):
    """An HDF5 file lacks a key or holds something of the wrong kind."""


@dataclass(frozen=True)
class H5Dataset:
    data: np.ndarray
    attrs: dict[str, Any]


def _open(path: Path) -> Any:
    """The file opened read-only; an unreadable one is an :class:`HDF5FormatError` naming it."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise HDF5FormatError(f"{path}: not a readable HDF5 file ({exc}); delete it and fetch it again") from exc


def list_keys(path: Path) -> list[str]:
    """Every dataset path in the file."""
    import h5py

    keys: list[str] = []
    with _open(path) as f:
        f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    return keys


def read_dataset(path: Path, key: str, box: tuple[slice, ...] | None = None) -> H5Dataset:
    """Read dataset ``key`` (optionally a ``box`` of it) and its attributes."""
    import h5py

    with _open(path) as f:
        obj = f.get(key)
        if not isinstance(obj, h5py.Dataset):
            found = []
            f.visititems(lambda name, o: found.append(name) if isinstance(o, h5py.Dataset) else None)
            raise HDF5FormatError(f"{path}: no dataset {key!r}; the file holds {found[:30]}")
        try:
            data = obj[box] if box is not None else obj[()]
        except OSError as exc:  # a failed filter: fletcher32 checksum, or corrupt compressed chunks
            raise HDF5FormatError(f"{path}: dataset {key!r} cannot be read ({exc}); a chunk checksum or "
                                  "decompression failed: the file is corrupt, delete it and fetch it again") from exc
        return H5Dataset(np.asarray(data), {k: v for k, v in obj.attrs.items()})


def read_group_attrs(path: Path, key: str) -> dict[str, Any]:
    """Attributes of a group or dataset (e.g. an ``offset`` on ``annotations``)."""

    with _open(path) as f:
        if key not in f:
            raise HDF5FormatError(f"{path}: no group or dataset {key!r}")
        return {k: v for k, v in f[key].attrs.items()}
