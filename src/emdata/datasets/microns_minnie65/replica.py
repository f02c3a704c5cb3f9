"""Replica of MICrONS minnie65: CloudVolume-written Neuroglancer precomputed layers at the published
layer paths (as the dataset pages and torch-em's loaders give them) under ``<root>/<host>/<path>``, with
small extents but the published voxel sizes (z, y, x nm), dtypes and encodings. Facts the published sources
do not state are test choices, noted in the writer. Writes go through
:func:`emdata.testing.precomputed.write_replica_layer` (CloudVolume); this module shares no code with the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emdata.testing.precomputed import ReplicaLayer, Voxel, Zyx
from emdata.testing.precomputed import em_values as _em
from emdata.testing.precomputed import prepare_options as prepare_options  # all of the EM, spelled out
from emdata.testing.precomputed import segment_ids as _ids
from emdata.testing.precomputed import write_replica_layer as _write

MICRONS_EM = "precomputed://https://bossdb-open-data.s3.amazonaws.com/iarpa_microns/minnie/minnie65/em"
MICRONS_SEG = {
    "117": "precomputed://https://bossdb-open-data.s3.amazonaws.com/iarpa_microns/minnie/minnie65/seg",
    "343": "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m343/",
    "943": "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m943/",
    "1300": "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m1300/",
}


def write_microns_minnie65_replica(root: Path, versions: tuple[str, ...] = ("117", "343", "943", "1300"),
                                   seg_voxel_nm: Mapping[str, Voxel] | None = None,
                                   shape: Zyx = (20, 48, 64), seed: int = 0) -> dict[str, ReplicaLayer]:
    """EM (uint8 raw, 8×8×40 nm, two mips) and one segmentation layer per version.

    Keys ``em`` and ``seg_v<version>``. Segmentations hold uint64 18-digit root ids (a different
    id pool per version, as proofreading changes roots) on the EM grid. A version listed in
    ``seg_voxel_nm`` as ``(40, 4, 4)`` is written at 4×4×40 nm mip 0 (the ids repeated ×2 in y
    and x, offset doubled) with mip 1 at 8×8×40 nm: the seg mip ladders are unverified upstream,
    so tests use it for the resolution-conversion path. ``shape`` is the EM's; offsets and chunk sizes are
    test choices.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     layers = write_microns_minnie65_replica(Path(tmp), versions=("343",),
        ...                                             seg_voxel_nm={"343": (40.0, 4.0, 4.0)})
        >>> layers["seg_v343"].voxel_size_nm
        (40.0, 4.0, 4.0)
    """
    rng = np.random.default_rng(seed)
    offset, voxel = (20, 96, 160), (40.0, 8.0, 8.0)
    out = {"em": _write(root, MICRONS_EM, _em(rng, shape), voxel, offset, mips=2)}
    for i, version in enumerate(versions):
        pool = np.concatenate([[0], 864691135000000000 + np.int64(i) * 10**9
                               + rng.choice(10**9, 40, replace=False)]).astype(np.uint64)
        ids = _ids(rng, shape, pool)
        seg_voxel = (seg_voxel_nm or {}).get(version, voxel)
        f = round(voxel[1] / seg_voxel[1])
        if seg_voxel != (voxel[0], voxel[1] / f, voxel[2] / f) or f not in (1, 2):
            raise ValueError(f"seg_voxel_nm[{version!r}] must be {voxel} or (40, 4, 4), got {seg_voxel}")
        fine = ids.repeat(f, 1).repeat(f, 2)
        out[f"seg_v{version}"] = _write(root, MICRONS_SEG[version], fine, seg_voxel,
                                        (offset[0], offset[1] * f, offset[2] * f),
                                        encoding="compressed_segmentation", mips=f)
    return out


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else an EM of 16×128×128 voxels."""
    return write_microns_minnie65_replica(root, **({} if small else {"shape": (16, 128, 128)}))
