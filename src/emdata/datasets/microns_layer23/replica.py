"""Replica of MICrONS layer 2/3 (pinky100): CloudVolume-written Neuroglancer precomputed layers at the published
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

LAYER23_EM = ("precomputed://https://storage.googleapis.com/microns_public_datasets/pinky100_v0/"
              "son_of_alignment_v15_rechunked")
LAYER23_SEG = "precomputed://https://storage.googleapis.com/microns_public_datasets/pinky100_v185/seg"


def write_microns_layer23_replica(root: Path, shape: Zyx = (16, 64, 64),
                                  seed: int = 5) -> dict[str, ReplicaLayer]:
    """EM ``pinky100_v0/son_of_alignment_v15_rechunked`` (uint8 raw, nominal 4×4×40 nm, mip 1 =
    8×8×40 nm) and ``pinky100_v185/seg`` (uint64 compressed_segmentation at 8×8×40 nm: half the
    EM's resolution in x and y, as the Allen notebooks show) over the same region, with uint64
    18-digit root ids (``648518346…``). Keys ``em`` and ``segmentation``.

    The EM is written at the nominal 4 nm frame users report in its info, not the physical
    3.58 nm; the encodings, offsets (even, like the published 35000/31000/1) and chunk sizes are
    test choices.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     layers = write_microns_layer23_replica(Path(tmp))
        >>> layers["em"].voxel_size_nm, layers["segmentation"].voxel_size_nm
        ((40.0, 4.0, 4.0), (40.0, 8.0, 8.0))
    """
    rng = np.random.default_rng(seed)
    em = _write(root, LAYER23_EM, _em(rng, shape), (40.0, 4.0, 4.0), (1, 96, 112), mips=2)
    pool = np.concatenate([[0], 648518346340000000 + rng.choice(10**10, 40, replace=False)]).astype(np.uint64)
    half_xy = (shape[0], shape[1] // 2, shape[2] // 2)
    seg = _write(root, LAYER23_SEG, _ids(rng, half_xy, pool), (40.0, 8.0, 8.0), (1, 48, 56),
                 encoding="compressed_segmentation")
    return {"em": em, "segmentation": seg}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else an EM of 16×128×128 voxels."""
    return write_microns_layer23_replica(root, **({} if small else {"shape": (16, 128, 128)}))
