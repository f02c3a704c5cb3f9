"""Content checksums of stored arrays: one 128-bit digest per block of decoded voxels.

A block is a shard (or, unsharded, a chunk). Digests are computed from the array that was
written and stored in the array's ``emdata.checksum`` attribute together with the algorithm's
name; ``verify --deep`` decodes every block again and compares, so a truncated, deleted or
altered chunk file is found and located.

New volumes record ``xxh3-128`` (XXH3, 128-bit, from the ``xxhash`` package: tens of GB/s, so
digesting costs little next to writing); volumes written by earlier releases record
``blake2b-128`` (BLAKE2b with a 16-byte digest) and are still verified with it. Both digest
the C-order bytes of the block's voxels in the array's dtype.

Example:
    >>> import numpy as np
    >>> blocks = block_digests(np.zeros((4, 4, 4), "u1"), (2, 4, 4))
    >>> len(blocks), len(blocks[0])
    (2, 32)
    >>> digest(np.zeros(4, "u1"), "blake2b-128") == hashlib.blake2b(bytes(4), digest_size=16).hexdigest()
    True
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

ALGORITHM = "xxh3-128"
"""The algorithm new checksums are written with."""
LEGACY_ALGORITHMS = ("blake2b-128",)
"""Algorithms of volumes written earlier, still read and verified."""


def _xxh3() -> Any:
    import xxhash

    return xxhash.xxh3_128()


def _blake2b() -> Any:
    return hashlib.blake2b(digest_size=16)


_HASHERS: dict[str, Callable[[], Any]] = {"xxh3-128": _xxh3, "blake2b-128": _blake2b}


def hasher(algorithm: str = ALGORITHM) -> Any:
    """A fresh incremental hash object (``update(bytes)``, ``hexdigest()``) of ``algorithm``.

    Example:
        >>> h = hasher("blake2b-128"); h.update(b"ab"); h.update(b"c")
        >>> h.hexdigest() == digest(np.frombuffer(b"abc", "u1"), "blake2b-128")
        True
    """
    try:
        return _HASHERS[algorithm]()
    except KeyError:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; this emdata knows {sorted(_HASHERS)} "
                         "(a volume written by a newer emdata: upgrade to verify it)") from None


def block_slices(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Slices of every block of the grid, C order."""
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for start in itertools.product(*ranges):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))


def digest(values: np.ndarray, algorithm: str = ALGORITHM) -> str:
    """The hex digest of ``values`` (its C-order bytes) with ``algorithm``."""
    data = np.ascontiguousarray(values)
    if algorithm == "xxh3-128":
        import xxhash

        return xxhash.xxh3_128_hexdigest(data)  # reads the buffer in place (no copy), without the GIL
    h = hasher(algorithm)
    h.update(data)
    return str(h.hexdigest())


def block_digests(data: np.ndarray, block: tuple[int, ...], algorithm: str = ALGORITHM) -> list[str]:
    return [digest(data[sl], algorithm) for sl in block_slices(data.shape, block)]


def checksum_attr(data: np.ndarray, block: tuple[int, ...]) -> dict[str, Any]:
    """The ``emdata.checksum`` attribute recorded on an array at write time."""
    return {"algorithm": ALGORITHM, "block_shape": list(block), "blocks": block_digests(data, block)}
