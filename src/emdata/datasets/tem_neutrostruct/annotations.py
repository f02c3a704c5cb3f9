"""TEM-NeutroStruct annotations: ellipses rendered to masks, colour masks and overlays.

The dataset annotates every granule and vesicle as an axis-aligned ellipse, kept as COCO
boxes and CVAT XML ellipses (read and written by :mod:`emdata.formats.coco` and
:mod:`emdata.formats.cvat`, whose names are re-exported here). The two convert exactly as
the sister annotation repository
(MedImagingAI/Semi-automatic-Annotation-Framework-for-Neutrophil-Ultrastructure, commit d7c7fde)
does.

Rendering (emdata's rule; the dataset's mask code was never published): pixel ``(row i,
column j)`` belongs to an ellipse when its centre ``(j + 0.5, i + 0.5)`` lies inside or on
it, tested as ``(dx·ry)² + (dy·rx)² ≤ (rx·ry)²`` (exact for half-pixel geometry). An
ellipse that covers no pixel centre (a box narrower than one pixel) marks the pixel that
holds its centre, so every annotation stays visible. Annotations are drawn in order, so
where they overlap **the later annotation is on top** (its instance id and class win).

Example:
    >>> inst, sem = render_ellipses([Ellipse.from_bbox([1, 1, 4, 2])], [2], (6, 8))
    >>> int(inst.sum()), int(sem.max())
    (8, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from emdata.formats.coco import AnnotationFormatError, annotations_by_image, load_coco
from emdata.formats.cvat import (
    Colour,
    CvatDocument,
    Ellipse,
    bbox_strings,
    coco_to_cvat,
    cvat_to_coco,
    cvat_to_string,
    parse_cvat_tree,
    read_cvat,
    relabel_cvat,
    write_cvat,
)

__all__ = ["AnnotationFormatError", "Colour", "CvatDocument", "Ellipse", "annotations_by_image", "bbox_strings",
           "coco_to_cvat", "colour_mask", "cvat_to_coco", "cvat_to_string", "load_coco", "overlay",
           "parse_cvat_tree", "read_cvat", "relabel_cvat", "render_ellipses", "write_cvat"]


def render_ellipses(ellipses: Sequence[Ellipse], values: Sequence[int], shape: tuple[int, int],
                    instance_dtype: type = np.uint32, semantic_dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """(instances, semantic) masks of ``shape`` (y, x): instance ``k+1`` and class ``values[k]``
    for ellipse ``k``; later ellipses on top; 0 = background (rule in the module docstring)."""
    if len(ellipses) != len(values):
        raise ValueError(f"{len(ellipses)} ellipses but {len(values)} class values")
    height, width = shape
    inst = np.zeros(shape, dtype=instance_dtype)
    sem = np.zeros(shape, dtype=semantic_dtype)
    if len(ellipses) >= np.iinfo(instance_dtype).max:
        raise OverflowError(f"{len(ellipses)} ellipses do not fit instance dtype {np.dtype(instance_dtype)}")
    for k, (e, value) in enumerate(zip(ellipses, values)):
        reach = max(e.rx, e.ry) if e.rotation % 180 else None
        rx_box = reach if reach is not None else e.rx
        ry_box = reach if reach is not None else e.ry
        x0, x1 = max(0, math.floor(e.cx - rx_box - 0.5)), min(width, math.ceil(e.cx + rx_box + 0.5))
        y0, y1 = max(0, math.floor(e.cy - ry_box - 0.5)), min(height, math.ceil(e.cy + ry_box + 0.5))
        hit = None
        if x1 > x0 and y1 > y0 and e.rx > 0 and e.ry > 0:
            dx = (np.arange(x0, x1, dtype=np.float64) + 0.5 - e.cx)[None, :]
            dy = (np.arange(y0, y1, dtype=np.float64) + 0.5 - e.cy)[:, None]
            if e.rotation % 180:
                t = math.radians(e.rotation)
                dx, dy = dx * math.cos(t) + dy * math.sin(t), dy * math.cos(t) - dx * math.sin(t)
            hit = (dx * e.ry) ** 2 + (dy * e.rx) ** 2 <= (e.rx * e.ry) ** 2
        if hit is not None and hit.any():
            inst[y0:y1, x0:x1][hit] = k + 1
            sem[y0:y1, x0:x1][hit] = value
        else:
            i, j = math.floor(e.cy), math.floor(e.cx)
            if 0 <= i < height and 0 <= j < width:
                inst[i, j] = k + 1
                sem[i, j] = value
    return inst, sem


def colour_mask(semantic: np.ndarray, palette: Mapping[int, Colour]) -> np.ndarray:
    """Class ids (y, x) → RGB uint8 (y, x, 3); 0 and ids without a colour stay black.

    Example:
        >>> colour_mask(np.array([[0, 1]]), {1: (255, 0, 0)}).tolist()
        [[[0, 0, 0], [255, 0, 0]]]
    """
    lut = np.zeros((max([*palette, int(semantic.max(initial=0))]) + 1, 3), dtype=np.uint8)
    for value, rgb in palette.items():
        lut[value] = rgb
    return lut[semantic]


def overlay(image: np.ndarray, semantic: np.ndarray, palette: Mapping[int, Colour], alpha: float = 0.45) -> np.ndarray:
    """Image blended with the colour mask where a class is drawn: RGB uint8 (y, x, 3).

    Greyscale or RGB(A) input; non-8-bit images are min–max scaled to 0–255 first.

    Example:
        >>> overlay(np.full((1, 2), 100, np.uint8), np.array([[0, 1]]), {1: (200, 0, 0)}, alpha=0.5).tolist()
        [[[100, 100, 100], [150, 50, 50]]]
    """
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3] if img.shape[2] >= 3 else img[..., :1].repeat(3, axis=2)
    else:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        lo, hi = float(img.min(initial=0)), float(img.max(initial=0))
        img = ((img.astype(np.float64) - lo) * (255.0 / (hi - lo if hi > lo else 1.0))).round().astype(np.uint8)
    if img.shape[:2] != semantic.shape:
        raise ValueError(f"image shape {img.shape[:2]} differs from the mask shape {semantic.shape}")
    colours = colour_mask(semantic, palette).astype(np.float64)
    out = img.astype(np.float64)
    drawn = semantic > 0
    out[drawn] = (1 - alpha) * out[drawn] + alpha * colours[drawn]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
