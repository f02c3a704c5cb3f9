"""SNEMI3D: the organisers' ``snemi.zip`` → volumes ``train`` (AC4 raw + neuron ids) and
``test`` (AC3 raw).

When every URL of ``snemi.zip`` fails, the recipe reads the card's alternates instead: torch-em's
HDF5 copies ``snemi_train.h5`` (``volumes/raw``, ``volumes/labels/neuron_ids``) and
``snemi_test.h5`` (``volumes/raw``), as published by torch_em/data/datasets/electron_microscopy/snemi.py
(commit 3ef8183); the volume's provenance then names the alternate and why it was used.

Structure is checked (greyscale integer raw, unsigned integer labels of the raw's shape);
sizes are not, so small replicas work — a size that differs from the card is logged.
Labels are stored bit-identical to the source file. Volumes are read out of core: TIFF members
are copied out of the zip (bounded memory) and read page by page while the copy goes on
(:mod:`emdata.datasets._zipstack`), HDF5 datasets box by box.

Example:
    >>> sorted(READS_ALTERNATES)
    ['snemi_test.h5', 'snemi_train.h5']
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from emdata.catalog import get_card
from emdata.datasets._alternates import fetch_with_fallback
from emdata.datasets._common import choose_volumes, layer, provenance, publish, reusable, volume_path
from emdata.datasets._zipstack import zip_tiff_stack
from emdata.datasets.contract import Option
from emdata.formats.hdf5 import list_keys
from emdata.formats.lazy import ArraySource, HDF5Array, reduce_slabs
from emdata.formats.tiff import TiffFormatError
from emdata.store.volume import Volume

DATASET = "snemi3d"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = ()
PRIMARY = "snemi.zip"
MEMBERS = {
    "train": ("image/train-input.tif", "seg/train-labels.tif"),
    "test": ("image/test-input.tif", None),
}
# volume → (alternate source, raw key, label key): torch-em's HDF5 copies of snemi.zip
ALTERNATES = {
    "train": ("snemi_train.h5", "volumes/raw", "volumes/labels/neuron_ids"),
    "test": ("snemi_test.h5", "volumes/raw", None),
}
READS_ALTERNATES = frozenset(name for name, _, _ in ALTERNATES.values())
log = logging.getLogger(__name__)


class SNEMI3DFormatError(TiffFormatError):
    """A file in snemi.zip does not have the structure SNEMI3D publishes."""


def _check_raw(data: ArraySource, where: str) -> ArraySource:
    if len(data.shape) != 3 or not np.issubdtype(data.dtype, np.integer):
        raise SNEMI3DFormatError(f"{where}: expected a greyscale integer z-stack, got shape {data.shape} "
                                 f"dtype {data.dtype}")
    return data


def _check_labels(data: ArraySource, where: str, raw_shape: tuple[int, ...], encoding: str = "") -> ArraySource:
    if len(data.shape) != 3:
        raise SNEMI3DFormatError(f"{where}: expected single-channel instance ids, got shape {data.shape} "
                                 f"{encoding}; colour-coded labels are not the SNEMI3D encoding")
    if not np.issubdtype(data.dtype, np.unsignedinteger):
        if np.issubdtype(data.dtype, np.signedinteger) and min(reduce_slabs(data, np.min)) >= 0:
            pass  # non-negative signed ids are kept as stored
        else:
            raise SNEMI3DFormatError(f"{where}: expected non-negative integer instance ids, got dtype {data.dtype}")
    if data.shape != raw_shape:
        raise SNEMI3DFormatError(f"{where}: label shape {data.shape} differs from the raw shape {raw_shape}")
    return data


def _read_zip(archive: Path, raw_member: str, label_member: str | None) -> tuple[ArraySource, ArraySource | None]:
    # Each member is copied out of the zip in a background thread (inflating releases the GIL: both at
    # once) and read while it is copied, so writing the volume starts before the copies end.
    raw = _check_raw(zip_tiff_stack(archive, raw_member, name_for_errors=f"{archive.name}:{raw_member}"),
                     f"{archive.name}:{raw_member}")
    if label_member is None:
        return raw, None
    stack = zip_tiff_stack(archive, label_member, name_for_errors=f"{archive.name}:{label_member}")
    return raw, _check_labels(stack, f"{archive.name}:{label_member}", raw.shape, f"({stack.photometric})")


def _read_h5(path: Path, name: str, raw_key: str, label_key: str | None) -> tuple[ArraySource, ArraySource | None]:
    raw = _check_raw(HDF5Array(path, raw_key), f"{name}:{raw_key}")
    if label_key is None:
        extra = [k for k in list_keys(path) if k != raw_key]
        if extra:
            log.info("snemi3d: %s also holds %s; not used (the test labels were never released)", name, extra)
        return raw, None
    return raw, _check_labels(HDF5Array(path, label_key), f"{name}:{label_key}", raw.shape)


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch ``snemi.zip`` (or, failing that, its HDF5 alternates) and write the selected volumes."""
    card = get_card(DATASET)
    wanted = choose_volumes(card, volumes)
    got = fetch_with_fallback(card, PRIMARY, [ALTERNATES[v][0] for v in MEMBERS if v in wanted])
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        if got.primary is not None:
            fetched = got.primary
            raw_member, label_member = MEMBERS[spec.name]
            parameters = {"volume": spec.name, "members": [m for m in (raw_member, label_member) if m]}
        else:
            name, raw_key, label_key = ALTERNATES[spec.name]
            fetched = got.alternates[name]
            parameters = {"volume": spec.name, "keys": [k for k in (raw_key, label_key) if k]}
        prov = provenance(DATASET, RECIPE_VERSION, [fetched], parameters)
        prov.update(got.provenance_note())
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        if got.primary is not None:
            raw, labels = _read_zip(fetched.path, raw_member, label_member)
        else:
            raw, labels = _read_h5(fetched.path, name, raw_key, label_key)
        if spec.shape and raw.shape != spec.shape:
            log.warning("snemi3d %s: raw shape %s differs from the published %s (a replica or a different "
                        "release); preparing it anyway", spec.name, raw.shape, spec.shape)
        layers = [layer(card, "neurons", labels)] if labels is not None else []
        out.append(publish(card, spec.name, spec.split, raw, layers, prov, description=spec.description))
    return out
