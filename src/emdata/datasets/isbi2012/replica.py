"""ISBI 2012 replica in torch-em's published layout (``isbi2012.py``).

``isbi.h5`` is served at ``<root>/oc.embl.de/index.php/s/h0TkwqxU0PJDdMd/download`` (the
card's URL; the file name comes from the card, the URL path ends in ``download``). Keys:
``raw`` (uint8 (z, y, x) stack), ``labels/membranes`` (the original challenge labels) and
``labels/gt_segmentation`` (instance ids derived by the torch-em authors).

Neither the challenge page nor torch-em says which membrane value means membrane. By default the replica
writes the original challenge's published convention (black = membrane: 0 = membrane,
255 = cell interior, uint8); ``membrane_value``/``other_value`` write any other two-value
encoding so a recipe's detection can be tested both ways. The raw is drawn with dark
membranes on brighter cell interiors, as in TEM. Written with h5py; shares no code with
the recipe.

Example:
    >>> import tempfile
    >>> truth = write_isbi2012_replica(Path(tempfile.mkdtemp()), shape=(3, 32, 32))
    >>> sorted(np.unique(truth["membranes"]).tolist())
    [0, 255]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HOST_PATH = "oc.embl.de/index.php/s/h0TkwqxU0PJDdMd/download"
URL = "https://" + HOST_PATH


def _cells(rng: np.random.Generator, shape: tuple[int, int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell ids ≥ 1, membrane mask): 2D Voronoi cells drifting along z, 2-px membranes."""
    seeds = rng.uniform(0, 1, size=(n, 2)) * np.array(shape[1:])
    drift = rng.normal(0, 0.8, size=(n, 2))
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    cells = np.zeros(shape, dtype=np.int64)
    membrane = np.zeros(shape, dtype=bool)
    for z in range(shape[0]):
        c = seeds + z * drift
        d = np.sqrt((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2)
        order = np.sort(d, axis=0)
        cells[z] = np.argmin(d, axis=0) + 1
        membrane[z] = order[1] - order[0] < 2.0
    return cells, membrane


def write_isbi2012_replica(root: Path, shape: tuple[int, int, int] = (5, 64, 64), seed: int = 7,
                           membrane_value: Any = 0, other_value: Any = 255, label_dtype: str = "uint8",
                           segmentation_dtype: str = "uint64", n_cells: int = 14) -> dict[str, Any]:
    """Write ``isbi.h5``; returns ``raw``, ``membranes`` (as stored), ``membrane_mask`` (bool),
    ``gt_segmentation`` (as stored), ``path`` and ``url``."""
    import h5py

    rng = np.random.default_rng(seed)
    cells, membrane = _cells(rng, shape, n_cells)
    raw = np.where(membrane, rng.normal(70, 20, shape), rng.normal(175, 20, shape))
    raw = np.clip(raw, 0, 255).astype(np.uint8)
    membranes = np.where(membrane, membrane_value, other_value).astype(label_dtype)
    # torch-em's derived instances: cells with the membrane voxels as 0, ids made sparse and wide
    ids = np.where(membrane, 0, cells * 1009 + 2**33).astype(segmentation_dtype)
    target = Path(root) / HOST_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as f:
        f.create_dataset("raw", data=raw, compression="gzip")
        f.create_dataset("labels/membranes", data=membranes, compression="gzip")
        f.create_dataset("labels/gt_segmentation", data=ids, compression="gzip")
    return {"raw": raw, "membranes": membranes, "membrane_mask": membrane, "gt_segmentation": ids,
            "path": target, "url": URL}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_isbi2012_replica(root, **({} if small else {"shape": (16, 160, 160)}))
