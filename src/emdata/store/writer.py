"""Write one canonical volume: OME-Zarr 0.5 on zarr v3, published atomically.

The volume is built in a hidden temporary folder next to its final path and then published
as a new version with :func:`emdata.store.publish.commit` (completion marker written last,
the ``<name>.ome.zarr`` link switched in one step). The writer lock (``<path>.lock``)
serialises writers, so two processes preparing the same volume never interleave; a reader
never sees a half-written or half-replaced volume.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> tmp = Path(tempfile.mkdtemp())
    >>> path = write_volume(tmp / "v.ome.zarr", np.zeros((8, 64, 64), "u1"), (30, 6, 6),
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> is_complete(path)
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from emdata.atomic import unique_sibling
from emdata.config import thread_pool
from emdata.store.checksum import checksum_attr
from emdata.store.chunking import choose_chunks
from emdata.store.fgindex import store_indices
from emdata.store.intensity import raw_intensity
from emdata.store.layout import (
    LabelLayerData,
    LabelMeaning,
    StoreWriteError,
    create_label_groups,
    create_level_array,
    level_entry,
    standard_dtype,
    validate_labels,
    validate_meta,
    validate_voxel_size,
    write_metadata,
)
from emdata.store.publish import COMPLETE_MARKER, SCHEMA, commit, tidy, volume_lock
from emdata.store.pyramid import downsample_mean, downsample_nearest, level_shape, plan_levels

__all__ = ["COMPLETE_MARKER", "SCHEMA", "LabelLayerData", "StoreWriteError", "fill_from_sources", "is_complete",
           "write_blockwise", "write_volume"]


IN_PROCESS_THREADS = 4
"""Threads (at most one per core) that write regions when no dask client is given."""
UNIT_CHUNKS = (1, 2, 2)
"""Chunks (z, y, x) per region of :func:`write_blockwise` where no array is sharded (a shard
otherwise): 2**21 voxels with the canonical chunks, so a region of uint64 ids is 16 MiB."""


def disk_error(path: Path, exc: OSError) -> StoreWriteError | None:
    """A one-line error for a full or read-only disk while writing the volume at ``path`` (else None).

    Example:
        >>> str(disk_error(Path("/d/v.ome.zarr"), OSError(errno.ENOSPC, "No space left", "/d/.v.tmp/0/c/0/0/0")))
        'no space left on device writing /d/.v.tmp/0/c/0/0/0 (volume /d/v.ome.zarr); free space there and re-run'
    """
    where = exc.filename or path
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreWriteError(f"no space left on device writing {where} (volume {path}); free space there and re-run")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreWriteError(f"cannot write {where} (volume {path}): {exc.strerror}; choose a writable EMDATA_HOME")
    return None


def _standard(data: np.ndarray) -> np.ndarray:
    """The same array with a standard numpy dtype (tifffile's 'Q' uint64 is one zarr refuses)."""
    standard = standard_dtype(data.dtype)
    if data.dtype == standard and data.dtype.char == standard.char and data.dtype.isnative:
        return data
    return data.astype(standard, copy=False) if not data.dtype.isnative else data.view(standard)


def _write_pyramid(group: Any, prefix: str, data: np.ndarray, voxel_size: tuple[float, ...],
                   factors: list[tuple[int, int, int]], is_label: bool) -> list[dict[str, Any]]:
    """Write levels ``0..n`` as ``<prefix><level>`` under ``group``; returns their level entries."""
    levels = []
    current, prev = data, (1, 1, 1)
    for i, factor in enumerate(factors):
        step = tuple(f // p for f, p in zip(factor, prev))
        if i:
            current = downsample_nearest(current, step) if is_label else downsample_mean(current, step)
        assert current.shape == level_shape(data.shape, factor)
        chunks, shards = choose_chunks(current.shape, tuple(v * f for v, f in zip(voxel_size, factor)),
                                       current.dtype.itemsize)
        arr = create_level_array(group, f"{prefix}{i}", current.shape, current.dtype, chunks, shards)
        arr[...] = current
        arr.attrs["emdata"] = {"checksum": checksum_attr(current, shards or chunks)}
        levels.append(level_entry(str(i), current.shape, current.dtype, chunks, shards, voxel_size, factor,
                                  is_label=is_label))
        prev = factor
    return levels


def is_complete(path: Path) -> bool:
    """Whether a complete version is published at ``path``."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def write_volume(path: Path, raw: Any, voxel_size_nm: tuple[float, float, float], *,
                 labels: list[LabelLayerData] | tuple[LabelLayerData, ...] = (), meta: dict[str, Any],
                 max_levels: int = 4, blockwise: bool = False, client: Any = None) -> Path:
    """Write and publish the volume at ``path`` (``…/<volume>.ome.zarr``); returns ``path``.

    ``meta`` must hold ``dataset``, ``volume`` and ``split``; anything else (provenance,
    notes) is stored in the ``emdata`` block as given. An existing complete volume is
    replaced atomically; an incomplete one is removed first.

    ``raw`` and each layer's ``data`` are numpy arrays, or *array sources* (``shape``,
    ``dtype``, ``read(box)``; see :mod:`emdata.formats.lazy`). Numpy arrays are written whole
    in memory unless ``blockwise``; sources (or ``blockwise=True``, or a dask ``client``) go
    region by region through :func:`write_blockwise`, with the same result voxel for voxel.
    """
    if blockwise or client is not None or not isinstance(raw, np.ndarray) or any(
            not isinstance(la.data, np.ndarray) for la in labels):
        return write_blockwise(path, raw, voxel_size_nm, labels=labels, meta=meta, max_levels=max_levels,
                               client=client)
    import zarr

    path = Path(path)
    raw = _standard(raw)
    labels = [LabelLayerData(**{**la.__dict__, "data": _standard(la.data)}) for la in labels]
    voxel_size = tuple(float(v) for v in voxel_size_nm)
    try:
        if raw.ndim != 3:
            raise StoreWriteError(f"raw must be a (z, y, x) array, got shape {raw.shape}")
        validate_voxel_size(voxel_size)
        validate_labels((la.name, la.data.dtype, la.kind) for la in labels)
        for layer in labels:
            if layer.data.shape != raw.shape:
                raise StoreWriteError(f"label layer {layer.name!r} has shape {layer.data.shape}, raw has {raw.shape}")
        validate_meta(meta)
    except StoreWriteError as exc:
        raise StoreWriteError(f"{path}: {exc}") from None
    factors = plan_levels(raw.shape, voxel_size, max_levels=max_levels)

    with volume_lock(path):
        tidy(path)
        tmp = unique_sibling(path)
        try:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            create_label_groups(root, [la.name for la in labels])
            raw_levels = _write_pyramid(root, "", raw, voxel_size, factors, is_label=False)
            written = []
            for layer in labels:
                lv = _write_pyramid(root, f"labels/{layer.name}/", layer.data, voxel_size, factors, is_label=True)
                written.append((layer, layer.data.dtype, lv))
            write_metadata(root, meta, voxel_size, raw.shape, raw.dtype, raw_levels, raw_intensity(raw), written)
            store_indices(tmp, {la.name: la.data for la in labels})  # samplers' indices, before publishing
            # Everything is written: from here on the folder is only marked complete and published.
            commit(path, tmp, {"arrays": 1 + len(labels), "levels": len(factors)})
        except OSError as exc:
            discard_failed_write(tmp)
            clear = disk_error(path, exc)
            if clear is None:
                raise
            raise clear from None
        except BaseException:
            discard_failed_write(tmp)
            raise
    return path


class _Source:
    """A numpy array as an array source (for :func:`write_blockwise`)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype = data, tuple(data.shape), data.dtype

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.data[box])


def fill_from_sources(sources: dict[str, Any], region: Any, name: str) -> np.ndarray:
    """The voxels of ``region`` of array ``name`` (``raw`` or a label layer) read from ``sources[name]``."""
    return sources[name].read(region.slices)


def write_blockwise(path: Path, raw: Any, voxel_size_nm: tuple[float, float, float], *,
                    labels: list[LabelLayerData] | tuple[LabelLayerData, ...] = (), meta: dict[str, Any],
                    max_levels: int = 4, client: Any = None) -> Path:
    """Write the volume region by region from array sources (or numpy arrays): memory stays a few
    regions of one array (a shard, or a shard's worth of chunks) whatever the volume's size.

    Built with :class:`emdata.store.sharded.ShardedVolumeWriter`: level 0 region by region (each
    region, while in memory, also downsampled to the pyramid levels it tiles; other levels from
    the one below), block checksums, intensity histogram and foreground indices merged from
    per-region records; resumable after an interruption (regions already
    written are kept); on a dask ``client`` when given (the sources must then be readable on
    its workers: file-backed sources, not arrays held in this process), else on
    :data:`IN_PROCESS_THREADS` threads of this process (decoding, compression and hashing release
    the GIL; one region per thread in memory). The published volume is
    the one :func:`write_volume` writes in memory from the same arrays, voxel for voxel.

    Example:
        >>> import tempfile
        >>> path = write_blockwise(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((8, 64, 64), "u1"), (30, 6, 6),
        ...                        meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> is_complete(path)
        True
    """
    from emdata.store.sharded import LabelSpec, ShardedVolumeWriter, build_volume

    def source(data: Any) -> Any:
        return _Source(data) if isinstance(data, np.ndarray) else data

    sources = {"raw": source(raw), **{la.name: source(la.data) for la in labels}}
    shape = tuple(int(n) for n in raw.shape)
    try:
        if len(shape) != 3:
            raise StoreWriteError(f"raw must be a (z, y, x) array, got shape {shape}")
        for layer in labels:
            if tuple(layer.data.shape) != shape:
                raise StoreWriteError(f"label layer {layer.name!r} has shape {tuple(layer.data.shape)}, raw has "
                                      f"{shape}")
        specs = [LabelSpec(la.name, standard_dtype(la.data.dtype).name, la.kind, list(la.classes),
                           **{f.name: getattr(la, f.name) for f in dataclasses.fields(LabelMeaning)})
                 for la in labels]
        writer = ShardedVolumeWriter(path, shape, standard_dtype(raw.dtype), voxel_size_nm, labels=specs,
                                     meta=meta, max_levels=max_levels, unit_chunks=UNIT_CHUNKS)
    except StoreWriteError as exc:
        raise StoreWriteError(f"{path}: {exc}") from None
    import functools

    fill = functools.partial(fill_from_sources, sources)
    try:
        if client is not None:
            return build_volume(writer, fill, client=client)
        with thread_pool(max(1, min(os.cpu_count() or 1, IN_PROCESS_THREADS)), "emdata-write") as pool:
            return build_volume(writer, fill, client=pool)
    except OSError as exc:
        clear = disk_error(Path(path), exc)
        if clear is None:
            raise
        raise clear from None
    except BaseException:
        if any(getattr(s, "failed", lambda: False)() for s in sources.values()):
            # regions were read from a source that then failed its check (a zip member's CRC): keep none
            writer.discard()
        raise


def discard_failed_write(folder: Path) -> None:
    """Remove the temporary ``folder`` of a failed write, once zarr's writes still in flight are over.

    When one chunk write fails (disk full), zarr's other writes of the same call are still
    running on its event loop; they would re-create folders after a plain ``rmtree`` and be
    reported as "Task was destroyed but it is pending!" at exit. Waiting for them first
    leaves nothing behind and keeps the error to one line.
    """
    import asyncio

    from zarr.core.sync import sync

    async def drain() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=60)

    with contextlib.suppress(Exception):  # the loop is gone or busy: removing the folder is what matters
        sync(drain())
    shutil.rmtree(folder, ignore_errors=True)
