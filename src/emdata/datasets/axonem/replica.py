"""AxonEM replica: the two Hugging Face training zips (as torch-em's ``axonem.py`` downloads them).

``<root>/huggingface.co/datasets/pytc/AxonEM/resolve/main/EM30-{H,M}-train-9vol-pad-20-512-512.zip``
hold ``im_<name>.h5`` (uint8 EM) with matching ``seg_<name>.h5`` (axon ids), dataset key
``main``, at the top of the zip (torch-em unzips and globs ``im_*.h5`` there). The mouse
zip also holds ``valid_mask.h5`` and the unpaired ``im_675-800-800_pad.h5``. The ``<name>``
of the paired files and the label dtypes are not recorded in the sources; the names here
are illustrative, and labels are uint64 (human) / uint32 (mouse) so a reader that narrows
ids is caught. Written with h5py and zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_axonem_replica(Path(tempfile.mkdtemp()))
    >>> sorted(truth["human"])[:1], truth["mouse_extra"]["valid_mask"].dtype
    (['0-0-0_pad'], dtype('uint8'))
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HOST_DIR = "huggingface.co/datasets/pytc/AxonEM/resolve/main"
ZIPS = {"human": "EM30-H-train-9vol-pad-20-512-512.zip", "mouse": "EM30-M-train-9vol-pad-20-512-512.zip"}
URLS = {k: f"https://{HOST_DIR}/{v}" for k, v in ZIPS.items()}
LABEL_DTYPES = {"human": np.uint64, "mouse": np.uint32}
UNPAIRED = "im_675-800-800_pad.h5"


def _h5_bytes(data: np.ndarray) -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("main", data=data, compression="gzip", chunks=True)
    return buf.getvalue()


def _axons(rng: np.random.Generator, shape: tuple[int, int, int], dtype: type, n: int = 6) -> np.ndarray:
    """Tubes running along z with large sparse ids (0 = background)."""
    out = np.zeros(shape, dtype=dtype)
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    top = 2**40 if dtype == np.uint64 else 2**31
    ids = rng.choice(top, size=n, replace=False).astype(dtype) + 1
    start = rng.uniform(0, 1, (n, 2)) * np.array(shape[1:])
    step = rng.normal(0, 0.7, (n, 2))
    for z in range(shape[0]):
        for i in range(n):
            cy, cx = start[i] + z * step[i]
            out[z][(yy - cy) ** 2 + (xx - cx) ** 2 <= 6.0] = ids[i]
    return out


def write_axonem_replica(root: Path, subsets: tuple[str, ...] = ("human", "mouse"), n_pairs: int = 2,
                         shape: tuple[int, int, int] = (8, 24, 20), seed: int = 7) -> dict[str, Any]:
    """Write the zips; returns ``{subset: {name: (raw, seg)}, "mouse_extra": {...}, "zips": {...}}``.

    Pair ``k`` is ``shape`` grown by ``2k`` slices and ``4k`` columns (pairs differ in shape).
    """
    rng = np.random.default_rng(seed)
    truth: dict[str, Any] = {"zips": {}}
    for subset in subsets:
        pairs = {}
        files: dict[str, bytes] = {}
        for k in range(n_pairs):
            name = f"{k * 200}-0-0_pad"
            pair_shape = (shape[0] + 2 * k, shape[1], shape[2] + 4 * k)
            seg = _axons(rng, pair_shape, LABEL_DTYPES[subset])
            raw = np.clip(rng.normal(140, 25, pair_shape) - 60 * (seg > 0), 0, 255).astype(np.uint8)
            files[f"im_{name}.h5"] = _h5_bytes(raw)
            files[f"seg_{name}.h5"] = _h5_bytes(seg)
            pairs[name] = (raw, seg)
        truth[subset] = pairs
        if subset == "mouse":
            lone = rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
            mask = np.zeros((10, 16, 16), np.uint8)
            mask[2:8, 3:13, 3:13] = 1
            files[UNPAIRED] = _h5_bytes(lone)
            files["valid_mask.h5"] = _h5_bytes(mask)
            truth["mouse_extra"] = {"unpaired_image": lone, "valid_mask": mask}
        target = Path(root) / HOST_DIR / ZIPS[subset]
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        truth["zips"][subset] = target
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_axonem_replica(root, **({} if small else {"shape": (16, 128, 128)}))
