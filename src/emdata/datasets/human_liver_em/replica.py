"""Human liver EM replica: EMPIAR-13356's per-slice files, as torch-em's ``human_liver_em.py``
(constantinpape/torch-em commit a85b1434) reads them.

Written under ``<root>/ftp.ebi.ac.uk/empiar/world_availability/13356/data/`` as published:

- ``humanliver_raw_images/humanliver_raw_{z:03d}.tif``: one uint16 greyscale TIFF per slice,
  LZW with the horizontal-differencing predictor and one row per strip (the layout torch-em's
  loader relies on), written with tifffile;
- ``humanliver_<class>_mask/humanliver_<class>_mask_{z:03d}.png``: one 8-bit greyscale PNG per
  slice and class, 0 = background, 255 = the class, written with Pillow. Only the classes asked
  for are written (default: the confirmed er, mito, nucleus and one of the six unconfirmed
  folders, hepatocyte), so the other folders answer 404 as unpublished ones would.

Slices are small (default 6 × 256 × 320) so tests run fast. The raw is smooth structure plus
noise (LZW-compressible the way EM is only mildly). Shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_human_liver_em_replica(Path(tempfile.mkdtemp()), n_slices=2, shape=(32, 40))
    >>> truth["raw"].shape, truth["raw"].dtype.name, sorted(truth["masks"])
    ((2, 32, 40), 'uint16', ['er', 'hepatocyte', 'mito', 'nucleus'])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

BASE = "ftp.ebi.ac.uk/empiar/world_availability/13356/data"
DEFAULT_CLASSES = ("er", "mito", "nucleus", "hepatocyte")


def raw_file(z: int) -> str:
    """Path of raw slice ``z`` below the mirror root."""
    return f"{BASE}/humanliver_raw_images/humanliver_raw_{z:03d}.tif"


def mask_file(cls: str, z: int) -> str:
    """Path of the ``cls`` mask of slice ``z`` below the mirror root."""
    return f"{BASE}/humanliver_{cls}_mask/humanliver_{cls}_mask_{z:03d}.png"


def _blobs(rng: np.random.Generator, shape: tuple[int, int], n: int, radius: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(*radius)
        out |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return out


def write_human_liver_em_replica(root: Path, n_slices: int = 6, shape: tuple[int, int] = (256, 320),
                                 classes: Sequence[str] = DEFAULT_CLASSES, seed: int = 0) -> dict[str, Any]:
    """Write the replica; returns ``{"raw": (z, y, x) uint16, "masks": {class: (z, y, x) uint8 0/255},
    "files": {"raw": [paths], "<class>": [paths]}}``."""
    import tifffile
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    raw = np.empty((n_slices, height, width), np.uint16)
    masks = {cls: np.zeros((n_slices, height, width), np.uint8) for cls in classes}
    files: dict[str, list[Path]] = {"raw": [], **{cls: [] for cls in classes}}
    for z in range(n_slices):
        smooth = 20000 + 8000 * np.sin(yy / 17.0 + z / 3.0) * np.cos(xx / 23.0 - z / 5.0)
        raw[z] = np.clip(smooth + rng.normal(0, 1500, shape), 0, 65535).astype(np.uint16)
        path = root / raw_file(z)
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, raw[z], photometric="minisblack", compression="lzw", predictor=True, rowsperstrip=1)
        files["raw"].append(path)
        for i, cls in enumerate(classes):
            blobs = _blobs(rng, shape, n=3 + i, radius=(4.0, 12.0 + 6 * i))
            masks[cls][z] = np.where(blobs, 255, 0).astype(np.uint8)
            path = root / mask_file(cls, z)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(masks[cls][z], mode="L").save(path, format="PNG")
            files[cls].append(path)
    return {"raw": raw, "masks": masks, "files": files}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_human_liver_em_replica(root, **({"n_slices": 2, "shape": (32, 40)} if small
                                                 else {"n_slices": 16, "shape": (144, 144)}))


PREPARE_OPTIONS: dict[str, Any] = {"bbox": ":,:,:"}
"""What ``prepare`` needs besides the defaults to read this replica."""
