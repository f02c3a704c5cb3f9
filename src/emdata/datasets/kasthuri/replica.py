"""Replica of Kasthuri 2015 (Neuroglancer public data): CloudVolume-written precomputed layers at the published
layer paths (as the dataset pages and torch-em's loaders give them) under ``<root>/<host>/<path>``, with
small extents but the published voxel sizes (z, y, x nm), dtypes and encodings. Facts the published sources
do not state are test choices, noted in the writer. Writes go through
:func:`emdata.testing.precomputed.write_replica_layer` (CloudVolume); this module shares no code with the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emdata.testing.precomputed import ReplicaLayer, Zyx
from emdata.testing.precomputed import em_values as _em
from emdata.testing.precomputed import prepare_options as prepare_options  # all of the EM, spelled out
from emdata.testing.precomputed import segment_ids as _ids
from emdata.testing.precomputed import write_replica_layer as _write

KASTHURI_IMAGE = "gs://neuroglancer-public-data/kasthuri2011/image_color_corrected"
KASTHURI_GT = "gs://neuroglancer-public-data/kasthuri2011/ground_truth"


def write_kasthuri_replica(root: Path, shape: Zyx = (12, 48, 56), seed: int = 4) -> dict[str, ReplicaLayer]:
    """``image_color_corrected`` (uint8 raw, 6×6×30 nm) and ``ground_truth`` (uint64
    compressed_segmentation; dtype not recorded upstream) with ids only inside a cylinder
    along z, 0 outside, as in the annotated cylinder. Keys ``em`` and ``ground_truth``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_kasthuri_replica(Path(tmp))["ground_truth"].voxel_size_nm
        (30.0, 6.0, 6.0)
    """
    rng = np.random.default_rng(seed)
    offset = (8, 32, 16)
    ids = _ids(rng, shape, np.arange(1, 5000, dtype=np.uint64))
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    ids[:, (yy - shape[1] // 2) ** 2 + (xx - shape[2] // 2 - 2) ** 2 > (shape[1] * 3 // 8) ** 2] = 0
    return {"em": _write(root, KASTHURI_IMAGE, _em(rng, shape), (30.0, 6.0, 6.0), offset),
            "ground_truth": _write(root, KASTHURI_GT, ids, (30.0, 6.0, 6.0), offset,
                                   encoding="compressed_segmentation")}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else an EM of 16×128×128 voxels."""
    return write_kasthuri_replica(root, **({} if small else {"shape": (16, 128, 128)}))
