"""MitoEM2 (MitoEM 2.0): eight Zenodo zips in nnU-Net v2 layout → one volume per case.

Each sub-dataset zip ``Dataset00N_ME2-<Name>.zip`` holds ``Dataset00N_ME2-<Name>/`` with
``dataset.json``, ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz`` (train) and
``imagesTs``/``labelsTs`` (test), and a split file. Every case becomes one volume named
``<subset>-<split><NN>`` (``me2-beta_train01`` → ``beta-train01``; the split comes from the
folder). The card's ``<subset>-<split>`` volume names select all cases of that group.

Decisions (from the Zenodo record's dataset.json, torch-em's ``mitoemv2.py`` and tmquan/neurons
``doc/DATASETS.md``, commit c7001c3):

- **Axes.** NIfTI arrays are (x, y, z); :mod:`emdata.formats.nifti` turns them into
  (z, y, x). A label whose shape is the image shape reversed (the ``me2-jurkat_train02``
  defect) is transposed back and ``label_axes_reversed: true`` is recorded; any other shape
  mismatch is an error.
- **Voxel size.** The image header's spacing, read as nm (nnU-Net writers keep the numbers
  of dataset.json there, whatever unit code the header claims; only when the numbers match
  dataset.json/the card after converting from the declared unit — e.g. 0.016 "micron" — is the
  conversion applied), reversed to (z, y, x). It is
  compared with dataset.json ``spacing`` (x, y, z) and the card subset's voxel size; every
  difference is logged and all candidates are kept in ``voxel_size_candidates``. A header
  without spacing (all 1 or non-positive) falls back to dataset.json, then the card.
- **Label encoding, detected per file from the values** (recorded as ``label_encoding``):
  maximum > 2 → ``instances``; values ⊆ {0, 1, 2} with class 1 present → ``classes``
  (0 background, 1 mitochondria, 2 boundary, as dataset.json declares); only {0, 2} →
  ``instances`` (a single id 2: a boundary class never exists without mitochondria);
  all 0 → ``empty``. A file holding exactly the instance ids {1, 2} is read as classes —
  the values cannot tell the two apart.
- **Both layers are written.** From classes: ``semantic`` = the classes as stored, ``instances``
  = 6-connected components of class 1 after removing class 2 (the rule tmquan/neurons
  ``doc/DATASETS.md`` gives). From instances: ``instances`` = the ids as stored (dtype kept),
  ``semantic`` = 1 on every instance voxel and 2 on instance voxels that share a face with a
  *different* instance (the separator between touching mitochondria; voxels touching only
  background stay 1).

Why one module of this size: eight sub-datasets in one nnU-Net layout, with the per-file checks
(label encoding, reversed axes) that must run in order before anything is written.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("mitoem2", subsets=("beta",)):
    ...     vols = emdata.prepare("mitoem2", subset=["beta"])
    ...     [v.name for v in vols]
    ['beta-train01', 'beta-train02', 'beta-test01']
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import (
    choose_subsets,
    fetch_source,
    layer,
    provenance,
    publish,
    reusable,
    volume_path,
)
from emdata.datasets.contract import SUBSET, Option
from emdata.formats.lazy import Mapped, as_source, maximum, minimum, reduce_slabs
from emdata.formats.lazy_labels import FaceBoundary, Reversed, connected_components, face_boundary
from emdata.formats.nifti import NiftiVolume
from emdata.formats.nifti_source import open_nifti
from emdata.sources.archive import extract, list_members, read_member
from emdata.sources.download import FetchResult
from emdata.store.volume import Volume

DATASET = "mitoem2"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (SUBSET,)
FOLDERS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
SPLIT_OF_FOLDER = {"imagesTr": "train", "imagesTs": "test"}
DECLARED_LABELS = {"background": 0, "mitochondria": 1, "boundary": 2}
SPLIT_FILES = ("split.json", "splits.json")
UNIT_TO_NM = {"meter": 1e9, "mm": 1e6, "micron": 1e3}
ENCODING_RULE = ("max > 2 → instances; values ⊆ {0,1,2} with 1 present → classes; only {0,2} → instances; "
                 "all 0 → empty")
BOUNDARY_RULE = ("semantic 2 = instance voxels sharing a face with a different non-zero instance; 1 = other "
                 "instance voxels; 0 = background")
COMPONENTS_RULE = ("instances = 6-connected components of class 1 after removing class 2 (tmquan/neurons "
                   "doc/DATASETS.md)")
CASE = re.compile(r"^me2-(?P<subset>[A-Za-z0-9]+)_(?P<split>train|test)(?P<num>\d+)$")
IMAGE = re.compile(r"^(?P<top>(?:[^/]+/)*)(?P<folder>imagesTr|imagesTs)/(?P<case>[^/]+)_(?P<channel>\d{4})"
                   r"\.nii(?:\.gz)?$")
VOLUME = re.compile(r"^(?P<subset>[a-z]+)-(?P<split>train|test)(?P<rest>.*)$")
log = logging.getLogger(__name__)


class MitoEM2FormatError(ValueError):
    """A MitoEM2 zip or NIfTI file does not have the structure the nnU-Net release uses."""


@dataclass
class Case:
    """One nnU-Net case inside a sub-dataset zip."""

    subset: str
    split: str
    case: str
    volume: str
    image: str
    label: str | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Layout:
    """What a sub-dataset zip holds: its top folder, cases, dataset.json and split roles."""

    top: str
    cases: list[Case]
    dataset_json: dict[str, Any] | None
    split_roles: dict[str, str]
    split_file: str | None


# ---------------------------------------------------------------------------------------------
# options




def _select(card: Card, volumes: list[str] | None, subset: Any) -> tuple[list[str], set[str] | None]:
    """(subsets to read, requested volume/group names or None for all)."""
    known = [s.id for s in card.subsets]
    chosen = choose_subsets(card, subset)
    if not volumes:
        return chosen, None
    groups = {v.name: v.subset for v in card.volumes}
    needed = []
    for name in volumes:
        m = VOLUME.match(name)
        sub = groups.get(name) or (m["subset"] if m and m["subset"] in known else None)
        if sub is None:
            raise ValueError(f"mitoem2 has no volume {name!r}; volumes are one per case, named "
                             f"<subset>-<train|test><NN> (e.g. beta-train01), or a group {sorted(groups)} "
                             f"for all cases of a subset and split; subsets: {known}")
        if sub not in chosen:
            raise ValueError(f"mitoem2 volume {name!r} belongs to subset {sub!r}, which subset={chosen} excludes")
        needed.append(sub)
    return [s for s in chosen if s in needed], set(volumes)


# ---------------------------------------------------------------------------------------------
# zip layout


def _volume_name(subset: str, split: str, case: str, where: str) -> tuple[str, list[str]]:
    m = CASE.match(case)
    if m is None:
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", case)
        note = (f"{where}: case name {case!r} is not me2-<subset>_<train|test>NN (the Zenodo naming); "
                f"volume named {subset}-{split}-{safe}")
        log.warning(note)
        return f"{subset}-{split}-{safe}", [note]
    notes = []
    if m["subset"].lower() != subset or m["split"] != split:
        note = (f"{where}: case {case!r} names subset/split {m['subset']}/{m['split']} but lies in the {subset} "
                f"zip under the {split} folder; the zip and folder decide")
        log.warning(note)
        notes.append(note)
    return f"{subset}-{split}{m['num']}", notes


def _parse_split_file(data: Any, where: str) -> dict[str, str]:
    """case → role (train/val/test) from a dict or a one-element list of dicts; {} otherwise."""
    table = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else data
    if not isinstance(table, dict):
        log.warning("%s: expected {train: [...], val: [...], test: [...]} (or a list holding it), got %s; "
                    "ignoring it", where, type(table).__name__)
        return {}
    roles = {}
    for role, names in table.items():
        if isinstance(names, list):
            for n in names:
                if isinstance(n, str):
                    roles[n] = str(role)
    return roles


def _read_json_member(archive: Path, member: str) -> Any:
    try:
        return json.loads(read_member(archive, member).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MitoEM2FormatError(f"{archive.name}:{member}: not valid JSON ({exc}); delete {archive} and "
                                 "fetch it again") from exc


def _layout(archive: Path, subset: str) -> Layout:
    members = [m for m in list_members(archive)
               if "__MACOSX" not in m.split("/") and not PurePosixPath(m).name.startswith("._")]
    tops: dict[str, list[tuple[str, str, str, str]]] = {}
    for m in members:
        hit = IMAGE.match(m)
        if hit:
            tops.setdefault(hit["top"], []).append((m, hit["folder"], hit["case"], hit["channel"]))
    if not tops:
        shown = ", ".join(members[:15]) + (" …" if len(members) > 15 else "")
        raise MitoEM2FormatError(f"{archive.name}: no nnU-Net images (expected <Dataset>/imagesTr/<case>_0000.nii.gz "
                                 f"and imagesTs/<case>_0000.nii.gz); the zip holds: {shown}")
    if len(tops) > 1:
        raise MitoEM2FormatError(f"{archive.name}: images under several dataset folders {sorted(tops)}; "
                                 "expected one Dataset00N_ME2-<Name>/ folder")
    top, images = next(iter(tops.items()))
    names = set(members)
    cases = []
    for member, folder, case, channel in sorted(images, key=lambda t: (t[1], t[2])):
        if channel != "0000":
            log.warning("%s:%s: extra channel %s ignored (MitoEM2 has one EM channel)", archive.name, member, channel)
            continue
        split = SPLIT_OF_FOLDER[folder]
        label_dir = FOLDERS[split][1]
        label = next((f"{top}{label_dir}/{case}{ext}" for ext in (".nii.gz", ".nii")
                      if f"{top}{label_dir}/{case}{ext}" in names), None)
        if label is None and split == "train":
            raise MitoEM2FormatError(f"{archive.name}: training image {member} has no label "
                                     f"{top}{label_dir}/{case}.nii.gz; the zip is incomplete — delete it and "
                                     "fetch it again")
        volume, notes = _volume_name(subset, split, case, f"{archive.name}:{member}")
        if label is None:
            notes.append(f"{top}{label_dir}/{case}.nii.gz is missing: test case stored without labels")
            log.warning("%s: %s", archive.name, notes[-1])
        cases.append(Case(subset, split, case, volume, member, label, notes))
    seen: dict[str, str] = {}
    for c in cases:
        if c.volume in seen:
            raise MitoEM2FormatError(f"{archive.name}: cases {seen[c.volume]!r} and {c.case!r} both map to volume "
                                     f"{c.volume!r}")
        seen[c.volume] = c.case
    for extra in ("instancesTr", "instancesTs"):
        if any(m.startswith(f"{top}{extra}/") for m in members):
            log.warning("%s: folder %s%s/ is present and not read; labels come from labelsTr/labelsTs",
                        archive.name, top, extra)
    dataset_json = _read_json_member(archive, f"{top}dataset.json") if f"{top}dataset.json" in names else None
    if dataset_json is None:
        log.warning("%s: no %sdataset.json; spacing and label names cannot be cross-checked", archive.name, top)
    split_file = next((f"{top}{n}" for n in SPLIT_FILES if f"{top}{n}" in names), None)
    roles = (_parse_split_file(_read_json_member(archive, split_file), f"{archive.name}:{split_file}")
             if split_file else {})
    return Layout(top, cases, dataset_json if isinstance(dataset_json, dict) else None, roles, split_file)


def _check_dataset_json(layout: Layout, archive: Path) -> tuple[tuple[float, float, float] | None, list[str]]:
    """(dataset.json spacing as (z, y, x), notes); logs what differs from the published form."""
    doc, notes = layout.dataset_json, []
    if doc is None:
        return None, notes
    where = f"{archive.name}:{layout.top}dataset.json"
    labels = doc.get("labels")
    if labels is not None and labels != DECLARED_LABELS:
        notes.append(f"dataset.json labels {labels} differ from {DECLARED_LABELS}; values are read by the rule")
        log.warning("%s: %s", where, notes[-1])
    counts = {"numTraining": sum(c.split == "train" for c in layout.cases),
              "numTest": sum(c.split == "test" for c in layout.cases)}
    for key, found in counts.items():
        if key in doc and doc[key] != found:
            log.warning("%s: %s = %s but the zip holds %d such case(s)", where, key, doc[key], found)
    spacing = doc.get("spacing")
    if spacing is None:
        return None, notes
    if not (isinstance(spacing, list) and len(spacing) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)):
        log.warning("%s: spacing %r is not three positive numbers (x, y, z); ignored", where, spacing)
        return None, notes
    return (float(spacing[2]), float(spacing[1]), float(spacing[0])), notes


# ---------------------------------------------------------------------------------------------
# voxels


def _same(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    return a is not None and b is not None and bool(np.allclose(a, b, rtol=1e-6, atol=0))


def _voxel_size(image: NiftiVolume, from_json: tuple[float, float, float] | None,
                from_card: tuple[float, float, float] | None, where: str) -> tuple[tuple[float, float, float],
                                                                                  dict[str, Any]]:
    header = None if image.spacing is None or image.spacing_is_default else image.spacing
    reference = from_json or from_card
    converted = None
    if header is not None and image.unit in UNIT_TO_NM and reference and not _same(header, reference):
        scaled = tuple(round(v * UNIT_TO_NM[image.unit], 6) for v in header)
        if _same(scaled, reference):  # a header that really is in its declared unit
            converted = header
            header = (scaled[0], scaled[1], scaled[2])
    candidates = {"nifti_header": header, "dataset_json": from_json, "card_subset": from_card}
    source = next((k for k, v in candidates.items() if v is not None), None)
    if source is None:
        raise MitoEM2FormatError(f"{where}: no voxel size in the NIfTI header (pixdim {image.spacing}), "
                                 "in dataset.json or on the card subset; cannot place the volume in nm")
    chosen = candidates[source]
    assert chosen is not None
    for name, value in candidates.items():
        if value is not None and name != source and not _same(value, chosen):
            log.warning("%s: voxel size from %s is %s nm (z, y, x), %s says %s; using %s", where, source, chosen,
                        name, value, source)
    if header is None:
        log.warning("%s: the NIfTI header carries no spacing (pixdim %s); using %s", where, image.spacing, source)
    meta: dict[str, Any] = {"voxel_size_source": source,
                            "voxel_size_candidates": {k: list(v) if v else None for k, v in candidates.items()},
                            "nifti_header_unit": image.unit}
    if converted is not None:
        meta["nifti_header_spacing_as_stored"] = list(converted)
    return chosen, meta


def _whole_numbers(data: Any) -> bool:
    return all(reduce_slabs(data, lambda slab: bool(np.all(np.mod(slab, 1) == 0))))


def _raw(image: NiftiVolume, where: str) -> tuple[Any, list[str]]:
    data, notes = image.data, []
    if image.scaling is not None:
        notes.append(f"image header scaling slope/intercept {image.scaling} not applied; stored values kept")
        log.warning("%s: %s", where, notes[-1])
    if np.issubdtype(data.dtype, np.integer):
        return data, notes
    if np.issubdtype(data.dtype, np.floating) and math.prod(data.shape) and _whole_numbers(data) \
            and minimum(data) >= 0 and maximum(data) <= np.iinfo(np.uint16).max:
        target = np.dtype(np.uint8 if maximum(data) <= 255 else np.uint16)
        notes.append(f"image stored as {data.dtype} with integer values; converted to {target}")
        log.warning("%s: %s", where, notes[-1])
        return Mapped(data, functools.partial(np.asarray, dtype=target), target), notes
    raise MitoEM2FormatError(f"{where}: expected an integer greyscale image (MitoEM2 images are uint8), got dtype "
                             f"{data.dtype}")


# ---------------------------------------------------------------------------------------------
# labels


def _orient_label(label: NiftiVolume, raw_shape: tuple[int, ...], where: str) -> tuple[Any, bool]:
    """The label (a source) in the image's (z, y, x) order; True when its axes had to be reversed."""
    shape = tuple(label.data.shape)
    if shape == raw_shape:
        return label.data, False
    if shape == raw_shape[::-1]:
        log.warning("%s: label shape %s (z, y, x) is the image shape %s reversed (the me2-jurkat_train02 defect); "
                    "transposing the label back", where, shape, raw_shape)
        return Reversed(label.data), True
    raise MitoEM2FormatError(f"{where}: label shape {shape} (z, y, x) differs from the image shape {raw_shape} "
                             f"and is not its reverse {raw_shape[::-1]}; the pair does not belong together")


def _integer_labels(data: Any, where: str) -> tuple[Any, list[str]]:
    notes: list[str] = []
    size = math.prod(data.shape)
    if np.issubdtype(data.dtype, np.floating):
        if size and not _whole_numbers(data):
            raise MitoEM2FormatError(f"{where}: label dtype {data.dtype} holds non-integer values; expected "
                                     "integer classes 0/1/2 or instance ids")
        top = int(maximum(data)) if size else 0
        target = np.dtype(next(dt for dt in (np.uint8, np.uint16, np.uint32, np.uint64) if top <= np.iinfo(dt).max))
        notes.append(f"label stored as {data.dtype} with integer values; converted to {target}")
        log.warning("%s: %s", where, notes[-1])
        data = Mapped(data, functools.partial(np.asarray, dtype=target), target)
    elif not np.issubdtype(data.dtype, np.integer):
        raise MitoEM2FormatError(f"{where}: label dtype {data.dtype} is not numeric; expected integer labels")
    if size and np.issubdtype(data.dtype, np.signedinteger) and minimum(data) < 0:
        raise MitoEM2FormatError(f"{where}: label value {int(minimum(data))} is negative; expected classes 0/1/2 or "
                                 "instance ids ≥ 0")
    return data, notes


def detect_encoding(data: Any) -> tuple[str, dict[str, Any]]:
    """``classes``, ``instances`` or ``empty`` by :data:`ENCODING_RULE`, with what was found
    (``data``: a numpy array or an array source, read in z-slabs).

    Example:
        >>> detect_encoding(np.array([[[0, 2, 1]]], "u1"))
        ('classes', {'values': [0, 1, 2]})
    """
    source = as_source(data)
    top = int(maximum(source))
    if top > 2:
        return "instances", {"max_id": top}
    seen: set[int] = set()
    for found in reduce_slabs(source, lambda slab: {v for v in (0, 1, 2) if bool((slab == v).any())}):
        seen |= found
    present = [v for v in (0, 1, 2) if v in seen]
    if top == 0:
        return "empty", {"values": present}
    if 1 not in present:
        return "instances", {"max_id": top, "values": present}
    return "classes", {"values": present}


def touching_boundary(instances: np.ndarray) -> np.ndarray:
    """Voxels of an instance that share a face with a different non-zero instance."""
    return face_boundary(instances)


def _layers(card: Card, data: Any, where: str, scratch: Path) -> tuple[list[Any], dict[str, Any]]:
    """The two layers as sources read box by box (connected components are labelled into ``scratch``)."""
    encoding, found = detect_encoding(data)
    meta: dict[str, Any] = {"label_encoding": encoding, "label_values": found, "label_encoding_rule": ENCODING_RULE}
    if encoding == "instances":
        semantic: Any = FaceBoundary(data)
        instances = data
        meta["derived"] = {"semantic": BOUNDARY_RULE}
        sem_desc = f"Derived from the instance ids in labelsTr/labelsTs: {BOUNDARY_RULE}."
        inst_desc = "Mitochondria instance ids as stored in labelsTr/labelsTs."
    else:
        semantic = Mapped(data, functools.partial(np.asarray, dtype=np.uint8), np.uint8)
        instances = connected_components(semantic, 1, scratch / "components.bin")
        meta["derived"] = {"instances": COMPONENTS_RULE}
        sem_desc = "3-class labels as stored in labelsTr/labelsTs: 0 background, 1 mitochondria, 2 boundary."
        inst_desc = f"Derived from the classes: {COMPONENTS_RULE}."
    log.info("%s: label encoding %s (%s)", where, encoding, found)
    return [layer(card, "semantic", semantic, description=sem_desc),
            layer(card, "instances", instances, description=inst_desc)], meta


# ---------------------------------------------------------------------------------------------
# prepare


def _build(card: Card, case: Case, folder: Path, archive: Path, layout: Layout,
           from_json: tuple[float, float, float] | None, json_notes: list[str],
           scratch: Path) -> tuple[Any, list[Any],
                                                                                      tuple[float, float, float],
                                                                                      dict[str, Any]]:
    where_img = f"{archive.name}:{case.image}"
    image = open_nifti(folder / case.image, scratch, name=where_img)
    raw, notes = _raw(image, where_img)
    subset_card = next(s for s in card.subsets if s.id == case.subset)
    voxel, meta = _voxel_size(image, from_json, subset_card.voxel_size_nm, where_img)
    group = next((v for v in card.volumes if v.name == f"{case.subset}-{case.split}"), None)
    if group is not None and group.shape and raw.shape != group.shape:
        log.warning("mitoem2 %s: image shape %s (z, y, x) differs from the card's %s for %s (a replica or another "
                    "release); preparing it anyway", case.volume, raw.shape, group.shape, group.name)
    layers: list[Any] = []
    meta["label_axes_reversed"] = False
    if case.label is not None:
        where_lbl = f"{archive.name}:{case.label}"
        label = open_nifti(folder / case.label, scratch, name=where_lbl)
        if label.scaling is not None:
            notes.append(f"label header scaling {label.scaling} not applied; stored values kept")
        data, reversed_axes = _orient_label(label, raw.shape, where_lbl)
        if reversed_axes:
            notes.append(f"{case.label}: label axes stored reversed relative to the image (shape "
                         f"{label.data.shape} vs {raw.shape}); transposed back")
        data, label_notes = _integer_labels(data, where_lbl)
        notes += label_notes
        layers, label_meta = _layers(card, data, where_lbl, scratch)
        meta.update(label_meta)
        meta["label_axes_reversed"] = reversed_axes
    meta.update({"subset": case.subset, "case": case.case, "nnunet_folder": case.image.split("/")[-2],
                 "nnunet_split_role": layout.split_roles.get(case.case), "split_file": layout.split_file,
                 "notes": case.notes + json_notes + notes})
    return raw, layers, voxel, meta


def prepare(volumes: list[str] | None = None, force: bool = False, subset: Any = None) -> list[Volume]:
    """Fetch the selected sub-dataset zips and write one volume per case (default: all subsets)."""
    card = get_card(DATASET)
    subsets, wanted = _select(card, volumes, subset)
    out: list[Volume] = []
    for sub in subsets:
        source = next(s for s in card.sources if s.subset == sub)
        fetched: FetchResult = fetch_source(card, source.name)
        archive = fetched.path
        layout = _layout(archive, sub)
        names = {c.volume for c in layout.cases}
        groups = {v.name for v in card.volumes}
        explicit = {w for w in wanted or () if w not in groups and w.split("-", 1)[0] == sub}
        missing = sorted(explicit - names)
        if missing:
            raise ValueError(f"mitoem2 {source.name} has no volume(s) {missing}; it holds {sorted(names)}")
        from_json, json_notes = _check_dataset_json(layout, archive)
        folder: Path | None = None
        for case in layout.cases:
            if wanted is not None and case.volume not in wanted and f"{sub}-{case.split}" not in wanted:
                continue
            prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                              {"subset": sub, "case": case.case, "image": case.image, "label": case.label})
            existing = None if force else reusable(volume_path(DATASET, case.volume), prov)
            if existing is not None:
                out.append(existing)
                continue
            if folder is None:
                folder = extract(archive, downloads_dir(DATASET) / Path(source.name).stem)
            scratch = downloads_dir(DATASET) / "scratch" / case.volume  # inflated NIfTI, labelled components
            try:
                raw, layers, voxel, meta = _build(card, case, folder, archive, layout, from_json, json_notes, scratch)
                out.append(publish(card, case.volume, case.split, raw, layers, prov, voxel_size_nm=voxel, **meta))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return out
