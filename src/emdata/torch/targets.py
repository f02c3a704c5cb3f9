"""Training targets from label patches, in a label space of union-ontology classes.

- ``semantic``: one index per voxel into the label space; ``ignore_value`` where the class is
  unknown. A voxel is only called background when the volume annotates every class of the
  label space (otherwise it might be one of the classes it does not annotate).
- ``classes``: multi-label, one channel per non-background class of the label space, 1/0,
  with ``annotated[c]`` telling whether the volume annotates class ``c`` at all and
  ``ignore`` marking voxels of unknown class (ignore regions, ``unannotated``).
- ``instances`` (the ids as int64 with their bits kept: uint64 ids ≥ 2**63 read negative;
  ``relabel`` gives 1..n), ``foreground``, ``boundaries`` and ``affinities`` (given offsets)
  from the instance layer.

On the wire (``compact=True``) ``semantic`` is uint8 with :data:`WIRE_IGNORE` for the ignore
value (:func:`compact_semantic`) and ids are narrowed by :func:`compact_ids`;
:func:`emdata.torch.collate.widen` restores the int64 arrays.

Example:
    >>> space = LabelSpace(["background", "neuron", "mitochondria"])
    >>> space.index("mitochondrion"), space.index("er_sheets")  # synonyms; a class outside → None
    (2, None)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emdata.labels.ontology import ontology

IGNORE = -100  # torch.nn.CrossEntropyLoss's default ignore_index
OUTSIDE = -2  # internal: a known class that is not in the label space
# The five-class connectomics union: neurons, synaptic clefts, mitochondria and their boundaries
CONNECTOMICS_LABEL_SPACE = ("background", "neuron", "cleft", "mitochondria", "mito_boundary")
TARGETS = ("semantic", "classes", "instances", "foreground", "boundaries", "affinities")


@dataclass
class LabelSpace:
    """Ordered union-ontology classes; ``classes[0]`` must be background.

    ``ignore_classes`` become background (default) or, with ``ignore_mode="ignore"``, the
    ignore value.
    """

    classes: list[str]
    ignore_classes: Iterable[str] = ()
    ignore_mode: str = "background"
    ignore_value: int = IGNORE
    _ids: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        onto = ontology()
        self.classes = [onto.resolve(c).name for c in self.classes]
        if not self.classes or self.classes[0] != "background":
            raise ValueError(f"the label space must start with background, got {self.classes}")
        if self.ignore_mode not in ("background", "ignore"):
            raise ValueError(f"ignore_mode must be 'background' or 'ignore', got {self.ignore_mode!r}")
        self.ignore_classes = {onto.resolve(c).name for c in self.ignore_classes}
        unknown = self.ignore_classes - set(self.classes)
        if unknown:
            raise ValueError(f"ignore_classes {sorted(unknown)} are not in the label space {self.classes}")
        self._ids = {onto.resolve(c).id: i for i, c in enumerate(self.classes)}

    def index(self, name: str) -> int | None:
        """Index of a class (or its nearest ancestor) in the space; None when outside it."""
        onto = ontology()
        cls = onto.resolve(name)
        for candidate in (cls, *onto.ancestors(cls.name)):
            if candidate.id in self._ids:
                return self._ids[candidate.id]
        return None


@dataclass(frozen=True)
class VolumeLabels:
    """How one volume's label layers map into a label space (computed once per volume)."""

    annotated: np.ndarray  # (C,) bool: the volume annotates class c
    complete: bool  # annotates every non-background class of the space
    semantic_layers: list[tuple[str, dict[int, int]]]  # (layer, {native value: index, OUTSIDE or ignore})
    instance_layers: list[tuple[str, int | None, list[tuple[int, int, int | None]]]]  # (layer, index, id ranges)
    ignore_values: dict[str, int]  # layer → its native ignore value


def plan_labels(meta_labels: dict[str, Any], space: LabelSpace) -> VolumeLabels:
    """Resolve a volume's ``emdata.labels`` metadata against ``space``."""
    onto = ontology()
    annotated = np.zeros(len(space.classes), dtype=bool)
    semantic, instance, ignore_values = [], [], {}
    for name, layer in meta_labels.items():
        for cls in layer.get("annotates", []):
            idx = space.index(cls)
            if idx is not None and space.classes[idx] not in space.ignore_classes:
                annotated[idx] = True
        if layer.get("ignore_value") is not None:
            ignore_values[name] = int(layer["ignore_value"])
        if layer["kind"] == "instance":
            target = layer["mapping"].get("nonzero", {}).get("name")
            ranges = [(r["min"], r["max"], space.index(r["name"])) for r in layer["mapping"].get("ranges", [])]
            instance.append((name, space.index(target) if target else None, ranges))
        table: dict[int, int] = {}
        for value, cls in layer["mapping"].items():
            if value in ("nonzero", "ranges"):
                continue
            role = onto.resolve(cls["name"]).role
            idx = space.index(cls["name"])
            table[int(value)] = space.ignore_value if role == "ignore" else (OUTSIDE if idx is None else idx)
        if layer["kind"] == "semantic":
            semantic.append((name, table))
    annotated[0] = True
    # classes in ignore_classes are merged away by design, so they do not have to be annotated
    needed = [i for i, c in enumerate(space.classes) if i > 0 and c not in space.ignore_classes]
    complete = bool(annotated[needed].all()) if needed else True
    return VolumeLabels(annotated, complete, semantic, instance, ignore_values)


def _apply_ignore_classes(target: np.ndarray, space: LabelSpace) -> np.ndarray:
    for cls in space.ignore_classes:
        idx = space.classes.index(cls)
        target[target == idx] = 0 if space.ignore_mode == "background" else space.ignore_value
    return target


def semantic_target(labels: dict[str, np.ndarray], plan: VolumeLabels, space: LabelSpace) -> np.ndarray:
    """Single-channel indices into the space (int64), ``ignore_value`` where unknown."""
    shape = next(iter(labels.values())).shape if labels else None
    if shape is None:
        raise ValueError("no label layers to build a semantic target from")
    out = np.full(shape, space.ignore_value, dtype=np.int64)
    known_background = np.zeros(shape, dtype=bool)
    # instance layers first: a semantic layer's finer class (e.g. mito_boundary) wins over an
    # instance layer's single class (mitochondria) on voxels both label
    for name, idx, ranges in plan.instance_layers:
        native = labels[name]
        known_background |= native == 0
        if ranges:
            for lo, hi, r_idx in ranges:
                inside = (native >= lo) & (native <= hi)
                if r_idx is None:
                    known_background |= inside
                else:
                    out[inside] = r_idx
        elif idx is not None:
            out[native != 0] = idx
        else:
            known_background |= native != 0
    for name, table in plan.semantic_layers:
        native = labels[name]
        values, inverse = np.unique(native, return_inverse=True)
        lut = np.array([table.get(int(v), space.ignore_value) for v in values], dtype=np.int64)
        mapped = lut[inverse].reshape(shape)
        fg = mapped > 0
        out[fg] = mapped[fg]
        known_background |= (mapped == 0) | (mapped == OUTSIDE)
    for name, value in plan.ignore_values.items():
        out[labels[name] == value] = space.ignore_value
        known_background &= labels[name] != value
    if plan.complete:
        out[(out == space.ignore_value) & known_background] = 0
    return _apply_ignore_classes(out, space)


def classes_target(semantic: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Multi-hot (C-1, z, y, x) uint8 for the non-background classes of the space."""
    return np.stack([(semantic == c).astype(np.uint8) for c in range(1, len(space.classes))])


def relabel(ids: np.ndarray) -> np.ndarray:
    """Instance ids → 1..n in order of value (0 stays 0), as int64."""
    values, inverse = np.unique(ids, return_inverse=True)
    start = 0 if values[0] == 0 else 1
    return (np.arange(start, start + len(values), dtype=np.int64))[inverse].reshape(ids.shape)


def as_int64(ids: np.ndarray) -> np.ndarray:
    """Label values as int64 without a copy where possible: uint64 ids keep their bits (ids ≥ 2**63
    read as negative numbers, identity preserved); use ``targets.relabel`` for ids 1..n.

    Example:
        >>> as_int64(np.array([1, 2**63], np.uint64)).tolist()
        [1, -9223372036854775808]
    """
    if ids.dtype == np.uint64:
        return ids.view(np.int64)
    return ids.astype(np.int64, copy=False)


WIRE_IGNORE = 255  # ``semantic`` on the wire (uint8): the ignore value, widened back by emdata.torch.collate.widen


def compact_ids(ids: np.ndarray) -> np.ndarray:
    """Instance ids in the smallest unsigned dtype that holds this patch's values exactly (uint8,
    uint16 or uint32; signed ids below zero keep their dtype, 64-bit ones as int64); uint64 ids that
    do not fit 32 bits stay 64-bit, as int64 with their bits kept (:func:`as_int64`): they are sent
    as they are, never relabelled, so ``labels/<name>`` stays the stored ids.

    Example:
        >>> compact_ids(np.array([0, 7, 300], np.uint64)).dtype, compact_ids(np.array([2**40], np.uint64)).dtype
        (dtype('uint16'), dtype('int64'))
    """
    if ids.dtype.kind not in "iu":
        raise TypeError(f"label ids must be integers, got {ids.dtype}")
    if not ids.size:
        return ids
    low = 0 if ids.dtype.kind == "u" else int(ids.min())
    if low < 0:  # signed ids below zero: kept as they are (64-bit as int64)
        return ids if ids.dtype.itemsize <= 4 else ids.astype(np.int64, copy=False)
    high = int(ids.max())
    if high < 2**32:
        narrow = np.min_scalar_type(high)
        return ids if ids.dtype == narrow else ids.astype(narrow)
    return as_int64(ids)


def compact_semantic(semantic: np.ndarray, ignore_value: int, n_classes: int) -> np.ndarray:
    """``semantic`` (int64 indices, ``ignore_value`` where unknown) as uint8 with ``WIRE_IGNORE``
    (255) for the ignore value, when the space has at most 255 classes (else unchanged).

    Example:
        >>> compact_semantic(np.array([0, 2, -100]), -100, 3).tolist()
        [0, 2, 255]
    """
    if n_classes > WIRE_IGNORE:
        return semantic
    out = semantic.astype(np.uint8)
    out[semantic == ignore_value] = WIRE_IGNORE
    return out


def boundaries(instances: np.ndarray) -> np.ndarray:
    """1 where a voxel's instance differs from a face neighbour's (in-plane only for 2D)."""
    out = np.zeros(instances.shape, dtype=bool)
    for axis in range(instances.ndim):
        if instances.shape[axis] < 2:
            continue
        a = np.swapaxes(instances, 0, axis)
        diff = a[1:] != a[:-1]
        o = np.swapaxes(out, 0, axis)
        o[1:] |= diff
        o[:-1] |= diff
    return out.astype(np.uint8)


def affinities(instances: np.ndarray, offsets: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(affinity, mask) channels: 1 where ``p`` and ``p + offset`` are the same non-zero instance;
    the mask is 0 where ``p + offset`` falls outside the patch."""
    aff = np.zeros((len(offsets), *instances.shape), dtype=np.uint8)
    mask = np.zeros_like(aff)
    for k, off in enumerate(offsets):
        src = tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(off, instances.shape))
        dst = tuple(slice(max(o, 0), n - max(-o, 0)) for o, n in zip(off, instances.shape))
        a, b = instances[src], instances[dst]
        aff[(k, *src)] = (a == b) & (a != 0)
        mask[(k, *src)] = 1
    return aff, mask


def sample_targets(names: Iterable[str], labels: dict[str, np.ndarray], plan: VolumeLabels, space: LabelSpace,
                   shape: tuple[int, int, int], affinity_offsets: list[tuple[int, int, int]],
                   compact: bool = False) -> dict[str, np.ndarray]:
    """The targets ``names`` (of :data:`TARGETS`) of one patch from its label layers ``labels``;
    targets the volume cannot give are ``ignore_value`` (semantic, instances) or zero (masks).
    ``compact``: ``semantic`` as uint8 (:func:`compact_semantic`) and ``instances`` in the
    smallest dtype holding them (:func:`compact_ids`; int8 when all ignore and the value fits);
    :func:`emdata.torch.collate.widen` gives the int64 arrays back.

    Example:
        >>> cells = np.zeros((1, 2, 2), "u4"); cells[..., 1] = 5
        >>> meta = {"cells": {"kind": "instance", "annotates": ["neuron"], "mapping": {"nonzero": {"name": "neuron"}}}}
        >>> space = LabelSpace(["background", "neuron"])
        >>> out = sample_targets(["semantic", "boundaries"], {"cells": cells}, plan_labels(meta, space), space,
        ...                      (1, 2, 2), [])
        >>> out["semantic"].tolist(), out["boundaries"].tolist()
        ([[[0, 1], [0, 1]]], [[[[1, 1], [1, 1]]]])
    """
    names = set(names)
    out: dict[str, np.ndarray] = {}
    if not names:
        return out
    if {"semantic", "classes"} & names:
        sem = semantic_target(labels, plan, space) if labels else np.full(shape, space.ignore_value, np.int64)
        if "semantic" in names:
            out["semantic"] = compact_semantic(sem, space.ignore_value, len(space.classes)) if compact else sem
        if "classes" in names:
            out["classes"] = classes_target(sem, space)
            out["classes_ignore"] = (sem == space.ignore_value).astype(np.uint8)
    inst_layer = next((name for name, _, _ in plan.instance_layers), None)
    inst = (compact_ids if compact else as_int64)(labels[inst_layer]) if inst_layer else None
    if "instances" in names:
        unknown = np.int8 if compact and -128 <= space.ignore_value < 128 else np.int64
        out["instances"] = inst if inst is not None else np.full(shape, space.ignore_value, unknown)
    if "foreground" in names:
        out["foreground"] = ((inst != 0).astype(np.uint8) if inst is not None
                             else np.zeros(shape, np.uint8)).reshape(1, *shape)
    if "boundaries" in names:
        out["boundaries"] = (boundaries(inst) if inst is not None else np.zeros(shape, np.uint8)).reshape(1, *shape)
    if "affinities" in names:
        base = inst if inst is not None else np.zeros(shape, np.uint8)
        out["affinities"], out["affinities_mask"] = affinities(base, affinity_offsets)
        if inst is None:
            out["affinities_mask"][:] = 0
    return out
