"""Replica of H01: CloudVolume-written Neuroglancer precomputed layers at the published
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

H01_EM = "gs://h01-release/data/20210601/4nm_raw"
H01_C3 = "gs://h01-release/data/20210601/c3"


def write_h01_replica(root: Path, shape: Zyx = (12, 64, 80), seed: int = 1) -> dict[str, ReplicaLayer]:
    """``4nm_raw`` (uint8, 4×4×33 nm, mip 1 = 8×8×33 nm as torch-em states) and ``c3`` (uint64
    compressed_segmentation, 8×8×33 nm) covering the same region. Keys ``em`` and ``c3``. ``shape`` is
    the EM's at 4 nm (y and x even).

    The EM encoding is not published: written ``raw``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_h01_replica(Path(tmp))["em"].voxel_size_nm
        (33.0, 4.0, 4.0)
    """
    rng = np.random.default_rng(seed)
    em = _write(root, H01_EM, _em(rng, shape), (33.0, 4.0, 4.0), (5, 128, 64), mips=2)
    pool = np.concatenate([[0], rng.choice(10**12, 30, replace=False)]).astype(np.uint64)
    c3 = _write(root, H01_C3, _ids(rng, (shape[0], shape[1] // 2, shape[2] // 2), pool), (33.0, 8.0, 8.0), (5, 64, 32),
                encoding="compressed_segmentation")
    return {"em": em, "c3": c3}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else an EM of 16×128×128 voxels."""
    return write_h01_replica(root, **({} if small else {"shape": (16, 128, 128)}))
