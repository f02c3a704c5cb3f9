"""Fast box reads from a canonical volume, opened lazily in each process.

A level that fits the memory budget is read into RAM once (shared copy-on-write with forked
workers); larger levels are read chunk-aligned through a bounded LRU of decoded chunks, so
neighbouring patches reuse each other's decode work.

Example:
    >>> import tempfile
    >>> from emdata.store.writer import write_volume
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((16, 128, 128), "u1"), (30, 6, 6),
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> reader = VolumeReader(path, memory_budget=0)  # nothing held in memory: chunks through the LRU
    >>> reader.read("raw", 0, (slice(0, 16), slice(0, 100), slice(8, 128))).shape
    (16, 100, 120)
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store.volume import Volume, open_volume

Box = tuple[slice, slice, slice]


class ChunkCache:
    """LRU of decoded chunks, bounded in bytes; safe to share between threads.

    Decoding runs outside the lock, so threads decode different chunks in parallel; when two
    threads load the same chunk at once, the first one stored wins and is counted once.

    Example:
        >>> cache = ChunkCache(max_bytes=2048)
        >>> cache.get(("raw", 0, (0, 0, 0)), lambda: np.zeros(1024, np.uint8)).nbytes, cache.nbytes
        (1024, 1024)
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the chunks held now."""
        return self._bytes

    def get(self, key: tuple[Any, ...], load: Any) -> np.ndarray:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item
            self.misses += 1
        loaded = load()
        with self._lock:
            item = self._items.get(key)
            if item is not None:  # another thread stored it meanwhile
                self._items.move_to_end(key)
                return item
            self._items[key] = loaded
            self._bytes += loaded.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return loaded


class VolumeReader:
    """Reads boxes of raw or label levels; safe to pickle (opens on first use per process)."""

    def __init__(self, path: str | Path, memory_budget: int = 4 << 30, chunk_cache_bytes: int = 256 << 20) -> None:
        self.path = str(path)
        self.memory_budget = memory_budget
        self.chunk_cache_bytes = chunk_cache_bytes
        self._state: dict[str, Any] | None = None
        self._lock = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "memory_budget": self.memory_budget,
                "chunk_cache_bytes": self.chunk_cache_bytes, "_state": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def _open(self) -> dict[str, Any]:
        state = self._state
        if state is None or state["pid"] != os.getpid():
            with self._lock:  # one state per process, even when threads open at once
                state = self._state
                if state is None or state["pid"] != os.getpid():
                    state = {"pid": os.getpid(), "volume": open_volume(self.path), "arrays": {},
                             "memory": {}, "used": 0, "cache": ChunkCache(self.chunk_cache_bytes)}
                    self._state = state
        return state

    @property
    def volume(self) -> Volume:
        return self._open()["volume"]

    def _array(self, layer: str, level: int) -> Any:
        state = self._open()
        key = (layer, level)
        array = state["arrays"].get(key)
        if array is None:
            with self._lock:
                vol = state["volume"]
                array = state["arrays"].setdefault(
                    key, vol.level(level) if layer == "raw" else vol.label_level(layer, level))
        return array

    def preload(self, layer: str, level: int) -> bool:
        """Hold the whole level in memory if it fits the remaining budget; returns whether it does."""
        state = self._open()
        key = (layer, level)
        with self._lock:
            if key in state["memory"]:
                return True
            arr = self._array(layer, level)
            nbytes = int(np.prod(arr.shape)) * arr.dtype.itemsize
            if state["used"] + nbytes > self.memory_budget:
                return False
            state["memory"][key] = np.asarray(arr[...])
            state["used"] += nbytes
            return True

    def read(self, layer: str, level: int, box: Box) -> np.ndarray:
        """The voxels of ``box`` (level coordinates, inside the array) as a new array."""
        state = self._open()
        held = state["memory"].get((layer, level))
        if held is not None:
            return held[box].copy()
        arr = self._array(layer, level)
        chunks = arr.chunks
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=arr.dtype)
        ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, chunks)]
        for idx in itertools.product(*ranges):
            cbox = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, arr.shape))
            block = state["cache"].get((layer, level, idx), lambda cbox=cbox: np.asarray(arr[cbox]))
            lo = [max(s.start, c.start) for s, c in zip(box, cbox)]
            hi = [min(s.stop, c.stop) for s, c in zip(box, cbox)]
            out[tuple(slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, box))] = block[
                tuple(slice(a - c.start, b - c.start) for a, b, c in zip(lo, hi, cbox))]
        return out
