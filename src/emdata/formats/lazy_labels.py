"""Label layers derived from other array sources, box by box: what a recipe computed over the
whole array in memory, with the same voxels, in bounded memory.

- :class:`Reversed` — a source with its three axes reversed (a label stored in x, y, z order);
- :class:`FaceBoundary` — instance ids → classes 0 background, 1 inside, 2 where an instance shares
  a face with a different non-zero instance (a box is read with a one-voxel margin);
- :func:`connected_components` — 3D face-connected components of ``source == value``, numbered
  1, 2, … in order of first appearance in a C-order scan (:func:`scipy.ndimage.label`'s numbering,
  so the ids equal ``emdata.labels.remap.connected_components`` of the whole mask). One pass over
  the z-slices labels each slice in 2D into a scratch file on disk and joins labels that touch
  across consecutive slices (a union-find over the slice labels, never over voxels); the
  returned :class:`Relabelled` source reads a box from that file and maps it through the table.

Example:
    >>> import tempfile
    >>> from emdata.formats.lazy import InMemory, read_all
    >>> mask = InMemory(np.array([[[1, 0, 1]], [[1, 1, 1]], [[0, 0, 1]]], "u1"))
    >>> ids = connected_components(mask, 1, Path(tempfile.mkdtemp()) / "cc.bin")
    >>> read_all(ids)[:, 0].tolist(), ids.dtype
    ([[1, 0, 1], [1, 1, 1], [0, 0, 1]], dtype('uint8'))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

Box = tuple[slice, ...]


def _spans(box: Box, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    out = []
    for sl, n in zip(box, shape):
        start, stop, step = sl.indices(n)
        if step != 1:
            raise ValueError(f"array sources read contiguous boxes; got the slice {sl}")
        out.append((start, max(start, stop)))
    return out


class Reversed:
    """``base`` with its axes reversed (``base.transpose(2, 1, 0)``), read box by box.

    Example:
        >>> from emdata.formats.lazy import InMemory
        >>> data = np.arange(24, dtype="u1").reshape(2, 3, 4)
        >>> box = (slice(1, 3), slice(0, 2), slice(1, 2))
        >>> np.array_equal(Reversed(InMemory(data)).read(box), data.transpose(2, 1, 0)[box])
        True
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.shape, self.dtype = tuple(base.shape[:3])[::-1], np.dtype(base.dtype)

    def read(self, box: Box) -> np.ndarray:
        spans = _spans(box, self.shape)
        block = self.base.read(tuple(slice(a, b) for a, b in spans[::-1]))
        return np.ascontiguousarray(block.transpose(2, 1, 0))


def face_boundary(instances: np.ndarray) -> np.ndarray:
    """Voxels of an instance that share a face with a different non-zero instance.

    Example:
        >>> face_boundary(np.array([[[1, 1, 2, 0, 3]]])).astype(int).tolist()
        [[[0, 1, 1, 0, 0]]]
    """
    out = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim):
        lo = [slice(None)] * instances.ndim
        hi = [slice(None)] * instances.ndim
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = instances[tuple(lo)], instances[tuple(hi)]
        touch = (a != b) & (a != 0) & (b != 0)
        out[tuple(lo)] |= touch
        out[tuple(hi)] |= touch
    return out


class FaceBoundary:
    """uint8 classes of the instance ids of ``base``: 0 background, 1 instance, 2 instance voxel sharing
    a face with a different non-zero instance (:func:`face_boundary`; each box is read with a
    one-voxel margin, so the classes equal those computed over the whole array).

    Example:
        >>> from emdata.formats.lazy import InMemory
        >>> src = FaceBoundary(InMemory(np.array([[[1, 1, 2, 0, 3]]], "u2")))
        >>> src.read((slice(0, 1), slice(0, 1), slice(1, 3))).tolist()
        [[[2, 2]]]
    """

    def __init__(self, base: Any) -> None:
        self.base = base
        self.shape, self.dtype = tuple(base.shape[:3]), np.dtype(np.uint8)

    def read(self, box: Box) -> np.ndarray:
        spans = _spans(box, self.shape)
        outer = [(max(0, a - 1), min(n, b + 1)) for (a, b), n in zip(spans, self.shape)]
        block = self.base.read(tuple(slice(a, b) for a, b in outer))
        classes = (block != 0).astype(np.uint8)
        classes[face_boundary(block)] = 2
        inner = tuple(slice(a - o, b - o) for (a, b), (o, _) in zip(spans, outer))
        return np.ascontiguousarray(classes[inner])


class Relabelled:
    """Provisional ids stored in a raw C-ordered ``(z, y, x)`` scratch file of ``stored`` dtype, each
    mapped through ``table`` (``table[provisional] = final id``) when a box is read.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ids.bin"
        >>> _ = path.write_bytes(np.array([0, 1, 2, 3], "u4").tobytes())
        >>> Relabelled(path, (1, 2, 2), "u4", np.array([0, 5, 5, 7], "u1")).read(
        ...     (slice(0, 1), slice(0, 2), slice(1, 2))).ravel().tolist()
        [5, 7]
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], stored: Any, table: np.ndarray) -> None:
        self.path, self.shape = str(path), tuple(int(n) for n in shape)
        self.stored, self.table = np.dtype(stored), table
        self.dtype = table.dtype

    def read(self, box: Box) -> np.ndarray:
        (z0, z1), (y0, y1), (x0, x1) = _spans(box, self.shape)
        _, ny, nx = self.shape
        row = nx * self.stored.itemsize
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.dtype)
        band = np.empty((y1 - y0, nx), self.stored)
        with open(self.path, "rb", buffering=0) as f:
            for z in range(z0, z1):
                f.seek((z * ny + y0) * row)
                if band.nbytes and f.readinto(memoryview(band).cast("B")) != band.nbytes:
                    raise OSError(f"{self.path}: the scratch labels end before slice {z}; it was removed or "
                                  "truncated while being read — prepare again")
                out[z - z0] = self.table[band[:, x0:x1]]
        return out


def _smallest_uint(top: int) -> np.dtype:
    return np.dtype(next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max))


def connected_components(source: Any, value: Any, scratch: Path | str) -> Relabelled:
    """Face-connected components of ``source == value`` (see the module docstring), their dtype the
    smallest unsigned integer that holds the count (as ``emdata.labels.remap.connected_components``).
    ``scratch`` is the file the slice labels are written to (as many voxels as the source, 4 or 8
    bytes each; delete it when the result has been read).
    """
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as graph_components

    shape = tuple(int(n) for n in source.shape[:3])
    stored = np.dtype(np.uint32 if np.prod(shape, dtype=np.float64) < 2**32 - 1 else np.uint64)
    plane = np.ones((3, 3), bool)
    plane[0, 0] = plane[0, 2] = plane[2, 0] = plane[2, 2] = False  # face (4-) connectivity in the slice
    rest = tuple(slice(0, n) for n in shape[1:])
    scratch = Path(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    links_a: list[np.ndarray] = []
    links_b: list[np.ndarray] = []
    total = 0
    previous: np.ndarray | None = None
    partial = scratch.with_name(scratch.name + ".partial")
    with open(partial, "wb") as out:
        for z in range(shape[0]):
            mask = np.asarray(source.read((slice(z, z + 1), *rest))[0] == value)
            labels, count = ndimage.label(mask, structure=plane)
            ids = labels.astype(stored)
            if count:
                ids[labels > 0] += stored.type(total)
            if previous is not None and count:
                both = (previous > 0) & (ids > 0)
                if both.any():
                    pairs = np.unique(np.stack([previous[both], ids[both]]).astype(np.uint64), axis=1)
                    links_a.append(pairs[0])
                    links_b.append(pairs[1])
            out.write(ids.tobytes())
            total += int(count)
            previous = ids
    os.replace(partial, scratch)
    # components of the graph of slice labels joined across slices; a component's final id is the rank
    # of its smallest slice label, i.e. of its first voxel in C order
    a = np.concatenate(links_a) if links_a else np.zeros(0, np.uint64)
    b = np.concatenate(links_b) if links_b else np.zeros(0, np.uint64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a.astype(np.int64) - 1, b.astype(np.int64) - 1)),
                       shape=(total, total))
    count, component = graph_components(graph, directed=False) if total else (0, np.zeros(0, np.int64))
    first = np.full(count, total, np.int64)
    np.minimum.at(first, component, np.arange(total))
    rank = np.empty(count, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, count + 1)
    table = np.zeros(total + 1, _smallest_uint(count))
    table[1:] = rank[component]
    return Relabelled(scratch, shape, stored, table)
