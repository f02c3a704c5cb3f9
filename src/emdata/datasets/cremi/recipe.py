"""CREMI (MICCAI 2016): one organisers' HDF5 file per sample → volumes ``A``, ``B``, ``C``
(train: raw + ``neuron_ids`` + ``clefts`` + derived ``combined``, synaptic partners as a
table in the metadata) and ``A+``, ``B+``, ``C+`` (test: raw only, labels withheld).

What the recipe does with each file (the format as cremi.org/data describes it):

- ``volumes/raw`` (uint8, (z, y, x)) is stored as it is. The ``resolution`` attribute of
  every volume read is checked against the card's (40, 4, 4) nm; a different value is an
  error naming the file, the key and both values.
- ``volumes/labels/neuron_ids`` (uint64) is stored unchanged, every id at full width
  (ids ≥ 2**63 included). Only 2**64-1, CREMI's "no label" value (padded files), becomes 0.
- ``volumes/labels/clefts`` (uint64) stores 2**64-1 for "no cleft"; it becomes 0 (the card's
  background class), every other cleft id is kept. The count is recorded in the metadata.
- ``combined``: the offset code of tmquan/neurons (``neurons/datasets/cremi3d.py``, commit
  c7001c3) (neuron id < 1,000,000; cleft id + 1,000,000 <
  2,000,000; clefts win where both are set) built with ``offset_encode``; the value ranges
  are recorded under ``emdata.combined_code`` (the layer is not a card layer: its ids belong
  to two classes). When a native id does not fit, the layer is skipped with a logged
  warning and a note in the metadata; the prepare does not fail.
- ``annotations`` (ids, types, (z, y, x) nm locations, pre→post partner pairs, comments) is
  kept as a JSON table under ``emdata.synaptic_partners``, with the group's ``offset``
  attribute when it has one (locations are relative to it).

Padded files (``padded=True``): raw carries more context. A label volume whose ``offset``
attribute (z, y, x nm, relative to the raw's own offset) places it inside a larger raw is
written into the raw's grid at ``offset / resolution``; voxels outside that box are 0 and
mean *not annotated*: the box is recorded per layer under ``emdata.annotated_region``
(``[[z0, z1], [y0, y1], [x0, x1]]``) with a note. A label volume of the raw's shape (the
torch-em description of the same files) is used as it is, its 2**64-1 voxels becoming 0.
Padded and cropped variants of a sample share the volume name (``A``); preparing the other
variant rebuilds the volume, and ``emdata.variant`` says which one it holds.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("cremi"):
    ...     vols = emdata.prepare("cremi")
    ...     print([(v.name, v.split) for v in vols])
    ...     a = emdata.prepare("cremi", volumes=["A"], padded=True)[0]
    ...     a.meta["variant"], a.meta["annotated_region"]["neuron_ids"]
    [('A', 'train'), ('B', 'train'), ('C', 'train'), ('A+', 'test'), ('B+', 'test'), ('C+', 'test')]
    ('padded', [[2, 8], [6, 54], [5, 45]])
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.datasets._common import choose_volumes, fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import Option
from emdata.formats.hdf5 import HDF5FormatError, list_keys, read_dataset, read_group_attrs
from emdata.formats.lazy import Combined, HDF5Array, Mapped, Placed, count_equal, maximum
from emdata.labels.remap import offset_encode
from emdata.store.volume import Volume
from emdata.store.writer import LabelLayerData

DATASET = "cremi"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (
    Option("padded", bool, "Read the padded files (raw with more context around the labels), not the cropped ones."),
)
# card volume name → (cropped file, padded file); both names are card sources.
FILES: dict[str, tuple[str, str]] = {
    "A": ("sample_A_20160501.hdf", "sample_A_padded_20160501.hdf"),
    "B": ("sample_B_20160501.hdf", "sample_B_padded_20160501.hdf"),
    "C": ("sample_C_20160501.hdf", "sample_C_padded_20160501.hdf"),
    "A+": ("sample_A+_20160601.hdf", "sample_A+_padded_20160601.hdf"),
    "B+": ("sample_B+_20160601.hdf", "sample_B+_padded_20160601.hdf"),
    "C+": ("sample_C+_20160601.hdf", "sample_C+_padded_20160601.hdf"),
}
RAW_KEY = "volumes/raw"
NEURON_KEY = "volumes/labels/neuron_ids"
CLEFT_KEY = "volumes/labels/clefts"
ANNOTATIONS = "annotations"
NO_LABEL = np.uint64(2**64 - 1)  # CREMI's "no cleft" / "unlabelled" value
CLEFT_OFFSET = 1_000_000  # tmquan/neurons' offset code: neuron < 1,000,000 ≤ cleft < 2,000,000
CODE_END = 2_000_000
SITE_TYPES = ("presynaptic_site", "postsynaptic_site")
COMBINED_DESCRIPTION = ("Derived by emdata (the offset code of tmquan/neurons cremi3d.py): 0 = neither; 1..999,999 = "
                        "neuron id; 1,000,000..1,999,999 = cleft id + 1,000,000 (a cleft wins over a neuron)")
log = logging.getLogger(__name__)


class CremiFormatError(HDF5FormatError):
    """A CREMI file does not have the structure the organisers publish."""


def _vec3(value: Any, where: str, attr: str) -> tuple[float, float, float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise CremiFormatError(f"{where}: attribute {attr} = {value!r} is not three (z, y, x) nm values")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def _check_resolution(attrs: dict[str, Any], where: str, card: Card, notes: list[str]) -> None:
    """The file's ``resolution`` attribute must equal the card's voxel size (z, y, x nm)."""
    expected = card.voxel_size_nm
    if "resolution" not in attrs:
        log.warning("%s has no resolution attribute; using the card's %s nm", where, expected)
        notes.append(f"{where}: no resolution attribute; voxel size taken from the card {list(expected or ())} nm")
        return
    found = _vec3(attrs["resolution"], where, "resolution")
    if expected is None or not np.allclose(found, expected):
        raise CremiFormatError(
            f"{where}: attribute resolution = {found} nm (z, y, x) but the cremi card states {expected} nm; "
            "this is not a CREMI file emdata knows. Delete the download and fetch again, or, if cremi.org "
            "changed the data, update src/emdata/datasets/cremi/card.toml")


def _read_raw(path: Path, card: Card, notes: list[str]) -> tuple[HDF5Array, tuple[float, float, float]]:
    """``volumes/raw`` (a source, read box by box) and its offset (nm; 0 when the attribute is absent)."""
    ds = HDF5Array(path, RAW_KEY)
    where = f"{path.name}:{RAW_KEY}"
    if len(ds.shape) != 3 or not np.issubdtype(ds.dtype, np.integer):
        raise CremiFormatError(f"{where}: expected a (z, y, x) greyscale integer volume, got shape "
                               f"{ds.shape} dtype {ds.dtype}")
    if ds.dtype != np.uint8:
        log.warning("%s: raw dtype %s, the organisers publish uint8; keeping it", where, ds.dtype)
    _check_resolution(ds.attrs, where, card, notes)
    offset = _vec3(ds.attrs["offset"], where, "offset") if "offset" in ds.attrs else (0.0, 0.0, 0.0)
    return ds, offset


def _replace(data: np.ndarray, value: np.uint64, by: int) -> int:
    """Set every ``value`` voxel of ``data`` (in place) to ``by``; returns how many there were."""
    mask = data == value
    count = int(np.count_nonzero(mask))
    if count:
        data[mask] = by
    return count


def _placement(label_shape: tuple[int, ...], offset_nm: tuple[float, float, float], raw_shape: tuple[int, ...],
               raw_offset_nm: tuple[float, float, float], resolution: tuple[float, float, float],
               where: str) -> tuple[slice, slice, slice] | None:
    """Where a label volume lies in the raw's voxel grid (None: the same grid)."""
    rel = np.subtract(offset_nm, raw_offset_nm) / np.asarray(resolution)
    start = np.rint(rel).astype(np.int64)
    if not np.allclose(rel, start, atol=1e-6):
        raise CremiFormatError(f"{where}: offset {offset_nm} nm (raw offset {raw_offset_nm} nm) is not a whole "
                               f"number of {resolution} nm voxels; cannot place the labels in the raw grid")
    stop = start + np.asarray(label_shape)
    if np.any(start < 0) or np.any(stop > np.asarray(raw_shape)):
        raise CremiFormatError(f"{where}: labels of shape {label_shape} at voxel offset {tuple(start.tolist())} do "
                               f"not fit inside the raw of shape {raw_shape}; the file is inconsistent")
    if tuple(label_shape) == tuple(raw_shape):
        return None
    return (slice(int(start[0]), int(stop[0])), slice(int(start[1]), int(stop[1])),
            slice(int(start[2]), int(stop[2])))


def _no_label_to_zero(block: np.ndarray) -> np.ndarray:
    """``block`` with CREMI's 2**64-1 'no label' value set to 0."""
    block = np.array(block, copy=True)
    _replace(block, NO_LABEL, 0)
    return block


def _read_labels(path: Path, key: str, card: Card, raw_shape: tuple[int, ...],
                 raw_offset_nm: tuple[float, float, float], notes: list[str]
                 ) -> tuple[Any, tuple[slice, slice, slice] | None, int]:
    """One uint64 label volume in the raw's grid, 2**64-1 → 0, as a source read box by box;
    (source, box, voxels replaced)."""
    try:
        data = HDF5Array(path, key)
    except HDF5FormatError as exc:
        raise CremiFormatError(f"{exc}. CREMI training samples hold {RAW_KEY}, {NEURON_KEY} and {CLEFT_KEY}; "
                               "delete the download and fetch again") from exc
    where = f"{path.name}:{key}"
    if len(data.shape) != 3:
        raise CremiFormatError(f"{where}: expected a (z, y, x) label volume, got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.unsignedinteger):
        raise CremiFormatError(f"{where}: expected uint64 ids, got dtype {data.dtype}; a signed copy cannot hold "
                               "CREMI's ids and its 2**64-1 'no label' value. Use the organisers' file")
    if data.dtype != np.uint64:
        log.warning("%s: dtype %s, the organisers publish uint64; keeping the width", where, data.dtype)
    _check_resolution(data.attrs, where, card, notes)
    offset = _vec3(data.attrs["offset"], where, "offset") if "offset" in data.attrs else raw_offset_nm
    box = _placement(data.shape, offset, raw_shape, raw_offset_nm, card.voxel_size_nm or (40.0, 4.0, 4.0), where)
    source: Any = data
    replaced = 0
    if data.dtype == np.uint64:
        replaced = count_equal(data, NO_LABEL)
        if replaced:
            source = Mapped(data, _no_label_to_zero, data.dtype)
    if box is not None:
        source = Placed(source, tuple(b.start for b in box), raw_shape)
    return source, box, replaced


def _text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


def _ids(values: np.ndarray, where: str) -> list[int]:
    if not np.issubdtype(values.dtype, np.integer):
        raise CremiFormatError(f"{where}: expected integer annotation ids, got dtype {values.dtype}")
    return [int(v) for v in values.reshape(-1)]


def _annotations(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """The ``annotations`` group as JSON-able lists (None, with a note, when the file has none)."""
    keys = set(list_keys(path))
    prefix = ANNOTATIONS + "/"
    if not any(k.startswith(prefix) for k in keys):
        log.warning("%s has no %s group; no synaptic partner table", path.name, ANNOTATIONS)
        notes.append(f"{path.name}: no {ANNOTATIONS} group, so no synaptic partner table")
        return None
    where = f"{path.name}:{ANNOTATIONS}"
    for required in ("ids", "locations"):
        if prefix + required not in keys:
            raise CremiFormatError(f"{where}: no dataset {prefix + required!r}; the group holds "
                                   f"{sorted(k for k in keys if k.startswith(prefix))}")
    ids = _ids(read_dataset(path, prefix + "ids").data, f"{where}/ids")
    locations = read_dataset(path, prefix + "locations").data
    if locations.shape != (len(ids), 3):
        raise CremiFormatError(f"{where}/locations: expected shape ({len(ids)}, 3) ((z, y, x) nm per id), "
                               f"got {locations.shape}")
    types_key = next((prefix + k for k in ("types", "type") if prefix + k in keys), None)
    types = _text(read_dataset(path, types_key).data) if types_key else []
    if types_key and len(types) != len(ids):
        raise CremiFormatError(f"{path.name}:{types_key}: {len(types)} entries for {len(ids)} ids")
    odd = sorted(set(types) - set(SITE_TYPES))
    if odd:
        log.warning("%s: site types %s are not %s; kept as stored", where, odd[:5], SITE_TYPES)
    partners: list[list[int]] = []
    if prefix + "presynaptic_site/partners" in keys:
        pairs = read_dataset(path, prefix + "presynaptic_site/partners").data
        if pairs.size and (pairs.ndim != 2 or pairs.shape[1] != 2):
            raise CremiFormatError(f"{where}/presynaptic_site/partners: expected (pre, post) pairs of shape (M, 2), "
                                   f"got {pairs.shape}")
        partners = [[int(a), int(b)] for a, b in pairs.reshape(-1, 2)]
    known = set(ids)
    dangling = sum(1 for pair in partners for i in pair if i not in known)
    if dangling:
        log.warning("%s: %d partner ids are not in annotations/ids", where, dangling)
        notes.append(f"{where}: {dangling} partner ids are not among annotations/ids")
    comments: list[dict[str, Any]] = []
    if prefix + "comments/target_ids" in keys and prefix + "comments/comments" in keys:
        targets = _ids(read_dataset(path, prefix + "comments/target_ids").data, f"{where}/comments/target_ids")
        texts = _text(read_dataset(path, prefix + "comments/comments").data)
        comments = [{"target_id": t, "comment": c} for t, c in zip(targets, texts)]
    attrs = read_group_attrs(path, ANNOTATIONS)
    offset = list(_vec3(attrs["offset"], where, "offset")) if "offset" in attrs else None
    return {
        "source": f"{path.name}:{ANNOTATIONS}", "count": len(ids), "ids": ids, "types": types,
        "locations_nm": [[float(c) for c in row] for row in locations],
        "partners": partners, "comments": comments, "offset_nm": offset,
        "frame": "locations_nm are (z, y, x) nm relative to offset_nm (absolute = location + offset_nm, "
                 "offset_nm None = 0); voxel in this volume = (absolute - origin_nm) / voxel_size_nm",
    }


def _encode(neurons: np.ndarray, clefts: np.ndarray, where: str) -> np.ndarray:
    return offset_encode({0: neurons, CLEFT_OFFSET: clefts}, where=where)


def _combined(neurons: Any, clefts: Any, where: str, notes: list[str]) -> LabelLayerData | None:
    """The offset code (a source combining the two layers box by box), or None (warning + note)
    when a native id does not fit it."""
    top_neuron, top_cleft = int(maximum(neurons)), int(maximum(clefts))
    too_big = [f"largest {what} id {top} is not < {limit:,}" for what, top, limit in
               (("neuron", top_neuron, CLEFT_OFFSET), ("cleft", top_cleft, CODE_END - CLEFT_OFFSET)) if top >= limit]
    if too_big:
        why = "; ".join(too_big)
        log.warning("%s: combined layer skipped: %s; use neuron_ids and clefts", where, why)
        notes.append(f"combined layer not written: native ids do not fit the offset code ({why}); "
                     "use the neuron_ids and clefts layers")
        return None
    data = Combined([neurons, clefts], functools.partial(_encode, where=where), np.uint64)
    # Not a card layer: its non-zero ids belong to two classes by range (value_ranges).
    return LabelLayerData(name="combined", data=data, kind="instance", instance_of=None,
                          classes=[{"value": 0, "name": "background", "ontology": "background", "color": None}],
                          value_ranges=[{"min": 1, "max": CLEFT_OFFSET - 1, "ontology": "neuron"},
                                        {"min": CLEFT_OFFSET, "max": CODE_END - 1, "ontology": "cleft"}],
                          description=COMBINED_DESCRIPTION)


def _build(card: Card, name: str, split: str, labelled: bool, path: Path, padded: bool,
           prov: dict[str, Any], description: str, expected_shape: tuple[int, ...] | None) -> Volume:
    notes: list[str] = []
    raw, raw_offset = _read_raw(path, card, notes)
    if expected_shape and not padded and raw.shape != expected_shape:
        log.warning("cremi %s: raw shape %s differs from the published %s (a replica or another release); "
                    "preparing it anyway", name, raw.shape, expected_shape)
    meta: dict[str, Any] = {"description": description, "variant": "padded" if padded else "cropped",
                            "source_file": path.name, "origin_nm": list(raw_offset)}
    layers: list[LabelLayerData] = []
    if labelled:
        neurons, n_box, n_replaced = _read_labels(path, NEURON_KEY, card, raw.shape, raw_offset, notes)
        clefts, c_box, c_replaced = _read_labels(path, CLEFT_KEY, card, raw.shape, raw_offset, notes)
        notes.append(f"clefts: background 2**64-1 ('no cleft') mapped to 0 ({c_replaced} voxels); "
                     "other cleft ids kept")
        meta["clefts_background_mapped"] = {"from": int(NO_LABEL), "to": 0, "voxels": c_replaced}
        if n_replaced:
            notes.append(f"neuron_ids: 2**64-1 ('no label') mapped to 0 ({n_replaced} voxels)")
            meta["neuron_ids_unlabelled_mapped"] = {"from": int(NO_LABEL), "to": 0, "voxels": n_replaced}
        region = {k: [[b.start, b.stop] for b in box] for k, box in (("neuron_ids", n_box), ("clefts", c_box))
                  if box is not None}
        if region:
            meta["annotated_region"] = region
            notes.append("padded file: labels cover only annotated_region (voxels, [start, stop) per axis) of the "
                         "raw, placed at their offset attribute / resolution; 0 outside it means not annotated")
        layers = [layer(card, "neuron_ids", neurons), layer(card, "clefts", clefts)]
        combined = _combined(neurons, clefts, f"{path.name}:combined", notes)
        if combined is not None:
            layers.append(combined)
            meta["combined_code"] = {"neuron_ids": {"offset": 0, "values": [1, CLEFT_OFFSET - 1]},
                                     "clefts": {"offset": CLEFT_OFFSET, "values": [CLEFT_OFFSET, CODE_END - 1]},
                                     "overlap": "clefts win"}
        table = _annotations(path, notes)
        if table is not None:
            meta["synaptic_partners"] = table
    else:
        keys = set(list_keys(path))
        present = [k for k in (NEURON_KEY, CLEFT_KEY) if k in keys]
        if present:
            log.info("cremi %s: test sample holds %s; not used (labels are withheld for test samples)", name, present)
    return publish(card, name, split, raw, layers, prov, voxel_size_nm=card.voxel_size_nm, notes=notes, **meta)


def prepare(volumes: list[str] | None = None, force: bool = False, padded: bool = False) -> list[Volume]:
    """Fetch the selected samples (default: all six, cropped) and write one volume each."""
    card = get_card(DATASET)
    if not isinstance(padded, bool):
        raise ValueError(f"cremi: padded must be True or False, got {padded!r}")
    wanted = choose_volumes(card, volumes)
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        source = FILES[spec.name][1 if padded else 0]
        fetched = fetch_source(card, source)
        prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                          {"volume": spec.name, "padded": padded, "labelled": spec.labelled})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        out.append(_build(card, spec.name, spec.split, spec.labelled, fetched.path, padded, prov,
                          spec.description, spec.shape))
    return out
