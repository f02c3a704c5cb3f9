"""Replica of Hemibrain: CloudVolume-written Neuroglancer precomputed layers at the published
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

HEMIBRAIN_EM = "gs://neuroglancer-janelia-flyem-hemibrain/emdata/clahe_yz/jpeg"
HEMIBRAIN_SEG = "gs://neuroglancer-janelia-flyem-hemibrain/v1.2/segmentation"
HEMIBRAIN_MITO = "gs://neuroglancer-janelia-flyem-hemibrain/mito_20190717.27250582"


def write_hemibrain_replica(root: Path, shape: Zyx = (24, 48, 64), seed: int = 3) -> dict[str, ReplicaLayer]:
    """EM ``emdata/clahe_yz/jpeg`` (uint8 **jpeg**, 8 nm), ``v1.2/segmentation`` (uint64
    compressed_segmentation, 8 nm) and ``mito_20190717.27250582`` (16 nm, values 1 mitochondria,
    2 interior, 3 background, 4 unlabeled; its dtype is not recorded: written uint64
    compressed_segmentation). Keys ``em``, ``segmentation``, ``mito``; ``em.decoded`` is the
    JPEG as CloudVolume decodes it (``em.data`` is what was encoded).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_hemibrain_replica(Path(tmp))["mito"].voxel_size_nm
        (16.0, 16.0, 16.0)
    """
    rng = np.random.default_rng(seed)
    offset = (32, 64, 96)
    em = _write(root, HEMIBRAIN_EM, _em(rng, shape, smooth=True), (8.0, 8.0, 8.0), offset, encoding="jpeg",
                decode=True)
    pool = np.concatenate([[0], 10**9 + rng.choice(10**9, 30, replace=False)]).astype(np.uint64)
    seg = _write(root, HEMIBRAIN_SEG, _ids(rng, shape, pool), (8.0, 8.0, 8.0), offset,
                 encoding="compressed_segmentation")
    mito_values = np.array([1, 2, 3, 3, 3, 4], dtype=np.uint64)
    half = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    mito = _write(root, HEMIBRAIN_MITO, _ids(rng, half, mito_values, block=2), (16.0, 16.0, 16.0),
                  (16, 32, 48), encoding="compressed_segmentation")
    return {"em": em, "segmentation": seg, "mito": mito}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else an EM of 16×128×128 voxels."""
    return write_hemibrain_replica(root, **({} if small else {"shape": (16, 128, 128)}))
