"""CellMap segmentation challenge crops: raw FIB-SEM and per-class ground truth read remotely
from the public ``janelia-cosem-datasets`` bucket, one volume per crop (``crop<N>``).

Layout (OME-NGFF 0.4 multiscale groups in zarr v2, transforms in nm, axes z, y, x)::

    <bucket>/<dataset>/<dataset>.zarr/recon-1/em/fibsem-uint8/s0, s1, …          raw
    <bucket>/<dataset>/<dataset>.zarr/recon-1/labels/groundtruth/crop<N>/<class>/s0, s1, …

The crops and their classes come from the challenge's manifests (:mod:`.manifest`); a crop is
chosen with ``crop`` (ids, repeatable) and/or ``dataset`` (e.g. ``jrc_hela-2``); one of them is
required. ``classes`` restricts the classes read.

Per crop:

* The output grid is the crop's finest voxel size (some crops are 1.74 nm in z). Raw is read at
  the raw pyramid level with exactly that voxel size; where raw or a class has none (labels drawn
  on a grid finer than the raw, or classes annotated at different voxel sizes), the finest raw
  level on which every class also has a pyramid level is used and a note says so; otherwise the
  crop is refused (nothing is resampled here). The raw box is
  ``(translation_label - translation_raw) / voxel`` and must fall on whole voxels. Only the chunk
  files the box touches are requested (:mod:`.zarr_v2`). A missing raw chunk is an error; a
  missing label chunk is read as the array's ``fill_value`` and listed in the volume's
  ``cellmap.classes.<class>.missing_chunks`` and ``notes``.
* Label layer ``semantic`` (uint8): the CellMap class id (1-74, see :mod:`.classes`) of the
  finest annotated class present at the voxel (atomic classes over groups; groups painted by
  decreasing size, so ``mito`` shows only where ``mito_mem``/``mito_lum``/``mito_ribo`` are not
  annotated), ``0`` where every annotated class is absent, ``255`` (``ignore_value``,
  ``unannotated``) where no class is present and some class is unknown. Each class array's own
  ``cellmap.annotation`` encoding is honoured (default absent 0, unknown 255; instance classes
  hold object ids, any id counts as present). ``annotates`` lists exactly the crop's classes
  (plus background): a class with no group in the crop is *unannotated* and never background; a
  class whose group exists but is all absent is *empty* (annotated, state ``empty`` in the
  metadata).
* Label layers ``instances_<class>`` (dtype as stored): the object ids of each annotated class
  whose annotation type is instance segmentation (``mito``, ``nuc``, ``cell``, … per the
  challenge), 0 = absent, the class's unknown value (if any) as ``ignore_value``.
* Test crops (their ground truth is not public) are raw only, at the test manifest's geometry.

Example (on the dataset's replica; without ``offline_replica`` it reads the published crops):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("cellmap"):
    ...     [(v.name, v.split, sorted(v.labels)) for v in emdata.prepare("cellmap", crop=["101", "103"])]
    [('crop101', 'train', ['instances_mito', 'semantic']), ('crop103', 'test', [])]
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import as_list, fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.datasets.cellmap.classes import (
    BY_ID,
    CLASSES,
    UNKNOWN,
    annotation_type,
    class_encoding,
    instance_layer_name,
    paint_order,
)
from emdata.datasets.cellmap.manifest import Crop, parse_manifest
from emdata.datasets.cellmap.zarr_v2 import ArrayMeta, LocalBox, get_json, mirror_box, open_array
from emdata.datasets.contract import Option
from emdata.formats.lazy import Combined, slab_boxes
from emdata.sources.errors import DownloadError
from emdata.store.volume import Volume
from emdata.store.writer import LabelLayerData

DATASET = "cellmap"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (
    Option("crop", str, "Only this crop id, e.g. 234 or crop234; --crop or --dataset is required.",
           repeatable=True, metavar="ID"),
    Option("dataset", str, "Only the crops of this source dataset, e.g. jrc_hela-2.", repeatable=True,
           metavar="DATASET"),
    Option("classes", str, "Only this CellMap class, e.g. mito or mito_mem; default: every class the crop annotates.",
           repeatable=True, metavar="CLASS"),
)
TRAIN_MANIFEST, TEST_MANIFEST = "train_crop_manifest.csv", "test_crop_manifest.csv"
BUCKET = "https://janelia-cosem-datasets.s3.amazonaws.com"
_TOL = 1e-3
log = logging.getLogger(__name__)

Level = tuple[str, tuple[float, float, float], tuple[float, float, float]]  # (path, scale nm, translation nm)


def raw_url(dataset: str) -> str:
    """The raw multiscale group of a CellMap dataset.

    Example:
        >>> raw_url("jrc_hela-2")
        'https://janelia-cosem-datasets.s3.amazonaws.com/jrc_hela-2/jrc_hela-2.zarr/recon-1/em/fibsem-uint8'
    """
    return f"{BUCKET}/{dataset}/{dataset}.zarr/recon-1/em/fibsem-uint8"


def crop_url(dataset: str, crop_id: int) -> str:
    """The ground-truth group of one crop (one multiscale group per class below it)."""
    return f"{BUCKET}/{dataset}/{dataset}.zarr/recon-1/labels/groundtruth/crop{crop_id}"


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b))


def _nm(v: tuple[float, ...]) -> str:
    return "×".join(f"{x:g}" for x in v)


def multiscale_levels(attrs: dict[str, Any], url: str) -> list[Level]:
    """(path, scale, translation) per level of an OME-NGFF 0.4 ``multiscales`` group, in (z, y, x) nm.

    Example:
        >>> attrs = {"multiscales": [{"axes": [{"name": a} for a in "zyx"], "datasets": [
        ...     {"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1.74, 2, 2]},
        ...                                                {"type": "translation", "translation": [3.48, 10, 0]}]}]}]}
        >>> multiscale_levels(attrs, "crop7/mito")
        [('s0', (1.74, 2.0, 2.0), (3.48, 10.0, 0.0))]
    """
    try:
        ms = attrs["multiscales"][0]
        axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", ["z", "y", "x"])]
        if axes != ["z", "y", "x"]:
            raise ValueError(f"axes {axes}, expected ['z', 'y', 'x']")
        levels = []
        for ds in ms["datasets"]:
            transforms = {t["type"]: t for t in ds["coordinateTransformations"]}
            scale = tuple(float(v) for v in transforms["scale"]["scale"])
            translation = tuple(float(v) for v in transforms.get("translation", {}).get("translation", (0, 0, 0)))
            levels.append((str(ds["path"]), scale, translation))
        return levels  # type: ignore[return-value]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DownloadError(f"{url}/.zattrs is not an OME-NGFF 0.4 multiscale group over z, y, x "
                            f"(bad or missing {exc}); check the path") from exc


def _load_crops(card: Card) -> tuple[dict[int, Crop], list[Any]]:
    fetched = [fetch_source(card, TRAIN_MANIFEST), fetch_source(card, TEST_MANIFEST)]
    crops: dict[int, Crop] = {}
    for split, result in zip(("train", "test"), fetched):
        for crop_id, crop in parse_manifest(result.path.read_text("utf-8"), split, str(result.path)).items():
            if crop_id in crops:
                raise ValueError(f"cellmap: crop {crop_id} is in both manifests ({result.path}); cannot tell its split")
            crops[crop_id] = crop
    return crops, fetched


def _crop_id(value: Any) -> int:
    text = str(value).strip().lower().removeprefix("crop")
    if not text.isdigit():
        raise ValueError(f"cellmap: crop {value!r} is not a crop id; give numbers like 234 or crop234")
    return int(text)


def select_crops(crops: dict[int, Crop], crop: Any, dataset: Any) -> list[Crop]:
    """The crops named by ``crop`` (ids) and/or ``dataset`` names, checked against the manifests."""
    ids = [_crop_id(c) for c in as_list(crop if not isinstance(crop, int) else str(crop))]
    datasets = as_list(dataset)
    known = sorted({c.dataset for c in crops.values()})
    if not ids and not datasets:
        raise ValueError(f"cellmap: choose crops with --crop <id> (repeatable) or --dataset <name> ({len(crops)} "
                         f"crops in the manifests, datasets: {', '.join(known)})")
    unknown_ds = [d for d in datasets if d not in known]
    if unknown_ds:
        raise ValueError(f"cellmap: no dataset(s) {unknown_ds} in the crop manifests; choose from {', '.join(known)}")
    unknown = [i for i in ids if i not in crops]
    if unknown:
        raise ValueError(f"cellmap: no crop(s) {unknown} in the train or test manifest; known ids "
                         f"{min(crops)}…{max(crops)}, e.g. {', '.join(map(str, sorted(crops)[:5]))}")
    chosen = [crops[i] for i in ids] if ids else [c for c in crops.values()]
    if datasets:
        outside = [c.name for c in chosen if c.dataset not in datasets]
        if ids and outside:
            raise ValueError(f"cellmap: crop(s) {outside} are not in dataset(s) {datasets}")
        chosen = [c for c in chosen if c.dataset in datasets]
    return sorted(chosen, key=lambda c: c.id)


def _check_classes(classes: Any) -> list[str]:
    names = as_list(classes)
    unknown = [n for n in names if n not in CLASSES]
    if unknown:
        raise ValueError(f"cellmap: unknown class(es) {unknown}; CellMap classes are {', '.join(CLASSES)}")
    return names


def prepare(volumes: list[str] | None = None, force: bool = False, crop: Any = None, dataset: Any = None,
            classes: Any = None) -> list[Volume]:
    """Prepare the chosen crops (``crop`` ids and/or every crop of ``dataset``), one volume ``crop<N>`` each;
    ``classes`` limits the CellMap classes read (default: all the crop annotates)."""
    if volumes:
        raise ValueError(f"cellmap: volumes are chosen with crop=/--crop (ids) or dataset=/--dataset, not "
                         f"--volume (got {volumes})")
    card = get_card(DATASET)
    wanted = _check_classes(classes)
    crops, fetched = _load_crops(card)
    return [_prepare_crop(card, c, wanted, fetched, force) for c in select_crops(crops, crop, dataset)]


def _prepare_crop(card: Card, crop: Crop, wanted: list[str], fetched: list[Any], force: bool) -> Volume:
    raw_group, gt_group = raw_url(crop.dataset), crop_url(crop.dataset, crop.id)
    parameters = {"crop": crop.id, "dataset": crop.dataset, "classes": sorted(wanted) or "all"}
    prov = provenance(DATASET, RECIPE_VERSION, fetched, parameters,
                      urls=[raw_group] + ([gt_group] if crop.split == "train" else []))
    existing = None if force else reusable(volume_path(card.id, crop.name), prov)
    if existing is not None:
        return existing

    raw_levels = multiscale_levels(_attrs(raw_group), raw_group)
    notes: list[str] = []
    class_levels: dict[str, list[Level]] = {}
    listed = [c for c in crop.classes if not wanted or c in wanted]
    not_here = [c for c in wanted if c not in crop.classes]
    if crop.split == "train" and wanted and not listed:
        raise ValueError(f"cellmap: crop {crop.id} annotates none of the classes {wanted}; it annotates "
                         f"{', '.join(crop.classes)}")
    if crop.split == "train" and not_here:
        notes.append(f"requested class(es) {not_here} are not annotated in this crop; they stay unannotated")
    unknown_names = [c for c in listed if c not in CLASSES]
    if unknown_names:
        raise ValueError(f"cellmap: crop {crop.id} lists class(es) {unknown_names} that are not CellMap classes")
    group_attrs: dict[str, dict[str, Any]] = {}
    if crop.split == "train":
        for name in listed:
            attrs = get_json(f"{gt_group}/{name}/.zattrs", missing_ok=True)
            if attrs is None:
                notes.append(f"{name}: listed in the manifest but {gt_group}/{name} does not exist; left unannotated")
                continue
            group_attrs[name] = attrs
            class_levels[name] = multiscale_levels(attrs, f"{gt_group}/{name}")
    voxel, raw_level = _choose_grid(crop, raw_levels, class_levels, raw_group, notes)
    if crop.split == "train" and class_levels:
        first = next(iter(class_levels))
        level = _level_at(class_levels[first], voxel)
        arr0 = open_array(f"{gt_group}/{first}/{level[0]}")
        origin, shape = level[2], arr0.shape
        if _close(voxel, crop.voxel_size_nm) and not (_close(origin, crop.translation_nm)
                                                      and tuple(shape) == crop.shape):
            notes.append(f"the manifest gives translation {_nm(crop.translation_nm)} nm and shape "
                         f"{_nm(crop.shape)}, the ground-truth group {gt_group}/{first} {_nm(origin)} nm and "
                         f"{_nm(tuple(shape))}; the group's own metadata is used")
            log.warning("cellmap: crop %s: %s", crop.id, notes[-1])
    else:
        origin, shape = crop.translation_nm, crop.shape
        if not _close(voxel, crop.voxel_size_nm):
            raise ValueError(f"cellmap: test crop {crop.id} is given at {_nm(crop.voxel_size_nm)} nm and the raw has "
                             f"no level with that voxel size; it cannot be cut without resampling")
    raw_arr = open_array(f"{raw_group}/{raw_level[0]}")
    raw_box = _box(origin, raw_level, shape, raw_arr, f"crop {crop.id} in the raw {raw_group}/{raw_level[0]}")
    scratch = downloads_dir(DATASET) / "chunks" / crop.name  # the crop's chunk files, read box by box, then removed
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        raw, raw_missing, raw_chunks = mirror_box(raw_arr, raw_box, scratch / "raw")
        if raw_missing:
            raise DownloadError(f"cellmap: crop {crop.id} needs {len(raw_missing)} raw chunk(s) of {raw_arr.url} that "
                                f"the server does not have (first: {raw_missing[0]}); raw voxels are never invented")
        layers: list[LabelLayerData] = []
        info: dict[str, Any] = {}
        if crop.split == "train" and class_levels:
            layers, info = _labels(card, crop, gt_group, class_levels, group_attrs, voxel, origin, tuple(shape), notes,
                                   scratch)
        return _publish(card, crop, raw, raw_arr, raw_box, raw_chunks, layers, info, origin, voxel, notes, prov)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _publish(card: Card, crop: Crop, raw: LocalBox, raw_arr: ArrayMeta, raw_box: tuple[slice, ...], raw_chunks: int,
             layers: list[LabelLayerData], info: dict[str, Any], origin: tuple[float, ...],
             voxel: tuple[float, float, float], notes: list[str], prov: dict[str, Any]) -> Volume:
    annotated = sorted(info)
    meta = {
        "cellmap": {"crop": crop.id, "dataset": crop.dataset, "translation_nm": list(origin),
                    "raw": {"url": raw_arr.url, "box": [[s.start, s.stop] for s in raw_box],
                            "chunks_read": raw_chunks},
                    "classes": info, "annotated": annotated,
                    "unannotated": [n for n in CLASSES if n not in info],
                    "manifest_classes": list(crop.classes)},
        "notes": notes,
        "description": f"CellMap crop {crop.id} of {crop.dataset} ({crop.split}), {_nm(voxel)} nm (z×y×x)",
    }
    return publish(card, crop.name, crop.split, raw, layers, prov, voxel_size_nm=voxel, **meta)


def _attrs(url: str) -> dict[str, Any]:
    attrs = get_json(f"{url}/.zattrs", missing_ok=True)
    if attrs is None:
        raise DownloadError(f"cellmap: no multiscale group at {url} ({url}/.zattrs is missing); check the dataset name")
    return attrs


def _level_at(levels: list[Level], voxel: tuple[float, float, float]) -> Level:
    return next(lv for lv in levels if _close(lv[1], voxel))


def _choose_grid(crop: Crop, raw_levels: list[Level], class_levels: dict[str, list[Level]], raw_group: str,
                 notes: list[str]) -> tuple[tuple[float, float, float], Level]:
    """The output voxel size and the raw level read at it (see the module docstring)."""
    target = crop.voxel_size_nm
    for level in raw_levels:
        if _close(level[1], target) and all(any(_close(lv[1], target) for lv in lvs) for lvs in class_levels.values()):
            return target, level
    if crop.split == "train" and class_levels:
        for level in raw_levels:  # finest first, as published
            if all(any(_close(lv[1], level[1]) for lv in lvs) for lvs in class_levels.values()):
                notes.append(f"the crop's finest voxel size {_nm(target)} nm is not shared by the raw and all its "
                             f"classes; read at raw level {level[0]} ({_nm(level[1])} nm), the finest voxel size they "
                             "all have, with each class's own pyramid level of that size (labels are not resampled "
                             "here)")
                log.warning("cellmap: crop %s: %s", crop.id, notes[-1])
                return level[1], level
    ladder = ", ".join(f"{p}: {_nm(s)}" for p, s, _ in raw_levels)
    raise ValueError(f"cellmap: crop {crop.id} ({_nm(target)} nm z×y×x) has no voxel size shared by the raw "
                     f"{raw_group} (levels {ladder} nm) and all its classes; emdata does not resample, so it "
                     "cannot be prepared (report the crop)")


def _box(origin: tuple[float, ...], level: Level, shape: tuple[int, ...], arr: ArrayMeta,
         where: str) -> tuple[slice, slice, slice]:
    """The (z, y, x) box of an array at ``level`` that covers ``shape`` voxels from ``origin`` nm."""
    start = []
    for o, t, s in zip(origin, level[2], level[1]):
        index = (o - t) / s
        if abs(index - round(index)) > _TOL:
            raise ValueError(f"cellmap: {where}: offset {o:g} nm is not on the array's grid (translation {t:g} nm, "
                             f"voxel {s:g} nm: {index:.4f} voxels); the grids do not align")
        start.append(round(index))
    box = tuple(slice(a, a + n) for a, n in zip(start, shape))
    if any(b.start < 0 or b.stop > n for b, n in zip(box, arr.shape)):
        raise ValueError(f"cellmap: {where}: box {[(b.start, b.stop) for b in box]} lies outside the array shape "
                         f"{list(arr.shape)}")
    return box  # type: ignore[return-value]


def _paint(encodings: tuple[tuple[int, Any, Any, bool], ...], *blocks: np.ndarray) -> np.ndarray:
    """The ``semantic`` classes of one box from the class arrays in paint order (``encodings``: per class
    its id, absent value, unknown value or None, and whether it is a group)."""
    out = np.zeros(blocks[0].shape, np.uint8)
    painted = np.zeros(out.shape, bool)
    unknown_any = np.zeros(out.shape, bool)
    for (class_id, absent, unknown, _), data in zip(encodings, blocks):
        is_unknown = data == unknown if unknown is not None else np.zeros(out.shape, bool)
        present = (data != absent) & ~is_unknown
        out[present] = class_id
        painted |= present
        unknown_any |= is_unknown
    out[~painted & unknown_any] = UNKNOWN
    return out


def _counts(encodings: tuple[tuple[int, Any, Any, bool], ...], *blocks: np.ndarray) -> np.ndarray:
    """Per class (present voxels, unknown voxels), then the voxels present in more than one atomic class."""
    atomic_hits = np.zeros(blocks[0].shape, np.uint8)
    counts = []
    for (_, absent, unknown, is_group), data in zip(encodings, blocks):
        is_unknown = data == unknown if unknown is not None else np.zeros(data.shape, bool)
        present = (data != absent) & ~is_unknown
        if not is_group:
            atomic_hits += present
        counts += [int(present.sum()), int(is_unknown.sum())]
    return np.array([*counts, int((atomic_hits > 1).sum())], np.int64)


def _labels(card: Card, crop: Crop, gt_group: str, class_levels: dict[str, list[Level]],
            group_attrs: dict[str, dict[str, Any]], voxel: tuple[float, float, float], origin: tuple[float, ...],
            shape: tuple[int, ...], notes: list[str], scratch: Path) -> tuple[list[LabelLayerData], dict[str, Any]]:
    """The ``semantic`` layer, one ``instances_<class>`` layer per instance class, and per-class metadata
    (each class's chunk files are copied into ``scratch`` and read box by box)."""
    info: dict[str, Any] = {}
    instances: list[LabelLayerData] = []
    sources: list[LocalBox] = []
    encodings: list[tuple[int, Any, Any, bool]] = []
    for name in paint_order(list(class_levels)):
        level = _level_at(class_levels[name], voxel)
        arr = open_array(f"{gt_group}/{name}/{level[0]}")
        box = _box(origin, level, shape, arr, f"class {name} of crop {crop.id}")
        data, missing, chunks_read = mirror_box(arr, box, scratch / name)
        array_attrs = None if annotation_type(group_attrs[name]) else get_json(f"{arr.url}/.zattrs",
                                                                                 missing_ok=True)
        enc = class_encoding(name, group_attrs[name], array_attrs)
        sources.append(data)
        encodings.append((CLASSES[name].id, enc.absent, enc.unknown, CLASSES[name].is_group))
        info[name] = {"id": CLASSES[name].id, "ontology": CLASSES[name].ontology, "level": level[0],
                      "encoding": {"absent": enc.absent, "unknown": enc.unknown, "instance": enc.instance,
                                   "from": enc.source},
                      "missing_chunks": missing, "chunks_read": chunks_read}
        if missing:
            notes.append(f"{name}: {len(missing)} chunk(s) of {arr.url} missing on the server, read as its "
                         f"fill_value {arr.fill()!r} (listed in cellmap.classes.{name}.missing_chunks)")
        if enc.instance:
            if enc.absent != 0:
                raise ValueError(f"cellmap: {arr.url} encodes 'absent' as {enc.absent}, not 0; its object ids "
                                 "cannot be stored as an instance layer (report the crop)")
            instances.append(layer(card, instance_layer_name(name), data,
                                   instance_of=CLASSES[name].ontology, annotates=[CLASSES[name].ontology],
                                   ignore_value=enc.unknown))
    frozen = tuple(encodings)
    per_voxel = sum(s.dtype.itemsize for s in sources) + 4 * len(sources) + 1  # the class masks of a slab
    totals = np.zeros(2 * len(sources) + 1, np.int64)
    for box in slab_boxes(shape, per_voxel):  # one pass over every class, a z-slab at a time
        totals += _counts(frozen, *(s.read(box) for s in sources))
    for k, name in enumerate(info):
        n_present, n_unknown = int(totals[2 * k]), int(totals[2 * k + 1])
        info[name] = {**{key: info[name][key] for key in ("id", "ontology", "level")},
                      "state": "present" if n_present else "empty", "voxels": n_present, "unknown_voxels": n_unknown,
                      **{key: info[name][key] for key in ("encoding", "missing_chunks", "chunks_read")}}
    out = Combined(sources, functools.partial(_paint, frozen), np.uint8)
    overlap = int(totals[-1])
    if overlap:
        notes.append(f"{overlap} voxel(s) are present in more than one atomic class; the higher class id is stored")
    present_ids = sorted(CLASSES[n].id for n in info)
    classes = ([{"value": 0, "name": "background", "ontology": "background"}]
               + [{"value": i, "name": BY_ID[i].name, "ontology": BY_ID[i].ontology} for i in present_ids]
               + [{"value": UNKNOWN, "name": "unknown", "ontology": "unannotated"}])
    annotates = ["background"] + [BY_ID[i].ontology for i in present_ids]
    semantic = layer(card, "semantic", out, classes=classes, annotates=annotates, ignore_value=UNKNOWN)
    return [semantic, *sorted(instances, key=lambda la: la.name)], info
