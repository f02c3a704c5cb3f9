"""Foreground index of a label layer: per block of the volume, how many voxels each label
value covers (semantic layers) or how many non-zero voxels and distinct instances it holds
(instance layers). Samplers draw blocks in proportion to these counts — no rejection loop.

Built by the writer while preparing, before the volume is marked complete, and stored with it
as ``<volume>/indices/<layer>.npz``, tagged with the layer's content checksum. A published
volume is never written to: for volumes that lack an index (written by an older emdata) it is
computed in memory and cached as ``<EMDATA_HOME>/cache/fgindex/<fingerprint>.npz``.

Example:
    >>> import numpy as np
    >>> labels = np.zeros((4, 8, 8), np.uint8); labels[0, 0, :3] = 2
    >>> index = compute_index(labels, "semantic", "cells", (4, 4, 4))
    >>> index.values.tolist(), index.value_counts(2)[0].tolist()
    ([0, 2], [[3, 0], [0, 0]])
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emdata.atomic import replacing, unique_sibling
from emdata.config import emdata_home

INDEX_DIR = "indices"
INDEX_PIECE_BYTES = 32 << 20
"""Bytes of labels read at once while the writer computes an index (memory stays this, any volume size)."""
VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForegroundIndex:
    """``counts[bz, by, bx, k]`` voxels of ``values[k]`` in each block; ``instances`` per block."""

    layer: str
    kind: str
    block_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    values: np.ndarray
    counts: np.ndarray
    instances: np.ndarray | None

    def block_box(self, block: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        return tuple(slice(b * s, min((b + 1) * s, n))  # type: ignore[return-value]
                     for b, s, n in zip(block, self.block_shape, self.shape))

    def value_counts(self, value: int) -> np.ndarray:
        """Per-block voxel counts of one label value (zeros when the value never occurs)."""
        hit = np.flatnonzero(self.values == value)
        return self.counts[..., hit[0]] if hit.size else np.zeros(self.counts.shape[:3], np.int64)

    def foreground_counts(self) -> np.ndarray:
        """Per-block counts of every non-zero value."""
        return self.counts[..., self.values != 0].sum(axis=-1)


def _fingerprint(checksum_attrs: dict[str, Any], layer: str, kind: str, shape: tuple[int, ...],
                 block: tuple[int, ...]) -> str:
    """Digest of a layer's recorded level-0 block checksums, its kind, shape and the index block shape."""
    blocks = "".join(checksum_attrs.get("blocks", []))
    text = (f"{VERSION}|{layer}|{kind}|{tuple(shape)}|{tuple(block)}|{checksum_attrs.get('algorithm', '')}|"
            f"{checksum_attrs.get('block_shape')}|{blocks}")
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def compute_index(labels: Any, kind: str, layer: str, block_shape: tuple[int, int, int],
                  max_voxels: int = 1 << 26) -> ForegroundIndex:
    """The index of ``labels`` (a numpy or zarr array), read in block-aligned pieces of at most
    ``max_voxels`` voxels (at least one block), so any volume size fits in memory."""
    shape = tuple(labels.shape)
    grid = tuple(-(-n // b) for n, b in zip(shape, block_shape))
    per_block: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int]] = {}
    all_values: set[int] = set()
    bz_, by_, bx_ = block_shape
    run = max(1, max_voxels // math.prod(block_shape))  # blocks along x per read
    for bz, by, bx0 in itertools.product(range(grid[0]), range(grid[1]), range(0, grid[2], run)):
        piece = np.asarray(labels[bz * bz_: (bz + 1) * bz_, by * by_: (by + 1) * by_, bx0 * bx_: (bx0 + run) * bx_])
        small = piece.dtype.kind == "u" and piece.dtype.itemsize == 1
        for bx in range(bx0, min(bx0 + run, grid[2])):
            block = piece[:, :, (bx - bx0) * bx_: (bx - bx0 + 1) * bx_]
            if kind == "instance":  # instance ids are not classes: count background vs foreground
                fg_ids = block[block != 0]
                if fg_ids.dtype.kind == "u" and fg_ids.dtype.itemsize <= 2:  # a histogram beats sorting
                    n_inst = int(np.count_nonzero(np.bincount(fg_ids))) if fg_ids.size else 0
                else:
                    n_inst = len(np.unique(fg_ids))
                values, counts = np.array([0, 1], dtype=np.uint64), np.array([block.size - fg_ids.size, fg_ids.size])
            elif small:  # uint8 classes: a histogram is much faster than sorting
                hist = np.bincount(block.reshape(-1), minlength=256)
                values = np.flatnonzero(hist).astype(np.uint64)
                counts, n_inst = hist[values], 0
            else:
                values, counts = np.unique(block, return_counts=True)
                n_inst = 0
            per_block[(bz, by, bx)] = (values.astype(np.uint64), counts, n_inst)
            all_values.update(int(v) for v in values)
    values = np.array(sorted(all_values), dtype=np.uint64)
    counts = np.zeros((*grid, len(values)), dtype=np.int64)
    instances = np.zeros(grid, dtype=np.int64) if kind == "instance" else None
    position = {int(v): i for i, v in enumerate(values)}
    for key, (vals, cnts, n_inst) in per_block.items():
        for v, c in zip(vals, cnts):
            counts[(*key, position[int(v)])] = c
        if instances is not None:
            instances[key] = n_inst
    return ForegroundIndex(layer, kind, block_shape, shape, values, counts, instances)  # type: ignore[arg-type]


def _save(index: ForegroundIndex, fingerprint: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, unique_sibling(path, suffix=".npz")) as tmp:  # np.savez adds .npz to other names
        np.savez(tmp, version=VERSION, fingerprint=fingerprint, kind=index.kind,
                 block_shape=np.array(index.block_shape), shape=np.array(index.shape), values=index.values,
                 counts=index.counts,
                 instances=index.instances if index.instances is not None else np.zeros(0, np.int64))


def _load(path: Path | io.BytesIO, layer: str, fingerprint: str, block: tuple[int, ...]) -> ForegroundIndex | None:
    """The index saved at ``path`` (or fetched into memory) when it matches; None when absent, unreadable
    or stale."""
    if isinstance(path, Path) and not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if (int(z["version"]) == VERSION and str(z["fingerprint"]) == fingerprint
                    and tuple(z["block_shape"]) == block):
                inst = z["instances"] if z["instances"].size else None
                return ForegroundIndex(layer, str(z["kind"]), block, tuple(z["shape"]),  # type: ignore[arg-type]
                                       z["values"], z["counts"], inst)
    except (OSError, KeyError, ValueError):
        log.debug("%s: unreadable foreground index, rebuilding", path)
    return None


def cache_dir() -> Path:
    """Where indices of volumes that do not carry their own are cached.

    Example:
        >>> cache_dir().parts[-2:]
        ('cache', 'fgindex')
    """
    return emdata_home() / "cache" / "fgindex"


def store_indices(path: Path, arrays: dict[str, Any] | None = None) -> list[Path]:
    """Compute and store the index of every label layer of the volume being written at ``path``
    (its ``emdata`` attributes and checksums already written, the completion marker not yet).
    ``arrays`` may give level-0 label data already in memory, by layer name.
    """
    import zarr

    root = zarr.open_group(str(path), mode="r")
    written = []
    for layer, meta in root.attrs["emdata"]["labels"].items():
        stored = root[f"labels/{layer}/0"]
        block = tuple(meta["levels"][0]["chunks"])
        fingerprint = _fingerprint(stored.attrs.get("emdata", {}).get("checksum", {}), layer, meta["kind"],
                                   tuple(stored.shape), block)
        source = (arrays or {}).get(layer, stored)
        target = Path(path) / INDEX_DIR / f"{layer}.npz"
        piece = max(1, INDEX_PIECE_BYTES // np.dtype(stored.dtype).itemsize)
        _save(compute_index(source, meta["kind"], layer, block, max_voxels=piece),  # type: ignore[arg-type]
              fingerprint, target)
        written.append(target)
    return written


def foreground_index(volume: Any, layer: str, block_shape: tuple[int, int, int] | None = None) -> ForegroundIndex:
    """The index of ``layer``: the one stored with the volume, else the cached one, else computed
    (and cached under EMDATA_HOME when that is writable). Never writes into the volume.

    ``block_shape`` defaults to the layer's level-0 chunk shape.
    """
    if layer not in volume.meta["labels"]:
        raise KeyError(f"{volume.path}: no label layer {layer!r}; layers: {list(volume.meta['labels'])}")
    meta = volume.meta["labels"][layer]
    block = tuple(block_shape or meta["levels"][0]["chunks"])
    stored = volume.labels[layer]
    checksums = stored.attrs.get("emdata", {}).get("checksum", {})
    fingerprint = _fingerprint(checksums, layer, meta["kind"], tuple(stored.shape), block)
    read_file = getattr(volume, "read_file", None)  # a remote volume: fetch its stored index
    if read_file is not None:
        fetched = read_file(f"{INDEX_DIR}/{layer}.npz")
        candidates: list[Path | io.BytesIO] = [io.BytesIO(fetched)] if fetched is not None else []
    else:
        candidates = [Path(volume.path) / INDEX_DIR / f"{layer}.npz"]
    for path in (*candidates, cache_dir() / f"{fingerprint}.npz"):
        index = _load(path, layer, fingerprint, block)
        if index is not None:
            return index
    if not checksums.get("blocks"):
        log.warning("%s: layer %r records no block checksums; its foreground index is not cached", volume.path, layer)
    index = compute_index(volume.labels[layer], meta["kind"], layer, block)  # type: ignore[arg-type]
    if checksums.get("blocks"):
        try:
            _save(index, fingerprint, cache_dir() / f"{fingerprint}.npz")
        except OSError as exc:  # a read-only home: keep it in memory only
            log.info("foreground index of %s/%s not cached (%s)", volume.path, layer, exc)
    return index
