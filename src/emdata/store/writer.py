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
import errno
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.labels.ontology import ontology
from emdata.store import ome
from emdata.store.checksum import checksum_attr
from emdata.store.chunking import choose_chunks
from emdata.store.fgindex import store_indices
from emdata.store.intensity import raw_intensity
from emdata.store.publish import COMPLETE_MARKER, SCHEMA, commit, tidy, volume_lock
from emdata.store.pyramid import downsample_mean, downsample_nearest, level_shape, plan_levels

__all__ = ["COMPLETE_MARKER", "SCHEMA", "LabelLayerData", "StoreWriteError", "is_complete", "write_volume"]


class StoreWriteError(ValueError):
    """The data handed to the writer cannot form a valid volume, or the disk refused it."""


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


@dataclass
class LabelLayerData:
    """One label layer to store, with its meaning.

    ``classes`` are dicts with ``value``, ``name`` and optionally ``ontology`` (a union class
    name) and ``color``. For instance layers, ``instance_of`` names the union class every
    non-zero id belongs to; offset-coded layers whose ids mean different classes by range
    give ``value_ranges`` instead (``{"min", "max", "ontology"}``, inclusive). ``annotates``
    lists the union classes this layer labels (default: every structure class named above;
    ignore-role classes such as ``unannotated`` mark where nothing is known).
    """

    name: str
    data: np.ndarray
    kind: str
    classes: list[dict[str, Any]] = field(default_factory=list)
    instance_of: str | None = None
    annotates: list[str] | None = None
    ignore_value: int | None = None
    description: str = ""
    value_ranges: list[dict[str, Any]] = field(default_factory=list)


def _union_mapping(layer: LabelLayerData) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """(native value → union class, annotated union classes, classes with ontology ids)."""
    onto = ontology()
    mapping: dict[str, Any] = {}
    classes = []
    for c in layer.classes:
        c = dict(c)
        if c.get("ontology"):
            cls = onto.resolve(c["ontology"])
            c["ontology"], c["ontology_id"] = cls.name, cls.id
            mapping[str(c["value"])] = {"name": cls.name, "id": cls.id}
        classes.append(c)
    if layer.instance_of:
        cls = onto.resolve(layer.instance_of)
        mapping["nonzero"] = {"name": cls.name, "id": cls.id}
    if layer.value_ranges:
        ranges = []
        for r in layer.value_ranges:
            cls = onto.resolve(r["ontology"])
            ranges.append({"min": int(r["min"]), "max": int(r["max"]), "name": cls.name, "id": cls.id})
        mapping["ranges"] = ranges
    annotates = layer.annotates
    if annotates is None:
        named = [v for v in mapping.values() if isinstance(v, dict)] + mapping.get("ranges", [])
        annotates = sorted({v["name"] for v in named if onto.resolve(v["name"]).role != "ignore"},
                           key=lambda n: onto.resolve(n).id)
    else:
        annotates = [onto.resolve(a).name for a in annotates]
    return mapping, annotates, classes


def _standard(data: np.ndarray) -> np.ndarray:
    """The same array with a standard numpy dtype (tifffile's 'Q' uint64 is one zarr refuses)."""
    standard = np.dtype(data.dtype.name).newbyteorder("=")
    if data.dtype == standard and data.dtype.char == standard.char and data.dtype.isnative:
        return data
    return data.astype(standard, copy=False) if not data.dtype.isnative else data.view(standard)


def _validate(raw: np.ndarray, voxel_size: tuple[float, ...], labels: list[LabelLayerData]) -> None:
    if raw.ndim != 3:
        raise StoreWriteError(f"raw must be a (z, y, x) array, got shape {raw.shape}")
    if len(voxel_size) != 3 or not all(v > 0 for v in voxel_size):
        raise StoreWriteError(f"voxel size must be three positive nm values (z, y, x), got {voxel_size}")
    names = set()
    for layer in labels:
        if layer.name in names or not layer.name.replace("_", "").replace("-", "").isalnum():
            raise StoreWriteError(f"label layer name {layer.name!r} is duplicated or not [A-Za-z0-9_-]")
        names.add(layer.name)
        if layer.data.shape != raw.shape:
            raise StoreWriteError(f"label layer {layer.name!r} has shape {layer.data.shape}, raw has {raw.shape}")
        if not np.issubdtype(layer.data.dtype, np.integer):
            raise StoreWriteError(f"label layer {layer.name!r} must be integer, got {layer.data.dtype}")
        if layer.kind not in ("instance", "semantic"):
            raise StoreWriteError(f"label layer {layer.name!r}: kind must be instance or semantic")


def _write_pyramid(group: Any, data: np.ndarray, voxel_size: tuple[float, ...],
                   factors: list[tuple[int, int, int]], is_label: bool) -> list[dict[str, Any]]:
    """Write levels ``0..n`` into ``group``; returns per-level descriptions."""
    import zarr

    levels = []
    current, prev = data, (1, 1, 1)
    for i, factor in enumerate(factors):
        step = tuple(f // p for f, p in zip(factor, prev))
        if i:
            current = downsample_nearest(current, step) if is_label else downsample_mean(current, step)
        assert current.shape == level_shape(data.shape, factor)
        chunks, shards = choose_chunks(current.shape, tuple(v * f for v, f in zip(voxel_size, factor)),
                                       current.dtype.itemsize)
        arr = group.create_array(str(i), shape=current.shape, dtype=current.dtype, chunks=chunks,
                                 shards=shards, compressors=zarr.codecs.ZstdCodec(level=3),
                                 fill_value=0, dimension_names=list(ome.AXES))
        arr[...] = current
        arr.attrs["emdata"] = {"checksum": checksum_attr(current, shards or chunks)}
        scale = tuple(v * f for v, f in zip(voxel_size, factor))
        translation = None if is_label else tuple(v * (f - 1) / 2 for v, f in zip(voxel_size, factor))
        levels.append({"path": str(i), "shape": list(current.shape), "dtype": str(current.dtype),
                       "chunks": list(chunks), "shards": list(shards) if shards else None,
                       "scale": list(scale), "translation": list(translation) if translation else None})
        prev = factor
    return levels


def _ome_levels(levels: list[dict[str, Any]]) -> list[tuple[str, tuple[float, ...], tuple[float, ...] | None]]:
    return [(lv["path"], tuple(lv["scale"]), tuple(lv["translation"]) if lv["translation"] else None)
            for lv in levels]


def is_complete(path: Path) -> bool:
    """Whether a complete version is published at ``path``."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def write_volume(path: Path, raw: np.ndarray, voxel_size_nm: tuple[float, float, float], *,
                 labels: list[LabelLayerData] | tuple[LabelLayerData, ...] = (), meta: dict[str, Any],
                 max_levels: int = 4) -> Path:
    """Write and publish the volume at ``path`` (``…/<volume>.ome.zarr``); returns ``path``.

    ``meta`` must hold ``dataset``, ``volume`` and ``split``; anything else (provenance,
    notes) is stored in the ``emdata`` block as given. An existing complete volume is
    replaced atomically; an incomplete one is removed first.
    """
    import zarr

    path = Path(path)
    raw = _standard(raw)
    labels = [LabelLayerData(**{**la.__dict__, "data": _standard(la.data)}) for la in labels]
    voxel_size = tuple(float(v) for v in voxel_size_nm)
    try:
        _validate(raw, voxel_size, labels)
    except StoreWriteError as exc:
        raise StoreWriteError(f"{path}: {exc}") from None
    for key in ("dataset", "volume", "split"):
        if key not in meta:
            raise StoreWriteError(f"{path}: volume metadata needs {key!r}")
    factors = plan_levels(raw.shape, voxel_size, max_levels=max_levels)

    with volume_lock(path):
        tidy(path)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            raw_levels = _write_pyramid(root, raw, voxel_size, factors, is_label=False)
            label_meta: dict[str, Any] = {}
            if labels:
                labels_group = root.create_group("labels")
                labels_group.attrs["ome"] = {"version": ome.OME_VERSION, "labels": [la.name for la in labels]}
                for layer in labels:
                    g = labels_group.create_group(layer.name)
                    lv = _write_pyramid(g, layer.data, voxel_size, factors, is_label=True)
                    mapping, annotates, classes = _union_mapping(layer)
                    attrs = ome.multiscales(layer.name, _ome_levels(lv), method="nearest")
                    attrs["image-label"] = ome.image_label(classes)
                    g.attrs["ome"] = attrs
                    label_meta[layer.name] = {
                        "kind": layer.kind, "dtype": str(layer.data.dtype), "description": layer.description,
                        "instance_of": layer.instance_of, "classes": classes,
                        "ontology_version": ontology().version, "mapping": mapping,
                        "annotates": annotates, "ignore_value": layer.ignore_value, "levels": lv,
                    }
            emdata_block = {
                "schema": SCHEMA, **meta, "voxel_size_nm": list(voxel_size), "shape": list(raw.shape),
                "raw": {"dtype": str(raw.dtype), "levels": raw_levels, "intensity": raw_intensity(raw)},
                "labels": label_meta,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            root.attrs.update({"ome": ome.multiscales(meta["volume"], _ome_levels(raw_levels), method="mean"),
                               "emdata": emdata_block})
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
