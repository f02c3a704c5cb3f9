"""FIB-25 replica in the published neuroproof_examples / FFN layout (as torch-em's ``fib25.py``
reads it).

Under ``<root>/storage.googleapis.com/ffn-flyem-fib25/``: ``training_sample2/`` and
``validation_sample/`` hold ``grayscale_maps.h5``, ``tstvol-520-1/`` holds ``raw.h5`` (key
``raw``, uint8 (z, y, x)); each folder has ``groundtruth.h5`` with ``stack`` (supervoxel ids,
the raw's shape) and ``transforms`` ((N, 2) supervoxel → body pairs, uint64).

The supervoxels are small blocks (several per body) with id 0 on a few boundary planes;
bodies have wide ids (≥ 2**32, one ≥ 2**63). ``unlisted`` supervoxels are left out of
``transforms`` (their body is unknown: expected neuron id 0), and ``transforms`` lists one
supervoxel that does not occur in ``stack``. The returned ``neurons`` are computed here with
a plain dictionary, independently of any recipe. Written with h5py.

Example:
    >>> import tempfile
    >>> truth = write_fib25_replica(Path(tempfile.mkdtemp()), shape=(8, 16, 16))
    >>> truth["training_sample2"]["neurons"].dtype
    dtype('uint64')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BUCKET = "storage.googleapis.com/ffn-flyem-fib25"
SAMPLES = {"training_sample2": "grayscale_maps.h5", "validation_sample": "grayscale_maps.h5",
           "tstvol-520-1": "raw.h5"}


def _sample(rng: np.random.Generator, shape: tuple[int, int, int], block: int, unlisted: int,
            stack_dtype: str) -> dict[str, Any]:
    zz, yy, xx = np.meshgrid(*[np.arange(s) // block for s in shape], indexing="ij")
    nb = [-(-s // block) for s in shape]
    stack = (zz * nb[1] * nb[2] + yy * nb[2] + xx + 1).astype(np.int64)
    stack = rng.permutation(np.arange(1, stack.max() + 1) * 37 + 5)[stack - 1]  # sparse supervoxel ids
    stack[:, :, ::7] = 0  # no-supervoxel planes
    supervoxels = [int(v) for v in np.unique(stack) if v != 0]
    bodies = np.array([2**32 + 1, 2**32 + 77, 123456789, 2**63 + 99, 5], dtype=np.uint64)
    table = {sv: int(bodies[rng.integers(len(bodies))]) for sv in supervoxels}
    left_out = set(rng.choice(supervoxels, size=min(unlisted, len(supervoxels)), replace=False).tolist())
    pairs = [(sv, body) for sv, body in table.items() if sv not in left_out]
    pairs.append((10**9 + 7, 2**32 + 1))  # listed but absent from the stack
    order = rng.permutation(len(pairs))
    transforms = np.array([pairs[i] for i in order], dtype=np.uint64)
    lookup = {sv: body for sv, body in pairs}
    neurons = np.array([lookup.get(int(v), 0) for v in stack.reshape(-1)], dtype=np.uint64).reshape(stack.shape)
    raw = np.clip(rng.normal(128, 33, size=shape), 0, 255).astype(np.uint8)
    return {"raw": raw, "stack": stack.astype(stack_dtype), "transforms": transforms, "neurons": neurons,
            "unlisted": sorted(left_out)}


def write_fib25_replica(root: Path, shape: tuple[int, int, int] = (12, 24, 20), seed: int = 25, block: int = 5,
                        unlisted: int = 2, stack_dtype: str = "uint64",
                        samples: tuple[str, ...] = tuple(SAMPLES)) -> dict[str, Any]:
    """Write the raw and ground-truth files of ``samples``; returns per sample ``raw``,
    ``stack``, ``transforms`` (as stored), ``neurons`` (expected body ids), ``unlisted``
    supervoxels, and ``files`` ({url: path})."""
    import h5py

    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"files": {}}
    for name in samples:
        truth = _sample(rng, shape, block, unlisted, stack_dtype)
        folder = Path(root) / BUCKET / name
        folder.mkdir(parents=True, exist_ok=True)
        with h5py.File(folder / SAMPLES[name], "w") as f:
            f.create_dataset("raw", data=truth["raw"], compression="gzip")
        with h5py.File(folder / "groundtruth.h5", "w") as f:
            f.create_dataset("stack", data=truth["stack"], compression="gzip")
            f.create_dataset("transforms", data=truth["transforms"])
        for file in (SAMPLES[name], "groundtruth.h5"):
            out["files"][f"https://{BUCKET}/{name}/{file}"] = folder / file
        out[name] = truth
    return out


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_fib25_replica(root, **({} if small else {"shape": (16, 160, 160), "block": 16}))
