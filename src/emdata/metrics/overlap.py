"""Dice and IoU of foreground masks and of semantic classes, with an ignore value.

Counts come from the chunked contingency table, so a semantic volume of any size is scored slab
by slab. Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN); both are undefined (None) when
TP + FP + FN = 0, i.e. neither mask has the class, as nnU-Net's evaluation does
(MIC-DKFZ/nnUNet ``nnunetv2/evaluation/evaluate_predictions.py``, which returns NaN there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emdata.metrics import _contingency
from emdata.metrics._contingency import Contingency, check_same_shape, contingency, dtype_of, slabs
from emdata.metrics._result import ratio, result, voxel_size_list

NNUNET_SOURCE = "MIC-DKFZ/nnUNet nnunetv2/evaluation/evaluate_predictions.py (NaN when TP+FP+FN = 0)"


def _counts(table: Contingency, cls: int, ignore: int | None) -> tuple[int, int, int]:
    keep = np.ones(table.gt.shape, dtype=bool) if ignore is None else ~_equals(table.gt, ignore)
    g, p, c = table.gt[keep], table.pred[keep], table.counts[keep]
    in_g, in_p = _equals(g, cls), _equals(p, cls)
    return int(c[in_g & in_p].sum()), int(c[~in_g & in_p].sum()), int(c[in_g & ~in_p].sum())


def _equals(ids: np.ndarray, value: int) -> np.ndarray:
    if ids.dtype.kind in "iu":
        info = np.iinfo(ids.dtype)
        if not info.min <= int(value) <= info.max:
            return np.zeros(ids.shape, dtype=bool)
        return ids == np.asarray(value).astype(ids.dtype)
    return ids == value


def _mask_scores(gt_mask: Any, pred_mask: Any, ignore: int | None) -> dict[str, Any]:
    """TP/FP/FN of two foreground masks, slab by slab along axis 0 (bounded memory)."""
    shape = check_same_shape(gt_mask, pred_mask, ("gt_mask", "pred_mask"))
    for name, array in (("gt_mask", gt_mask), ("pred_mask", pred_mask)):
        dtype = dtype_of(array)
        if dtype.kind not in "iub":
            raise TypeError(f"{name} has dtype {dtype}, expected bool or integer; threshold probabilities "
                            "first (e.g. pred > 0.5)")
    tp = fp = fn = 0
    for index in slabs(shape, _contingency.SLAB_VOXELS):
        g = np.asarray(gt_mask[index])
        p = np.asarray(pred_mask[index]) != 0
        fg = g != 0
        if ignore is not None:
            keep = ~_equals(g, ignore)
            fg &= keep
            p = p & keep
        both = int(np.count_nonzero(fg & p))
        tp += both
        fp += int(np.count_nonzero(p)) - both
        fn += int(np.count_nonzero(fg)) - both
    return {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn), "tp": tp, "fp": fp, "fn": fn}


def _mask_conventions(ignore: int | None) -> dict[str, Any]:
    return {"foreground": "value != 0", "ignore": ignore, "empty": "None when TP+FP+FN = 0", "source": NNUNET_SOURCE}


def dice(gt_mask: Any, pred_mask: Any, *, voxel_size: Sequence[float] | None = None,
         ignore: int | None = None) -> dict[str, Any]:
    """Dice coefficient of two foreground masks (nonzero = foreground); gt voxels equal to ``ignore`` are skipped.

    >>> r = dice(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))
    >>> r["dice"], r["tp"], r["fp"], r["fn"]
    (0.5, 1, 1, 1)
    """
    vs = voxel_size_list(voxel_size, len(np.shape(gt_mask)))
    values = _mask_scores(gt_mask, pred_mask, ignore)
    return result("dice", "dice@1", {"dice": values["dice"], "tp": values["tp"], "fp": values["fp"],
                                     "fn": values["fn"]}, _mask_conventions(ignore), vs)


def iou(gt_mask: Any, pred_mask: Any, *, voxel_size: Sequence[float] | None = None,
        ignore: int | None = None) -> dict[str, Any]:
    """Intersection over union (Jaccard) of two foreground masks; gt voxels equal to ``ignore`` are skipped.

    >>> iou(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]))["iou"]
    0.3333333333333333
    """
    vs = voxel_size_list(voxel_size, len(np.shape(gt_mask)))
    values = _mask_scores(gt_mask, pred_mask, ignore)
    return result("iou", "iou@1", {"iou": values["iou"], "tp": values["tp"], "fp": values["fp"], "fn": values["fn"]},
                  _mask_conventions(ignore), vs)


def per_class_overlap(gt: Any, pred: Any, *, voxel_size: Sequence[float] | None = None,
                      classes: Sequence[int] | None = None, ignore: int | None = None,
                      background: int | None = 0) -> dict[str, Any]:
    """Dice and IoU per semantic class, and their means over the classes where they are defined.

    ``classes`` defaults to every value present in ``gt`` or ``pred`` except ``background`` and
    ``ignore``. Voxels whose ground truth equals ``ignore`` are skipped (whatever the prediction).
    Keys of ``per_class`` are the class values as strings (JSON object keys).

    >>> r = per_class_overlap(np.array([1, 1, 2, 2, 0]), np.array([1, 2, 2, 2, 0]))
    >>> r["per_class"]["1"]["dice"], r["per_class"]["2"]["iou"], round(r["mean_dice"], 4)
    (0.6666666666666666, 0.6666666666666666, 0.7333)
    """
    vs = voxel_size_list(voxel_size, len(np.shape(gt)))
    check_same_shape(gt, pred)
    table = contingency(gt, pred)
    if classes is None:
        present = {int(v) for v in np.unique(table.gt)} | {int(v) for v in np.unique(table.pred)}
        present -= {v for v in (background, ignore) if v is not None}
        classes = sorted(present)
    per_class: dict[str, dict[str, Any]] = {}
    for cls in classes:
        tp, fp, fn = _counts(table, int(cls), ignore)
        per_class[str(int(cls))] = {"dice": ratio(2 * tp, 2 * tp + fp + fn), "iou": ratio(tp, tp + fp + fn),
                                    "tp": tp, "fp": fp, "fn": fn}
    dices = [v["dice"] for v in per_class.values() if v["dice"] is not None]
    ious = [v["iou"] for v in per_class.values() if v["iou"] is not None]
    values = {"mean_dice": float(np.mean(dices)) if dices else None,
              "mean_iou": float(np.mean(ious)) if ious else None, "per_class": per_class}
    conventions = {"classes": [int(c) for c in classes], "ignore": ignore, "background": background,
                   "mean": "unweighted over classes with a defined value", "empty": "None when TP+FP+FN = 0",
                   "source": NNUNET_SOURCE}
    return result("dice-per-class", "per-class-overlap@1", values, conventions, vs)
