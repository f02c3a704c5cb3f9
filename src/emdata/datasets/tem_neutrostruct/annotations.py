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

__all__ = ["AnnotationFormatError", "Colour", "CvatDocument", "Ellipse", "EllipseMasks", "annotations_by_image",
           "bbox_strings", "coco_to_cvat", "colour_mask", "cvat_to_coco", "cvat_to_string", "load_coco", "overlay",
           "parse_cvat_tree", "read_cvat", "relabel_cvat", "render_ellipses", "write_cvat"]


def _hit(e: Ellipse, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
    """Which pixel centres of rows ``ys`` and columns ``xs`` lie inside or on ``e``."""
    dx = (np.arange(xs[0], xs[1], dtype=np.float64) + 0.5 - e.cx)[None, :]
    dy = (np.arange(ys[0], ys[1], dtype=np.float64) + 0.5 - e.cy)[:, None]
    if e.rotation % 180:
        t = math.radians(e.rotation)
        dx, dy = dx * math.cos(t) + dy * math.sin(t), dy * math.cos(t) - dx * math.sin(t)
    return (dx * e.ry) ** 2 + (dy * e.rx) ** 2 <= (e.rx * e.ry) ** 2


def render_ellipses(ellipses: Sequence[Ellipse], values: Sequence[int], shape: tuple[int, int],
                    instance_dtype: type = np.uint32, semantic_dtype: type = np.uint8,
                    window: tuple[slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(instances, semantic) masks of ``shape`` (y, x): instance ``k+1`` and class ``values[k]``
    for ellipse ``k``; later ellipses on top; 0 = background (rule in the module docstring).
    ``window`` (rows, columns) renders only that part of the masks, with the same voxels.

    Example:
        >>> ellipses = [Ellipse.from_bbox([1, 1, 4, 2]), Ellipse.from_bbox([3.1, 4.1, 0.2, 0.2])]
        >>> whole = render_ellipses(ellipses, [2, 5], (6, 8))[1]
        >>> part = render_ellipses(ellipses, [2, 5], (6, 8), window=(slice(2, 5), slice(3, 6)))[1]
        >>> bool((part == whole[2:5, 3:6]).all()), part.tolist()
        (True, [[2, 2, 0], [0, 0, 0], [5, 0, 0]])
    """
    if len(ellipses) != len(values):
        raise ValueError(f"{len(ellipses)} ellipses but {len(values)} class values")
    height, width = shape
    (wy0, wy1, _), (wx0, wx1, _) = (window[0].indices(height), window[1].indices(width)) if window else \
        ((0, height, 1), (0, width, 1))
    wy1, wx1 = max(wy0, wy1), max(wx0, wx1)
    inst = np.zeros((wy1 - wy0, wx1 - wx0), dtype=instance_dtype)
    sem = np.zeros((wy1 - wy0, wx1 - wx0), dtype=semantic_dtype)
    if len(ellipses) >= np.iinfo(instance_dtype).max:
        raise OverflowError(f"{len(ellipses)} ellipses do not fit instance dtype {np.dtype(instance_dtype)}")
    for k, (e, value) in enumerate(zip(ellipses, values)):
        reach = max(e.rx, e.ry) if e.rotation % 180 else None
        rx_box = reach if reach is not None else e.rx
        ry_box = reach if reach is not None else e.ry
        x0, x1 = max(0, math.floor(e.cx - rx_box - 0.5)), min(width, math.ceil(e.cx + rx_box + 0.5))
        y0, y1 = max(0, math.floor(e.cy - ry_box - 0.5)), min(height, math.ceil(e.cy + ry_box + 0.5))
        i, j = math.floor(e.cy), math.floor(e.cx)
        centre_here = wy0 <= i < wy1 and wx0 <= j < wx1 and 0 <= i < height and 0 <= j < width
        ya, yb, xa, xb = max(y0, wy0), min(y1, wy1), max(x0, wx0), min(x1, wx1)
        drawable = x1 > x0 and y1 > y0 and e.rx > 0 and e.ry > 0
        if drawable and yb > ya and xb > xa:
            hit = _hit(e, (ya, yb), (xa, xb))
            if hit.any():
                inst[ya - wy0:yb - wy0, xa - wx0:xb - wx0][hit] = k + 1
                sem[ya - wy0:yb - wy0, xa - wx0:xb - wx0][hit] = value
                continue
        if centre_here and not (drawable and _hit(e, (y0, y1), (x0, x1)).any()):
            inst[i - wy0, j - wx0] = k + 1  # covers no pixel centre: mark the pixel holding its centre
            sem[i - wy0, j - wx0] = value
    return inst, sem


class EllipseMasks:
    """One of the two masks of :func:`render_ellipses` (``which``: ``"instances"`` or ``"semantic"``)
    as a ``(1, y, x)`` array source: each box renders only the ellipses that reach it.

    Example:
        >>> src = EllipseMasks([Ellipse.from_bbox([1, 1, 4, 2])], [2], (6, 8), "semantic")
        >>> src.shape, src.dtype, src.read((slice(0, 1), slice(1, 3), slice(0, 3))).tolist()
        ((1, 6, 8), dtype('uint8'), [[[0, 2, 2], [0, 2, 2]]])
    """

    def __init__(self, ellipses: Sequence[Ellipse], values: Sequence[int], shape: tuple[int, int], which: str,
                 instance_dtype: type = np.uint32, semantic_dtype: type = np.uint8) -> None:
        if which not in ("instances", "semantic"):
            raise ValueError(f"which must be 'instances' or 'semantic', got {which!r}")
        self.ellipses, self.values, self.which = list(ellipses), [int(v) for v in values], which
        self.plane, self.dtypes = (int(shape[0]), int(shape[1])), (instance_dtype, semantic_dtype)
        self.shape = (1, *self.plane)
        self.dtype = np.dtype(instance_dtype if which == "instances" else semantic_dtype)

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        z0, z1, _ = box[0].indices(1)
        inst, sem = render_ellipses(self.ellipses, self.values, self.plane, *self.dtypes, window=(box[1], box[2]))
        mask = inst if self.which == "instances" else sem
        return np.repeat(mask[None], max(0, z1 - z0), axis=0)


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
