"""DenseCell replica: ``platelet_data_1219.zip`` in the published layout
(leapmanlab ``dense-cell/README.md``, leapmanlab/examples ``download.py``).

Host ``www.dropbox.com``, path ``/s/68yclbraqq1diza/platelet_data_1219.zip``; the zip unpacks to
``platelet_data/`` with ``{train,eval,test}-images.tif`` (greyscale multipage TIFFs),
``{train,eval,test}-labels.tif`` (integer index TIFFs, values 0..6) and
``train-error-weights.tif``. Exact shapes and dtypes of the real files are not published; the
replica is small, and ``weights`` picks the weight map's encoding: ``"float"`` (float32 with
fractional values), ``"whole"`` (float32 whole numbers) or ``"integer"`` (uint8). Written with
tifffile and zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_densecell_replica(Path(tempfile.mkdtemp()))
    >>> truth["train"]["labels"].shape, truth["train"]["weights"].dtype
    ((8, 24, 32), dtype('float32'))
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

URL = "https://www.dropbox.com/s/68yclbraqq1diza/platelet_data_1219.zip"
HOST_PATH = "www.dropbox.com/s/68yclbraqq1diza/platelet_data_1219.zip"
SHAPES = {"train": (8, 24, 32), "eval": (4, 24, 32), "test": (5, 24, 32)}


def source_files(root: Path) -> dict[str, Path]:
    """``{card URL: replica file}`` (for an ``EMDATA_CHECKSUMS`` file)."""
    return {URL: Path(root) / HOST_PATH}


def member_sha256(root: Path) -> dict[str, str]:
    """``{"<URL>#<member>": sha256}`` for every file member of the replica zip."""
    with zipfile.ZipFile(Path(root) / HOST_PATH) as zf:
        return {f"{URL}#{i.filename}": hashlib.sha256(zf.read(i)).hexdigest() for i in zf.infolist()
                if not i.is_dir()}


def member_md5(root: Path) -> dict[str, str]:
    """``{file name: md5}`` of the replica's members (the shape of the published md5 table)."""
    with zipfile.ZipFile(Path(root) / HOST_PATH) as zf:
        return {i.filename.rsplit("/", 1)[-1]: hashlib.md5(zf.read(i), usedforsecurity=False).hexdigest()
                for i in zf.infolist() if not i.is_dir()}


def _tif(data: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="minisblack")
    return buf.getvalue()


def _labels(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    out = np.zeros(shape, np.uint8)
    out[((y - shape[1] / 2) / (shape[1] / 2.5)) ** 2 + ((x - shape[2] / 2) / (shape[2] / 2.5)) ** 2 <= 1] = 1
    for cls in (2, 3, 4, 5):
        cy, cx = rng.integers(6, shape[1] - 6), rng.integers(6, shape[2] - 6)
        out[(abs(y - cy) <= 2) & (abs(x - cx) <= 2) & (z % 3 != cls % 3)] = cls
        if cls == 5:
            out[(y == cy) & (x == cx)] = 6
    return out


def write_densecell_replica(root: Path, weights: str = "float", seed: int = 11,
                            shapes: dict[str, tuple[int, int, int]] | None = None,
                            image_dtype: str = "uint8") -> dict[str, dict[str, np.ndarray]]:
    """Write ``<root>/www.dropbox.com/s/68yclbraqq1diza/platelet_data_1219.zip``.

    Returns per volume (train, eval, test) ``raw`` and ``labels``, and for train ``weights``.
    """
    if weights not in ("float", "whole", "integer"):
        raise ValueError(f"weights {weights!r}: expected 'float', 'whole' or 'integer'")
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    truth: dict[str, dict[str, np.ndarray]] = {}
    for name, shape in (shapes or SHAPES).items():
        top = np.iinfo(np.dtype(image_dtype)).max
        raw = rng.integers(0, top, size=shape, endpoint=True).astype(image_dtype)
        labels = _labels(rng, shape)
        files[f"platelet_data/{name}-images.tif"] = _tif(raw)
        files[f"platelet_data/{name}-labels.tif"] = _tif(labels)
        truth[name] = {"raw": raw, "labels": labels}
        if name == "train":
            base = 1.0 + (labels > 0) * 2.0 + (labels >= 2) * 5.0
            if weights == "float":
                w = (base + rng.random(shape) * 0.75).astype(np.float32)
            elif weights == "whole":
                w = base.astype(np.float32)
            else:
                w = base.astype(np.uint8)
            files[f"platelet_data/{name}-error-weights.tif"] = _tif(w)
            truth[name]["weights"] = w
    target = Path(root) / HOST_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("platelet_data/", b"")
        for member, data in files.items():
            zf.writestr(member, data)
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_densecell_replica(root, **({} if small else {"shapes": dict.fromkeys(("train", "eval", "test"),
                                                                                  (16, 144, 144))}))
