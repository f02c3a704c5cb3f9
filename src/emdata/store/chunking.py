"""Chunk and shard shapes for random 3D patch reads.

Chosen from ``benchmarks/chunk_shapes.py`` and ``benchmarks/label_chunks.py`` (results in
``docs/chunking.md``): inner chunks of about 2**19 voxels, and at most ``MAX_CHUNK_BYTES``
decoded, whose physical extent is near-isotropic (e.g. 32×128×128 at 30×6×6 nm for uint8 raw,
16×128×128 for uint64 labels, 64×64×64 at 8 nm), and no sharding below ``SHARD_ABOVE_BYTES``
per array.

Example:
    >>> choose_chunks((100, 1024, 1024), (30.0, 6.0, 6.0), itemsize=1)
    ((32, 128, 128), None)
    >>> choose_chunks((100, 1024, 1024), (30.0, 6.0, 6.0), itemsize=8)  # uint64 labels: 2 MiB chunks
    ((16, 128, 128), None)
"""

from __future__ import annotations

import math

TARGET_VOXELS = 1 << 19
MAX_CHUNK_BYTES = 2 << 20
"""Decoded bytes of one chunk at most: wide dtypes (uint64 labels) get fewer voxels per chunk, so a
random patch decodes less of what it does not need (``docs/chunking.md``)."""
SHARD_ABOVE_BYTES = 8 << 30
SHARD_CHUNKS = (2, 4, 4)


def _pow2(x: float) -> int:
    return 1 << max(0, round(math.log2(max(x, 1.0))))


def choose_chunks(shape: tuple[int, ...], voxel_size: tuple[float, float, float],
                  itemsize: int) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """(inner chunk, shard or None) for an array of ``shape`` at ``voxel_size`` nm whose voxels
    take ``itemsize`` bytes."""
    voxels = min(TARGET_VOXELS, max(1, MAX_CHUNK_BYTES // max(int(itemsize), 1)))
    inv = [1.0 / v for v, n in zip(voxel_size, shape) if n > 1]  # singleton axes (2D) take no share
    scale = (voxels / math.prod(inv)) ** (1 / max(len(inv), 1))
    chunk = [min(_pow2(scale / v), n) if n > 1 else 1 for v, n in zip(voxel_size, shape)]
    nbytes = math.prod(shape) * itemsize
    if nbytes < SHARD_ABOVE_BYTES:
        return tuple(chunk), None  # type: ignore[return-value]
    shard = [min(c * k, -(-n // c) * c) for c, k, n in zip(chunk, SHARD_CHUNKS, shape)]
    return tuple(chunk), tuple(shard)  # type: ignore[return-value]
