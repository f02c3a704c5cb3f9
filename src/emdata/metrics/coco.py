"""COCO mask mAP through pycocotools (``COCOeval``, iouType "segm"), as used for TEM-NeutroStruct.

Label images are turned into COCO annotations (one per nonzero id per 2D image; a 3D array is a
stack of images along axis 0) with RLE masks from ``pycocotools.mask.encode``; the scores are
pycocotools' own ``COCOeval.stats`` (Lin et al., ECCV 2014; cocodataset/cocoapi
``PythonAPI/pycocotools/cocoeval.py``). pycocotools is an optional dependency: install the
"eval" extra (``pip install 'emdata[eval]'``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emdata.metrics._contingency import check_same_shape
from emdata.metrics._result import result, voxel_size_list

COCO_SOURCE = "cocodataset/cocoapi PythonAPI/pycocotools/cocoeval.py (COCOeval, iouType 'segm'); Lin et al. 2014"
STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_max", "mar_small", "mar_medium", "mar_large")


def _pycocotools() -> tuple[Any, Any, Any]:
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # optional heavy dependency
        raise ImportError("COCO mAP needs pycocotools, which is not installed: pip install 'emdata[eval]' "
                          "(or pip install pycocotools)") from err
    return COCO, COCOeval, mask_utils


def _lookup(table: Mapping[int, Any] | None, key: int, default: Any, what: str) -> Any:
    if table is None:
        return default
    try:
        return table[key]
    except KeyError:
        raise ValueError(f"{what} has no entry for instance id {key}; give one for every nonzero id") from None


def _annotations(labels: np.ndarray, classes: Mapping[int, int] | None, scores: Mapping[int, float] | None,
                 mask_utils: Any, *, is_gt: bool) -> list[dict[str, Any]]:
    from scipy import ndimage

    images = labels[None] if labels.ndim == 2 else labels
    out: list[dict[str, Any]] = []
    for image_id, image in enumerate(images):
        ids, dense = np.unique(image, return_inverse=True)
        dense = dense.reshape(image.shape)
        buffer = np.zeros(image.shape, dtype=np.uint8, order="F")
        # find_objects' entry k is label k + 1: shift so that every id (also ids[0]) has a box
        for k, box in enumerate(ndimage.find_objects(dense.astype(np.int64) + 1)):
            if box is None or ids[k] == 0:
                continue
            buffer[box] = dense[box] == k
            rle = mask_utils.encode(buffer)
            buffer[box] = 0
            rle["counts"] = rle["counts"].decode("ascii")
            ann = {"image_id": image_id, "category_id": int(_lookup(classes, int(ids[k]), 1, "the class mapping")),
                   "segmentation": rle, "instance_id": int(ids[k])}
            if is_gt:
                ann.update(area=float(mask_utils.area(rle)), bbox=[float(v) for v in mask_utils.toBbox(rle)],
                           iscrowd=0, id=len(out) + 1)
            else:
                ann["score"] = float(_lookup(scores, int(ids[k]), 1.0, "scores"))
            out.append(ann)
    return out


def coco_map(gt: Any, pred: Any, *, voxel_size: Sequence[float] | None = None,
             scores: Mapping[int, float] | None = None, gt_classes: Mapping[int, int] | None = None,
             pred_classes: Mapping[int, int] | None = None, max_dets: int = 100) -> dict[str, Any]:
    """COCO mask mAP@[.5:.95], mAP@.5, mAP@.75, by size, and mean recall, from pycocotools' COCOeval.

    ``gt`` and ``pred``: instance label images (2D, or 3D = one image per z section), 0 = background;
    or ``gt`` a COCO dataset dict and ``pred`` a list of COCO result dicts, passed through as they
    are. ``scores`` maps prediction ids to confidences (default 1.0 for all: ranking then follows
    id order); ``gt_classes``/``pred_classes`` map ids to category ids (default: one category, 1).
    ``max_dets`` is COCO's per-image detection cap (COCO uses 100; images with more objects,
    e.g. ~250 granules per TEM-NeutroStruct image, need a larger value to be scored fully).
    Stats COCO reports as -1 (no ground truth in that range) are None.

    >>> gt = np.zeros((8, 8), np.uint16); gt[:4, :4] = 1; gt[4:, 4:] = 2
    >>> pred = gt.copy(); pred[pred == 2] = 0  # one of two objects found, exactly
    >>> r = coco_map(gt, pred, scores={1: 0.9})
    >>> round(r["map"], 4), round(r["mar_max"], 4)
    (0.505, 0.5)
    """
    coco_cls, coco_eval, mask_utils = _pycocotools()
    if isinstance(gt, Mapping):
        dataset = dict(gt)
        results = list(pred)
        vs = voxel_size_list(voxel_size)
    else:
        gt_arr, pred_arr = np.asarray(gt), np.asarray(pred)
        check_same_shape(gt_arr, pred_arr)
        if gt_arr.ndim not in (2, 3):
            raise ValueError("COCO mAP scores 2D images: give (y, x) or (z, y, x) label arrays, got shape "
                             f"{gt_arr.shape}")
        for name, arr in (("gt", gt_arr), ("pred", pred_arr)):
            if arr.dtype.kind not in "iub":
                raise TypeError(f"{name} has dtype {arr.dtype}, expected integer instance labels")
        vs = voxel_size_list(voxel_size, gt_arr.ndim)
        height, width = gt_arr.shape[-2:]
        n_images = 1 if gt_arr.ndim == 2 else gt_arr.shape[0]
        anns = _annotations(gt_arr, gt_classes, None, mask_utils, is_gt=True)
        results = _annotations(pred_arr, pred_classes, scores, mask_utils, is_gt=False)
        cats = sorted({a["category_id"] for a in anns} | {r["category_id"] for r in results} | {1})
        dataset = {"images": [{"id": i, "height": int(height), "width": int(width)} for i in range(n_images)],
                   "annotations": anns, "categories": [{"id": c, "name": str(c)} for c in cats]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = coco_cls()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        stats = [-1.0] * len(STAT_NAMES)
        if results:
            coco_dt = coco_gt.loadRes(results)
            evaluator = coco_eval(coco_gt, coco_dt, iouType="segm")
            evaluator.params.maxDets = [1, 10, int(max_dets)]
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            stats = [float(s) for s in evaluator.stats]
        elif dataset.get("annotations"):
            stats = [0.0] * len(STAT_NAMES)  # ground truth but no detection: nothing found
    values: dict[str, Any] = {k: (None if v < 0 else v) for k, v in zip(STAT_NAMES, stats)}
    values.update(n_true=len(dataset.get("annotations", [])), n_pred=len(results))
    conventions = {"iou_type": "segm", "iou_thresholds": "0.50:0.05:0.95", "max_dets": int(max_dets),
                   "images": "one per z section (axis 0)", "area": "pixels (COCO small < 32^2 <= medium < 96^2)",
                   "source": COCO_SOURCE}
    return result("coco-map", "coco-map@1", values, conventions, vs)
