"""Foreground index of a label layer: per block of the volume, how many voxels each label
value covers (semantic layers) or how many non-zero voxels and distinct instances it holds
(instance layers). Samplers draw blocks in proportion to these counts — no rejection loop.

Computed once (at prepare or first use) and stored with the volume as
``<volume>/indices/<layer>.npz``, tagged with the layer's content checksum so a rebuilt
volume never reuses a stale index.

Example:
    >>> index = foreground_index(volume, "neurons")  # doctest: +SKIP
    >>> index.block_shape, index.counts.shape  # doctest: +SKIP
    ((16, 128, 128), (7, 8, 8, 2))
"""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_DIR = "indices"
VERSION = 1


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


def _fingerprint(volume: Any, layer: str) -> str:
    """Digest of the recorded block checksums of the layer's level 0."""
    attrs = volume.labels[layer].attrs.get("emdata", {}).get("checksum", {})
    return hashlib.blake2b("".join(attrs.get("blocks", [])).encode(), digest_size=16).hexdigest()


def _compute(volume: Any, layer: str, block_shape: tuple[int, int, int]) -> ForegroundIndex:
    kind = volume.meta["labels"][layer]["kind"]
    arr = volume.labels[layer]
    shape = tuple(arr.shape)
    grid = tuple(-(-n // b) for n, b in zip(shape, block_shape))
    per_block: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int]] = {}
    all_values: set[int] = set()
    z_step = block_shape[0]
    for bz in range(grid[0]):  # one z-slab of blocks in memory at a time
        slab = np.asarray(arr[bz * z_step: (bz + 1) * z_step])
        for by, bx in itertools.product(range(grid[1]), range(grid[2])):
            block = slab[:, by * block_shape[1]: (by + 1) * block_shape[1],
                         bx * block_shape[2]: (bx + 1) * block_shape[2]]
            values, counts = np.unique(block, return_counts=True)
            n_inst = int((values != 0).sum()) if kind == "instance" else 0
            if kind == "instance":  # instance ids are not classes: count background vs foreground
                fg = int(counts[values != 0].sum())
                values = np.array([0, 1], dtype=np.uint64)
                counts = np.array([block.size - fg, fg])
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


def foreground_index(volume: Any, layer: str, block_shape: tuple[int, int, int] | None = None) -> ForegroundIndex:
    """The stored index of ``layer`` (computing and storing it on first use).

    ``block_shape`` defaults to the layer's level-0 chunk shape.
    """
    if layer not in volume.meta["labels"]:
        raise KeyError(f"{volume.path}: no label layer {layer!r}; layers: {list(volume.meta['labels'])}")
    block = tuple(block_shape or volume.meta["labels"][layer]["levels"][0]["chunks"])
    fingerprint = _fingerprint(volume, layer)
    path = Path(volume.path) / INDEX_DIR / f"{layer}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if (int(z["version"]) == VERSION and str(z["fingerprint"]) == fingerprint
                        and tuple(z["block_shape"]) == block):
                    inst = z["instances"] if z["instances"].size else None
                    return ForegroundIndex(layer, str(z["kind"]), block, tuple(z["shape"]),  # type: ignore[arg-type]
                                           z["values"], z["counts"], inst)
        except (OSError, KeyError, ValueError):
            pass  # unreadable or old: rebuild below
    index = _compute(volume, layer, block)  # type: ignore[arg-type]
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:6]}.npz")
    np.savez(tmp, version=VERSION, fingerprint=fingerprint, kind=index.kind, block_shape=np.array(block),
             shape=np.array(index.shape), values=index.values, counts=index.counts,
             instances=index.instances if index.instances is not None else np.zeros(0, np.int64))
    os.replace(tmp, path)
    return index
