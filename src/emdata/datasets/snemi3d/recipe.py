"""SNEMI3D: the organisers' ``snemi.zip`` → volumes ``train`` (AC4 raw + neuron ids) and
``test`` (AC3 raw).

Structure is checked (greyscale integer raw, unsigned integer labels of the raw's shape);
sizes are not, so small replicas work — a size that differs from the card is logged.
Labels are stored bit-identical to the source file.

Example:
    >>> import emdata
    >>> train, test = emdata.prepare("snemi3d")  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np

from emdata.catalog import get_card
from emdata.datasets._common import fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.formats.tiff import TiffFormatError, read_stack
from emdata.sources.archive import read_member
from emdata.store.volume import Volume

DATASET = "snemi3d"
RECIPE_VERSION = 1
OPTIONS: frozenset[str] = frozenset()
MEMBERS = {
    "train": ("image/train-input.tif", "seg/train-labels.tif"),
    "test": ("image/test-input.tif", None),
}
log = logging.getLogger(__name__)


class SNEMI3DFormatError(TiffFormatError):
    """A file in snemi.zip does not have the structure SNEMI3D publishes."""


def _read_raw(archive, member: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    stack = read_stack(read_member(archive, member), name=f"{archive.name}:{member}")
    if stack.data.ndim != 3 or not np.issubdtype(stack.data.dtype, np.integer):
        raise SNEMI3DFormatError(f"{archive.name}:{member}: expected a greyscale integer z-stack, got "
                                 f"shape {stack.data.shape} dtype {stack.data.dtype}")
    return stack.data


def _read_labels(archive, member: str, raw_shape: tuple[int, ...]) -> np.ndarray:  # type: ignore[no-untyped-def]
    stack = read_stack(read_member(archive, member), name=f"{archive.name}:{member}")
    data = stack.data
    where = f"{archive.name}:{member}"
    if data.ndim != 3:
        raise SNEMI3DFormatError(f"{where}: expected single-channel instance ids, got shape {data.shape} "
                                 f"({stack.photometric}); colour-coded labels are not the SNEMI3D encoding")
    if not np.issubdtype(data.dtype, np.unsignedinteger):
        if np.issubdtype(data.dtype, np.signedinteger) and data.min() >= 0:
            pass  # non-negative signed ids are kept as stored
        else:
            raise SNEMI3DFormatError(f"{where}: expected non-negative integer instance ids, got dtype {data.dtype}")
    if data.shape != raw_shape:
        raise SNEMI3DFormatError(f"{where}: label shape {data.shape} differs from the raw shape {raw_shape}")
    return data


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch ``snemi.zip`` and write the selected volumes (default: train and test)."""
    card = get_card(DATASET)
    wanted = volumes or list(MEMBERS)
    unknown = sorted(set(wanted) - set(MEMBERS))
    if unknown:
        raise ValueError(f"snemi3d has no volume(s) {unknown}; choose from {list(MEMBERS)}")
    fetched = fetch_source(card, "snemi.zip")
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        raw_member, label_member = MEMBERS[spec.name]
        prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                          {"volume": spec.name, "members": [m for m in (raw_member, label_member) if m]})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        raw = _read_raw(fetched.path, raw_member)
        if spec.shape and raw.shape != spec.shape:
            log.warning("snemi3d %s: raw shape %s differs from the published %s (a replica or a different "
                        "release); preparing it anyway", spec.name, raw.shape, spec.shape)
        layers = [layer(card, "neurons", _read_labels(fetched.path, label_member, raw.shape))] if label_member else []
        out.append(publish(card, spec.name, spec.split, raw, layers, prov, description=spec.description))
    return out
