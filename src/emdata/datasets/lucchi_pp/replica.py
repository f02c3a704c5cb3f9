"""Lucchi++ replica in the published layout (as torch-em's lucchi.py reads it), small in z and xy.

``lucchi_pp.zip`` on host ``www.casser.io`` at ``/files/lucchi_pp.zip`` holds the folder
``Lucchi++/`` with ``Train_In``, ``Train_Out``, ``Test_In`` and ``Test_Out``: raw slices
``mask%04d.png`` (8-bit greyscale), label slices ``%d.png`` (no zero padding), either RGBA with
(255,255,255,255) = mitochondrion or greyscale with 255 = mitochondrion. The RGBA background
colour is not stated by any public reader; it is a parameter (default opaque black). Written with
PIL and zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_lucchi_pp_replica(Path(tempfile.mkdtemp()), slices=(3, 2))
    >>> truth["train"]["labels"].shape, sorted(set(truth["train"]["labels"].ravel().tolist()))
    ((3, 48, 64), [0, 1])
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

URL = "http://www.casser.io/files/lucchi_pp.zip"
HOST_PATH = "www.casser.io/files/lucchi_pp.zip"
FOLDERS = {"train": ("Train_In", "Train_Out"), "test": ("Test_In", "Test_Out")}


def source_files(root: Path) -> dict[str, Path]:
    """``{card URL: replica file}`` (for an ``EMDATA_CHECKSUMS`` file)."""
    return {URL: Path(root) / HOST_PATH}


def _raw(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return np.clip(rng.normal(140, 20, size=shape) + 40 * np.cos(x / 6.0 + z) * np.sin(y / 8.0), 0,
                   255).astype(np.uint8)


def _mito(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    for _ in range(6):
        cz, cy, cx = (rng.uniform(0, s) for s in shape)
        r = rng.uniform(3, 9, size=3)
        out[((z - cz) / r[0]) ** 2 + ((y - cy) / r[1]) ** 2 + ((x - cx) / r[2]) ** 2 <= 1] = 1
    return out


def label_png(mask: np.ndarray, mode: str = "rgba", background: tuple[int, int, int, int] = (0, 0, 0, 255)) -> bytes:
    """One label slice: ``mode`` ``"rgba"`` (white opaque = mito) or ``"grey"`` (255 = mito)."""
    from PIL import Image

    buf = io.BytesIO()
    if mode == "rgba":
        rgba = np.empty((*mask.shape, 4), np.uint8)
        rgba[...] = background
        rgba[mask == 1] = (255, 255, 255, 255)
        Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG")
    elif mode == "grey":
        Image.fromarray((mask * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    else:
        raise ValueError(f"label mode {mode!r}: expected 'rgba' or 'grey'")
    return buf.getvalue()


def raw_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_lucchi_pp_replica(root: Path, slices: tuple[int, int] = (12, 11), shape: tuple[int, int] = (48, 64),
                            label_mode: str = "rgba", background: tuple[int, int, int, int] = (0, 0, 0, 255),
                            seed: int = 7, shuffle: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Write ``<root>/www.casser.io/files/lucchi_pp.zip``; returns ``raw`` and 0/1 ``labels`` per volume.

    ``slices`` = (train, test) slice counts; with 11 or more, ``10.png`` sorts before ``2.png``
    as text, so only numeric ordering reads it right. ``shuffle`` scrambles member order.
    """
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    truth: dict[str, dict[str, np.ndarray]] = {}
    for (volume, (raw_dir, label_dir)), n in zip(FOLDERS.items(), slices):
        raw, mito = _raw(rng, (n, *shape)), _mito(rng, (n, *shape))
        for z in range(n):
            files[f"Lucchi++/{raw_dir}/mask{z:04d}.png"] = raw_png(raw[z])
            files[f"Lucchi++/{label_dir}/{z}.png"] = label_png(mito[z], label_mode, background)
        truth[volume] = {"raw": raw, "labels": mito}
    write_zip(Path(root) / HOST_PATH, files, random.Random(seed) if shuffle else None)
    return truth


def write_zip(target: Path, files: dict[str, bytes], shuffle: random.Random | None = None) -> None:
    """A zip with directory entries (as ``zip -r`` writes them) and the given members."""
    target.parent.mkdir(parents=True, exist_ok=True)
    names = list(files)
    if shuffle is not None:
        shuffle.shuffle(names)
    folders = sorted({n.rsplit("/", 1)[0] + "/" for n in names if "/" in n} | {n.split("/", 1)[0] + "/" for n in names
                                                                              if "/" in n})
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(folder, b"")
        for name in names:
            zf.writestr(name, files[name])


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_lucchi_pp_replica(root, **({} if small else {"slices": (16, 16), "shape": (160, 160)}))
