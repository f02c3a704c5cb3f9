"""CREMI replica in the organisers' published layout (cremi.org/data).

One HDF5 file per sample under ``<root>/cremi.org/static/data/``, named as the card's URLs
give them: ``sample_A_20160501.hdf`` … (cropped training), ``sample_A_padded_20160501.hdf`` …
(padded training), ``sample_A+_20160601.hdf`` … and ``sample_A+_padded_20160601.hdf`` …
(test). The URLs write ``+`` as ``%2B``; the loopback mirror receives the decoded path, so
the files carry a literal ``+``. Every file holds:

- ``volumes/raw``: uint8 (depth, height, width), attribute ``resolution`` = (40, 4, 4) nm;
- training files also ``volumes/labels/neuron_ids`` (uint64, dense: no zero voxels, some ids
  ≥ 2**63) and ``volumes/labels/clefts`` (uint64, 2**64-1 = no cleft), each with
  ``resolution``; and the ``annotations`` group: ``ids`` (uint64), ``types`` (variable-length
  strings ``presynaptic_site``/``postsynaptic_site``), ``locations`` (float64 (z, y, x) nm),
  ``presynaptic_site/partners`` (uint64 (pre, post) pairs), ``comments/target_ids`` and
  ``comments/comments``; root attribute ``file_format`` = "0.2".

Padded files hold a raw with ``pad`` more voxels on every side. ``padded_labels="offset"``
(cremi.org's description): labels keep the cropped shape and get an ``offset`` attribute
(z, y, x nm) = where they start in the raw. ``padded_labels="full"`` (torch-em's
description): labels have the raw's shape, ``padded_fill`` outside the annotated region. In
both, the padded file's ``annotations`` group has an ``offset`` attribute (the labelled
region's start) and its locations are relative to it.
A test sample's cropped raw equals its padded raw cut at ``pad`` (as tmquan/nanoCosmos
``scripts/download_cremi3d.py`` checks for the real files). Written with h5py; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_cremi_replica(Path(tempfile.mkdtemp()), shape=(4, 32, 32), samples=("A",))
    >>> truth["samples"]["A"]["neuron_ids"].dtype
    dtype('uint64')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HOST_DIR = "cremi.org/static/data"
TRAIN = ("A", "B", "C")
TEST = ("A+", "B+", "C+")
NO_CLEFT = np.uint64(0xFFFFFFFFFFFFFFFF)
RESOLUTION = (40.0, 4.0, 4.0)


def file_names(sample: str) -> tuple[str, str]:
    """(cropped, padded) file names of a sample, as on cremi.org."""
    date = "20160601" if sample.endswith("+") else "20160501"
    return f"sample_{sample}_{date}.hdf", f"sample_{sample}_padded_{date}.hdf"


def _raw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    texture = 60 * np.sin(x / 5.0 + z) * np.cos(y / 9.0)
    return np.clip(rng.normal(120, 35, size=shape) + texture, 0, 255).astype(np.uint8)


def _neurons(rng: np.random.Generator, shape: tuple[int, int, int], small_ids: bool) -> np.ndarray:
    """Dense Voronoi neurons (no zero voxels) with uint64 ids, some ≥ 2**63 unless ``small_ids``."""
    n = 9
    if small_ids:
        ids = rng.choice(np.arange(1, 999_999, dtype=np.uint64), size=n, replace=False)
    else:
        ids = np.array([7, 4242, 999_999, 1_000_000, 2**32 + 3, 2**63, 2**63 + 12345, 2**64 - 2, 31337],
                       dtype=np.uint64)
    seeds = rng.uniform(0, 1, size=(n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float64)
    scale = np.array([10.0, 1.0, 1.0])  # 40 nm sections: z distances count ten times
    d = (((grid[..., None, :] - seeds) * scale) ** 2).sum(-1)
    return ids[np.argmin(d, axis=-1)]


def _clefts(rng: np.random.Generator, neurons: np.ndarray, small_ids: bool) -> np.ndarray:
    """A few cleft blobs on neuron boundaries; background 2**64-1."""
    clefts = np.full(neurons.shape, NO_CLEFT, dtype=np.uint64)
    boundary = np.zeros(neurons.shape, dtype=bool)
    boundary[:, :, 1:] |= neurons[:, :, 1:] != neurons[:, :, :-1]
    boundary[:, 1:, :] |= neurons[:, 1:, :] != neurons[:, :-1, :]
    ids = [3, 17, 250_000] if small_ids else [3, 17, 250_000, 2**63 + 1]
    where = np.argwhere(boundary)
    for cleft_id in ids:
        z, y, x = where[rng.integers(len(where))]
        sl = (slice(max(z - 1, 0), z + 1), slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
        clefts[sl][boundary[sl]] = cleft_id
    return clefts


def _annotations(rng: np.random.Generator, shape: tuple[int, int, int]) -> dict[str, Any]:
    n_pairs = 3
    ids = np.array([11, 12, 13, 14, 2**63 + 7, 16], dtype=np.uint64)
    types = ["presynaptic_site", "postsynaptic_site"] * n_pairs
    extent = np.array(shape) * np.array(RESOLUTION)
    locations = rng.uniform(0, 1, size=(2 * n_pairs, 3)) * extent
    partners = ids.reshape(n_pairs, 2).copy()
    return {"ids": ids, "types": types, "locations": locations, "partners": partners,
            "comments": {"target_ids": np.array([12], dtype=np.uint64), "comments": ["uncertain"]}}


def _write_file(path: Path, raw: np.ndarray, labels: dict[str, np.ndarray] | None,
                label_offset_nm: tuple[float, float, float] | None, annotations: dict[str, Any] | None,
                annotations_offset_nm: tuple[float, float, float] | None,
                resolution: tuple[float, float, float], types_key: str) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["file_format"] = "0.2"
        ds = f.create_dataset("volumes/raw", data=raw, dtype=np.uint8, compression="gzip")
        ds.attrs["resolution"] = np.array(resolution, dtype=np.float64)
        for name, data in (labels or {}).items():
            ds = f.create_dataset(f"volumes/labels/{name}", data=data, dtype=np.uint64, compression="gzip")
            ds.attrs["resolution"] = np.array(resolution, dtype=np.float64)
            if label_offset_nm is not None:
                ds.attrs["offset"] = np.array(label_offset_nm, dtype=np.float64)
        if annotations is not None:
            group = f.create_group("annotations")
            if annotations_offset_nm is not None:
                group.attrs["offset"] = np.array(annotations_offset_nm, dtype=np.float64)
            group.create_dataset("ids", data=annotations["ids"], dtype=np.uint64)
            group.create_dataset(types_key, data=annotations["types"], dtype=h5py.string_dtype("utf-8"))
            group.create_dataset("locations", data=annotations["locations"], dtype=np.float64)
            group.create_dataset("presynaptic_site/partners", data=annotations["partners"], dtype=np.uint64)
            group.create_dataset("comments/target_ids", data=annotations["comments"]["target_ids"], dtype=np.uint64)
            group.create_dataset("comments/comments", data=annotations["comments"]["comments"],
                                 dtype=h5py.string_dtype("utf-8"))


def write_cremi_replica(root: Path, shape: tuple[int, int, int] = (6, 48, 40), pad: tuple[int, int, int] = (2, 6, 5),
                        samples: tuple[str, ...] = TRAIN + TEST, seed: int = 5, small_ids: bool = False,
                        padded_labels: str = "offset", padded_fill: int = 2**64 - 1,
                        resolution: tuple[float, float, float] = RESOLUTION,
                        types_key: str = "types") -> dict[str, Any]:
    """Write cropped and padded files for ``samples``; returns what was written.

    ``{"files": {url: path}, "samples": {name: {"raw", "padded_raw", "pad", and for training
    samples "neuron_ids", "clefts" (as stored, 2**64-1 background), "annotations",
    "padded_neuron_ids"/"padded_clefts" (as stored in the padded file)}}}``.
    """
    if padded_labels not in ("offset", "full"):
        raise ValueError(f"padded_labels must be 'offset' or 'full', got {padded_labels!r}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / HOST_DIR
    box = tuple(slice(p, p + s) for p, s in zip(pad, shape))
    padded_shape = tuple(s + 2 * p for s, p in zip(shape, pad))
    offset_nm = tuple(float(p * r) for p, r in zip(pad, resolution))
    out: dict[str, Any] = {"files": {}, "samples": {}}
    for sample in samples:
        cropped_name, padded_name = file_names(sample)
        padded_raw = _raw(rng, padded_shape)
        raw = padded_raw[box].copy()
        truth: dict[str, Any] = {"raw": raw, "padded_raw": padded_raw, "pad": pad, "offset_nm": offset_nm}
        labels = annotations = None
        padded_labels_data = None
        if sample in TRAIN:
            neurons = _neurons(rng, shape, small_ids)
            clefts = _clefts(rng, neurons, small_ids)
            annotations = _annotations(rng, shape)
            labels = {"neuron_ids": neurons, "clefts": clefts}
            truth.update(neuron_ids=neurons, clefts=clefts, annotations=annotations)
            if padded_labels == "offset":
                padded_labels_data = labels
            else:
                padded_labels_data = {}
                for name, data in labels.items():
                    full = np.full(padded_shape, np.uint64(padded_fill), dtype=np.uint64)
                    full[box] = data
                    padded_labels_data[name] = full
            truth.update(padded_neuron_ids=padded_labels_data["neuron_ids"],
                         padded_clefts=padded_labels_data["clefts"])
        _write_file(folder / cropped_name, raw, labels, None, annotations, None, resolution, types_key)
        _write_file(folder / padded_name, padded_raw, padded_labels_data,
                    offset_nm if padded_labels == "offset" else None, annotations, offset_nm, resolution, types_key)
        for name in (cropped_name, padded_name):
            out["files"][f"https://{HOST_DIR}/{name.replace('+', '%2B')}"] = folder / name
        out["samples"][sample] = truth
    return out


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_cremi_replica(root, samples=("A", "B"), small_ids=True,
                               **({} if small else {"shape": (16, 160, 160)}))


PREPARE_OPTIONS: dict[str, Any] = {"volumes": ["A", "B"]}
"""What ``prepare`` needs besides the defaults to read this replica."""
