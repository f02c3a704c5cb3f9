"""FIB-25: the three neuroproof_examples cut-outs mirrored on Google Storage → volumes
``training_sample2`` (train), ``validation_sample`` (val) and ``tstvol-520-1`` (test).

Each volume is two HDF5 files: the raw (``grayscale_maps.h5``, or ``raw.h5`` for
``tstvol-520-1``; key ``raw``) and ``groundtruth.h5`` with ``stack`` (supervoxel ids, same
shape as the raw) and ``transforms`` ((N, 2) supervoxel → body pairs). The ``neurons``
layer is ``transforms`` applied to ``stack``, vectorised, always uint64 (body ids keep
their full width).

A supervoxel that ``transforms`` does not list becomes 0 (no body): the card defines 0 as
"no body", supervoxel and body ids are different id spaces (keeping a supervoxel id could
collide with a body id), and torch-em's fib25 loader
does the same. How many supervoxels and voxels that concerned is recorded under
``emdata.supervoxel_mapping``. A supervoxel listed twice with different bodies is an error
naming the file and the ids.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("fib25"):
    ...     train = emdata.prepare("fib25", volumes=["training_sample2"])[0]
    ...     str(train.labels["neurons"].dtype)
    'uint64'
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import get_card
from emdata.datasets._common import (
    choose_volumes,
    fetch_source,
    layer,
    provenance,
    publish,
    reusable,
    volume_path,
)
from emdata.datasets.contract import Option
from emdata.formats.hdf5 import HDF5FormatError, read_dataset
from emdata.formats.lazy import HDF5Array, InMemory, Mapped, read_all, reduce_slabs
from emdata.store.volume import Volume

DATASET = "fib25"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = ()
# card volume name → (raw source, ground-truth source); both are card source names.
FILES: dict[str, tuple[str, str]] = {
    "training_sample2": ("training_sample2/grayscale_maps.h5", "training_sample2/groundtruth.h5"),
    "validation_sample": ("validation_sample/grayscale_maps.h5", "validation_sample/groundtruth.h5"),
    "tstvol-520-1": ("tstvol-520-1/raw.h5", "tstvol-520-1/groundtruth.h5"),
}
RAW_KEY = "raw"
STACK_KEY = "stack"
TRANSFORMS_KEY = "transforms"
log = logging.getLogger(__name__)


class FIB25FormatError(HDF5FormatError):
    """A FIB-25 HDF5 file does not have the neuroproof_examples structure."""


def _read(path: Path, key: str, label: str) -> np.ndarray:
    try:
        return read_dataset(path, key).data
    except HDF5FormatError as exc:
        raise FIB25FormatError(f"{exc}. {label}; delete the download and fetch again") from exc


def _source(path: Path, key: str, label: str) -> HDF5Array:
    try:
        return HDF5Array(path, key)
    except HDF5FormatError as exc:
        raise FIB25FormatError(f"{exc}. {label}; delete the download and fetch again") from exc


def _check_ids(data: Any, where: str) -> None:
    if not np.issubdtype(data.dtype, np.integer):
        raise FIB25FormatError(f"{where}: expected integer ids, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.signedinteger) and math.prod(data.shape):
        low = int(min(reduce_slabs(data, np.min))) if not isinstance(data, np.ndarray) else int(data.min())
        if low < 0:
            raise FIB25FormatError(f"{where}: negative id {low}; expected ids ≥ 0")


def _lookup_table(transforms: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique supervoxel ids and their bodies (uint64)."""
    _check_ids(transforms, where)
    if transforms.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    if transforms.ndim != 2 or transforms.shape[1] != 2:
        raise FIB25FormatError(f"{where}: expected (supervoxel, body) pairs of shape (N, 2), got {transforms.shape}")
    pairs = transforms.astype(np.uint64)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    keys, bodies = pairs[order, 0], pairs[order, 1]
    same_key = keys[1:] == keys[:-1]
    conflict = same_key & (bodies[1:] != bodies[:-1])
    if conflict.any():
        i = int(np.flatnonzero(conflict)[0])
        raise FIB25FormatError(f"{where}: supervoxel {int(keys[i])} is mapped to two bodies ({int(bodies[i])} and "
                               f"{int(bodies[i + 1])}); the table is inconsistent, fetch the file again")
    keep = np.concatenate([[True], ~same_key])
    return keys[keep], bodies[keep]


def _bodies(keys: np.ndarray, bodies: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Body ids (uint64) of the supervoxel ids in ``block``; unlisted supervoxels → 0."""
    flat = block.astype(np.uint64).reshape(-1)
    if not keys.size:
        return np.zeros(block.shape, np.uint64)
    idx = np.minimum(np.searchsorted(keys, flat), keys.size - 1)
    return np.where(keys[idx] == flat, bodies[idx], np.uint64(0)).reshape(block.shape)


def _unmapped(keys: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, int]:
    """Non-zero supervoxel ids of ``block`` that ``keys`` does not list, and their voxel count."""
    flat = block.astype(np.uint64).reshape(-1)
    hit = np.zeros(flat.shape, bool)
    if keys.size:
        hit = keys[np.minimum(np.searchsorted(keys, flat), keys.size - 1)] == flat
    missing = ~hit & (flat != 0)
    return np.unique(flat[missing]), int(np.count_nonzero(missing))


def transform_source(stack: Any, transforms: np.ndarray, where: str) -> tuple[Mapped, dict[str, Any]]:
    """Neuron ids as a source over the supervoxel ``stack`` (any array source, read in slabs for the
    summary and box by box when written) and a summary (pairs, unmapped supervoxels and voxels)."""
    keys, bodies = _lookup_table(transforms, where)
    unmapped_ids: set[int] = set()
    unmapped_voxels = 0
    for ids, count in reduce_slabs(stack, functools.partial(_unmapped, keys)):
        unmapped_ids.update(int(v) for v in ids)
        unmapped_voxels += count
    summary = {"pairs": int(keys.size), "unmapped_supervoxels": len(unmapped_ids), "unmapped_voxels": unmapped_voxels,
               "unmapped_examples": sorted(unmapped_ids)[:20],
               "rule": "neuron id = body of the supervoxel in 'transforms'; supervoxels it does not list → 0 (no body)"}
    return Mapped(stack, functools.partial(_bodies, keys, bodies), np.uint64), summary


def apply_transforms(stack: np.ndarray, transforms: np.ndarray, where: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Body ids (uint64) for every voxel of ``stack``; unlisted supervoxels → 0.

    Returns the neuron ids and a summary (pairs, unmapped supervoxels and voxels).
    """
    source, summary = transform_source(InMemory(stack), transforms, where)
    return read_all(source), summary


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch the selected cut-outs (default: all three) and write one volume each."""
    card = get_card(DATASET)
    wanted = choose_volumes(card, volumes)
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        raw_source, gt_source = FILES[spec.name]
        fetched = [fetch_source(card, raw_source), fetch_source(card, gt_source)]
        prov = provenance(DATASET, RECIPE_VERSION, fetched,
                          {"volume": spec.name, "raw_key": RAW_KEY, "labels": f"{STACK_KEY} via {TRANSFORMS_KEY}",
                           "unmapped_supervoxels": "0"})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        raw_path, gt_path = fetched[0].path, fetched[1].path
        raw = _source(raw_path, RAW_KEY, f"FIB-25 raw files hold the EM under key {RAW_KEY!r}")
        if len(raw.shape) != 3 or not np.issubdtype(raw.dtype, np.integer):
            raise FIB25FormatError(f"{raw_source}:{RAW_KEY}: expected a (z, y, x) greyscale integer volume, got "
                                   f"shape {raw.shape} dtype {raw.dtype}")
        if spec.shape and raw.shape != spec.shape:
            log.warning("fib25 %s: raw shape %s differs from the card's %s; preparing it anyway",
                        spec.name, raw.shape, spec.shape)
        gt_label = f"groundtruth.h5 holds {STACK_KEY!r} (supervoxels) and {TRANSFORMS_KEY!r} (supervoxel → body)"
        stack = _source(gt_path, STACK_KEY, gt_label)
        _check_ids(stack, f"{gt_source}:{STACK_KEY}")
        if stack.shape != raw.shape:
            raise FIB25FormatError(f"{gt_source}:{STACK_KEY}: shape {stack.shape} differs from the raw shape "
                                   f"{raw.shape} ({raw_source}:{RAW_KEY})")
        transforms = _read(gt_path, TRANSFORMS_KEY, gt_label)
        neurons, summary = transform_source(stack, transforms, f"{gt_source}:{TRANSFORMS_KEY}")
        if summary["unmapped_voxels"]:
            log.info("fib25 %s: %d supervoxels (%d voxels) are not in transforms; set to 0 (no body)",
                     spec.name, summary["unmapped_supervoxels"], summary["unmapped_voxels"])
        notes = [f"neurons = '{TRANSFORMS_KEY}' applied to supervoxel '{STACK_KEY}' (stored as "
                 f"{stack.dtype}); {summary['unmapped_supervoxels']} unlisted supervoxels "
                 f"({summary['unmapped_voxels']} voxels) set to 0 = no body"]
        out.append(publish(card, spec.name, spec.split, raw, [layer(card, "neurons", neurons)], prov,
                           description=spec.description, supervoxel_mapping=summary, notes=notes))
    return out
