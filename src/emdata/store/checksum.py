"""Content checksums of stored arrays: one BLAKE2b-128 digest per block of decoded voxels.

A block is a shard (or, unsharded, a chunk). Digests are computed from the array that was
written and stored in the array's ``emdata.checksum`` attribute; ``verify --deep`` decodes
every block again and compares, so a truncated, deleted or altered chunk file is found and
located.

Example:
    >>> import numpy as np
    >>> blocks = block_digests(np.zeros((4, 4, 4), "u1"), (2, 4, 4))
    >>> len(blocks)
    2
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

ALGORITHM = "blake2b-128"


def block_slices(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Slices of every block of the grid, C order."""
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for start in itertools.product(*ranges):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(start, block, shape))


def digest(values: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).hexdigest()


def block_digests(data: np.ndarray, block: tuple[int, ...]) -> list[str]:
    return [digest(data[sl]) for sl in block_slices(data.shape, block)]


def checksum_attr(data: np.ndarray, block: tuple[int, ...]) -> dict[str, Any]:
    """The ``emdata.checksum`` attribute recorded on an array at write time."""
    return {"algorithm": ALGORITHM, "block_shape": list(block), "blocks": block_digests(data, block)}
