"""COCO detection JSON: read and check a document, group its annotations by image.

Only what box annotations need is checked: ``images`` (``id``, ``file_name``, ``width``,
``height``), ``annotations`` (``image_id``, ``category_id``, a 4-number ``bbox``) and
``categories`` (objects with an ``id``); see https://cocodataset.org/#format-data.

Example:
    >>> coco = load_coco({"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}],
    ...                   "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 2, 2]}]})
    >>> {k: len(v) for k, v in annotations_by_image(coco).items()}
    {1: 1}
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["AnnotationFormatError", "annotations_by_image", "load_coco"]


class AnnotationFormatError(ValueError):
    """A COCO or CVAT file does not have the expected structure (the message names the file and item)."""


def load_coco(source: Path | str | Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """Read (a path) or check (a dict) a COCO detection document; returns a dict.

    Checks: ``images`` with ``id``, ``file_name``, ``width``, ``height``; ``annotations``
    with ``image_id``, ``category_id`` and a 4-number ``bbox`` with non-negative size whose
    ``image_id`` is one of the images; image ids unique. Errors name ``where`` and the item.
    """
    if isinstance(source, Mapping):
        doc: Any = copy.deepcopy(dict(source))
        label = where or "COCO document"
    else:
        path = Path(source)
        label = where or str(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AnnotationFormatError(f"{label}: cannot read ({exc.strerror or exc})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AnnotationFormatError(f"{label}: not a JSON document ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
            doc.get("annotations"), list):
        raise AnnotationFormatError(f"{label}: expected a COCO object with 'images' and 'annotations' lists")
    ids = set()
    for i, image in enumerate(doc["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if not isinstance(image, dict) or k not in image]
        if missing:
            raise AnnotationFormatError(f"{label}: images[{i}] lacks {missing}")
        if image["id"] in ids:
            raise AnnotationFormatError(f"{label}: image id {image['id']!r} appears twice")
        ids.add(image["id"])
    for i, ann in enumerate(doc["annotations"]):
        what = f"{label}: annotations[{i}] (id {ann.get('id')!r})" if isinstance(ann, dict) else f"{label}: " \
               f"annotations[{i}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise AnnotationFormatError(f"{what} lacks image_id or category_id")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
                or bbox[2] < 0 or bbox[3] < 0):
            raise AnnotationFormatError(f"{what}: bbox {bbox!r} is not [x, y, w, h] with w, h ≥ 0")
        if ann["image_id"] not in ids:
            raise AnnotationFormatError(f"{what}: image_id {ann['image_id']!r} is not among the images")
    cats = doc.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise AnnotationFormatError(f"{label}: 'categories' must be a list of objects with an 'id'")
    return doc


def annotations_by_image(coco: Mapping[str, Any]) -> dict[Any, list[dict[str, Any]]]:
    """``{image id: [annotation, ...]}`` in file order, one entry per image (possibly empty).

    Example:
        >>> annotations_by_image({"images": [{"id": 7}], "annotations": []})
        {7: []}
    """
    out: dict[Any, list[dict[str, Any]]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        out[ann["image_id"]].append(ann)
    return out
