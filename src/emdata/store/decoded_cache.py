"""Decoded chunks held once for a whole process tree: memory-mapped files under
``<EMDATA_HOME>/cache/decoded``, bounded by one global byte budget.

Each cached array (one pyramid level of one layer of one published *version* of a volume) is a
folder holding ``data``, a sparse file of one slot per chunk (decoded, C order, edge chunks only
as large as their part of the array, so a whole array takes its own size), ``state`` (the bytes
filled, then one byte per chunk: 1 = its slot is filled) and ``info.json``. Every process that
reads the array maps the same files, so the decoded voxels live once in the page cache whatever
the number of DataLoader workers and whatever their start method (fork, spawn, forkserver); the
kernel may write them back to the local disk and drop
them under memory pressure, and reads them back from there without decoding again.

Budget: when an array is first opened, it is granted ``min(its decoded size, what is left of
the budget)`` under a global lock; the grants of all arrays never add up to more than the budget
(``reserved_bytes``). A grant smaller than the array caps how many bytes of chunks it fills (the first
ones touched stay; with uniformly random patches that keeps the same hit rate as an LRU of that
size). Arrays nobody has open are evicted when a new one needs room, stale ones (their version
was replaced by ``prepare --force`` or deleted) first. Readers hold a shared ``flock`` on the
array's ``info.json`` while they have it open, and eviction takes it exclusively, so an array
is never removed under a reader.

Never stale: the key is the version folder plus the unique id in its completion marker, so a
re-prepared volume gets new entries; ``emdata cache clean`` removes unused entries.

Concurrency: two processes (or threads) filling the same chunk write identical bytes; the slot
is written before its state byte, both under the array's fill lock, and a reader uses a slot
only once its state byte says it is filled.

Example:
    >>> import tempfile
    >>> cache = DecodedCache(Path(tempfile.mkdtemp()), budget=1 << 20)
    >>> level = cache.open("demo-key", (4, 64, 64), (2, 32, 32), "uint8", label="demo/v/0")
    >>> level.get((0, 1, 1)) is None
    True
    >>> level.put((0, 1, 1), np.full((2, 32, 32), 7, np.uint8))
    True
    >>> int(level.get((0, 1, 1))[1, 2, 3]), level.filled, level.filled_bytes, cache.reserved_bytes()
    (7, 1, 2048, 16384)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CachedArray", "DecodedCache", "cache_root", "clean", "entries", "version_of"]

_HEADER = 8  # bytes before the per-chunk state bytes: the bytes of the filled slots (uint64)
INFO = "info.json"


def cache_root() -> Path:
    """The decoded cache's folder: ``<EMDATA_HOME>/cache/decoded``.

    Example:
        >>> from emdata import config
        >>> with config.using(home="/data/em"):
        ...     cache_root().as_posix()
        '/data/em/cache/decoded'
    """
    from emdata.config import emdata_home

    return emdata_home() / "cache" / "decoded"


class _Flock:
    """An exclusive ``flock`` on a file, also exclusive between the threads of this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = threading.Lock()

    def __enter__(self) -> _Flock:
        self._thread.acquire()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.close(self._fd)  # releases the flock
        finally:
            self._thread.release()


class CachedArray:
    """One array's shared decoded chunks (see the module notes); made by :meth:`DecodedCache.open`."""

    def __init__(self, folder: Path, info: dict[str, Any]) -> None:
        self.folder = folder
        self.info = info
        self.shape = tuple(info["shape"])
        self.chunks = tuple(info["chunks"])
        self.dtype = np.dtype(info["dtype"])
        self.grid = tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))
        self.n_chunks = math.prod(self.grid)
        self.limit = int(info["reserved_bytes"])
        # each chunk's shape inside the array, and where its slot starts (C order over the grid)
        extents = [np.minimum(c, s - np.arange(g) * c) for s, c, g in zip(self.shape, self.chunks, self.grid)]
        self._sizes = np.ones(self.grid, np.int64) * self.dtype.itemsize
        for axis, ext in enumerate(extents):
            self._sizes *= ext.reshape([-1 if a == axis else 1 for a in range(len(self.grid))])
        self._sizes = self._sizes.ravel()
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])
        self.nbytes = int(self._offsets[-1])
        # the shared lock that keeps the entry from being evicted while this process reads it
        self._use = os.open(folder / INFO, os.O_RDONLY)
        fcntl.flock(self._use, fcntl.LOCK_SH)
        self._fill = _Flock(folder / "fill.lock")
        with open(folder / "data", "r+b") as f:
            self._data_map = mmap.mmap(f.fileno(), self.nbytes) if self.nbytes else None
        with open(folder / "state", "r+b") as f:
            self._state_map = mmap.mmap(f.fileno(), _HEADER + self.n_chunks)
        self._count = np.frombuffer(self._state_map, np.uint64, 1, 0)
        self._state = np.frombuffer(self._state_map, np.uint8, self.n_chunks, _HEADER)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and release the shared lock (the entry may then be evicted)."""
        fd, self._use = getattr(self, "_use", None), None
        if fd is None:
            return
        self._count = self._state = None  # type: ignore[assignment]
        for m in (self._data_map, self._state_map):
            if m is not None:
                with contextlib.suppress(BufferError, ValueError):  # a view still exported: unmapped when freed
                    m.close()
        with contextlib.suppress(OSError):
            os.close(fd)

    @property
    def filled(self) -> int:
        """How many chunks are held."""
        return int(np.count_nonzero(self._state))

    @property
    def filled_bytes(self) -> int:
        """The bytes of the chunks held (never more than :attr:`limit`, the grant)."""
        return int(self._count[0])

    def _slot(self, i: int) -> np.ndarray:
        shape = tuple(min(c, s - j * c) for j, c, s in zip(np.unravel_index(i, self.grid), self.chunks, self.shape))
        return np.frombuffer(self._data_map, self.dtype, int(self._sizes[i]) // self.dtype.itemsize,  # type: ignore[arg-type]
                             int(self._offsets[i])).reshape(shape)

    def _index(self, idx: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(idx), self.grid))

    def get(self, idx: Sequence[int]) -> np.ndarray | None:
        """The decoded chunk at grid index ``idx`` (a read-only view of its part of the array), or None."""
        i = self._index(idx)
        if not self._state[i]:
            return None
        view = self._slot(i)
        view.flags.writeable = False
        return view

    def put(self, idx: Sequence[int], block: np.ndarray) -> bool:
        """Offer the decoded chunk at ``idx`` (its part of the array, or the whole padded chunk);
        False when the grant has no room for it (nothing is stored)."""
        i = self._index(idx)
        size = int(self._sizes[i])
        if self._state[i]:
            return True
        if int(self._count[0]) + size > self.limit:
            return False
        with self._fill:
            if self._state[i]:
                return True
            if int(self._count[0]) + size > self.limit:
                return False
            slot = self._slot(i)
            slot[...] = block[tuple(slice(0, n) for n in slot.shape)]
            self._state[i] = 1
            self._count[0] += size
        return True


def _key_folder(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _read_info(folder: Path) -> dict[str, Any] | None:
    try:
        info = json.loads((folder / INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "reserved_bytes" in info else None


def entries(root: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every complete entry under ``root`` (default :func:`cache_root`) with its ``info.json``.

    Example:
        >>> import tempfile
        >>> entries(Path(tempfile.mkdtemp()))
        []
    """
    root = Path(root) if root is not None else cache_root()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            info = _read_info(folder)
            if info is not None:
                out.append((folder, info))
    return out


def _marker_id(doc: dict[str, Any]) -> str | None:
    return doc.get("id") or doc.get("completed")


def _is_stale(info: dict[str, Any]) -> bool:
    """The version the entry was decoded from is no longer there (replaced and retired, or removed)."""
    check = info.get("version")
    if not check:
        return False
    try:
        marker = json.loads((Path(check["folder"]) / check["marker"]).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return not isinstance(marker, dict) or _marker_id(marker) != check.get("id")


def _remove_unused(folder: Path) -> bool:
    """Delete ``folder`` if no process has it open (exclusive flock on its info); True when deleted."""
    try:
        fd = os.open(folder / INFO, os.O_RDONLY)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        trash = folder.with_name(f".trash-{uuid.uuid4().hex[:8]}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _usage(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def clean(root: Path | None = None, dataset: str | None = None) -> int:
    """Remove the entries nobody has open (only ``dataset``'s when given); returns the bytes freed on disk.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> cache = DecodedCache(root, budget=1 << 20)
        >>> cache.open("k", (2, 8, 8), (2, 8, 8), "uint8", label="demo/v/0").put((0, 0, 0), np.ones((2, 8, 8), "u1"))
        True
        >>> clean(root) > 0, entries(root)
        (True, [])
    """
    root = Path(root) if root is not None else cache_root()
    freed = 0
    if not root.is_dir():
        return 0
    with _Flock(root / ".lock"):
        for folder, info in entries(root):
            if dataset is not None and info.get("dataset") != dataset:
                continue
            size = _usage(folder)
            if _remove_unused(folder):
                freed += size
        for trash in root.glob(".trash-*"):  # left by a process killed while deleting
            shutil.rmtree(trash, ignore_errors=True)
    return freed


class DecodedCache:
    """The shared decoded cache at ``root`` (default :func:`cache_root`) as seen with a ``budget``
    of bytes for all its entries together (see the module notes).

    ``budget`` is checked whenever an array is first opened; processes that give different
    budgets each keep the total within their own.
    """

    def __init__(self, root: Path | None = None, budget: int = 4 << 30) -> None:
        self.root = Path(root) if root is not None else cache_root()
        self.budget = int(budget)

    def reserved_bytes(self) -> int:
        """The bytes granted to all entries now (never more than the largest budget used)."""
        return sum(int(info["reserved_bytes"]) for _, info in entries(self.root))

    def open(self, key: str, shape: Sequence[int], chunks: Sequence[int], dtype: Any, *, label: str = "",
             dataset: str | None = None, version: dict[str, str] | None = None) -> CachedArray | None:
        """The entry for ``key`` (created on first use); None when the budget leaves no room for one chunk.

        ``version`` (``folder``, ``marker``, ``id``) says where the decoded data came from, so an
        entry whose version is gone is known to be stale; ``label`` and ``dataset`` are for people
        and for ``cache clean``.
        """
        shape, chunks, dtype = tuple(int(s) for s in shape), tuple(int(c) for c in chunks), np.dtype(dtype)
        if self.budget <= 0:
            return None
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / _key_folder(key)
        with _Flock(self.root / ".lock"):
            info = _read_info(folder)
            if info is None:
                info = self._admit(folder, key, shape, chunks, dtype, label, dataset, version)
                if info is None:
                    return None
            else:
                os.utime(folder / INFO)  # recently used: evicted last
            return CachedArray(folder, info)

    def _admit(self, folder: Path, key: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype,
               label: str, dataset: str | None, version: dict[str, str] | None) -> dict[str, Any] | None:
        n_chunks = math.prod(-(-s // c) for s, c in zip(shape, chunks))
        nbytes = math.prod(shape) * dtype.itemsize
        need = min(nbytes, self.budget)
        current = entries(self.root)
        used = sum(int(i["reserved_bytes"]) for _, i in current)
        # stale entries go whenever nobody reads them; unused ones, oldest first, when room is needed
        order = sorted(current, key=lambda e: (not _is_stale(e[1]), (e[0] / INFO).stat().st_mtime))
        for other, other_info in order:
            if not (_is_stale(other_info) or used + need > self.budget):
                continue
            if _remove_unused(other):
                used -= int(other_info["reserved_bytes"])
        grant = min(need, max(self.budget - used, 0))
        if grant < min(math.prod(chunks), nbytes // max(dtype.itemsize, 1)) * dtype.itemsize:
            return None  # not even one chunk
        if folder.exists():  # a half-made entry of a process that died while creating it
            shutil.rmtree(folder, ignore_errors=True)
        tmp = self.root / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        with open(tmp / "data", "wb") as f:
            f.truncate(nbytes)  # sparse: disk blocks only for filled slots
        with open(tmp / "state", "wb") as f:
            f.truncate(_HEADER + n_chunks)
        info = {"key": key, "label": label, "dataset": dataset, "version": version, "shape": list(shape),
                "chunks": list(chunks), "dtype": dtype.str, "reserved_bytes": grant,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / INFO).write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp, folder)
        return info


def version_of(folder: Path, marker: str) -> dict[str, str] | None:
    """``{"folder", "marker", "id"}`` of a published version folder (None without a marker id).

    Example:
        >>> version_of(Path("/nonexistent"), "emdata-complete.json") is None
        True
    """
    try:
        doc = json.loads((Path(folder) / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not _marker_id(doc):
        return None
    return {"folder": str(Path(folder).resolve()), "marker": marker, "id": str(_marker_id(doc))}
