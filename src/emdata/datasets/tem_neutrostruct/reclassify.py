"""TEM-NeutroStruct 4 → 7 class reclassification, as the published scripts code it, with the
pieces they leave undefined made explicit parameters.

Rules (the dataset's published scripts extract_statistics_train.py,
update_coco_json_train.py, divide_empty_vesicles.py, update_class_ids.py):

- diameter ``d = (bbox_w + bbox_h) / (2 · px_per_µm)`` in µm, with the image's pixels per µm
  from the metadata sheet (column ``Pixles per microm`` [sic], matched on ``image_name`` =
  COCO ``file_name``, then on the base name) and ``default_px_per_um`` = **375** (the
  scripts' fallback) for an image the sheet lacks. emdata uses this one expression
  everywhere (the statistics script averages ``w/ppµm`` and ``h/ppµm`` instead, which can
  differ in the last bit), so the value compared with the median is the value pooled into it.
- per image, ``median`` = median of the pooled diameters of categories 1 and 2 (primary +
  secondary granules, numpy's median; mean likewise);
- 1 (primary): ``d ≤ median`` → 1 Specific granules, else 2 Non-specific primary granules;
  2 (secondary): ``d ≤ median`` → 3 Non-specific tertiary, else 4 Non-specific secondary
  (a tie ``d == median`` takes the first branch, as ``<=`` in the script);
- 3 (empty vesicles): ``d > threshold`` → 7 Vacuoles, else 5 Empty vesicles; ``emptying_id``
  (4, inferred: the scripts never touch it) → 6 Emptying vesicles;
- final ids and names as update_class_ids.py writes them, every category with
  ``supercategory`` "granule/vesicle" (the script's literal string). Annotation order, ids
  and every other field are kept.

Defined here because the scripts leave them undefined (say so when you report results):

- **scale table**: the scripts use a ``scale_dict`` that two of them never define; emdata
  reads it from the sheet (:func:`read_scale_sheet`) and passes it explicitly.
- **empty-structure threshold**: divide_empty_vesicles.py reads a column
  ``average_diameter_SG_PG`` that nothing writes. ``empty_threshold`` defines it:
  ``"mean-of-class-means"`` (**default**: the mean of the image's primary-granule mean
  diameter and secondary-granule mean diameter; one class's mean if the image has only
  one), ``"pooled-mean"`` (mean of the pooled 1+2 diameters, the sheet's
  ``mean_diameter``), ``"pooled-median"``, a number (µm, every image), or a mapping
  ``{image name: µm}`` (e.g. the column, where a sheet has it). An image without granules
  has no computed threshold: its empty structures stay Empty vesicles (the comparison with
  an undefined value is false, as pandas' NaN would make it).
- **the 4-class id of Emptying vesicles**: ``emptying_id=4``.

Why one module of this size: it is one published procedure, step by step (diameters, thresholds,
rules, outputs), kept together so each rule can be read next to the step that uses it.

Example:
    >>> coco = {"images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
    ...         "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": [0, 0, s, s]}
    ...                         for i, (c, s) in enumerate([(1, 50), (1, 100), (2, 150), (3, 400), (4, 10)])]}
    >>> new, stats = reclassify(coco, {"a.png": 100.0})
    >>> [a["category_id"] for a in new["annotations"]]  # 0.5 ≤ 1.0, tie 1.0 ≤ 1.0, 1.5 > 1.0, 4 > 1.125
    [1, 1, 4, 7, 6]
    >>> stats[0]["median_diameter"], stats[0]["average_diameter_SG_PG"]
    (1.0, 1.125)
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.atomic import unique_sibling
from emdata.datasets.tem_neutrostruct.annotations import colour_mask, overlay, render_ellipses
from emdata.formats.coco import AnnotationFormatError, annotations_by_image, load_coco
from emdata.formats.cvat import Colour, Ellipse, parse_cvat_tree, relabel_cvat, write_cvat

DEFAULT_PX_PER_UM = 375.0
DEFAULT_EMPTY_THRESHOLD = "mean-of-class-means"
EMPTY_RULES = ("mean-of-class-means", "pooled-mean", "pooled-median")
DEFAULT_EMPTYING_ID = 4
SUPERCATEGORY = "granule/vesicle"
SCALE_COLUMN = "Pixles per microm"
THRESHOLD_COLUMN = "average_diameter_SG_PG"

CLASSES_4: dict[int, str] = {1: "Primary granules", 2: "Secondary granules", 3: "Empty vesicles",
                             4: "Emptying vesicles"}
CLASSES_7: dict[int, str] = {1: "Specific granules", 2: "Non-specific primary granules",
                             3: "Non-specific tertiary granules", 4: "Non-specific secondary granules",
                             5: "Empty vesicles", 6: "Emptying vesicles", 7: "Vacuoles"}
#: emdata's colours (the dataset's mask colours are unpublished): Okabe–Ito colours, granules
#: from the primary line in oranges, from the secondary line in blues, vesicles green/yellow/purple.
PALETTE_7: dict[int, Colour] = {1: (230, 159, 0), 2: (213, 94, 0), 3: (86, 180, 233), 4: (0, 114, 178),
                                5: (0, 158, 115), 6: (240, 228, 66), 7: (204, 121, 167)}
PALETTE_4: dict[int, Colour] = {1: (213, 94, 0), 2: (0, 114, 178), 3: (0, 158, 115), 4: (240, 228, 66)}
#: 7 → 4 classes (the inverse direction is a merge, exact by construction).
SEVEN_TO_FOUR: dict[int, int] = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 4, 7: 3}
SYNONYMS_4 = {"dark granules": 1, "light granules": 2}
STAT_COLUMNS = ("image_name", "image_id", "px_per_um", "px_per_um_source", "n_annotations", "n_granules",
                "mean_diameter", "median_diameter", "mean_diameter_PG", "mean_diameter_SG",
                "average_diameter_SG_PG", "empty_threshold_rule",
                *(f"n_{re.sub(r'[^a-z]+', '_', n.lower()).strip('_')}" for n in CLASSES_7.values()))


class ReclassifyError(ValueError):
    """Input that the 4 → 7 reclassification cannot use (names the file and the item)."""


def normalise_name(name: str) -> str:
    """Category names compared loosely: case, ``-``/``_``, spacing and a plural ``s``.

    Example:
        >>> normalise_name("Non-specific  Primary_granules") == normalise_name("non specific primary granule")
        True
    """
    return re.sub(r"\s+", " ", re.sub(r"[-_]", " ", name.lower())).strip().removesuffix("s")


NAMES_4 = {normalise_name(n): i for i, n in CLASSES_4.items()} | {normalise_name(n): i for n, i in SYNONYMS_4.items()}
NAMES_7 = {normalise_name(n): i for i, n in CLASSES_7.items()}


def categories_7() -> list[dict[str, Any]]:
    """The final 7-class COCO categories (ids, names, supercategory) of update_class_ids.py."""
    return [{"id": i, "name": n, "supercategory": SUPERCATEGORY} for i, n in CLASSES_7.items()]


def categories_4() -> list[dict[str, Any]]:
    """The 4-class COCO categories with 1-based ids (4 = Emptying vesicles, inferred)."""
    return [{"id": i, "name": n, "supercategory": SUPERCATEGORY} for i, n in CLASSES_4.items()]


# ---------------------------------------------------------------------------------------------
# scale sheet


@dataclass(frozen=True)
class ScaleTable:
    """Pixels per µm per image name, and the optional ``average_diameter_SG_PG`` column."""

    px_per_um: dict[str, float]
    average_diameter_sg_pg: dict[str, float] = field(default_factory=dict)
    source: str = ""


def _header_key(text: Any) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(text or "").lower()).strip()


SCALE_HEADERS = {"pixles per microm", "pixels per microm", "pixels per micrometer", "pixels per um", "px per um"}


def _rows(path: Path) -> list[list[Any]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [list(r) for r in csv.reader(fh)]
    from openpyxl import load_workbook

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException for bad files
        raise ReclassifyError(f"{path}: not a readable .xlsx workbook ({type(exc).__name__}: {exc})") from exc
    try:
        return [list(r) for r in wb.worksheets[0].iter_rows(values_only=True)]
    finally:
        wb.close()


def _positive(value: Any, where: str, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ReclassifyError(f"{where}: {column} = {value!r} is not a positive number")
    return number


def read_scale_sheet(path: Path | str) -> ScaleTable:
    """The metadata sheet (``metadata/<split>_images_statistics.xlsx``, or a .csv with the
    same columns): ``image_name`` and ``Pixles per microm`` [sic; the corrected spelling is
    accepted], first worksheet, header in the first row that names ``image_name``.

    Blank rows are skipped; an image listed twice with different values is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise ReclassifyError(f"{path}: scale sheet not found")
    rows = _rows(path)
    head = next((i for i, r in enumerate(rows) if "image name" in map(_header_key, r)), None)
    if head is None:
        raise ReclassifyError(f"{path}: no header row with 'image_name' (first row: {rows[0] if rows else []})")
    keys = [_header_key(c) for c in rows[head]]
    name_col = keys.index("image name")
    scale_col = next((i for i, k in enumerate(keys) if k in SCALE_HEADERS), None)
    if scale_col is None:
        raise ReclassifyError(f"{path}: no column {SCALE_COLUMN!r} (pixels per µm) in the header "
                              f"{[c for c in rows[head] if c is not None]}")
    thr_col = keys.index(_header_key(THRESHOLD_COLUMN)) if _header_key(THRESHOLD_COLUMN) in keys else None
    scale: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for n, row in enumerate(rows[head + 1:], start=head + 2):
        name = row[name_col] if name_col < len(row) else None
        if name is None or str(name).strip() == "":
            continue
        name = str(name).strip()
        where = f"{path} row {n} ({name!r})"
        value = _positive(row[scale_col] if scale_col < len(row) else None, where, SCALE_COLUMN)
        if name in scale and scale[name] != value:
            raise ReclassifyError(f"{where}: {SCALE_COLUMN} {value} differs from {scale[name]} given earlier")
        scale[name] = value
        if thr_col is not None and thr_col < len(row) and row[thr_col] not in (None, ""):
            thresholds[name] = _positive(row[thr_col], where, THRESHOLD_COLUMN)
    return ScaleTable(scale, thresholds, str(path))


def lookup(table: Mapping[str, float], file_name: str) -> float | None:
    """The table's value for a COCO ``file_name``: exact name, then its base name.

    Example:
        >>> lookup({"a.png": 300.0}, "images/a.png")
        300.0
    """
    if file_name in table:
        return table[file_name]
    return table.get(Path(file_name).name)


# ---------------------------------------------------------------------------------------------
# the reclassification


def diameter_um(bbox: list[float], px_per_um: float) -> float:
    """``(w + h) / (2 · px_per_µm)``: the mean of the box's width and height in µm.

    Example:
        >>> diameter_um([0, 0, 180, 195], 375.0)
        0.5
    """
    return (bbox[2] + bbox[3]) / (2 * px_per_um)


def _category_names(coco: Mapping[str, Any]) -> dict[Any, str]:
    return {c["id"]: str(c.get("name", "")) for c in coco.get("categories", [])}


def check_4class(coco: Mapping[str, Any], emptying_id: int = DEFAULT_EMPTYING_ID, where: str = "COCO") -> None:
    """Refuse a document that is not in the 4-class scheme (ids 1, 2, 3 and ``emptying_id``).

    Category names, where given, must agree with the ids (``Dark``/``Light granules`` are
    the sister repo's names for 1 and 2); 7-class names are refused.
    """
    expected = {1: 1, 2: 2, 3: 3, emptying_id: 4}
    used = {a["category_id"] for a in coco["annotations"]}
    for cid, name in _category_names(coco).items():
        key = normalise_name(name)
        if cid not in used or not key:
            continue
        if key in NAMES_7 and key not in NAMES_4:
            raise ReclassifyError(f"{where}: category {cid} {name!r} is a 7-class name; the input must be the "
                                  "4-class annotation")
        if key in NAMES_4 and cid not in expected:
            raise ReclassifyError(f"{where}: category {cid} is named {name!r}, but the 4-class scheme uses ids "
                                  f"{sorted(expected)} (emptying_id={emptying_id})")
        if key in NAMES_4 and expected[cid] != NAMES_4[key]:
            raise ReclassifyError(f"{where}: category {cid} is named {name!r}, but the 4-class scheme has "
                                  f"{CLASSES_4[expected[cid]]!r} at id {cid}")
    for ann in coco["annotations"]:
        if ann["category_id"] not in expected:
            hint = (" (ids from the 0-based annotation framework must be shifted by +1)"
                    if ann["category_id"] == 0 else "")
            raise ReclassifyError(f"{where}: annotation {ann.get('id')!r} (image {ann['image_id']!r}) has category_id "
                                  f"{ann['category_id']!r}; the 4-class scheme uses 1 primary granules, 2 secondary "
                                  f"granules, 3 empty vesicles, {emptying_id} emptying vesicles{hint}")


def _threshold(rule: str | float | Mapping[str, float], name: str, pg: list[float], sg: list[float],
               pooled: list[float]) -> float | None:
    if isinstance(rule, Mapping):
        return lookup(rule, name)
    if not isinstance(rule, str):
        return float(rule)
    if rule == "mean-of-class-means":
        means = [float(np.mean(v)) for v in (pg, sg) if v]
        return sum(means) / len(means) if means else None
    if rule == "pooled-mean":
        return float(np.mean(pooled)) if pooled else None
    return float(np.median(pooled)) if pooled else None


def _check_rule(rule: str | float | Mapping[str, float]) -> None:
    if isinstance(rule, str):
        if rule not in EMPTY_RULES:
            raise ReclassifyError(f"empty_threshold {rule!r} is not a rule; choose from {list(EMPTY_RULES)}, a number "
                                  "(µm) or a mapping {image name: µm}")
    elif not isinstance(rule, Mapping) and (isinstance(rule, bool) or not isinstance(rule, (int, float))
                                            or not math.isfinite(rule) or rule < 0):
        raise ReclassifyError(f"empty_threshold {rule!r} is not a rule name, a non-negative number or a mapping")


def rule_name(rule: str | float | Mapping[str, float]) -> str:
    """How a threshold rule is written in statistics and provenance.

    Example:
        >>> rule_name(0.8), rule_name({"a.png": 1.0})
        ('fixed 0.8 um', 'per-image table')
    """
    if isinstance(rule, Mapping):
        return "per-image table"
    return rule if isinstance(rule, str) else f"fixed {float(rule):g} um"


def reclassify(coco: Mapping[str, Any], px_per_um: Mapping[str, float], *,
               default_px_per_um: float = DEFAULT_PX_PER_UM,
               empty_threshold: str | float | Mapping[str, float] = DEFAULT_EMPTY_THRESHOLD,
               emptying_id: int = DEFAULT_EMPTYING_ID,
               where: str = "COCO") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """4-class COCO → (7-class COCO, one statistics row per image); rules in the module docstring.

    ``px_per_um`` maps image names to pixels per µm (a :class:`ScaleTable`'s
    ``px_per_um``). The input is not modified. Statistics columns: :data:`STAT_COLUMNS`
    (diameters in µm; ``None`` where undefined).
    """
    coco = load_coco(coco, where)
    check_4class(coco, emptying_id, where)
    _check_rule(empty_threshold)
    if emptying_id in (1, 2, 3):
        raise ReclassifyError(f"emptying_id {emptying_id} collides with the granule/empty ids 1, 2, 3")
    if not default_px_per_um > 0:
        raise ReclassifyError(f"default_px_per_um must be positive, got {default_px_per_um!r}")
    new = copy.deepcopy(coco)
    by_image = annotations_by_image(new)
    rows = []
    for image in new["images"]:
        name = str(image["file_name"])
        scale = lookup(px_per_um, name)
        ppum, source = (scale, "sheet") if scale is not None else (float(default_px_per_um), "default")
        anns = by_image[image["id"]]
        d = [diameter_um(a["bbox"], ppum) for a in anns]
        pg = [x for a, x in zip(anns, d) if a["category_id"] == 1]
        sg = [x for a, x in zip(anns, d) if a["category_id"] == 2]
        pooled = [x for a, x in zip(anns, d) if a["category_id"] in (1, 2)]
        median = float(np.median(pooled)) if pooled else None
        threshold = _threshold(empty_threshold, name, pg, sg, pooled)
        if isinstance(empty_threshold, Mapping) and threshold is None and any(a["category_id"] == 3 for a in anns):
            raise ReclassifyError(f"{where}: image {name!r} has empty structures but no entry in the threshold table")
        counts = dict.fromkeys(CLASSES_7, 0)
        for ann, x in zip(anns, d):
            cid = ann["category_id"]
            if cid == 1:
                ann["category_id"] = 1 if x <= median else 2  # type: ignore[operator]
            elif cid == 2:
                ann["category_id"] = 3 if x <= median else 4  # type: ignore[operator]
            elif cid == 3:
                ann["category_id"] = 7 if threshold is not None and x > threshold else 5
            else:
                ann["category_id"] = 6
            counts[ann["category_id"]] += 1
        row: dict[str, Any] = {
            "image_name": name, "image_id": image["id"], "px_per_um": ppum, "px_per_um_source": source,
            "n_annotations": len(anns), "n_granules": len(pooled),
            "mean_diameter": float(np.mean(pooled)) if pooled else None, "median_diameter": median,
            "mean_diameter_PG": float(np.mean(pg)) if pg else None,
            "mean_diameter_SG": float(np.mean(sg)) if sg else None,
            "average_diameter_SG_PG": threshold, "empty_threshold_rule": rule_name(empty_threshold),
        }
        row.update({col: counts[i] for i, col in zip(CLASSES_7, STAT_COLUMNS[-7:])})
        rows.append(row)
    new["categories"] = categories_7()
    return new, rows


def to_final_7(coco: Mapping[str, Any], where: str = "COCO") -> dict[str, Any]:
    """A shipped 7-class COCO renumbered to the final ids 1–7 by category *name*, as
    update_class_ids.py does (so the intermediate ids 5–10 of the scripts work too).

    Every category an annotation uses must carry one of the seven names.

    Example:
        >>> doc = {"images": [{"id": 1, "file_name": "a", "width": 1, "height": 1}],
        ...        "annotations": [{"id": 1, "image_id": 1, "category_id": 10, "bbox": [0, 0, 1, 1]}],
        ...        "categories": [{"id": 10, "name": "Vacuoles"}]}
        >>> to_final_7(doc)["annotations"][0]["category_id"]
        7
    """
    new = load_coco(coco, where)
    names = _category_names(new)
    table: dict[Any, int] = {}
    for ann in new["annotations"]:
        cid = ann["category_id"]
        if cid not in table:
            if cid not in names:
                raise ReclassifyError(f"{where}: annotation {ann.get('id')!r} uses category_id {cid!r}, which "
                                      f"'categories' does not name; a 7-class file names its seven classes")
            key = normalise_name(names[cid])
            if key not in NAMES_7:
                raise ReclassifyError(f"{where}: category {cid} {names[cid]!r} is not one of the seven classes "
                                      f"{list(CLASSES_7.values())}")
            table[cid] = NAMES_7[key]
        ann["category_id"] = table[cid]
    new["categories"] = categories_7()
    return new


def collapse_to_4(coco7: Mapping[str, Any], where: str = "COCO") -> dict[str, Any]:
    """A 7-class COCO (final ids) merged back to the 4 classes (:data:`SEVEN_TO_FOUR`).

    Example:
        >>> doc = {"images": [{"id": 1, "file_name": "a", "width": 1, "height": 1}],
        ...        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]}
        >>> collapse_to_4(doc)["annotations"][0]["category_id"]
        3
    """
    new = load_coco(coco7, where)
    for ann in new["annotations"]:
        if ann["category_id"] not in SEVEN_TO_FOUR:
            raise ReclassifyError(f"{where}: annotation {ann.get('id')!r} has category_id {ann['category_id']!r}, "
                                  "not a final 7-class id 1–7")
        ann["category_id"] = SEVEN_TO_FOUR[ann["category_id"]]
    new["categories"] = categories_4()
    return new


# ---------------------------------------------------------------------------------------------
# outputs


def _cell(value: Any) -> Any:
    return "" if value is None else value


def write_statistics_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Statistics rows as CSV (columns :data:`STAT_COLUMNS`; floats in shortest exact form)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(STAT_COLUMNS)
        writer.writerows([_cell(r[c]) for c in STAT_COLUMNS] for r in rows)
    return path


def write_statistics_xlsx(rows: list[dict[str, Any]], path: Path) -> Path:
    """Statistics rows as an .xlsx sheet ``statistics`` (same columns; empty cells for None)."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "statistics"
    ws.append(list(STAT_COLUMNS))
    for r in rows:
        ws.append([r[c] for c in STAT_COLUMNS])
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)
    return path


def masks_for_image(coco: Mapping[str, Any], image: Mapping[str, Any],
                    anns: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(instances, semantic) of one COCO image, rendered from the ellipses in its boxes."""
    anns = annotations_by_image(coco)[image["id"]] if anns is None else anns
    return render_ellipses([Ellipse.from_bbox(a["bbox"]) for a in anns], [int(a["category_id"]) for a in anns],
                           (int(image["height"]), int(image["width"])))


def _png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _find_image(folder: Path, file_name: str) -> Path | None:
    for candidate in (folder / file_name, folder / Path(file_name).name):
        if candidate.is_file():
            return candidate
    return None


def _write_outputs(work: Path, out_dir: Path, new: dict[str, Any], rows: list[dict[str, Any]],
                   coco: Mapping[str, Any], coco_path: Path, cvat_path: Path | None, images_dir: Path | None,
                   tolerance_px: float, alpha: float) -> tuple[dict[str, Any], list[str]]:
    """Write every output into the folder ``work``; the paths reported are those under ``out_dir``."""
    files: dict[str, Any] = {"coco": str(out_dir / "annotations_7classes.json")}
    (work / "annotations_7classes.json").write_text(json.dumps(new, indent=4), encoding="utf-8")
    colours = {CLASSES_7[i]: c for i, c in PALETTE_7.items()}
    if cvat_path is not None:
        tree = parse_cvat_tree(Path(cvat_path))
        n = relabel_cvat(tree, coco, new, where=str(cvat_path), tolerance_px=tolerance_px, colours=colours)
        write_cvat(tree, work / "annotations_7classes.xml")
        files["cvat"] = str(out_dir / "annotations_7classes.xml")
        files["cvat_ellipses"] = n
    write_statistics_csv(rows, work / "statistics.csv")
    write_statistics_xlsx(rows, work / "statistics.xlsx")
    files.update({"statistics_csv": str(out_dir / "statistics.csv"),
                  "statistics_xlsx": str(out_dir / "statistics.xlsx")})
    by_image = annotations_by_image(new)
    missing: list[str] = []
    masks = overlays = 0
    for image in new["images"]:
        _, semantic = masks_for_image(new, image, by_image[image["id"]])
        rel = Path(str(image["file_name"])).with_suffix(".png")
        _png(colour_mask(semantic, PALETTE_7), work / "masks" / rel)
        masks += 1
        if images_dir is not None:
            found = _find_image(Path(images_dir), str(image["file_name"]))
            if found is None:
                missing.append(str(image["file_name"]))
                continue
            from emdata.formats.png import read_image

            pixels = read_image(found)
            if pixels.shape[:2] != semantic.shape:
                raise AnnotationFormatError(f"{found}: image is {pixels.shape[1]}×{pixels.shape[0]} (W×H) but the "
                                            f"COCO file says width {image['width']} height {image['height']}")
            _png(overlay(pixels, semantic, PALETTE_7, alpha), work / "overlays" / rel)
            overlays += 1
    if images_dir is not None and new["images"] and not overlays:
        raise ReclassifyError(f"{images_dir}: none of the {len(new['images'])} images of {coco_path} is there "
                              f"(e.g. {new['images'][0]['file_name']!r})")
    files.update({"masks": masks, "overlays": overlays})
    return files, missing


def _move_into_place(work: Path, out_dir: Path) -> None:
    """Rename the finished outputs from ``work`` into ``out_dir`` (the whole folder when it is new)."""
    if not out_dir.exists():
        os.replace(work, out_dir)
        return
    for entry in sorted(work.iterdir()):
        target = out_dir / entry.name
        if target.is_dir() and not target.is_symlink():  # an earlier run's masks/ or overlays/
            os.replace(target, work / f".old-{entry.name}")
        os.replace(entry, target)


def reclassify_files(coco_path: Path, scale_path: Path, out_dir: Path, *, cvat_path: Path | None = None,
                     images_dir: Path | None = None, default_px_per_um: float = DEFAULT_PX_PER_UM,
                     empty_threshold: str | float | Mapping[str, float] = DEFAULT_EMPTY_THRESHOLD,
                     emptying_id: int = DEFAULT_EMPTYING_ID, tolerance_px: float = 0.05,
                     alpha: float = 0.45) -> dict[str, Any]:
    """Run the reclassification on files and write every output into ``out_dir``, all or nothing:

    ``annotations_7classes.json`` (COCO), ``annotations_7classes.xml`` (the ``cvat_path``
    XML with 7-class labels, when given), ``statistics.csv`` / ``statistics.xlsx``,
    ``masks/<file_name>.png`` (RGB, :data:`PALETTE_7`) and, with ``images_dir``,
    ``overlays/<file_name>.png``. ``empty_threshold="sheet"`` takes the
    ``average_diameter_SG_PG`` column of the scale sheet. Returns a JSON-able summary.

    The outputs are written into a hidden folder next to ``out_dir`` and renamed into place
    only when all of them are written, so a failure leaves ``out_dir`` as it was.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> coco = {"images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
        ...         "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}]}
        >>> _ = (folder / "annotations_4classes.json").write_text(json.dumps(coco))
        >>> _ = (folder / "scale.csv").write_text("image_name,Pixles per microm\\na.png,100\\n")
        >>> summary = reclassify_files(folder / "annotations_4classes.json", folder / "scale.csv", folder / "out")
        >>> summary["counts"]["Empty vesicles"], sorted(p.name for p in (folder / "out").iterdir())
        (1, ['annotations_7classes.json', 'masks', 'statistics.csv', 'statistics.xlsx'])
    """
    coco_path, scale_path, out_dir = Path(coco_path), Path(scale_path), Path(out_dir)
    coco = load_coco(coco_path)
    scale = read_scale_sheet(scale_path)
    rule: str | float | Mapping[str, float] = empty_threshold
    if rule == "sheet":
        if not scale.average_diameter_sg_pg:
            raise ReclassifyError(f"{scale_path}: --empty-threshold sheet needs a column {THRESHOLD_COLUMN!r}")
        rule = scale.average_diameter_sg_pg
    new, rows = reclassify(coco, scale.px_per_um, default_px_per_um=default_px_per_um, empty_threshold=rule,
                           emptying_id=emptying_id, where=str(coco_path))
    if images_dir is not None and not Path(images_dir).is_dir():
        raise ReclassifyError(f"{images_dir}: --images is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = unique_sibling(out_dir)
    try:
        work.mkdir()
        files, missing = _write_outputs(work, out_dir, new, rows, coco, coco_path, cvat_path, images_dir,
                                        tolerance_px, alpha)
        _move_into_place(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    totals = {name: sum(r[col] for r in rows) for name, col in zip(CLASSES_7.values(), STAT_COLUMNS[-7:])}
    return {
        "input": str(coco_path), "scale": str(scale_path), "images": len(rows),
        "annotations": len(new["annotations"]), "counts": totals,
        "parameters": {"default_px_per_um": default_px_per_um, "empty_threshold": rule_name(rule),
                       "emptying_id": emptying_id, "tolerance_px": tolerance_px},
        "px_per_um_defaulted": [r["image_name"] for r in rows if r["px_per_um_source"] == "default"],
        "overlays_missing": missing, "outputs": files,
    }
