"""emdata.torch on small volumes written in place: thread safety, epochs, sampler geometry,
foreground indices outside the store, intensity normalisation, label spaces, input checks."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from emdata.torch.reader import ChunkCache  # noqa: E402


def test_chunk_cache_is_thread_safe_and_keeps_its_byte_count() -> None:
    cache = ChunkCache(max_bytes=8 * 1024)
    errors: list[BaseException] = []

    def load(key: int) -> np.ndarray:
        return np.full(1024, key, np.uint8)  # 1 KiB: the cache holds 8 of 64 keys

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for key in rng.integers(0, 64, 3000):
                k = int(key)
                assert cache.get((k,), lambda k=k: load(k))[0] == k % 256
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    assert cache.nbytes == sum(a.nbytes for a in cache._items.values()) <= cache.max_bytes
