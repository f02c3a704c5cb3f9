"""Replica of J0126: CloudVolume-written Neuroglancer precomputed layers at the published
layer paths (as the dataset pages and torch-em's loaders give them) under ``<root>/<host>/<path>``, with
small extents but the published voxel sizes (z, y, x nm), dtypes and encodings. Facts the published sources
do not state are test choices, noted in the writer. Writes go through
:func:`emdata.testing.precomputed.write_replica_layer` (CloudVolume); this module shares no code with the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emdata.testing.precomputed import ReplicaLayer, Voxel, Zyx
from emdata.testing.precomputed import em_values as _em
from emdata.testing.precomputed import prepare_options as prepare_options  # all of the EM, spelled out
from emdata.testing.precomputed import segment_ids as _ids
from emdata.testing.precomputed import write_replica_layer as _write

_J0126 = "https://storage.googleapis.com/j0126-nature-methods-data/GgwKmcKgrcoNxJccKuGIzRnQqfit9hnfK1ctZzNbnuU"
J0126_RAW = f"{_J0126}/rawdata_realigned"
J0126_SEG = f"{_J0126}/ffn_segmentation"


def write_j0126_replica(root: Path, voxel_size_nm: Voxel = (20.0, 10.0, 10.0),
                        shape: Zyx = (12, 40, 48), seed: int = 2) -> dict[str, ReplicaLayer]:
    """``rawdata_realigned`` (uint8 raw) and ``ffn_segmentation`` (uint64 compressed_segmentation)
    on one grid, at ``voxel_size_nm`` (torch-em's 10×10×20 nm x×y×z by default; pass
    ``(20, 9, 9)`` for the value awesome-em-datasets lists). Keys ``em`` and ``ffn_segmentation``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_j0126_replica(Path(tmp))["ffn_segmentation"].data.dtype
        dtype('uint64')
    """
    rng = np.random.default_rng(seed)
    offset = (4, 16, 32)
    pool = np.concatenate([[0], rng.choice(10**7, 30, replace=False)]).astype(np.uint64)
    return {"em": _write(root, J0126_RAW, _em(rng, shape), voxel_size_nm, offset),
            "ffn_segmentation": _write(root, J0126_SEG, _ids(rng, shape, pool), voxel_size_nm, offset,
                                       encoding="compressed_segmentation")}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else an EM of 16×128×128 voxels."""
    return write_j0126_replica(root, **({} if small else {"shape": (16, 128, 128)}))
