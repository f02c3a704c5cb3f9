"""Fast box reads from a canonical volume: the chunks a box touches are fetched and decoded
concurrently, and decoded chunks are kept once for the whole process tree.

Reading: the chunks a box touches are fetched by a per-process thread pool, each thread reading,
decoding and copying its chunk's part of the box (zstd and file reads release the GIL). Arrays of
a local store with plain codecs (bytes, then zstd, blosc or nothing; not sharded) are read straight from
their chunk files with ``os.preadv`` into per-thread buffers and decoded there with numcodecs,
skipping zarr-python's per-call overhead and any allocation per chunk; of an uncompressed chunk
(raw levels) only the runs of rows the box needs are read, unless the chunk goes to the shared
cache (which keeps whole chunks). Any other
array-like (sharded levels, remote stores: anything with ``.shape``, ``.chunks``, ``.dtype`` and
``__getitem__``) is read one chunk box per task, so remote chunks are fetched concurrently too.

Keeping: with ``memory_budget > 0``, decoded chunks go to the shared decoded cache
(:mod:`emdata.store.decoded_cache`): memory-mapped files under ``<EMDATA_HOME>/cache/decoded``
that every process maps, so DataLoader workers (fork, spawn or forkserver) share one copy, and
``memory_budget`` bounds all cached arrays of all volumes and workers together. Entries are keyed
by the volume's published version, so a re-prepared volume is never served from stale chunks.

Example:
    >>> import tempfile
    >>> from emdata.store.writer import write_volume
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((16, 128, 128), "u1"), (30, 6, 6),
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> reader = VolumeReader(path, memory_budget=0)  # nothing kept: every read decodes its chunks
    >>> reader.read("raw", 0, (slice(0, 16), slice(0, 100), slice(8, 128))).shape
    (16, 100, 120)
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store.decoded_cache import CachedArray, DecodedCache, cache_root, version_of
from emdata.store.layout import plain_chunk_decoder
from emdata.store.publish import COMPLETE_MARKER, VolumeReplacedError
from emdata.store.volume import Volume, open_volume

log = logging.getLogger(__name__)
Box = tuple[slice, ...]
Index = tuple[int, ...]

_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def read_threads() -> int:
    """Threads per process that fetch and decode chunks (``EMDATA_READ_THREADS``; default 2 per
    core, shared among the DataLoader workers when called in one, at least 2 and at most 8).

    Measured from disk with a cold page cache on 2 cores, 2 process workers (``benchmarks/loader.py``'s
    volume and emdata loader, ``EMDATA_READ_THREADS`` 1, 2 and 4, four interleaved rounds): 2 threads
    per worker were fastest in 7 of 8 cases (e.g. 16×128×128 patches: 114.6/s against 75.3 with 4,
    oversubscribed, and 91.7 with 1, where reads wait on the disk with nothing decoding meanwhile).

    Example:
        >>> read_threads() >= 1
        True
    """
    value = os.environ.get("EMDATA_READ_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"EMDATA_READ_THREADS must be a whole number >= 1, got {value!r}")
        return int(value)
    return max(2, min(8, 2 * (os.cpu_count() or 1) // _workers_here()))


def _workers_here() -> int:
    """How many loader worker processes share the cores, seen from this one (1 outside a worker):
    an emdata ProcessLoader worker, or a torch DataLoader worker (torch is not imported for it)."""
    from emdata.torch import workers

    if workers.WORKER is not None:
        return max(1, workers.WORKER[1])
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return max(1, int(info.num_workers)) if info is not None else 1


def _pool() -> ThreadPoolExecutor:
    """This process's chunk pool (a forked child makes its own: threads do not survive a fork)."""
    global _POOL
    pool = _POOL
    if pool is None or pool[0] != os.getpid():
        with _POOL_LOCK:
            pool = _POOL
            if pool is None or pool[0] != os.getpid():
                pool = _POOL = (os.getpid(), ThreadPoolExecutor(read_threads(), thread_name_prefix="emdata-read"))
    return pool[1]


_SCRATCH = threading.local()
MERGE_GAP = 64 << 10
"""Partial chunk reads: two runs of needed rows at most this many bytes apart are read as one (one
system call instead of two; the kernel's readahead fetches the skipped pages from disk anyway).
Measured on 32×128×128 uint8 raw chunks from disk, cold page cache: reading every run apart was
about 30 % slower (32×256×256 patches: 157/s against 229–258/s merged)."""


def _scratch(name: str, nbytes: int) -> np.ndarray:
    """This thread's reusable byte buffer ``name`` of ``nbytes``: reading and decoding a chunk
    allocate (and page-fault) nothing per chunk."""
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 4096), np.uint8)
        setattr(_SCRATCH, name, buf)
    return buf[:nbytes]


def _read_into(fd: int, buf: np.ndarray, offset: int, path: Path) -> None:
    """Fill ``buf`` from ``offset`` of the open file ``fd`` (``path``, for the error)."""
    done = 0
    while done < buf.nbytes:
        n = os.preadv(fd, [buf[done:]], offset + done)
        if n <= 0:
            raise OSError(f"{path}: chunk file ends at byte {offset + done}, expected at least {offset + buf.nbytes} "
                          f"bytes; run `emdata verify --deep` on the volume")
        done += n


class _ChunkFiles:
    """The chunk files of one local, unsharded zarr v3 array with plain codecs, read straight with
    ``os.preadv`` into per-thread buffers (no allocation per chunk): whole chunks decoded with the
    store's codec, or, for uncompressed chunks, only the byte runs a box needs (``part``)."""

    def __init__(self, folder: Path, root: Path, encode_key: Callable[[Index], str], decode: Any,
                 chunks: tuple[int, ...]) -> None:
        self.folder, self.root, self.encode_key, self.decode, self.chunks = folder, root, encode_key, decode, chunks
        self.dtype = np.dtype(decode.dtype)
        self.nbytes = int(np.prod(chunks)) * self.dtype.itemsize
        self.partial = not decode.compressed
        strides, step = [], self.dtype.itemsize
        for c in reversed(chunks):
            strides.append(step)
            step *= c
        self.strides = tuple(reversed(strides))

    @classmethod
    def of(cls, array: Any) -> _ChunkFiles | None:
        """The chunk files of ``array``, or None when it is not a local unsharded zarr v3 array with
        plain codecs (it is then read through zarr)."""
        try:
            from zarr.storage import LocalStore

            meta, store = array.metadata, array.store_path.store
            if meta.zarr_format != 3 or not isinstance(store, LocalStore):
                return None
            folder = Path(store.root) / array.store_path.path
        except (AttributeError, ImportError, TypeError):
            return None
        decode = plain_chunk_decoder(array)
        if decode is None:
            return None
        return cls(folder, Path(store.root), meta.encode_chunk_key, decode, tuple(int(c) for c in array.chunks))

    def _open(self, idx: Index) -> tuple[int, Path] | None:
        """The open chunk file of ``idx`` (None: never written, the fill value)."""
        path = self.folder / self.encode_key(idx)
        try:
            return os.open(path, os.O_RDONLY), path
        except FileNotFoundError:
            if not (self.root / COMPLETE_MARKER).is_file() and (self.root / "zarr.json").is_file():
                raise VolumeReplacedError(f"{self.root}: this version of the volume was removed while being read "
                                          f"(reading {path}); open the volume again") from None
            return None

    def whole(self, idx: Index) -> np.ndarray | None:
        """Chunk ``idx`` decoded, full chunk shape, in this thread's buffer (valid until its next
        read); None for a chunk never written."""
        opened = self._open(idx)
        if opened is None:
            return None
        fd, path = opened
        try:
            data = _scratch("file", os.fstat(fd).st_size)
            _read_into(fd, data, 0, path)
        finally:
            os.close(fd)
        out = _scratch("chunk", self.nbytes) if self.decode.compressed else None
        return self.decode(data, str(path), "run `emdata verify --deep` on the volume", out)

    def part(self, idx: Index, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray | None:
        """Voxels ``lo`` to ``hi`` (chunk coordinates) of the uncompressed chunk ``idx``, reading only
        the runs of whole rows they lie in, in this thread's buffer (valid until its next read);
        None for a chunk never written."""
        chunks, strides = self.chunks, self.strides
        wlo, whi = list(lo), list(hi)
        # one run: axis k from wlo[k] to whi[k], every later axis whole (the last one always)
        k = len(chunks) - 2 if len(chunks) > 1 else 0
        for j in range(k + 1, len(chunks)):
            wlo[j], whi[j] = 0, chunks[j]
        while k > 0 and strides[k - 1] - (whi[k] - wlo[k]) * strides[k] <= MERGE_GAP:
            wlo[k], whi[k] = 0, chunks[k]  # the runs of axis k - 1 are (nearly) contiguous: read as one
            k -= 1
        opened = self._open(idx)
        if opened is None:
            return None
        fd, path = opened
        shape = [b - a for a, b in zip(wlo, whi)]
        run = shape[k] * strides[k]
        buf = _scratch("file", int(np.prod(shape)) * self.dtype.itemsize)
        try:
            at = 0
            for lead in itertools.product(*(range(a, b) for a, b in zip(wlo[:k], whi[:k]))):
                offset = sum(i * s for i, s in zip(lead, strides)) + wlo[k] * strides[k]
                _read_into(fd, buf[at:at + run], offset, path)
                at += run
        finally:
            os.close(fd)
        block = buf.view(self.dtype).reshape(shape)
        return block[tuple(slice(a - w, b - w) for a, b, w in zip(lo, hi, wlo))]


class _Level:
    """One array as this process reads it: chunk geometry, how to fetch a chunk, its shared cache entry."""

    def __init__(self, array: Any, cached: CachedArray | None) -> None:
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)
        self.chunks = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.cached = cached
        self._file = _ChunkFiles.of(array)
        fill = getattr(getattr(array, "metadata", None), "fill_value", 0)
        self.fill = np.asarray(fill if fill is not None else 0).astype(self.dtype)

    def chunk_box(self, idx: Index) -> Box:
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, self.chunks, self.shape))

    def fetch(self, idx: Index) -> np.ndarray:
        """Chunk ``idx`` decoded: an array whose ``[0:n]`` along each axis is the chunk's part of the
        array (read from a chunk file it lies in this thread's buffer: valid until its next read)."""
        if self._file is not None:
            block = self._file.whole(idx)
            if block is None:
                return np.broadcast_to(self.fill, self.chunks)
            return block
        return np.asarray(self.array[self.chunk_box(idx)])

    def load(self, idx: Index, out: np.ndarray, box: Box) -> None:
        """Put the voxels of chunk ``idx`` that lie in ``box`` into ``out`` (``box``'s voxels), and
        offer the whole chunk to the shared cache when there is one."""
        cbox = self.chunk_box(idx)
        if self.cached is None and self._file is not None and self._file.partial:
            lo = [max(s.start, c.start) for s, c in zip(box, cbox)]
            hi = [min(s.stop, c.stop) for s, c in zip(box, cbox)]
            part = self._file.part(idx, [a - c.start for a, c in zip(lo, cbox)],
                                   [b - c.start for b, c in zip(hi, cbox)])
            out[tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, box))] = (
                self.fill if part is None else part)
            return
        block = self.fetch(idx)
        _copy(out, box, cbox, block)
        if self.cached is not None:
            self.cached.put(idx, block)


def _copy(out: np.ndarray, box: Box, cbox: Box, block: np.ndarray) -> None:
    """Copy the part of ``block`` (chunk ``cbox``) that lies in ``box`` into ``out`` (``box``'s voxels)."""
    lo = [max(s.start, c.start) for s, c in zip(box, cbox)]
    hi = [min(s.stop, c.stop) for s, c in zip(box, cbox)]
    out[tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, box))] = block[
        tuple(slice(a - c.start, b - c.start) for a, b, c in zip(lo, hi, cbox))]


class VolumeReader:
    """Reads boxes of raw or label levels; safe to pickle (each process opens on first use).

    ``memory_budget``: bytes of decoded chunks kept in the shared decoded cache under
    ``cache_dir`` (default ``<EMDATA_HOME>/cache/decoded``, fixed when the reader is made), for
    all volumes and processes together; 0 keeps nothing (every read decodes).
    """

    def __init__(self, path: str | Path, memory_budget: int = 4 << 30, cache_dir: str | Path | None = None) -> None:
        if int(memory_budget) < 0:
            raise ValueError(f"memory_budget must be >= 0 bytes, got {memory_budget}")
        self.path = str(path)
        self.memory_budget = int(memory_budget)
        self.cache_dir = str(cache_dir) if cache_dir is not None else (str(cache_root()) if memory_budget else None)
        self._state: dict[str, Any] | None = None
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "memory_budget": self.memory_budget, "cache_dir": self.cache_dir, "_state": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def _open(self) -> dict[str, Any]:
        state = self._state
        if state is None or state["pid"] != os.getpid():
            with self._lock:  # one state per process, even when threads open at once
                state = self._state
                if state is None or state["pid"] != os.getpid():
                    state = {"pid": os.getpid(), "volume": open_volume(self.path), "levels": {}}
                    self._state = state
        return state

    @property
    def volume(self) -> Volume:
        return self._open()["volume"]

    def _cache_entry(self, vol: Volume, layer: str, level: int, array: Any) -> CachedArray | None:
        if not self.memory_budget or self.cache_dir is None:
            return None
        try:
            folder = Path(vol.folder)
        except (AttributeError, TypeError, ValueError):
            return None
        version = version_of(folder, COMPLETE_MARKER) if folder.is_dir() else None
        if version is None:  # not a published local version: nothing to key a cache entry by
            return None
        name = "raw" if layer == "raw" else f"labels/{layer}"
        key = f"{version['folder']}|{version['id']}|{name}/{level}"
        cache = DecodedCache(Path(self.cache_dir), self.memory_budget)
        try:
            return cache.open(key, array.shape, array.chunks, array.dtype,
                              label=f"{vol.dataset}/{vol.name}/{name}/{level}", dataset=vol.dataset, version=version)
        except OSError as exc:  # read-only or full cache folder: read on without keeping anything
            log.warning("the decoded cache in %s cannot be used (%s: %s); reading %s without it (set EMDATA_HOME to "
                        "a writable local folder, or pass memory_budget=0 to silence this)", self.cache_dir,
                        type(exc).__name__, exc, vol.path)
            return None

    def _level(self, layer: str, level: int) -> _Level:
        state = self._open()
        key = (layer, level)
        lv = state["levels"].get(key)
        if lv is None:
            with self._lock:
                lv = state["levels"].get(key)
                if lv is None:
                    vol = state["volume"]
                    array = vol.level(level) if layer == "raw" else vol.label_level(layer, level)
                    lv = state["levels"][key] = _Level(array, self._cache_entry(vol, layer, level, array))
        return lv

    def cached(self, layer: str, level: int) -> CachedArray | None:
        """The shared cache entry of this level (None when nothing is kept for it)."""
        return self._level(layer, level).cached

    def preload(self, layer: str, level: int) -> bool:
        """Decode the whole level into the shared cache (once for all processes) if its grant holds
        it; returns whether the whole level is now held."""
        lv = self._level(layer, level)
        if lv.cached is None or lv.cached.limit < lv.cached.nbytes:
            return False
        missing = [idx for idx in itertools.product(*(range(g) for g in lv.cached.grid)) if lv.cached.get(idx) is None]

        def fill(idx: Index) -> bool:
            return lv.cached.put(idx, lv.fetch(idx))  # type: ignore[union-attr]

        return all(_pool().map(fill, missing)) and lv.cached.filled == lv.cached.n_chunks

    def read(self, layer: str, level: int, box: Sequence[slice], out: np.ndarray | None = None) -> np.ndarray:
        """The voxels of ``box`` (level coordinates, inside the array) as a new array, or written
        into ``out`` (returned): an array of the box's shape and the level's dtype, e.g. one
        sample's slot of a batch, so the voxels are copied once, from the chunks into the batch."""
        lv = self._level(layer, level)
        box = tuple(box)
        shape = tuple(s.stop - s.start for s in box)
        if out is None:
            out = np.empty(shape, dtype=lv.dtype)
        elif out.shape != shape or out.dtype != lv.dtype or not out.flags.writeable:
            raise ValueError(f"read into out: expected a writable {lv.dtype} array of shape {shape} for {layer!r} "
                             f"level {level} of {self.path}, got {out.dtype} {out.shape}"
                             f"{'' if out.flags.writeable else ' (read-only)'}; pass e.g. batch[i] (a view of "
                             f"the same dtype: batch.view({lv.dtype.name!r})[i] for a signed buffer)")
        ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, lv.chunks)]
        missing = []
        for idx in itertools.product(*ranges):
            block = lv.cached.get(idx) if lv.cached is not None else None
            if block is None:
                missing.append(idx)
            else:
                _copy(out, box, lv.chunk_box(idx), block)

        if len(missing) == 1:
            lv.load(missing[0], out, box)
        elif missing:
            for future in [_pool().submit(lv.load, idx, out, box) for idx in missing]:
                future.result()
        return out
