"""CVAT-for-images XML with ellipses, and the exact COCO box ⇄ ellipse conversion.

CVAT XML keeps an axis-aligned ellipse as ``<ellipse label cx cy rx ry occluded="0"
z_order="0">``, COCO keeps its box (``bbox = [x, y, w, h]`` in px): ``cx = x + w/2``,
``cy = y + h/2``, ``rx = w/2``, ``ry = h/2``, written as 2-decimal strings. The arithmetic is
done in exact decimals on the JSON numbers and rounds half-to-even, so:

- CVAT → COCO → CVAT reproduces every ellipse string exactly;
- COCO → CVAT → COCO reproduces every ``bbox`` exactly when ``x, y, w/2, h/2`` have at most
  two decimals (always true for integer boxes); otherwise the box is exact to the
  2-decimal strings CVAT stores.

XML is parsed with defusedxml (entity expansion and external entities are refused). An
optional ``rotation`` attribute (degrees, clockwise about the centre, CVAT's convention) is
read; the writer never writes one because a COCO box has none.

Example:
    >>> coco = {"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
    ...         "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 4, 2]}],
    ...         "categories": [{"id": 1, "name": "Primary granules"}, {"id": 2, "name": "Secondary granules"}]}
    >>> xml = cvat_to_string(coco_to_cvat(coco))
    >>> 'cx="3.00" cy="2.00" rx="2.00" ry="1.00"' in xml
    True
    >>> cvat_to_coco(read_cvat(xml.encode()), coco["categories"])["annotations"][0]["bbox"]
    [1.0, 1.0, 4.0, 2.0]
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from emdata.formats.coco import AnnotationFormatError, annotations_by_image

__all__ = ["Colour", "CvatDocument", "CvatEllipse", "CvatImage", "Ellipse", "bbox_strings", "coco_to_cvat",
           "cvat_to_coco", "cvat_to_string", "parse_cvat_tree", "read_cvat", "relabel_cvat", "write_cvat"]

CENT = Decimal("0.01")
Colour = tuple[int, int, int]


def _dec(value: Any) -> Decimal:
    """The exact decimal a JSON number or 2-decimal string stands for."""
    if isinstance(value, str):
        return Decimal(value)
    return Decimal(repr(float(value))) if isinstance(value, (float, np.floating)) else Decimal(int(value))


def _cents(value: Decimal) -> str:
    return str(value.quantize(CENT, rounding=ROUND_HALF_EVEN))


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in pixel coordinates: centre, half-axes, clockwise rotation in degrees.

    Example:
        >>> Ellipse.from_bbox([10, 20, 6, 4])
        Ellipse(cx=13.0, cy=22.0, rx=3.0, ry=2.0, rotation=0.0)
        >>> Ellipse(13.0, 22.0, 3.0, 2.0).bbox()
        [10.0, 20.0, 6.0, 4.0]
    """

    cx: float
    cy: float
    rx: float
    ry: float
    rotation: float = 0.0

    @classmethod
    def from_bbox(cls, bbox: Sequence[float]) -> Ellipse:
        """The ellipse inscribed in a COCO box ``[x, y, w, h]`` (exact decimal arithmetic)."""
        x, y, w, h = (_dec(v) for v in bbox)
        return cls(float(x + w / 2), float(y + h / 2), float(w / 2), float(h / 2))

    def bbox(self) -> list[float]:
        """The COCO box ``[x, y, w, h]`` of the (unrotated) ellipse, in exact decimals."""
        cx, cy, rx, ry = (_dec(v) for v in (self.cx, self.cy, self.rx, self.ry))
        return [float(cx - rx), float(cy - ry), float(2 * rx), float(2 * ry)]

    def strings(self) -> dict[str, str]:
        """CVAT's 2-decimal attribute strings ``cx cy rx ry``."""
        return {k: _cents(_dec(getattr(self, k))) for k in ("cx", "cy", "rx", "ry")}


def bbox_strings(bbox: Sequence[float]) -> dict[str, str]:
    """``{"cx", "cy", "rx", "ry"}`` 2-decimal strings of the ellipse in a COCO box.

    Example:
        >>> bbox_strings([1.35, 2, 2.5, 3])
        {'cx': '2.60', 'cy': '3.50', 'rx': '1.25', 'ry': '1.50'}
    """
    x, y, w, h = (_dec(v) for v in bbox)
    return {"cx": _cents(x + w / 2), "cy": _cents(y + h / 2), "rx": _cents(w / 2), "ry": _cents(h / 2)}


@dataclass
class CvatEllipse:
    label: str
    ellipse: Ellipse
    strings: dict[str, str]
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class CvatImage:
    id: int
    name: str
    width: int
    height: int
    ellipses: list[CvatEllipse] = field(default_factory=list)
    other_shapes: int = 0


@dataclass
class CvatDocument:
    """A parsed CVAT-for-images XML: label names (meta order) and images with their ellipses."""

    labels: list[str]
    images: list[CvatImage]
    source: str = "<bytes>"


def _hex(rgb: Colour) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def _label_elements(parent: ET.Element, names: Sequence[str], colours: Mapping[str, Colour] | None) -> None:
    for name in names:
        label = ET.SubElement(parent, "label")
        ET.SubElement(label, "name").text = name
        if colours and name in colours:
            ET.SubElement(label, "color").text = _hex(colours[name])
        ET.SubElement(label, "attributes")


def coco_to_cvat(coco: Mapping[str, Any], colours: Mapping[str, Colour] | None = None,
                 task_name: str = "annotations") -> ET.Element:
    """A CVAT ``<annotations>`` tree with one ``<ellipse>`` per COCO annotation, in order.

    Labels are the category names (``colours``: optional ``{name: (r, g, b)}`` for
    ``<color>``); image ``id`` is the COCO image id. Annotations whose category has no name
    are an error.
    """
    names = {c["id"]: c.get("name") for c in coco.get("categories", [])}
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(coco["images"]))
    _label_elements(ET.SubElement(task, "labels"), [n for n in names.values() if n], colours)
    by_image = annotations_by_image(coco)
    for image in coco["images"]:
        el = ET.SubElement(root, "image", {"id": str(image["id"]), "name": str(image["file_name"]),
                                           "width": str(image["width"]), "height": str(image["height"])})
        for ann in by_image[image["id"]]:
            label = names.get(ann["category_id"])
            if not label:
                raise AnnotationFormatError(f"annotation {ann.get('id')!r}: category_id {ann['category_id']!r} has no "
                                            "name in 'categories', so it has no CVAT label")
            s = bbox_strings(ann["bbox"])
            ET.SubElement(el, "ellipse", {"label": label, "occluded": "0", "cx": s["cx"], "cy": s["cy"],
                                          "rx": s["rx"], "ry": s["ry"], "z_order": "0"})
    return root


def cvat_to_string(root: ET.Element) -> str:
    """The XML text (UTF-8 declaration, two-space indent) of a CVAT tree."""
    tree = copy.deepcopy(root)
    ET.indent(tree, space="  ")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(tree, encoding="unicode") + "\n"


def write_cvat(root: ET.Element, path: Path) -> Path:
    """Write a CVAT tree (see :func:`cvat_to_string`) to ``path``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cvat_to_string(root), encoding="utf-8")
    return path


def parse_cvat_tree(source: Path | str | bytes, where: str | None = None) -> ET.Element:
    """The root element of a CVAT XML file or bytes, parsed safely with defusedxml."""
    from defusedxml import DefusedXmlException
    from defusedxml import ElementTree as SafeET

    label = where or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        root = SafeET.fromstring(source) if isinstance(source, bytes) else SafeET.parse(str(source)).getroot()
    except OSError as exc:
        raise AnnotationFormatError(f"{label}: cannot read ({exc.strerror or exc})") from exc
    except DefusedXmlException as exc:
        raise AnnotationFormatError(f"{label}: refused unsafe XML ({type(exc).__name__}: {exc})") from exc
    except ET.ParseError as exc:
        raise AnnotationFormatError(f"{label}: not well-formed XML ({exc})") from exc
    if root.tag != "annotations":
        raise AnnotationFormatError(f"{label}: root element is <{root.tag}>, expected CVAT's <annotations>")
    return root


def _number(el: ET.Element, key: str, where: str) -> tuple[float, str]:
    text = el.get(key)
    try:
        value = Decimal(text)  # type: ignore[arg-type]
        if not value.is_finite():
            raise InvalidOperation
    except (TypeError, InvalidOperation):
        raise AnnotationFormatError(f"{where}: attribute {key}={text!r} is not a number") from None
    return float(value), text  # type: ignore[return-value]


def read_cvat(source: Path | str | bytes, where: str | None = None) -> CvatDocument:
    """Parse CVAT XML (defusedxml): labels from ``<meta>`` and every image's ellipses in order.

    Shapes other than ellipses are counted in ``other_shapes`` and otherwise ignored.
    """
    label = where or (str(source) if not isinstance(source, bytes) else "<bytes>")
    root = parse_cvat_tree(source, label)
    meta = root.find("meta")
    labels = [n.text or "" for n in meta.iterfind(".//labels/label/name")] if meta is not None else []
    images = []
    for i, im in enumerate(root.iterfind("image")):
        at = f"{label}: <image> #{i} ({im.get('name')!r})"
        try:
            image = CvatImage(int(im.get("id", i)), im.attrib["name"], int(im.attrib["width"]),
                              int(im.attrib["height"]))
        except (KeyError, ValueError) as exc:
            raise AnnotationFormatError(f"{at}: needs integer id/width/height and a name ({exc})") from None
        for k, shape in enumerate(im):
            if shape.tag != "ellipse":
                image.other_shapes += 1
                continue
            where_k = f"{at} ellipse #{k}"
            if not shape.get("label"):
                raise AnnotationFormatError(f"{where_k}: has no label")
            (cx, scx), (cy, scy), (rx, srx), (ry, sry) = (_number(shape, a, where_k) for a in ("cx", "cy", "rx", "ry"))
            rot = _number(shape, "rotation", where_k)[0] if shape.get("rotation") is not None else 0.0
            rest = {a: v for a, v in shape.attrib.items() if a not in ("label", "cx", "cy", "rx", "ry")}
            image.ellipses.append(CvatEllipse(shape.attrib["label"], Ellipse(cx, cy, rx, ry, rot),
                                              {"cx": scx, "cy": scy, "rx": srx, "ry": sry}, rest))
        images.append(image)
    return CvatDocument(labels, images, label)


def cvat_to_coco(doc: CvatDocument, categories: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """A COCO document from CVAT ellipses; annotation ids 1..N in document order.

    ``categories`` (COCO list) maps label names to ids; default: the CVAT labels in meta
    order with ids 1..n. A label missing from them is an error. ``bbox`` comes from the
    2-decimal strings in exact decimals; ``area`` is ``w·h`` (the box), ``iscrowd`` 0.
    Rotated ellipses keep the box of the unrotated ellipse (COCO has no rotation).
    """
    cats = [dict(c) for c in categories] if categories is not None else [
        {"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(doc.labels)]
    by_name = {c.get("name"): c["id"] for c in cats}
    images, anns = [], []
    for image in doc.images:
        images.append({"id": image.id, "file_name": image.name, "width": image.width, "height": image.height})
        for k, e in enumerate(image.ellipses):
            if e.label not in by_name:
                raise AnnotationFormatError(f"{doc.source}: image {image.name!r} ellipse #{k} has label {e.label!r}, "
                                            f"which is not a category {sorted(n for n in by_name if n)}")
            cx, cy, rx, ry = (Decimal(e.strings[a]) for a in ("cx", "cy", "rx", "ry"))
            bbox = [float(cx - rx), float(cy - ry), float(2 * rx), float(2 * ry)]
            anns.append({"id": len(anns) + 1, "image_id": image.id, "category_id": by_name[e.label], "bbox": bbox,
                         "area": float(2 * rx * 2 * ry), "iscrowd": 0, "segmentation": []})
    return {"images": images, "annotations": anns, "categories": cats}


def _same(ann: Mapping[str, Any], names: Mapping[Any, Any], label: str | None, geo: list[float],
          tolerance_px: float) -> bool:
    """Whether a COCO annotation has CVAT ellipse ``label`` and geometry ``geo`` (cx, cy, rx, ry)."""
    e = Ellipse.from_bbox(ann["bbox"])
    return names.get(ann["category_id"]) == label and all(
        abs(a - b) <= tolerance_px for a, b in zip(geo, (e.cx, e.cy, e.rx, e.ry)))


def relabel_cvat(root: ET.Element, old: Mapping[str, Any], new: Mapping[str, Any], where: str = "CVAT XML",
                 tolerance_px: float = 0.05, colours: Mapping[str, Colour] | None = None) -> int:
    """Rename every ellipse's label from ``old``'s category to ``new``'s, in place; returns
    the number of ellipses relabelled.

    ``old`` and ``new`` are the same COCO document before and after a reclassification
    (same images and annotations, new ``category_id``s and ``categories``). Each CVAT image
    is matched to a COCO image by ``name`` = ``file_name``; each ellipse to the annotation
    of that image with the old label and the same geometry (``cx cy rx ry`` within
    ``tolerance_px``), preferring the one at the same position. Every ellipse must match
    exactly one annotation, otherwise the error names the image and the ellipse. The
    ``<labels>`` blocks in ``<meta>`` are replaced by ``new``'s category names.
    """
    old_names = {c["id"]: c.get("name") for c in old.get("categories", [])}
    new_names = {c["id"]: c.get("name") for c in new.get("categories", [])}
    old_by_image = annotations_by_image(old)
    new_by_image = annotations_by_image(new)
    images = {im["file_name"]: im["id"] for im in old["images"]}
    count = 0
    for i, im in enumerate(root.iterfind("image")):
        name = im.get("name")
        if name not in images:
            raise AnnotationFormatError(f"{where}: <image> #{i} {name!r} is not an image of the COCO file")
        olds, news = old_by_image[images[name]], new_by_image[images[name]]
        used: set[int] = set()
        for k, shape in enumerate(e for e in im if e.tag == "ellipse"):
            at = f"{where}: image {name!r} ellipse #{k} (label {shape.get('label')!r})"
            geo = [_number(shape, a, at)[0] for a in ("cx", "cy", "rx", "ry")]
            fit = [j for j in ([k] if k < len(olds) else []) + list(range(len(olds)))
                   if j not in used and _same(olds[j], old_names, shape.get("label"), geo, tolerance_px)]
            j = fit[0] if fit else None
            if j is None:
                raise AnnotationFormatError(f"{at}, cx={shape.get('cx')} cy={shape.get('cy')} rx={shape.get('rx')} "
                                            f"ry={shape.get('ry')}: no annotation of that image in the COCO file has "
                                            f"this label and geometry (±{tolerance_px} px)")
            used.add(j)
            label = new_names.get(news[j]["category_id"])
            if not label:
                raise AnnotationFormatError(f"{at}: new category_id {news[j]['category_id']!r} has no name")
            shape.set("label", label)
            count += 1
    meta = root.find("meta")
    for labels in meta.iter("labels") if meta is not None else ():
        for child in list(labels):
            labels.remove(child)
        _label_elements(labels, [n for n in new_names.values() if n], colours)
    return count
