"""SNEMI3D replica in the organisers' published layout (member names as public download
scripts and pytorch_connectomics' tutorials/rsunet_snemi.yaml use them).

``snemi.zip`` on host ``rhoana.rc.fas.harvard.edu`` at ``/dataset/snemi.zip`` holds
``image/train-input.tif`` (AC4 raw), ``seg/train-labels.tif`` (AC4 neuron ids) and
``image/test-input.tif`` (AC3 raw): multipage greyscale TIFFs, raw uint8, labels uint16
instance ids with 0 = membrane/background. Written with
tifffile and zipfile; this module shares no code with the recipe that reads it.

Example:
    >>> import tempfile
    >>> truth = write_snemi3d_replica(Path(tempfile.mkdtemp()), shape=(4, 32, 32))
    >>> truth["train_labels"].dtype
    dtype('uint16')
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HOST_PATH = "rhoana.rc.fas.harvard.edu/dataset/snemi.zip"
# torch-em's HDF5 copies (torch_em/data/datasets/electron_microscopy/snemi.py at 3ef8183): one file per
# sample, raw at ``volumes/raw``, neuron ids at ``volumes/labels/neuron_ids``.
TORCH_EM_URLS = {"train": "https://oc.embl.de/index.php/s/43iMotlXPyAB39z/download",
                 "test": "https://oc.embl.de/index.php/s/aRhphk35H23De2s/download"}


def _raw(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    noise = rng.normal(128, 30, size=shape)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    stripes = 40 * np.sin(x / 7.0 + z / 3.0) * np.cos(y / 11.0)
    return np.clip(noise + stripes, 0, 255).astype(np.uint8)


def _neurons(rng: np.random.Generator, shape: tuple[int, int, int], n: int) -> np.ndarray:
    """Voronoi 'neurites' elongated along z, with zero-valued membranes between them."""
    seeds = rng.uniform(0, 1, size=(n, 2)) * np.array(shape[1:])
    drift = rng.normal(0, 0.6, size=(n, 2))
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    out = np.zeros(shape, dtype=np.uint16)
    ids = rng.permutation(np.arange(1, 60000, dtype=np.uint16))[:n]  # sparse, non-consecutive ids
    for z in range(shape[0]):
        centres = seeds + z * drift
        d = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        order = np.argsort(d, axis=0)
        nearest, second = order[0], order[1]
        d1 = np.take_along_axis(d, nearest[None], 0)[0]
        d2 = np.take_along_axis(d, second[None], 0)[0]
        slice_ids = ids[nearest]
        slice_ids[np.sqrt(d2) - np.sqrt(d1) < 1.5] = 0
        out[z] = slice_ids
    return out


def _tiff_bytes(data: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="minisblack")
    return buf.getvalue()


def write_snemi3d_replica(root: Path, shape: tuple[int, int, int] = (12, 128, 128), seed: int = 3,
                          n_neurons: int = 24) -> dict[str, np.ndarray]:
    """Write ``<root>/rhoana.rc.fas.harvard.edu/dataset/snemi.zip``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    truth = {
        "train_raw": _raw(rng, shape),
        "train_labels": _neurons(rng, shape, n_neurons),
        "test_raw": _raw(rng, shape),
    }
    target = Path(root) / HOST_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("image/train-input.tif", _tiff_bytes(truth["train_raw"]))
        zf.writestr("seg/train-labels.tif", _tiff_bytes(truth["train_labels"]))
        zf.writestr("image/test-input.tif", _tiff_bytes(truth["test_raw"]))
    return truth


def write_snemi3d_torch_em_replica(root: Path, truth: dict[str, np.ndarray], label_dtype: str = "uint16",
                                   test_labels: np.ndarray | None = None) -> dict[str, Path]:
    """Write torch-em's two HDF5 copies of ``truth`` (from :func:`write_snemi3d_replica`) with h5py.

    Train holds ``volumes/raw`` and ``volumes/labels/neuron_ids`` (as ``label_dtype``); test holds
    ``volumes/raw`` and, when ``test_labels`` is given, labels too. Returns ``{card URL: file}``.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> files = write_snemi3d_torch_em_replica(root, write_snemi3d_replica(root, shape=(2, 16, 16)))
        >>> sorted(p.name for p in files.values())
        ['download', 'download']
    """
    import h5py

    contents = {"train": {"volumes/raw": truth["train_raw"],
                          "volumes/labels/neuron_ids": truth["train_labels"].astype(label_dtype)},
                "test": {"volumes/raw": truth["test_raw"]}}
    if test_labels is not None:
        contents["test"]["volumes/labels/neuron_ids"] = test_labels
    files = {}
    for sample, url in TORCH_EM_URLS.items():
        target = Path(root) / url.split("://", 1)[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(target, "w") as f:
            for key, data in contents[sample].items():
                f.create_dataset(key, data=data, chunks=True, compression="gzip")
        files[url] = target
    return files


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_snemi3d_replica(root, shape=(12, 128, 128) if small else (24, 256, 256))
