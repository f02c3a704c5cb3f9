"""Source arrays read box by box: what recipes hand the writer instead of whole numpy arrays,
so ``prepare`` holds one region at a time whatever the volume's size.

An *array source* has ``shape``, ``dtype`` and ``read(box)`` (a tuple of three slices, z/y/x)
returning a numpy array. Sources are small picklable descriptions (a path and a key, never the
voxels), so the same source is read in this process or on any dask worker that sees the path:

- :class:`InMemory` wraps an array a recipe had to compute whole (small volumes only);
- :class:`TiffStack` reads a multipage TIFF page by page; uncompressed contiguous stacks are
  memory-mapped (no decoding, no copy), compressed pages are decoded one at a time and kept in
  a per-process cache of decoded pages bounded in bytes (:data:`PAGE_CACHE_BYTES`);
- :class:`HDF5Array` reads a box of an HDF5 dataset (h5py decodes only the chunks it touches);
- :class:`SliceStack` reads a stack of 2D images, one decoded slice at a time (PNG slices in
  an archive), through a picklable ``read_slice(z)``;
- :class:`Mapped` applies a voxel-wise function to every box of another source (label value
  remapping, a dtype cast), so the whole array is never formed.

:func:`reduce_slabs` runs a check or a statistic over a source in z-slabs of bounded size.

Example:
    >>> import numpy as np
    >>> src = Mapped(InMemory(np.arange(24, dtype="u1").reshape(2, 3, 4)), np.negative, "u1")
    >>> src.shape, src.dtype, src.read((slice(1, 2), slice(0, 1), slice(0, 2))).tolist()
    ((2, 3, 4), dtype('uint8'), [[[244, 243]]])
"""

from __future__ import annotations

import collections
import functools
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

Box = tuple[slice, ...]
PAGE_CACHE_BYTES = 256 << 20
"""Decoded TIFF pages / image slices kept per process (regions next to each other in x reuse them)."""
SLAB_BYTES = 64 << 20
"""Bytes of one z-slab read by :func:`reduce_slabs`."""

__all__ = ["PAGE_CACHE_BYTES", "ArraySource", "Combined", "HDF5Array", "InMemory", "Mapped", "Placed", "SliceStack",
           "TiffStack", "as_source", "count_equal", "held_in_memory", "is_source", "maximum", "minimum", "nbytes",
           "read_all", "reduce_slabs", "unique_values"]


@runtime_checkable
class ArraySource(Protocol):
    """Anything with ``shape``, ``dtype`` and ``read(box)`` (see the module docstring)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, box: Box) -> np.ndarray: ...


def is_source(obj: Any) -> bool:
    """Whether ``obj`` is an array source rather than a numpy array.

    Example:
        >>> is_source(InMemory(np.zeros(1))), is_source(np.zeros(1))
        (True, False)
    """
    return not isinstance(obj, np.ndarray) and isinstance(obj, ArraySource)


def as_source(obj: Any) -> ArraySource:
    """``obj`` as an array source (numpy arrays are wrapped in :class:`InMemory`).

    Example:
        >>> as_source(np.zeros((1, 2, 2), "u2")).dtype
        dtype('uint16')
    """
    return obj if is_source(obj) else InMemory(np.asarray(obj))


def nbytes(obj: Any) -> int:
    """Bytes of the whole array ``obj`` (a numpy array or a source).

    Example:
        >>> nbytes(InMemory(np.zeros((2, 4, 4), "u2")))
        64
    """
    return math.prod(obj.shape) * np.dtype(obj.dtype).itemsize


def read_all(obj: Any) -> np.ndarray:
    """The whole array (for small sources and tests).

    Example:
        >>> read_all(InMemory(np.ones((1, 2, 2), "u1"))).sum()
        np.uint64(4)
    """
    if isinstance(obj, np.ndarray):
        return obj
    return obj.read(tuple(slice(0, n) for n in obj.shape[:3]))


def _span(sl: slice, n: int) -> tuple[int, int]:
    start, stop, step = sl.indices(n)
    if step != 1:
        raise ValueError(f"array sources read contiguous boxes; got the slice {sl}")
    return start, max(start, stop)


def reduce_slabs(source: Any, func: Callable[[np.ndarray], Any], slab_bytes: int = SLAB_BYTES) -> Iterator[Any]:
    """``func(slab)`` for consecutive z-slabs of ``source`` (each at most ``slab_bytes``, at least one slice).

    Example:
        >>> src = InMemory(np.arange(8, dtype="u1").reshape(8, 1, 1))
        >>> max(reduce_slabs(src, np.max, slab_bytes=2))
        np.uint8(7)
    """
    shape = tuple(source.shape)
    plane = max(1, math.prod(shape[1:]) * np.dtype(source.dtype).itemsize)
    step = max(1, slab_bytes // plane)
    rest = tuple(slice(0, n) for n in shape[1:3])
    for z0 in range(0, shape[0], step):
        yield func(source.read((slice(z0, min(z0 + step, shape[0])), *rest)))


class InMemory:
    """A numpy array as a source (the recipe computed it whole).

    Example:
        >>> InMemory(np.zeros((2, 3, 4))).read((slice(0, 1), slice(None), slice(2, 4))).shape
        (1, 3, 2)
    """

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = tuple(data.shape)
        self.dtype = data.dtype

    def read(self, box: Box) -> np.ndarray:
        return np.asarray(self.data[box])


class Mapped:
    """``func`` applied to every box read from ``base`` (a voxel-wise function: the result of a
    box must not depend on the voxels outside it). ``func`` must be picklable for a cluster
    (a module-level function or a ``functools.partial`` of one).

    Example:
        >>> Mapped(InMemory(np.array([[[1, 2]]], "u1")), functools.partial(np.multiply, 3), "u2").read(
        ...     (slice(0, 1), slice(0, 1), slice(0, 2))).tolist()
        [[[3, 6]]]
    """

    def __init__(self, base: Any, func: Callable[[np.ndarray], np.ndarray], dtype: Any,
                 shape: tuple[int, ...] | None = None) -> None:
        self.base, self.func = base, func
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape) if shape is not None else tuple(base.shape[:3])

    def read(self, box: Box) -> np.ndarray:
        out = np.asarray(self.func(self.base.read(box)))
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return out


class _PageCache:
    """Decoded pages of this process, least recently used dropped first, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: collections.OrderedDict[Any, np.ndarray] = collections.OrderedDict()
        self.size = 0
        self.lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], np.ndarray]) -> np.ndarray:
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
        value = make()
        with self.lock:
            if key not in self.items and value.nbytes <= self.limit:
                self.items[key] = value
                self.size += value.nbytes
                while self.size > self.limit:
                    _, old = self.items.popitem(last=False)
                    self.size -= old.nbytes
        return value


_pages = _PageCache(PAGE_CACHE_BYTES)


class TiffStack:
    """A multipage TIFF (one page per z; ``(z, y, x)`` grey or ``(z, y, x, samples)`` colour) read page
    by page. ``name`` is used in errors. Uncompressed contiguous stacks are memory-mapped.

    Example:
        >>> import tempfile, tifffile
        >>> path = Path(tempfile.mkdtemp()) / "s.tif"
        >>> tifffile.imwrite(path, np.arange(48, dtype="u1").reshape(3, 4, 4), photometric="minisblack")
        >>> stack = TiffStack(path)
        >>> stack.shape, stack.contiguous, stack.read((slice(2, 3), slice(0, 1), slice(0, 4))).tolist()
        ((3, 4, 4), True, [[[32, 33, 34, 35]]])
    """

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        import tifffile

        from emdata.formats.tiff import TiffFormatError

        self.path = str(path)
        self.name = name or self.path
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series
                first = series[0]
                samples = tif.pages.first.samplesperpixel
                if len(series) > 1 and all(s.shape == first.shape and s.dtype == first.dtype for s in series):
                    self.layout = "series"  # pages appended one by one: one series per page
                    pages, plane = len(series), tuple(first.shape)
                    self.offset = None
                else:
                    self.layout = "pages"
                    shape = tuple(first.shape)
                    single = len(shape) == 2 or (samples > 1 and len(shape) == 3)
                    pages, plane = (1, shape) if single else (shape[0], shape[1:])
                    self.offset = first.dataoffset  # not None: uncompressed and contiguous in the file
                page = tif.pages.first
                self.samples = page.samplesperpixel
                self.photometric = page.photometric.name
                self.compression = page.compression.name
                self.pages = len(tif.pages)
                dtype = first.dtype
        except (tifffile.TiffFileError, ValueError, OSError, RuntimeError, IndexError) as exc:
            raise TiffFormatError(f"{self.name}: not a readable TIFF ({type(exc).__name__}: {exc}); the file is "
                                  "truncated or corrupt — delete it and fetch it again") from exc
        self.dtype = np.dtype(dtype)
        self.shape = (pages, *plane)
        expected = 4 if self.samples > 1 else 3
        if len(self.shape) != expected:
            raise TiffFormatError(f"{self.name}: expected a z-stack of {'colour' if self.samples > 1 else 'grey'} "
                                  f"pages, got an array of shape {self.shape}")
        self.contiguous = self.offset is not None
        stat = Path(self.path).stat()
        self.stamp = (stat.st_mtime_ns, stat.st_size)  # decoded pages of a replaced file are never reused

    def _page(self, z: int) -> np.ndarray:
        return _pages.get((self.path, self.stamp, z),
                          functools.partial(_decode_page, self.path, self.stamp, self.layout, z, self.shape[1:]))

    def read(self, box: Box) -> np.ndarray:
        z0, z1 = _span(box[0], self.shape[0])
        rest = tuple(box[1:3])
        if self.offset is not None:
            return _read_mapped(self.path, self.offset, self.shape, self.dtype, z0, z1, rest)
        out = np.empty((z1 - z0, *np.empty(self.shape[1:], dtype="u1")[rest].shape), self.dtype)
        for z in range(z0, z1):
            out[z - z0] = self._page(z)[rest]
        return out


def _read_mapped(path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, z0: int, z1: int,
                 rest: tuple[slice, ...]) -> np.ndarray:
    """Box ``[z0:z1, *rest]`` of an uncompressed contiguous stack: per page, the rows of the box
    are read (full width, one ``readinto``) and the columns copied out, so memory stays one
    page's band of rows beyond the box itself (no mapping lingers in this process's RSS)."""
    plane_shape = shape[1:]
    ys = rest[0].indices(plane_shape[0]) if rest else (0, plane_shape[0], 1)
    y0, y1 = ys[0], max(ys[0], ys[1])
    row = math.prod(plane_shape[1:]) * dtype.itemsize
    out = np.empty((max(0, z1 - z0), *np.empty(plane_shape, dtype="u1")[rest].shape), dtype)
    band = np.empty((y1 - y0, *plane_shape[1:]), dtype)
    inner = (slice(None), *rest[1:])
    with open(path, "rb", buffering=0) as f:
        for z in range(z0, z1):
            f.seek(offset + (z * plane_shape[0] + y0) * row)
            if f.readinto(memoryview(band).cast("B")) != band.nbytes:
                raise OSError(f"{path}: page {z} ends early; the file is truncated — delete it and fetch it again")
            out[z - z0] = band[inner]
    return out


_tiffs: dict[tuple[str, tuple[int, int]], Any] = {}
_tiff_lock = threading.Lock()


def _decode_page(path: str, stamp: tuple[int, int], layout: str, z: int, plane: tuple[int, ...]) -> np.ndarray:
    import tifffile

    from emdata.formats.tiff import TiffFormatError

    with _tiff_lock:  # one open handle per file and process; tifffile's handle is not thread-safe
        tif = _tiffs.get((path, stamp))
        if tif is None:
            if len(_tiffs) >= 4:
                _tiffs.pop(next(iter(_tiffs))).close()
            tif = _tiffs[(path, stamp)] = tifffile.TiffFile(path)
        try:
            data = tif.series[z].asarray() if layout == "series" else tif.pages[z].asarray()
        except (tifffile.TiffFileError, ValueError, OSError, RuntimeError, IndexError) as exc:
            raise TiffFormatError(f"{path}: page {z} cannot be read ({type(exc).__name__}: {exc}); the file is "
                                  "truncated or corrupt — delete it and fetch it again") from exc
    if data.size != math.prod(plane):
        raise TiffFormatError(f"{path}: page {z} holds {data.shape}, the stack's pages are {plane}")
    return np.asarray(data).reshape(plane)


class HDF5Array:
    """Dataset ``key`` of the HDF5 file at ``path``, read box by box.

    Example:
        >>> import h5py, tempfile
        >>> path = Path(tempfile.mkdtemp()) / "v.h5"
        >>> with h5py.File(path, "w") as f:
        ...     _ = f.create_dataset("raw", data=np.arange(8, dtype="u1").reshape(2, 2, 2), chunks=(1, 2, 2))
        >>> HDF5Array(path, "raw").read((slice(1, 2), slice(0, 2), slice(1, 2))).tolist()
        [[[5], [7]]]
    """

    def __init__(self, path: str | Path, key: str) -> None:
        import h5py

        from emdata.formats.hdf5 import HDF5FormatError, _open

        self.path, self.key = str(path), key
        with _open(Path(path)) as f:
            obj = f.get(key)
            if not isinstance(obj, h5py.Dataset):
                found: list[str] = []
                f.visititems(lambda name, o: found.append(name) if isinstance(o, h5py.Dataset) else None)
                raise HDF5FormatError(f"{path}: no dataset {key!r}; the file holds {found[:30]}")
            self.shape = tuple(obj.shape)
            self.dtype = obj.dtype
            self.attrs = {k: v for k, v in obj.attrs.items()}

    def read(self, box: Box) -> np.ndarray:
        import h5py

        from emdata.formats.hdf5 import HDF5FormatError

        try:  # opened per read (about a millisecond): no handle outlives it to pin or go stale on a replaced file
            with h5py.File(self.path, "r") as f:
                return np.asarray(f[self.key][tuple(box)])
        except OSError as exc:
            raise HDF5FormatError(f"{self.path}: dataset {self.key!r} cannot be read ({exc}); a chunk checksum "
                                  "or decompression failed: the file is corrupt, delete it and fetch it "
                                  "again") from exc


class SliceStack:
    """``n`` 2D slices of ``plane`` shape and ``dtype``, slice ``z`` decoded by ``read_slice(z)``
    (picklable), one at a time. ``key`` names the stack in the per-process cache of decoded slices.

    Example:
        >>> stack = SliceStack(functools.partial(np.full, (2, 3), dtype="u1"), 4, (2, 3), "u1", key="demo")
        >>> stack.read((slice(1, 3), slice(0, 2), slice(0, 1))).ravel().tolist()
        [1, 1, 2, 2]
    """

    def __init__(self, read_slice: Callable[[int], np.ndarray], n: int, plane: tuple[int, ...], dtype: Any,
                 key: str) -> None:
        self.read_slice, self.key = read_slice, key
        self.shape = (int(n), *plane)
        self.dtype = np.dtype(dtype)

    def read(self, box: Box) -> np.ndarray:
        z0, z1 = _span(box[0], self.shape[0])
        rest = tuple(box[1:3])
        out = np.empty((z1 - z0, *np.empty(self.shape[1:], dtype="u1")[rest].shape), self.dtype)
        for z in range(z0, z1):
            img = _pages.get((self.key, z), functools.partial(self.read_slice, z))
            if img.shape != self.shape[1:]:
                raise ValueError(f"{self.key}: slice {z} has shape {img.shape}, the stack's slices are "
                                 f"{self.shape[1:]}; all slices of a stack must match")
            out[z - z0] = img[rest]
        return out


def held_in_memory(obj: Any) -> bool:
    """Whether ``obj`` holds its voxels in this process (a numpy array, :class:`InMemory`, or a
    :class:`Mapped` of one), so it cannot be sent to cluster workers by reference.

    Example:
        >>> held_in_memory(Mapped(InMemory(np.zeros(1)), np.abs, "f8")), held_in_memory(TiffStack.__new__(TiffStack))
        (True, False)
    """
    if isinstance(obj, (np.ndarray, InMemory)):
        return True
    base = getattr(obj, "base", None)
    return base is not None and held_in_memory(base)


def minimum(source: Any) -> Any:
    """The smallest value of ``source`` (a numpy array or a source, read in z-slabs); None when empty.

    Example:
        >>> minimum(InMemory(np.array([[[3, -2]]], "i2")))
        -2
    """
    if not math.prod(source.shape):
        return None
    if isinstance(source, np.ndarray):
        return source.min().item()
    return min(reduce_slabs(source, np.min)).item()


def unique_values(source: Any) -> np.ndarray:
    """The sorted distinct values of ``source`` (a numpy array or a source, read in z-slabs).

    Example:
        >>> unique_values(InMemory(np.array([[[3, 1]], [[3, 0]]], "u1"))).tolist()
        [0, 1, 3]
    """
    if isinstance(source, np.ndarray):
        return np.unique(source)
    parts = list(reduce_slabs(source, np.unique))
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, source.dtype)


class Combined:
    """``func(*blocks)`` of the same box read from each of ``bases`` (all of one shape): a voxel-wise
    combination of several sources (e.g. two label layers into one offset code). ``func`` must be
    picklable for a cluster.

    Example:
        >>> a, b = InMemory(np.array([[[1, 0]]], "u1")), InMemory(np.array([[[0, 2]]], "u1"))
        >>> Combined([a, b], np.maximum, "u1").read((slice(0, 1), slice(0, 1), slice(0, 2))).tolist()
        [[[1, 2]]]
    """

    def __init__(self, bases: list[Any], func: Callable[..., np.ndarray], dtype: Any) -> None:
        shapes = {tuple(b.shape[:3]) for b in bases}
        if len(shapes) != 1:
            raise ValueError(f"sources to combine must share one shape, got {sorted(shapes)}")
        self.bases, self.func = list(bases), func
        self.dtype = np.dtype(dtype)
        self.shape = shapes.pop()

    @property
    def base(self) -> Any:  # for held_in_memory: any base held here keeps the combination here
        return next((b for b in self.bases if held_in_memory(b)), None)

    def read(self, box: Box) -> np.ndarray:
        return np.asarray(self.func(*(b.read(box) for b in self.bases)), dtype=self.dtype)


class Placed:
    """``base`` placed at ``offset`` (voxels) inside a volume of ``shape``, zeros elsewhere (labels that
    cover part of the raw's grid).

    Example:
        >>> src = Placed(InMemory(np.ones((1, 2, 2), "u1")), (0, 1, 1), (1, 3, 3))
        >>> src.read((slice(0, 1), slice(0, 3), slice(0, 3)))[0].tolist()
        [[0, 0, 0], [0, 1, 1], [0, 1, 1]]
    """

    def __init__(self, base: Any, offset: tuple[int, ...], shape: tuple[int, ...]) -> None:
        self.base, self.offset = base, tuple(int(o) for o in offset)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(base.dtype)
        if any(o < 0 or o + n > s for o, n, s in zip(self.offset, base.shape, self.shape)):
            raise ValueError(f"a source of shape {tuple(base.shape)} at offset {self.offset} does not fit in "
                             f"{self.shape}")

    def read(self, box: Box) -> np.ndarray:
        spans = [_span(sl, n) for sl, n in zip(box, self.shape)]
        out = np.zeros(tuple(b - a for a, b in spans), self.dtype)
        inner = [(max(a, o), min(b, o + n)) for (a, b), o, n in zip(spans, self.offset, self.base.shape)]
        if all(lo < hi for lo, hi in inner):
            src = tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(inner, self.offset))
            dst = tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(inner, spans))
            out[dst] = self.base.read(src)
        return out


def count_equal(source: Any, value: Any) -> int:
    """How many voxels of ``source`` equal ``value`` (read in z-slabs).

    Example:
        >>> count_equal(InMemory(np.array([[[7, 1, 7]]], "u8")), 7)
        2
    """
    return int(sum(reduce_slabs(source, lambda slab: int(np.count_nonzero(slab == value)))))


def maximum(source: Any) -> Any:
    """The largest value of ``source`` (read in z-slabs); 0 when empty.

    Example:
        >>> maximum(InMemory(np.array([[[3, 9]]], "u2")))
        9
    """
    if not math.prod(source.shape):
        return 0
    return max(reduce_slabs(source, np.max)).item()
