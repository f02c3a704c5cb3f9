"""MitoEM replica in the published layout (pytorch_connectomics' MitoEM
tutorial), small in z and xy.

Per subset, two zips at the card's URLs (``?dl=1`` queries are not part of the path):

- raw ``EM30-H-im.zip`` (www.dropbox.com) / ``EM30-R-im.zip`` (huggingface.co pytc/EM30):
  ``im/im%04d.png``, 8-bit greyscale PNGs, one per slice, the number = global z;
- labels ``EM30-H-mito-train-val-v2.zip`` (www.dropbox.com) / ``EM30-R-mito-train-val-v2.zip``
  (huggingface.co pytc/MitoEM): ``mito-train-v2/seg%04d.tif`` (the first slices) and
  ``mito-val-v2/seg%04d.tif`` (the next ones), single-page greyscale TIFFs of instance ids,
  0 = background. The published TIFF dtype is not recorded; it is a parameter here.

The remaining raw slices (published: 500-999) have no labels. Written with PIL, tifffile and
zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_mitoem_replica(Path(tempfile.mkdtemp()), subsets=("rat",), slices=(3, 2, 2))
    >>> truth["rat-val"]["labels"].shape, int(truth["rat-val"]["first"])
    ((2, 40, 48), 3)
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

URLS = {
    "human": ("https://www.dropbox.com/s/z41qtu4y735j95e/EM30-H-im.zip?dl=1",
              "https://www.dropbox.com/s/dhf89bc14kemw4e/EM30-H-mito-train-val-v2.zip?dl=1"),
    "rat": ("https://huggingface.co/datasets/pytc/EM30/resolve/main/EM30-R-im.zip",
            "https://huggingface.co/datasets/pytc/MitoEM/resolve/main/EM30-R-mito-train-val-v2.zip"),
}


def local_path(root: Path, url: str) -> Path:
    """Where the loopback mirror serves ``url`` from: ``<root>/<host>/<path>`` (query dropped)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    return Path(root) / rest


def source_files(root: Path, subsets: Sequence[str] = ("human", "rat")) -> dict[str, Path]:
    """``{card URL: replica file}`` for the given subsets (for an ``EMDATA_CHECKSUMS`` file)."""
    return {url: local_path(root, url) for s in subsets for url in URLS[s]}


def _raw(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    texture = 50 * np.sin(x / 5.0 + z / 2.0) * np.cos(y / 9.0)
    return np.clip(rng.normal(120, 25, size=shape) + texture, 0, 255).astype(np.uint8)


def _mitochondria(rng: np.random.Generator, shape: tuple[int, int, int], n: int, dtype: np.dtype,
                  id_base: int) -> np.ndarray:
    """Ellipsoid instances with sparse, non-consecutive ids (ids start at ``id_base``)."""
    out = np.zeros(shape, dtype=dtype)
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ids = id_base + np.sort(rng.choice(np.arange(1, 50_000), size=n, replace=False)).astype(np.uint64) * 7
    for i in ids:
        cz, cy, cx = (rng.uniform(0, s) for s in shape)
        rz, ry, rx = rng.uniform(1.5, 4), rng.uniform(3, 9), rng.uniform(3, 9)
        inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
        out[inside] = np.asarray(i).astype(dtype)
    return out


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _tif(img: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, img, photometric="minisblack")
    return buf.getvalue()


def _write_zip(target: Path, files: dict[str, bytes], shuffle: random.Random | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    names = list(files)
    if shuffle is not None:
        shuffle.shuffle(names)
    folders = sorted({n.rsplit("/", 1)[0] + "/" for n in names if "/" in n})
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(folder, b"")  # directory entries, as zip -r writes them
        for name in names:
            zf.writestr(name, files[name])


def write_mitoem_replica(root: Path, subsets: Sequence[str] = ("human", "rat"),
                         slices: tuple[int, int, int] = (4, 2, 3), shape: tuple[int, int] = (40, 48),
                         label_dtype: type | np.dtype = np.uint16, id_base: int = 0, seed: int = 5,
                         raw_name: Callable[[int], str] = "im{:04d}.png".format,
                         label_name: Callable[[int], str] = "seg{:04d}.tif".format,
                         shuffle: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Write both zips of each subset; returns per volume name ``raw``, ``labels`` (train/val)
    and ``first`` (the global z of its first slice).

    ``slices`` = (train, val, test) slice counts, numbered 0.. in that order; ``raw_name`` and
    ``label_name`` format a slice number into a file name; ``shuffle`` scrambles member order.
    """
    rng = np.random.default_rng(seed)
    order = random.Random(seed) if shuffle else None
    n_train, n_val, n_test = slices
    total = n_train + n_val + n_test
    truth: dict[str, dict[str, np.ndarray]] = {}
    for subset in subsets:
        raw = _raw(rng, (total, *shape))
        labels = _mitochondria(rng, (n_train + n_val, *shape), 12, np.dtype(label_dtype), id_base)
        raw_files = {f"im/{raw_name(z)}": _png(raw[z]) for z in range(total)}
        label_files = {f"mito-train-v2/{label_name(z)}": _tif(labels[z]) for z in range(n_train)}
        label_files.update({f"mito-val-v2/{label_name(z)}": _tif(labels[z]) for z in range(n_train, n_train + n_val)})
        raw_url, label_url = URLS[subset]
        _write_zip(local_path(root, raw_url), raw_files, order)
        _write_zip(local_path(root, label_url), label_files, order)
        truth[f"{subset}-train"] = {"raw": raw[:n_train], "labels": labels[:n_train], "first": np.int64(0)}
        truth[f"{subset}-val"] = {"raw": raw[n_train:n_train + n_val], "labels": labels[n_train:],
                                  "first": np.int64(n_train)}
        truth[f"{subset}-test"] = {"raw": raw[n_train + n_val:], "first": np.int64(n_train + n_val)}
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_mitoem_replica(root, **({} if small else {"slices": (16, 16, 16), "shape": (144, 144)}))


PREPARE_OPTIONS: dict[str, Any] = {"subset": ["human", "rat"]}
"""What ``prepare`` needs besides the defaults to read this replica."""
