"""NucMM replica: the Google Drive folder's layout (the folder pytorch_connectomics links).

Written under ``<root>/drive.google.com/drive/folders/1_4CrlYvzx0ITnGlJOHdgcTRgeSkm9wT8/``
(the card's URL) as the folder downloads: ``Zebrafish (NucMM-Z)/`` and ``Mouse (NucMM-M)/``,
each with ``Image/{train,val}/img_*.h5`` and ``Label/{train,val}/seg_*.h5`` (pytc's names),
dataset key ``main``. The folder cannot be fetched as a file, so tests copy it into the
download folder as a user would. dtypes are not recorded in the sources: raw uint8, labels
uint32 (zebrafish) / uint64 (mouse) here, so narrowing would be caught. No voxel-size
attribute is written (none is known). Written with h5py; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_nucmm_replica(Path(tempfile.mkdtemp()))
    >>> sorted(truth["volumes"])[:2], truth["folders"]["mouse"].name
    (['mouse-train-000', 'mouse-train-001'], 'Mouse (NucMM-M)')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DRIVE_DIR = "drive.google.com/drive/folders/1_4CrlYvzx0ITnGlJOHdgcTRgeSkm9wT8"
FOLDERS = {"zebrafish": "Zebrafish (NucMM-Z)", "mouse": "Mouse (NucMM-M)"}
LABEL_DTYPES = {"zebrafish": np.uint32, "mouse": np.uint64}


def _nuclei(rng: np.random.Generator, shape: tuple[int, int, int], dtype: type, n: int = 5) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    out = np.zeros(shape, dtype)
    ids = rng.choice(100_000, size=n, replace=False).astype(dtype) + 1
    for i in range(n):
        c = rng.uniform(0, 1, 3) * np.array(shape)
        r = rng.uniform(2.0, 4.0)
        out[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = ids[i]
    return out


def _write(path: Path, data: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("main", data=data, compression="gzip")


def write_nucmm_replica(root: Path, subsets: tuple[str, ...] = ("zebrafish", "mouse"), n_train: int = 2,
                        n_val: int = 1, shape: tuple[int, int, int] = (7, 18, 22), seed: int = 5) -> dict[str, Any]:
    """Write the folder tree; returns ``{"volumes": {name: (raw, seg)}, "folders": {subset: path}}``.

    Volume ``k`` of a split is ``shape`` grown by ``k`` slices and ``2k`` columns.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / DRIVE_DIR
    truth: dict[str, Any] = {"volumes": {}, "folders": {}}
    for subset in subsets:
        folder = base / FOLDERS[subset]
        for split, count in (("train", n_train), ("val", n_val)):
            for k in range(count):
                vol_shape = (shape[0] + k, shape[1], shape[2] + 2 * k)
                seg = _nuclei(rng, vol_shape, LABEL_DTYPES[subset])
                raw = np.clip(rng.normal(120, 20, vol_shape) + 80 * (seg > 0), 0, 255).astype(np.uint8)
                _write(folder / "Image" / split / f"img_{k:03d}.h5", raw)
                _write(folder / "Label" / split / f"seg_{k:03d}.h5", seg)
                truth["volumes"][f"{subset}-{split}-{k:03d}"] = (raw, seg)
        truth["folders"][subset] = folder
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_nucmm_replica(root, **({} if small else {"shape": (16, 128, 128)}))


def placed_folders(truth: dict[str, Any]) -> dict[Path, str]:
    """Hand-placed: ``{written folder: sub-folder of the download folder}`` to copy, as a user would."""
    return {folder: folder.name for folder in truth["folders"].values()}
