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


def block_stats(block: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(values, counts, instances)`` of one index block: instance layers count background and
    foreground voxels (values ``[0, 1]``) and the distinct non-zero ids; semantic layers count
    every value present.

    Example:
        >>> values, counts, n = block_stats(np.array([[[0, 5, 5, 7]]], "u2"), "instance")
        >>> values.tolist(), counts.tolist(), n
        ([0, 1], [1, 3], 2)
    """
    small = block.dtype.kind == "u" and block.dtype.itemsize <= 2  # a histogram beats sorting
    if kind == "instance":  # instance ids are not classes: count background vs foreground
        n_fg = int(np.count_nonzero(block))
        if not n_fg:
            n_inst = 0
        elif small:  # every id starts a run along x: count the run starts (far fewer voxels than the block)
            starts = np.empty(block.shape, bool)
            starts[..., :1] = True
            np.not_equal(block[..., 1:], block[..., :-1], out=starts[..., 1:])
            hist = np.bincount(block[starts], minlength=1 << (8 * block.dtype.itemsize))
            n_inst = int(np.count_nonzero(hist[1:]))
        else:
            n_inst = len(np.unique(block[block != 0]))
        return np.array([0, 1], dtype=np.uint64), np.array([block.size - n_fg, n_fg], np.int64), n_inst
    if small and block.dtype.itemsize == 1:  # uint8 classes
        hist = np.bincount(block.reshape(-1), minlength=256)
        values = np.flatnonzero(hist)
        return values.astype(np.uint64), hist[values].astype(np.int64), 0
    values, counts = np.unique(block, return_counts=True)
    return values.astype(np.uint64), counts.astype(np.int64), 0


class IndexParts:
    """Per-block statistics of a label layer gathered piece by piece (a region at a time, possibly
    in other processes: :meth:`state` / :meth:`merge`), assembled into the index by :meth:`index`.

    Example:
        >>> parts = IndexParts("cells", "instance", (2, 2, 2), (2, 2, 4))
        >>> labels = np.arange(16, dtype="u1").reshape(2, 2, 4)
        >>> parts.add(labels[:, :, 2:], (0, 0, 2)); parts.add(labels[:, :, :2], (0, 0, 0))
        >>> parts.index().instances.tolist() == compute_index(labels, "instance", "cells", (2, 2, 2)).instances.tolist()
        True
    """

    def __init__(self, layer: str, kind: str, block_shape: tuple[int, ...], shape: tuple[int, ...]) -> None:
        self.layer, self.kind = layer, kind
        self.block_shape = tuple(int(b) for b in block_shape)
        self.shape = tuple(int(n) for n in shape)
        self.blocks: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int]] = {}

    def add(self, data: np.ndarray, start: tuple[int, ...]) -> None:
        """Count the blocks of ``data``, the box of the layer starting at ``start`` (block-aligned,
        holding whole blocks: a block cut by the box's end must end at the layer's end)."""
        if any(a % b for a, b in zip(start, self.block_shape)):
            raise ValueError(f"{self.layer}: a piece at {tuple(start)} is not aligned to index blocks "
                             f"{self.block_shape}")
        for z, y, x in itertools.product(*(range(0, n, b) for n, b in zip(data.shape, self.block_shape))):
            bz, by, bx = self.block_shape
            key = tuple((a + o) // b for a, o, b in zip(start, (z, y, x), self.block_shape))
            self.blocks[key] = block_stats(data[z: z + bz, y: y + by, x: x + bx], self.kind)  # type: ignore[index]

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save (``np.savez``) and :meth:`merge` elsewhere."""
        keys = sorted(self.blocks)
        stats = [self.blocks[k] for k in keys]
        return {"blocks": np.array(keys, np.int64).reshape(-1, 3),
                "sizes": np.array([len(v) for v, _, _ in stats], np.int64),
                "values": np.concatenate([v for v, _, _ in stats]) if stats else np.zeros(0, np.uint64),
                "counts": np.concatenate([c for _, c, _ in stats]) if stats else np.zeros(0, np.int64),
                "instances": np.array([n for _, _, n in stats], np.int64)}

    def merge(self, state: Any) -> None:
        """Add a saved :meth:`state`."""
        bounds = np.cumsum([0, *state["sizes"].tolist()])
        values, counts = state["values"], state["counts"]
        for i, key in enumerate(state["blocks"].tolist()):
            self.blocks[tuple(key)] = (values[bounds[i]: bounds[i + 1]], counts[bounds[i]: bounds[i + 1]],
                                       int(state["instances"][i]))

    def index(self) -> ForegroundIndex:
        """The index of every block added; a block of the grid not added is an error."""
        grid = tuple(-(-n // b) for n, b in zip(self.shape, self.block_shape))
        if len(self.blocks) != math.prod(grid):
            raise ValueError(f"{self.layer}: {len(self.blocks)} of {math.prod(grid)} index blocks were counted")
        return _assemble(self.layer, self.kind, self.block_shape, self.shape, self.blocks)  # type: ignore[arg-type]


def _assemble(layer: str, kind: str, block_shape: tuple[int, int, int], shape: tuple[int, int, int],
              per_block: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int]]) -> ForegroundIndex:
    grid = tuple(-(-n // b) for n, b in zip(shape, block_shape))
    stats = list(per_block.values())
    values = (np.unique(np.concatenate([v for v, _, _ in stats])) if stats else np.zeros(0)).astype(np.uint64)
    counts = np.zeros((*grid, len(values)), dtype=np.int64)
    instances = np.zeros(grid, dtype=np.int64) if kind == "instance" else None
    for key, (vals, cnts, n_inst) in per_block.items():
        counts[key][np.searchsorted(values, vals)] = cnts
        if instances is not None:
            instances[key] = n_inst
    return ForegroundIndex(layer, kind, block_shape, shape, values, counts, instances)  # type: ignore[arg-type]


def compute_index(labels: Any, kind: str, layer: str, block_shape: tuple[int, int, int],
                  max_voxels: int = 1 << 26) -> ForegroundIndex:
    """The index of ``labels`` (a numpy or zarr array), read in block-aligned pieces of at most
    ``max_voxels`` voxels (at least one block), so any volume size fits in memory."""
    shape = tuple(labels.shape)
    grid = tuple(-(-n // b) for n, b in zip(shape, block_shape))
    per_block: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, int]] = {}
    bz_, by_, bx_ = block_shape
    run = max(1, max_voxels // math.prod(block_shape))  # blocks along x per read
    for bz, by, bx0 in itertools.product(range(grid[0]), range(grid[1]), range(0, grid[2], run)):
        piece = np.asarray(labels[bz * bz_: (bz + 1) * bz_, by * by_: (by + 1) * by_, bx0 * bx_: (bx0 + run) * bx_])
        for bx in range(bx0, min(bx0 + run, grid[2])):
            per_block[(bz, by, bx)] = block_stats(piece[:, :, (bx - bx0) * bx_: (bx - bx0 + 1) * bx_], kind)
    return _assemble(layer, kind, block_shape, shape, per_block)  # type: ignore[arg-type]


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


def store_indices(path: Path, arrays: dict[str, Any] | None = None,
                  computed: dict[str, ForegroundIndex] | None = None) -> list[Path]:
    """Compute and store the index of every label layer of the volume being written at ``path``
    (its ``emdata`` attributes and checksums already written, the completion marker not yet).
    ``arrays`` may give level-0 label data already in memory, ``computed`` indices already
    counted while writing (with the layer's level-0 chunks as blocks), by layer name.
    """
    import zarr

    root = zarr.open_group(str(path), mode="r")
    written = []
    for layer, meta in root.attrs["emdata"]["labels"].items():
        stored = root[f"labels/{layer}/0"]
        block = tuple(meta["levels"][0]["chunks"])
        fingerprint = _fingerprint(stored.attrs.get("emdata", {}).get("checksum", {}), layer, meta["kind"],
                                   tuple(stored.shape), block)
        target = Path(path) / INDEX_DIR / f"{layer}.npz"
        index = (computed or {}).get(layer)
        if index is None or (index.block_shape, index.shape, index.kind) != (block, tuple(stored.shape), meta["kind"]):
            source = (arrays or {}).get(layer, stored)
            piece = max(1, INDEX_PIECE_BYTES // np.dtype(stored.dtype).itemsize)
            index = compute_index(source, meta["kind"], layer, block, max_voxels=piece)  # type: ignore[arg-type]
        _save(index, fingerprint, target)
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
