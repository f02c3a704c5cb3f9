"""TEM-NeutroStruct replica: the dataset folder in the layout the published scripts read
(MedImagingAI/TEM-NeutroStruct, commit a5230ea), written under ``<root>/github.com/MedImagingAI/TEM-NeutroStruct/``
(the card's URL; the scripts run from that repository's root with the data beside them)::

    7classes_version/<split>/images/<file_name>                      TEM images (PNG; test: JPEG)
    7classes_version/<split>/annotations/annotations_4classes.json   COCO, ids 1–4
    7classes_version/<split>/annotations/annotations_7classes.json   COCO, final ids 1–7
    7classes_version/<split>/annotations/annotations_{4,7}classes.xml  CVAT ellipses
    7classes_version/<split>/masks/<stem>.png                        colour masks (replica colours)
    metadata/<split>_images_statistics.xlsx                          image_name, Pixles per microm

for splits ``train`` (two images, one missing from the sheet → the scripts' 375 px/µm) and
``test`` (one). The data cannot be downloaded (Zenodo record not found), so tests copy the
folder into the download folder as a user would. Boxes are integer ``[x, y, w, h]`` with
``w, h ≥ 2`` inside the image; CVAT ellipses ``cx = x + w/2``, ``rx = w/2`` as 2-decimal
strings, ``occluded="0" z_order="0"``. Ground truth is computed here, independently of the
recipe: the 7 classes by the rules as coded (d = (w + h) / (2 · px/µm); per-image median of
pooled classes 1+2, ``≤`` → first branch; empty structures > mean of the primary and
secondary class means → vacuoles) and masks by pixel centres inside the ellipse, later
annotations on top. Written with json, xml.etree, PIL and openpyxl; shares no code with the recipe.

``seven_class_ids="intermediate"`` writes the 7-class file with the scripts' intermediate ids
(5–8 granules, 9 empty vesicles, 10 vacuoles, 4 emptying vesicles) named in ``categories``.

Example:
    >>> import tempfile
    >>> truth = write_tem_neutrostruct_replica(Path(tempfile.mkdtemp()))
    >>> sorted(truth["volumes"]), truth["volumes"]["train-CNT042_001"]["px_per_um"]
    (['test-CNT050_002', 'train-ASD027--003', 'train-CNT042_001'], 250.0)
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

HOST_DIR = "github.com/MedImagingAI/TEM-NeutroStruct"
NAMES_4 = ["Primary granules", "Secondary granules", "Empty vesicles", "Emptying vesicles"]
NAMES_7 = ["Specific granules", "Non-specific primary granules", "Non-specific tertiary granules",
           "Non-specific secondary granules", "Empty vesicles", "Emptying vesicles", "Vacuoles"]
INTERMEDIATE = {1: 5, 2: 6, 3: 7, 4: 8, 5: 9, 6: 4, 7: 10}
#: (file name, width, height, px per µm in the sheet or None = not listed, number of annotations)
IMAGES = {
    "train": [("CNT042_001.png", 64, 66, 250.0, 17), ("ASD027--003.png", 32, 33, None, 9)],
    "test": [("CNT050_002.jpg", 48, 50, 400.0, 12)],
}
CATEGORY_CYCLE = [1, 2, 1, 2, 3, 1, 2, 4, 3, 2, 1, 3]
MASK_COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
                (128, 128, 128)]


def _annotations(rng: np.random.Generator, width: int, height: int, n: int, image_id: int,
                 first_id: int) -> list[dict[str, Any]]:
    anns = []
    for k in range(n):
        cat = CATEGORY_CYCLE[k % len(CATEGORY_CYCLE)]
        lo, hi = {1: (3, 10), 2: (3, 12), 3: (4, 18), 4: (4, 12)}[cat]
        w, h = (int(v) for v in rng.integers(lo, min(hi, width // 2, height // 2) + 1, size=2))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        anns.append({"id": first_id + k, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                     "area": w * h, "iscrowd": 0, "segmentation": []})
    return anns


def _seven(anns: list[dict[str, Any]], ppum: float) -> list[int]:
    d = [(a["bbox"][2] + a["bbox"][3]) / (2 * ppum) for a in anns]
    pooled = [x for a, x in zip(anns, d) if a["category_id"] in (1, 2)]
    median = float(np.median(pooled)) if pooled else None
    means = [float(np.mean([x for a, x in zip(anns, d) if a["category_id"] == c]))
             for c in (1, 2) if any(a["category_id"] == c for a in anns)]
    threshold = sum(means) / len(means) if means else None
    out = []
    for a, x in zip(anns, d):
        c = a["category_id"]
        if c in (1, 2):
            out.append((1 if c == 1 else 3) if x <= median else (2 if c == 1 else 4))
        elif c == 3:
            out.append(7 if threshold is not None and x > threshold else 5)
        else:
            out.append(6)
    return out


def _masks(anns: list[dict[str, Any]], c4: list[int], c7: list[int], width: int,
           height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    inst = np.zeros((height, width), np.uint32)
    sem4 = np.zeros((height, width), np.uint8)
    sem7 = np.zeros((height, width), np.uint8)
    for k, a in enumerate(anns):
        x, y, w, h = a["bbox"]
        cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2
        inside = ((xx - cx) * ry) ** 2 + ((yy - cy) * rx) ** 2 <= (rx * ry) ** 2
        inst[inside], sem4[inside], sem7[inside] = k + 1, c4[k], c7[k]
    return inst, sem4, sem7


def _raw(rng: np.random.Generator, inst: np.ndarray) -> np.ndarray:
    base = rng.normal(150, 18, inst.shape) - 60 * (inst > 0) + 10 * (inst % 3)
    return np.clip(base, 0, 255).astype(np.uint8)


def _cvat(images: list[dict[str, Any]], anns: list[dict[str, Any]], names: list[str]) -> ET.ElementTree:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
    for name in names:
        ET.SubElement(ET.SubElement(labels, "label"), "name").text = name
    for im in images:
        el = ET.SubElement(root, "image", {"id": str(im["id"]), "name": im["file_name"], "width": str(im["width"]),
                                           "height": str(im["height"])})
        for a in (a for a in anns if a["image_id"] == im["id"]):
            x, y, w, h = a["bbox"]
            ET.SubElement(el, "ellipse", {"label": names[a["category_id"] - 1], "occluded": "0",
                                          "cx": f"{x + w / 2:.2f}", "cy": f"{y + h / 2:.2f}", "rx": f"{w / 2:.2f}",
                                          "ry": f"{h / 2:.2f}", "z_order": "0"})
    ET.indent(root)
    return ET.ElementTree(root)


def _sheet(path: Path, rows: list[tuple[str, float]]) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["image_name", "Pixles per microm"])
    for row in rows:
        ws.append(list(row))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


def write_tem_neutrostruct_replica(root: Path, seed: int = 11, with_7classes: bool = True,
                                   seven_class_ids: str = "final", scale: int = 1) -> dict[str, Any]:
    """Write the dataset folder; returns ``{"folder", "volumes": {name: {...}}, "coco4", "coco7"}``.

    Each volume entry holds ``raw`` (1, H, W) uint8, ``instances`` (1, H, W) uint32,
    ``semantic4`` / ``semantic7`` (1, H, W) uint8, ``px_per_um`` (used), ``split``,
    ``file_name``, ``ids4`` / ``ids7`` (per annotation) and ``annotation_ids``. ``scale`` multiplies the
    images' widths and heights (:data:`IMAGES`: 32–66 px a side).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / HOST_DIR
    truth: dict[str, Any] = {"folder": folder, "volumes": {}, "coco4": {}, "coco7": {}}
    for split, specs in IMAGES.items():
        base = folder / "7classes_version" / split
        images, anns4, ids7, sheet = [], [], [], []
        for i, (file_name, width, height, ppum, n) in enumerate(specs, start=1):
            width, height = width * scale, height * scale
            image = {"id": i, "file_name": file_name, "width": width, "height": height}
            anns = _annotations(rng, width, height, n, i, len(anns4) + 1)
            used = ppum if ppum is not None else 375.0
            c4 = [a["category_id"] for a in anns]
            c7 = _seven(anns, used)
            inst, sem4, sem7 = _masks(anns, c4, c7, width, height)
            raw = _raw(rng, inst)
            path = base / "images" / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(raw).save(path, **({"quality": 95} if file_name.endswith(".jpg") else {}))
            with Image.open(path) as img:
                stored = np.asarray(img)  # JPEG is lossy: the truth is what the file decodes to
            mask = np.array(MASK_COLOURS, np.uint8)[sem7]
            (base / "masks").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(base / "masks" / (Path(file_name).stem + ".png"))
            images.append(image)
            anns4.extend(anns)
            ids7.extend(c7)
            if ppum is not None:
                sheet.append((file_name, ppum))
            truth["volumes"][f"{split}-{Path(file_name).stem}"] = {
                "raw": stored[None], "instances": inst[None], "semantic4": sem4[None], "semantic7": sem7[None],
                "px_per_um": used, "split": split, "file_name": file_name, "ids4": c4, "ids7": c7,
                "annotation_ids": [a["id"] for a in anns], "bboxes": [a["bbox"] for a in anns]}
        cats4 = [{"id": i + 1, "name": n, "supercategory": "granule/vesicle"} for i, n in enumerate(NAMES_4)]
        coco4 = {"info": {"description": "TEM-NeutroStruct replica"}, "images": images, "annotations": anns4,
                 "categories": cats4}
        anns7 = [dict(a, category_id=c) for a, c in zip(anns4, ids7)]
        cats7 = [{"id": i + 1, "name": n, "supercategory": "granule/vesicle"} for i, n in enumerate(NAMES_7)]
        coco7 = {"info": coco4["info"], "images": images, "annotations": anns7, "categories": cats7}
        truth["coco4"][split], truth["coco7"][split] = coco4, coco7
        ann_dir = base / "annotations"
        ann_dir.mkdir(parents=True, exist_ok=True)
        (ann_dir / "annotations_4classes.json").write_text(json.dumps(coco4), encoding="utf-8")
        _cvat(images, anns4, NAMES_4).write(ann_dir / "annotations_4classes.xml", encoding="utf-8",
                                            xml_declaration=True)
        if with_7classes:
            shipped = coco7
            if seven_class_ids == "intermediate":
                shipped = {**coco7, "annotations": [dict(a, category_id=INTERMEDIATE[a["category_id"]])
                                                    for a in anns7],
                           "categories": [{"id": INTERMEDIATE[i + 1], "name": n} for i, n in enumerate(NAMES_7)]}
            (ann_dir / "annotations_7classes.json").write_text(json.dumps(shipped, indent=4), encoding="utf-8")
            _cvat(images, anns7, NAMES_7).write(ann_dir / "annotations_7classes.xml", encoding="utf-8",
                                                xml_declaration=True)
        _sheet(folder / "metadata" / f"{split}_images_statistics.xlsx", sheet)
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else images of 128–264 px a side."""
    return write_tem_neutrostruct_replica(root, scale=1 if small else 4)


def placed_folders(truth: dict[str, Any]) -> dict[Path, str]:
    """Hand-placed: ``{written folder: sub-folder of the download folder}`` to copy, as a user would."""
    return {Path(truth["folder"]): ""}
