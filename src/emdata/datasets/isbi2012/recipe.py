"""ISBI 2012: torch-em's ``isbi.h5`` → volume ``train`` with raw, a semantic ``membranes``
layer (the original challenge labels) and an instance ``gt_segmentation`` layer (derived by
the torch-em authors from the membranes, not official challenge data).

The value meaning of ``labels/membranes`` is not stated by the challenge page or torch-em, so it is
detected from the data: the layer must hold exactly two values (e.g. {0, 255} or {0, 1});
the value whose voxels are darker in the raw (membranes are electron-dense, dark in TEM)
*and* cover fewer voxels (membranes are thin) is membrane. When both tests agree the layer
is stored as 0 = not membrane (union class background), 1 = membrane; the native values, the
evidence (fraction and mean raw grey value per value) and the decision are recorded under
``emdata.membranes_encoding``. When they disagree the native values are kept with no
ontology mapping, a warning is logged and the metadata says the meaning is undetermined.

``gt_segmentation`` is stored bit-identical (its dtype kept); the metadata marks it as
derived. Structure is checked (3D integer raw, label shapes equal to the raw's); sizes are
not, so small replicas work (a shape that differs from the card is logged).

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("isbi2012"):
    ...     (train,) = emdata.prepare("isbi2012")
    ...     train.meta["membranes_encoding"]["membrane_value"]
    0
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
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
from emdata.formats.hdf5 import HDF5FormatError
from emdata.formats.lazy import HDF5Array, Mapped, count_equal, minimum, slab_boxes
from emdata.labels.remap import map_values
from emdata.store.volume import Volume
from emdata.store.writer import LabelLayerData

DATASET = "isbi2012"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = ()
SOURCE = "isbi.h5"
RAW_KEY = "raw"
MEMBRANES_KEY = "labels/membranes"
SEGMENTATION_KEY = "labels/gt_segmentation"
log = logging.getLogger(__name__)


class ISBI2012FormatError(HDF5FormatError):
    """isbi.h5 does not have the structure torch-em's mirror publishes."""


def _open(path: Path, key: str) -> HDF5Array:
    try:
        return HDF5Array(path, key)
    except HDF5FormatError as exc:
        raise ISBI2012FormatError(f"{exc}. torch-em's isbi.h5 holds {RAW_KEY}, {MEMBRANES_KEY} and "
                                  f"{SEGMENTATION_KEY}; delete the download and fetch again") from exc


def _read_raw(path: Path) -> HDF5Array:
    raw = _open(path, RAW_KEY)
    if len(raw.shape) != 3 or not np.issubdtype(raw.dtype, np.integer):
        raise ISBI2012FormatError(f"{path.name}:{RAW_KEY}: expected a (z, y, x) greyscale integer stack, got shape "
                                  f"{raw.shape} dtype {raw.dtype}")
    return raw


def _read_label(path: Path, key: str, raw_shape: tuple[int, ...]) -> HDF5Array:
    data = _open(path, key)
    where = f"{path.name}:{key}"
    if data.shape != raw_shape:
        raise ISBI2012FormatError(f"{where}: shape {data.shape} differs from the raw shape {raw_shape}")
    return data


def _as_int_values(values: np.ndarray, where: str) -> list[int]:
    """The distinct values of a label layer as non-negative ints (floats must be whole)."""
    if values.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise ISBI2012FormatError(f"{where}: non-integer values {values[:5].tolist()}; expected a binary mask")
    if values.dtype.kind not in "biuf":
        raise ISBI2012FormatError(f"{where}: dtype {values.dtype} is not a numeric mask")
    ints = [int(v) for v in values]
    if min(ints) < 0:
        raise ISBI2012FormatError(f"{where}: negative value {min(ints)}; expected a binary mask")
    return ints


def _value_evidence(data: Any, raw: Any) -> tuple[np.ndarray, dict[Any, tuple[int, int]]]:
    """One pass over z-slabs of the mask and the raw: the mask's distinct values and, per value,
    (voxels, sum of the raw grey values there) — exact integers, so the fractions and means equal
    those computed over the whole arrays."""
    found: dict[Any, list[int]] = {}
    # the two slabs, np.unique's sorted copy and int64 inverse, the float64 grey values
    per_voxel = 2 * np.dtype(data.dtype).itemsize + np.dtype(raw.dtype).itemsize + 24
    for box in slab_boxes(data.shape, per_voxel):
        values, inverse = np.unique(data.read(box), return_inverse=True)
        inverse = inverse.ravel()
        counts = np.bincount(inverse, minlength=len(values))
        # float64 sums of integer grey values are exact below 2**53 (a slab of 64 MiB of 16-bit values is far below)
        sums = np.bincount(inverse, weights=raw.read(box).ravel().astype(np.float64), minlength=len(values))
        for v, n, total in zip(values, counts, sums):
            entry = found.setdefault(v.item(), [0, 0])
            entry[0] += int(n)
            entry[1] += int(total)
    values = np.array(sorted(found), dtype=data.dtype)
    return values, {k: (v[0], v[1]) for k, v in found.items()}


def _membranes(card: Card, data: Any, raw: Any, where: str) -> tuple[LabelLayerData, dict[str, Any]]:
    """Detect which value is membrane; returns the layer (read box by box) and the encoding record."""
    values, found = _value_evidence(data, raw)
    ints = _as_int_values(values, where)
    if len(ints) != 2:
        raise ISBI2012FormatError(f"{where}: expected a binary membrane mask with exactly two values "
                                  f"(e.g. {{0, 255}} or {{0, 1}}), found {len(ints)}: {ints[:10]}")
    total = math.prod(data.shape)
    evidence: dict[str, dict[str, float]] = {}
    for v, native in zip(ints, values):
        voxels, grey = found[native.item()]
        evidence[str(v)] = {"fraction": float(np.float64(voxels) / total),
                            "mean_raw": float(np.float64(grey) / voxels)}
    darker = min(ints, key=lambda v: evidence[str(v)]["mean_raw"])
    rarer = min(ints, key=lambda v: evidence[str(v)]["fraction"])
    record: dict[str, Any] = {
        "key": MEMBRANES_KEY, "native_dtype": str(data.dtype), "native_values": ints, "evidence": evidence,
        "method": "membrane = the value whose voxels are darker in the raw and cover fewer voxels "
                  "(no published source states the encoding)",
    }
    if darker == rarer:
        other = next(v for v in ints if v != darker)
        record.update(status="detected", membrane_value=darker, non_membrane_value=other,
                      stored_as={str(darker): 1, str(other): 0})
        mask = Mapped(data, functools.partial(map_values, table={darker: 1, other: 0}, where=where,
                                              dtype=np.dtype(np.uint8)), np.uint8)
        classes = [{"value": 0, "name": "non-membrane", "ontology": "background", "color": None},
                   {"value": 1, "name": "membrane", "ontology": "membrane", "color": None}]
        return layer(card, "membranes", mask, classes=classes), record
    log.warning("%s: cannot tell which value is membrane (darker value %s, rarer value %s); keeping the native "
                "values without an ontology mapping", where, darker, rarer)
    record.update(status="undetermined", membrane_value=None, stored_as={str(v): v for v in ints})
    table = {v: v for v in ints}
    kept = Mapped(data, functools.partial(map_values, table=table, where=where),
                  map_values(np.zeros(0, np.uint8), table, where=where).dtype)
    classes = [{"value": v, "name": f"value {v} (meaning undetermined)", "ontology": None, "color": None}
               for v in ints]
    return layer(card, "membranes", kept, classes=classes, annotates=[]), record


def _segmentation(card: Card, data: Any, where: str) -> tuple[LabelLayerData, dict[str, Any]]:
    if not np.issubdtype(data.dtype, np.integer):
        raise ISBI2012FormatError(f"{where}: expected integer instance ids, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.signedinteger):
        low = minimum(data)
        if low is not None and low < 0:
            raise ISBI2012FormatError(f"{where}: negative instance id {int(low)}; expected ids ≥ 0")
    zeros = count_equal(data, 0)
    info = {"key": SEGMENTATION_KEY, "derived_by": "torch-em authors, from the membrane labels",
            "official": False, "dtype": str(data.dtype),
            "zero_fraction": float(np.float64(zeros) / max(math.prod(data.shape), 1)) if math.prod(data.shape)
            else float("nan")}
    return layer(card, "gt_segmentation", data), info


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch ``isbi.h5`` and write volume ``train``."""
    card = get_card(DATASET)
    wanted = choose_volumes(card, volumes)
    fetched = fetch_source(card, SOURCE)
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                          {"volume": spec.name, "keys": [RAW_KEY, MEMBRANES_KEY, SEGMENTATION_KEY]})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        path = fetched.path
        raw = _read_raw(path)
        if spec.shape and raw.shape != spec.shape:
            log.warning("isbi2012 %s: raw shape %s differs from the published %s (a replica or another release); "
                        "preparing it anyway", spec.name, raw.shape, spec.shape)
        membranes, encoding = _membranes(card, _read_label(path, MEMBRANES_KEY, raw.shape), raw,
                                         f"{path.name}:{MEMBRANES_KEY}")
        segmentation, seg_info = _segmentation(card, _read_label(path, SEGMENTATION_KEY, raw.shape),
                                               f"{path.name}:{SEGMENTATION_KEY}")
        notes = [f"membranes: value meaning {encoding['status']} from the data "
                 f"(membrane value {encoding['membrane_value']}, native values {encoding['native_values']})",
                 "gt_segmentation was derived by the torch-em authors from the membranes; not official challenge data"]
        out.append(publish(card, spec.name, spec.split, raw, [membranes, segmentation], prov,
                           description=spec.description, membranes_encoding=encoding,
                           gt_segmentation_origin=seg_info, notes=notes))
    return out
