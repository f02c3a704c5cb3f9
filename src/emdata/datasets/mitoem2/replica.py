"""MitoEM2 replica: Zenodo-style nnU-Net v2 zips (Zenodo record 17635006, as torch-em's
``mitoemv2.py`` reads them).

For each requested sub-dataset, ``<root>/zenodo.org/records/17635006/files/Dataset00N_ME2-<Name>.zip``
holds ``Dataset00N_ME2-<Name>/`` with ``dataset.json`` (labels {background 0, mitochondria 1,
boundary 2}, ``spacing`` in NIfTI (x, y, z) order, ``numTraining``, ``numTest``),
``imagesTr/me2-<subset>_trainNN_0000.nii.gz``, ``labelsTr/me2-<subset>_trainNN.nii.gz``,
``imagesTs``/``labelsTs`` for ``_testNN`` and a ``split.json`` as torch-em reads it (a list
holding one {train, val, test} dict). NIfTI files are written with nibabel: arrays in (x, y, z)
order, the spacing in the header's pixdim (nnU-Net writes the dataset.json numbers there),
images uint8. Labels are written in one of the two encodings the sources disagree on
(dataset.json and tmquan/neurons vs torch-em and luckieucas/MitoEM2.0): ``"classes"`` (uint8
0/1/2, boundary = instance voxels face-touching another instance) or ``"instances"`` (sparse
uint16 ids). ``me2-jurkat_train02`` reproduces the published defect: its label array is stored
with the axes reversed relative to the image.

Shares no code with the recipe that reads it.

Example:
    >>> import tempfile
    >>> truth = write_mitoem2_replica(Path(tempfile.mkdtemp()), subsets=("mossy",))
    >>> sorted(truth), truth["mossy-train01"]["spacing_zyx"]
    (['mossy-test01', 'mossy-train01', 'mossy-train02'], (30.0, 8.0, 8.0))
"""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

HOST_DIR = "zenodo.org/records/17635006/files"
# subset → (zip folder name, dataset.json spacing in (x, y, z)) — as the record's dataset.json files give them
DATASETS: dict[str, tuple[str, list[float]]] = {
    "beta": ("Dataset001_ME2-Beta", [16, 16, 16]),
    "jurkat": ("Dataset002_ME2-Jurkat", [16, 16, 16]),
    "macro": ("Dataset003_ME2-Macro", [16, 16, 16]),
    "mossy": ("Dataset004_ME2-Mossy", [8, 8, 30]),
    "podo": ("Dataset005_ME2-Podo", [16, 16, 16]),
    "pyra": ("Dataset006_ME2-Pyra", [8, 8, 30]),
    "sperm": ("Dataset007_ME2-Sperm", [16, 16, 16]),
    "stem": ("Dataset008_ME2-Stem", [8, 8, 30]),
}
LABELS = {"background": 0, "mitochondria": 1, "boundary": 2}
DEFAULT_ENCODING = {"beta": "instances"}  # every other subset: "classes"


def zip_path(root: Path, subset: str) -> Path:
    return Path(root) / HOST_DIR / f"{DATASETS[subset][0]}.zip"


def _instances(rng: np.random.Generator, shape: tuple[int, int, int], n: int) -> np.ndarray:
    """Ellipsoids with sparse uint16 ids; later ones overwrite earlier ones, so some touch."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    out = np.zeros(shape, np.uint16)
    ids = rng.choice(np.arange(3, 60000), size=n, replace=False).astype(np.uint16)
    centres = rng.uniform(0.2, 0.8, size=(n, 3)) * np.array(shape)
    # the first two share a face region on purpose (touching mitochondria)
    centres[1] = centres[0] + np.array([0.0, 0.0, shape[2] * 0.22])
    for i in range(n):
        radii = rng.uniform(0.18, 0.3, size=3) * np.array(shape)
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centres[i], radii)) <= 1.0
        out[inside] = ids[i]
    return out


def _classes(instances: np.ndarray) -> np.ndarray:
    """0 background, 1 mitochondria, 2 where an instance voxel face-touches another instance."""
    padded = np.pad(instances, 1)
    centre = padded[1:-1, 1:-1, 1:-1]
    boundary = np.zeros(instances.shape, bool)
    for dz, dy, dx in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        nb = padded[1 + dz:padded.shape[0] - 1 + dz, 1 + dy:padded.shape[1] - 1 + dy,
                    1 + dx:padded.shape[2] - 1 + dx]
        boundary |= (nb != 0) & (nb != centre) & (centre != 0)
    out = (instances != 0).astype(np.uint8)
    out[boundary] = 2
    return out


def _raw(rng: np.random.Generator, instances: np.ndarray) -> np.ndarray:
    noise = rng.normal(150, 20, size=instances.shape)
    noise[instances != 0] -= 70
    return np.clip(noise, 0, 255).astype(np.uint8)


def _nifti_gz(array_xyz: np.ndarray, spacing_xyz: list[float] | None) -> bytes:
    import nibabel as nib

    affine = np.diag([*(spacing_xyz or [1.0, 1.0, 1.0]), 1.0])
    img = nib.Nifti1Image(array_xyz, affine)
    img.header.set_data_dtype(array_xyz.dtype)
    return gzip.compress(img.to_bytes(), compresslevel=1)


def write_mitoem2_replica(root: Path, subsets: tuple[str, ...] = ("beta", "jurkat", "mossy"),
                          encodings: dict[str, str] | None = None, n_train: int = 2, n_test: int = 1,
                          shape: tuple[int, int, int] = (6, 20, 26), no_header_spacing: tuple[str, ...] = (),
                          seed: int = 4) -> dict[str, dict[str, Any]]:
    """Write one zip per subset; returns per volume name (``beta-train01``) what was written.

    Each entry: ``raw`` and ``label`` in (z, y, x), ``encoding``, ``instances`` (the ids the
    labels were made from), ``spacing_zyx``, ``split``, ``case``, ``label_reversed``.
    ``no_header_spacing`` lists subsets whose NIfTI headers keep the default pixdim 1.
    """
    rng = np.random.default_rng(seed)
    encodings = {**DEFAULT_ENCODING, **(encodings or {})}
    truth: dict[str, dict[str, Any]] = {}
    for subset in subsets:
        folder, spacing = DATASETS[subset]
        encoding = encodings.get(subset, "classes")
        header_spacing = None if subset in no_header_spacing else spacing
        files: dict[str, bytes] = {}
        cases: dict[str, list[str]] = {"train": [], "test": []}
        for split, count, images, labels in (("train", n_train, "imagesTr", "labelsTr"),
                                             ("test", n_test, "imagesTs", "labelsTs")):
            for k in range(1, count + 1):
                case = f"me2-{subset}_{split}{k:02d}"
                cases[split].append(case)
                zyx = (shape[0] + k - 1, shape[1] + 2 * (k - 1), shape[2] + (3 if split == "test" else 0))
                inst = _instances(rng, zyx, n=5)
                label = inst if encoding == "instances" else _classes(inst)
                raw = _raw(rng, inst)
                reversed_axes = subset == "jurkat" and case == "me2-jurkat_train02"
                files[f"{folder}/{images}/{case}_0000.nii.gz"] = _nifti_gz(raw.transpose(2, 1, 0), header_spacing)
                stored = label if reversed_axes else label.transpose(2, 1, 0)
                files[f"{folder}/{labels}/{case}.nii.gz"] = _nifti_gz(np.ascontiguousarray(stored), header_spacing)
                truth[f"{subset}-{split}{k:02d}"] = {
                    "raw": raw, "label": label, "encoding": encoding, "instances": inst,
                    "spacing_zyx": (float(spacing[2]), float(spacing[1]), float(spacing[0])),
                    "split": split, "case": case, "label_reversed": reversed_axes}
        dataset_json = {"labels": LABELS, "numTraining": n_train, "numTest": n_test, "spacing": spacing}
        split_json = [{"train": cases["train"][:-1] or cases["train"], "val": cases["train"][-1:],
                       "test": cases["test"]}]
        target = zip_path(root, subset)
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{folder}/", b"")
            zf.writestr(f"{folder}/dataset.json", json.dumps(dataset_json, indent=4))
            zf.writestr(f"{folder}/split.json", json.dumps(split_json, indent=4))
            for name, data in files.items():
                zf.writestr(name, data)
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_mitoem2_replica(root, subsets=("beta", "mossy"), **({} if small else {"shape": (16, 144, 144)}))


PREPARE_OPTIONS: dict[str, Any] = {"subset": ["beta", "mossy"]}
"""What ``prepare`` needs besides the defaults to read this replica."""
