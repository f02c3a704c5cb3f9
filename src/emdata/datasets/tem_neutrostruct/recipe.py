"""TEM-NeutroStruct: a hand-placed dataset folder → one 2D volume (1, H, W) per TEM image,
with ``instances`` and ``semantic`` layers rendered from the annotation ellipses.

The images and annotations are on a Zenodo record that was never found; the card's only
source is the GitHub repository, which holds scripts only. So this recipe never touches the
network: it reads the dataset folder placed by hand in ``<EMDATA_HOME>/downloads/tem-neutrostruct/``
(directly, or inside a ``TEM-NeutroStruct/`` folder there), in the layout the published
scripts read (MedImagingAI/TEM-NeutroStruct, commit a5230ea)::

    7classes_version/<split>/images/<file_name>                       (split: train, test)
    7classes_version/<split>/annotations/annotations_7classes.json    (COCO, 7 classes)
    7classes_version/<split>/annotations/annotations_4classes.json    (COCO, 4 classes)
    metadata/<split>_images_statistics.xlsx                           (image_name, Pixles per microm)

``annotations_7classes_updated.json`` (the scripts' final name) is preferred over
``annotations_7classes.json``; the 4-class-only variant may also sit in
``4classes_version/<split>/{images,annotations}/``; images may also lie directly in
``<version>/<split>/``. A missing file is one error line naming what to place where.

``classes=7`` (default) reads the 7-class file and renumbers it by category *name* to the
final ids 1–7 (as update_class_ids.py does, so the scripts' intermediate ids work too); when
only the 4-class file is there, the 7 classes are **derived** with
:func:`emdata.datasets.tem_neutrostruct.reclassify.reclassify` and its documented defaults
(375 px/µm fallback, empty-structure threshold "mean-of-class-means", Emptying vesicles = 4)
and ``derivation`` says so. ``classes=4`` reads the 4-class file, or merges the 7-class file
back (1,2→1; 3,4→2; 5,7→3; 6→4).

Each COCO image becomes volume ``<split>-<stem>`` (non ``[A-Za-z0-9_-]`` → ``_``); ``train``
and ``test`` select a whole split. Decisions (the dataset publishes none of these):

- **raw**: the image as stored (greyscale), shape checked against the COCO ``width``/``height``.
  An RGB(A) image whose colour channels are equal is read as its first channel; an 8-bit
  one whose channels differ (JPEG chroma noise, a coloured scale bar) is converted with PIL's
  luma formula, and ``notes`` say so.
- **voxel size** (z, y, x) = (70, 1000/ppµm, 1000/ppµm) nm with ppµm from the metadata sheet
  (``Pixles per microm``), or 375 px/µm (the scripts' fallback) for an image the sheet lacks
  or without a sheet (``px_per_um_source`` says which). z = 70 nm is a nominal ultrathin
  section thickness, a **placeholder**: a single 2D image has no z spacing. Always
  ``voxel_size_verified: false``.
- **layers**: ``instances`` (uint32; annotation ``k`` of the image in COCO order → id ``k+1``)
  and ``semantic`` (uint8; 4- or 7-class ids of the card's ``classes-4``/``classes-7``) with
  emdata's colours (:data:`~emdata.datasets.tem_neutrostruct.reclassify.PALETTE_7` / ``PALETTE_4``;
  mask colours are unpublished). Rendered from the ellipse inscribed in each COCO box
  (= the CVAT ellipse of the sister annotation repository): a pixel is inside when its centre is; **later
  annotations on top** where they overlap; an ellipse covering no pixel centre marks the
  pixel holding its centre. The shipped PNG masks are not read (colours unpublished).
- **COCO kept**: each volume's meta lists its annotations (instance id, COCO id, category,
  bbox, ellipse ``[cx, cy, rx, ry]``); the whole COCO the volumes were built from (final ids)
  is written to ``<prepared>/tem-neutrostruct/coco/<split>_<classes>classes.json``
  (``coco_file`` in the meta, relative to the dataset folder).

Once the folder is in place, ``emdata.prepare("tem-neutrostruct", classes=7)`` prepares the shipped
7-class annotation (CLI: ``emdata prepare tem-neutrostruct --classes 7``).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from emdata.atomic import write_atomic
from emdata.catalog import Card, get_card
from emdata.config import downloads_dir, prepared_dir
from emdata.datasets._common import layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import Option
from emdata.datasets.tem_neutrostruct.annotations import EllipseMasks
from emdata.datasets.tem_neutrostruct.reclassify import (
    CLASSES_4,
    CLASSES_7,
    DEFAULT_EMPTY_THRESHOLD,
    DEFAULT_EMPTYING_ID,
    DEFAULT_PX_PER_UM,
    PALETTE_4,
    PALETTE_7,
    check_4class,
    collapse_to_4,
    lookup,
    read_scale_sheet,
    reclassify,
    to_final_7,
)
from emdata.formats.coco import annotations_by_image, load_coco
from emdata.formats.cvat import Ellipse
from emdata.formats.lazy import SliceStack
from emdata.formats.png import read_image
from emdata.sources.download import FetchResult, hash_file
from emdata.store.volume import Volume

DATASET = "tem-neutrostruct"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (
    Option("classes", int, "Class scheme: 7 (the final classes) or 4 (the original annotation).", choices=(7, 4),
           default=7),
)
SPLITS = ("train", "test")
WRAPPER = "TEM-NeutroStruct"
VERSIONS = ("7classes_version", "4classes_version")
COCO7 = ("annotations_7classes_updated.json", "annotations_7classes.json")
COCO4 = "annotations_4classes.json"
SECTION_NM = 70.0
Z_NOTE = ("z = 70 nm is a nominal ultrathin-section thickness, a placeholder: a 2D TEM image has no z spacing; "
          "y/x come from the image's pixels per µm")
RENDER_RULE = ("ellipse inscribed in the COCO bbox (cx = x + w/2, rx = w/2); pixel inside when its centre is; later "
               "annotations on top; an ellipse covering no pixel centre marks its centre pixel")
log = logging.getLogger(__name__)


class NeutroStructFilesMissingError(FileNotFoundError):
    """The hand-placed TEM-NeutroStruct files are not where the recipe reads them."""


class NeutroStructFormatError(ValueError):
    """A TEM-NeutroStruct file does not hold what the dataset holds (names the file)."""


@dataclass
class SplitFiles:
    split: str
    coco7: Path | None
    coco4: Path | None
    image_dirs: list[Path]
    sheet: Path | None
    url: str = ""
    coco: FetchResult | None = None  # the annotation file the volumes are built from, hashed
    sheet_hash: FetchResult | None = None


def _root() -> Path:
    base = downloads_dir(DATASET)
    for candidate in (base, base / WRAPPER):
        if any((candidate / v).is_dir() for v in VERSIONS):
            return candidate
    return base


def _first(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _files(root: Path, split: str) -> SplitFiles:
    ann7 = root / VERSIONS[0] / split / "annotations"
    coco4 = _first([root / v / split / "annotations" / COCO4 for v in VERSIONS])
    dirs = [d for v in VERSIONS for d in (root / v / split / "images", root / v / split) if d.is_dir()]
    sheet = root / "metadata" / f"{split}_images_statistics.xlsx"
    return SplitFiles(split, _first([ann7 / n for n in COCO7]), coco4, dirs, sheet if sheet.is_file() else None)


def _placement_help(root: Path, url: str, missing: list[str]) -> str:
    return (f"tem-neutrostruct cannot be downloaded by emdata: its images and annotations are on a Zenodo record "
            f"that was not found, and the card's source ({url}) holds scripts only. Place the dataset folder under "
            f"{root} as 7classes_version/<split>/images/<images> and 7classes_version/<split>/annotations/"
            f"annotations_7classes.json (COCO; or annotations_4classes.json, from which the 7 classes are derived), "
            f"plus metadata/<split>_images_statistics.xlsx (pixels per µm; optional, else 375 px/µm) for split "
            f"train and test — missing: {'; '.join(missing)} — then run `emdata prepare tem-neutrostruct` again")


def _local(path: Path, url: str) -> FetchResult:
    sha, md5 = hash_file(path)
    return FetchResult(path=path, url=url, fetched_from=f"placed by hand: {path}", size=path.stat().st_size,
                       sha256=sha, md5=md5, from_cache=True)


def _classes(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = -1
    if n not in (4, 7) or isinstance(value, bool) or (isinstance(value, float) and value != n):
        raise ValueError(f"tem-neutrostruct: classes={value!r} is not a class scheme; choose from [4, 7]")
    return n


def _select(card: Card, volumes: list[str] | None) -> tuple[list[str], set[str] | None]:
    """(splits to read, requested volume names or None for all)."""
    if not volumes:
        return list(SPLITS), None
    splits = set()
    for name in volumes:
        split = name if name in SPLITS else name.split("-", 1)[0]
        if split not in SPLITS or (name not in SPLITS and "-" not in name):
            raise ValueError(f"tem-neutrostruct has no volume {name!r}; volumes are <split>-<image stem> (one per "
                             f"image, e.g. train-CNT042_001) or a split {[v.name for v in card.volumes]}")
        splits.add(split)
    return [s for s in SPLITS if s in splits], set(volumes)


def volume_name(split: str, file_name: str) -> str:
    """``<split>-<stem>`` with characters outside ``[A-Za-z0-9_-]`` replaced by ``_``.

    Example:
        >>> volume_name("train", "images/ASD027--003.jpg")
        'train-ASD027--003'
    """
    return f"{split}-{re.sub(r'[^A-Za-z0-9_-]+', '_', Path(file_name).stem)}"


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _annotations(files: SplitFiles, classes: int, root: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(COCO with final ids, derivation, extra provenance parameters)."""
    use_7 = files.coco7 is not None if classes == 7 else files.coco4 is None
    path = files.coco7 if use_7 else files.coco4
    assert path is not None  # prepare() checked that one of them is there
    where = _rel(path, root)
    files.coco = _local(path, files.url)
    coco = load_coco(path, where)
    if classes == 7 and use_7:
        return to_final_7(coco, where), "shipped 7-class annotation", {}
    if classes == 4 and use_7:
        return collapse_to_4(to_final_7(coco, where), where), \
            "merged from the shipped 7-class annotation (1,2→1; 3,4→2; 5,7→3; 6→4)", {}
    if classes == 4:
        check_4class(coco, DEFAULT_EMPTYING_ID, where)
        coco["categories"] = [{"id": i, "name": n} for i, n in CLASSES_4.items()]
        return coco, "shipped 4-class annotation", {}
    scale = read_scale_sheet(files.sheet).px_per_um if files.sheet else {}
    coco, _ = reclassify(coco, scale, default_px_per_um=DEFAULT_PX_PER_UM, empty_threshold=DEFAULT_EMPTY_THRESHOLD,
                         emptying_id=DEFAULT_EMPTYING_ID, where=where)
    params = {"reclassify": {"default_px_per_um": DEFAULT_PX_PER_UM, "empty_threshold": DEFAULT_EMPTY_THRESHOLD,
                             "emptying_id": DEFAULT_EMPTYING_ID}}
    return coco, ("derived from the 4-class annotation by emdata's reclassification (no 7-class file placed; "
                  "empty-structure threshold 'mean-of-class-means', 375 px/µm fallback, emptying vesicles = 4)"), params


def _keep_coco(coco: dict[str, Any], split: str, classes: int) -> str:
    """Write the COCO the volumes come from into the dataset folder (only when it changed)."""
    rel = f"coco/{split}_{classes}classes.json"
    path = prepared_dir(DATASET) / rel
    text = json.dumps(coco, indent=1)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_atomic(path, text)
    return rel


def _find_image(dirs: list[Path], file_name: str) -> Path | None:
    for d in dirs:
        for candidate in (d / file_name, d / Path(file_name).name):
            if candidate.is_file():
                return candidate
    return None


def _plane(path: str, where: str, height: int, width: int, z: int = 0) -> np.ndarray:
    """The greyscale plane (what the raw source decodes when a box needs it)."""
    return _read_plane(Path(path), where, {"height": height, "width": width})[0]


def _read_raw(path: Path, where: str, image: dict[str, Any]) -> tuple[SliceStack, list[str]]:
    """The image as a (1, y, x) source, checked now (decoded once); decoded again, once per process
    and kept in the cache of decoded slices, when the writer reads it."""
    plane, notes = _read_plane(path, where, image)
    stat = path.stat()
    read = functools.partial(_plane, str(path), where, int(image["height"]), int(image["width"]))
    return SliceStack(read, 1, plane.shape, plane.dtype, key=f"{path}:{stat.st_mtime_ns}:{stat.st_size}"), notes


def _read_plane(path: Path, where: str, image: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
    data = read_image(path, where)
    notes = []
    if data.ndim == 3 and data.shape[2] in (3, 4):
        colour = data[..., :3]
        if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2]):
            data = np.ascontiguousarray(data[..., 0])
            notes.append(f"{where}: stored as RGB(A) with equal channels; read as greyscale (first channel)")
        elif colour.dtype == np.uint8:
            from PIL import Image

            data = np.asarray(Image.fromarray(np.ascontiguousarray(colour)).convert("L"))
            notes.append(f"{where}: stored as RGB(A) with unequal channels; converted to greyscale with PIL's "
                         "ITU-R 601-2 luma (L = R·299/1000 + G·587/1000 + B·114/1000)")
            log.warning("tem-neutrostruct %s: colour channels differ; converted to greyscale luma", where)
        else:
            raise NeutroStructFormatError(f"{where}: a {colour.dtype} colour image; expected a greyscale TEM image")
    if data.ndim != 2 or not np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_:
        raise NeutroStructFormatError(f"{where}: expected a greyscale integer image, got shape {data.shape} dtype "
                                      f"{data.dtype}")
    want = (int(image["height"]), int(image["width"]))
    if data.shape != want:
        raise NeutroStructFormatError(f"{where}: image is {data.shape[1]}×{data.shape[0]} (W×H) but the COCO file says "
                                      f"width {want[1]} height {want[0]}")
    return data, notes


def _classes_meta(classes: int) -> list[dict[str, Any]]:
    card = get_card(DATASET).label_layer(f"classes-{classes}")
    palette = PALETTE_7 if classes == 7 else PALETTE_4
    names = CLASSES_7 if classes == 7 else CLASSES_4
    out = []
    for c in card.classes:
        assert names[c.value] == c.name, (c.value, c.name)
        out.append({"value": c.value, "name": c.name, "ontology": c.ontology, "color": list(palette[c.value])})
    return out


def prepare(volumes: list[str] | None = None, force: bool = False, classes: Any = 7) -> list[Volume]:
    """Write one volume per image of the hand-placed dataset (splits train and test)."""
    card = get_card(DATASET)
    n_classes = _classes(7 if classes is None else classes)
    splits, wanted = _select(card, volumes)
    source = card.sources[0]
    root = _root()
    plan: dict[str, SplitFiles] = {}
    missing = []
    for split in splits:
        files = _files(root, split)
        if files.coco7 is None and files.coco4 is None:
            missing.append(f"7classes_version/{split}/annotations/annotations_{n_classes}classes.json")
        if not files.image_dirs:
            missing.append(f"7classes_version/{split}/images/")
        plan[split] = files
    if missing:
        raise NeutroStructFilesMissingError(_placement_help(root, source.url, missing))
    out: list[Volume] = []
    for split, files in plan.items():
        files.url = source.url
        coco, derivation, extra = _annotations(files, n_classes, root)
        coco_where = _rel(files.coco.path, root)  # type: ignore[union-attr]
        if files.sheet is not None:
            files.sheet_hash = _local(files.sheet, source.url)
        scale = read_scale_sheet(files.sheet).px_per_um if files.sheet else {}
        by_image = annotations_by_image(coco)
        names = {volume_name(split, str(im["file_name"])): im for im in coco["images"]}
        if len(names) != len(coco["images"]):
            raise NeutroStructFormatError(f"{coco_where}: two images share a volume name (same file stem after "
                                          f"sanitising)")
        unknown = sorted(w for w in wanted or () if w.startswith(f"{split}-") and w not in names)
        if unknown:
            more = " …" if len(names) > 10 else ""
            raise ValueError(f"tem-neutrostruct has no volume(s) {unknown} in {coco_where}; it holds "
                             f"{sorted(names)[:10]}{more}")
        coco_rel = _keep_coco(coco, split, n_classes)
        for name, image in names.items():
            if wanted is not None and name not in wanted and split not in wanted:
                continue
            out.append(_volume(card, split, name, image, by_image[image["id"]], files, root, coco_rel, n_classes,
                               derivation, extra, scale, force))
    return out


def _volume(card: Card, split: str, name: str, image: dict[str, Any], anns: list[dict[str, Any]], files: SplitFiles,
            root: Path, coco_rel: str, n_classes: int, derivation: str, extra: dict[str, Any],
            scale: dict[str, float], force: bool) -> Volume:
    file_name = str(image["file_name"])
    assert files.coco is not None
    coco_where = _rel(files.coco.path, root)
    path = _find_image(files.image_dirs, file_name)
    if path is None:
        raise NeutroStructFilesMissingError(
            f"tem-neutrostruct {split}: image {file_name!r} named in {coco_where} is not "
            f"in {' or '.join(_rel(d, root) + '/' for d in files.image_dirs)} under {root}; place it there")
    listed = lookup(scale, file_name)
    ppum = listed if listed is not None else DEFAULT_PX_PER_UM
    ppum_source = _rel(files.sheet, root) if listed is not None and files.sheet else \
        f"default {DEFAULT_PX_PER_UM:g} px/µm (the scripts' fallback; image not in a scale sheet)"
    sources = [_local(path, files.url), files.coco] + ([files.sheet_hash] if files.sheet_hash else [])
    prov = provenance(DATASET, RECIPE_VERSION, sources,
                      {"split": split, "classes": n_classes, "image": file_name, "coco_image_id": image["id"],
                       "annotations": coco_where, "px_per_um": ppum,
                       "section_nm": SECTION_NM, "render": RENDER_RULE, **extra})
    existing = None if force else reusable(volume_path(DATASET, name), prov)
    if existing is not None:
        return existing
    where = _rel(path, root)
    raw, notes = _read_raw(path, where, image)
    if len(anns) >= np.iinfo(np.uint32).max:
        raise NeutroStructFormatError(f"{where}: {len(anns)} ellipses do not fit instance dtype uint32")
    ellipses, values = [Ellipse.from_bbox(a["bbox"]) for a in anns], [int(a["category_id"]) for a in anns]
    plane = (int(image["height"]), int(image["width"]))
    instances, semantic = (EllipseMasks(ellipses, values, plane, which) for which in ("instances", "semantic"))
    if listed is None:
        log.warning("tem-neutrostruct %s: no pixel size in a scale sheet; using %g px/µm", name, DEFAULT_PX_PER_UM)
    xy = 1000.0 / ppum
    layers = [replace(layer(card, f"classes-{n_classes}", semantic, classes=_classes_meta(n_classes)),
                      name="semantic"),
              replace(layer(card, "objects", instances), name="instances")]
    records = []
    for k, a in enumerate(anns, start=1):
        e = Ellipse.from_bbox(a["bbox"])
        records.append({"instance": k, "id": a.get("id"), "category_id": a["category_id"], "bbox": a["bbox"],
                        "ellipse": [e.cx, e.cy, e.rx, e.ry]})
    return publish(card, name, split, raw, layers, prov, voxel_size_nm=(SECTION_NM, xy, xy),
                   voxel_size_verified=False, px_per_um=ppum, px_per_um_source=ppum_source,
                   section_thickness_placeholder=True, voxel_size_note=Z_NOTE, classes=n_classes,
                   image_file=where, coco_image_id=image["id"], coco_file=coco_rel,
                   coco_source=coco_where, derivation=derivation,
                   ellipse_rule=RENDER_RULE, overlaps="later annotations on top",
                   annotations=records, notes=[*notes, Z_NOTE])


__all__ = ["OPTIONS", "prepare", "volume_name"]
