"""Instance scores of MitoEM: one-to-one matching accuracy at IoU >= 0.75 (current) and AP-75 (legacy).

- Accuracy = TP / (TP + FP + FN) after one-to-one matching of ground-truth and predicted instances
  at an IoU threshold: the metric mitoem.grand-challenge.org/Evaluation ranks by since the
  challenge's re-opening, computed there with the TIMISE toolbox (danifranco/TIMISE
  ``timise/matching.py``, itself adapted from stardist's ``matching.py``); Franco-Barranco et al.,
  IEEE TMI 42(12), 2023.
- AP-75: the original MitoEM metric (Wei et al., MICCAI 2020) as computed by the mAP_3Dvolume tool
  (ygCoconut/mAP_3Dvolume ``vol3d_util.py``/``vol3d_eval.py``): COCO-style average precision
  over predictions ranked by a confidence score, at IoU 0.75, 101 recall points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from emdata.metrics._contingency import check_same_shape, contingency
from emdata.metrics._result import result, voxel_size_list

TIMISE_SOURCE = ("mitoem.grand-challenge.org/Evaluation; danifranco/TIMISE timise/matching.py (stardist matching: "
                 "Hungarian assignment maximising matches with IoU >= threshold)")
MAP3D_SOURCE = "ygCoconut/mAP_3Dvolume vol3d_util.py @ 03036af, vol3d_eval.py @ 083b788 (Wei et al., MICCAI 2020)"


class _Overlaps:
    """Instance sizes and pairwise intersections of two label volumes (0 = background), from one table."""

    def __init__(self, gt: Any, pred: Any) -> None:
        check_same_shape(gt, pred)
        t = contingency(gt, pred)
        g_fg, p_fg = t.gt != 0, t.pred != 0
        self.gt_ids, g_inv = np.unique(t.gt[g_fg], return_inverse=True)
        self.pred_ids, p_inv = np.unique(t.pred[p_fg], return_inverse=True)
        self.gt_sizes = np.bincount(g_inv.reshape(-1), weights=t.counts[g_fg], minlength=len(self.gt_ids))
        self.pred_sizes = np.bincount(p_inv.reshape(-1), weights=t.counts[p_fg], minlength=len(self.pred_ids))
        both = g_fg & p_fg
        self.rows = np.searchsorted(self.gt_ids, t.gt[both])
        self.cols = np.searchsorted(self.pred_ids, t.pred[both])
        inter = t.counts[both].astype(np.float64)
        self.iou = inter / (self.gt_sizes[self.rows] + self.pred_sizes[self.cols] - inter)


def _match(ov: _Overlaps, threshold: float) -> tuple[int, float]:
    """(number of one-to-one matches with IoU >= threshold, sum of their IoUs)."""
    cand = ov.iou >= threshold
    rows, cols, ious = ov.rows[cand], ov.cols[cand], ov.iou[cand]
    if rows.size == 0:
        return 0, 0.0
    if np.unique(rows).size == rows.size and np.unique(cols).size == cols.size:
        return int(rows.size), float(ious.sum())  # no conflicts (always so for threshold > 0.5)
    from scipy.optimize import linear_sum_assignment

    r_ids, r = np.unique(rows, return_inverse=True)
    c_ids, c = np.unique(cols, return_inverse=True)
    score = np.zeros((len(r_ids), len(c_ids)))
    score[r, c] = ious
    n_matched = min(score.shape)
    # stardist/TIMISE: maximise the number of matches, IoU as tie-breaker
    costs = -(score >= threshold).astype(np.float64) - score / (2 * n_matched)
    ri, ci = linear_sum_assignment(costs)
    ok = score[ri, ci] >= threshold
    return int(np.count_nonzero(ok)), float(score[ri, ci][ok].sum())


def instance_matching(gt: Any, pred: Any, iou_threshold: float = 0.75, *,
                      voxel_size: Sequence[float] | None = None) -> dict[str, Any]:
    """One-to-one instance matching at ``iou_threshold``: MitoEM's accuracy TP / (TP + FP + FN) and friends.

    Instances are the nonzero ids of each volume. A ground-truth and a predicted instance match when
    their IoU >= ``iou_threshold``; the matching maximises the number of matches (Hungarian, as in
    TIMISE/stardist; above 0.5 it is unique). FP = unmatched predictions, FN = unmatched ground
    truth. As in TIMISE, precision/recall/accuracy/F1 are 0 when TP = 0; all are None when neither
    volume has an instance. ``panoptic_quality`` = sum of matched IoUs / (TP + FP/2 + FN/2).

    >>> gt = np.array([1, 1, 1, 1, 2, 2, 0, 0])
    >>> pred = np.array([5, 5, 5, 5, 6, 0, 0, 7])  # 1<->5 IoU 1; 2<->6 IoU 0.5; 7 unmatched
    >>> r = instance_matching(gt, pred)
    >>> r["tp"], r["fp"], r["fn"], r["accuracy"]
    (1, 2, 1, 0.25)
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    vs = voxel_size_list(voxel_size, len(np.shape(gt)))
    ov = _Overlaps(gt, pred)
    n_true, n_pred = len(ov.gt_ids), len(ov.pred_ids)
    tp, iou_sum = _match(ov, float(iou_threshold))
    fp, fn = n_pred - tp, n_true - tp
    values: dict[str, Any]
    if n_true == 0 and n_pred == 0:
        values = {"accuracy": None, "precision": None, "recall": None, "f1": None, "panoptic_quality": None}
    else:
        values = {"accuracy": tp / (tp + fp + fn) if tp else 0.0, "precision": tp / (tp + fp) if tp else 0.0,
                  "recall": tp / (tp + fn) if tp else 0.0, "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
                  "panoptic_quality": iou_sum / (tp + fp / 2 + fn / 2) if tp else 0.0}
    values.update({"tp": tp, "fp": fp, "fn": fn, "n_true": n_true, "n_pred": n_pred,
                   "mean_matched_iou": iou_sum / tp if tp else None, "iou_threshold": float(iou_threshold)})
    conventions = {"background": 0, "matching": "one-to-one, maximum number of matches (Hungarian)",
                   "zero_tp": "precision/recall/accuracy/f1 = 0 as in TIMISE", "source": TIMISE_SOURCE}
    return result("instance-accuracy", "mitoem-accuracy@1", values, conventions, vs)


def _scores_for(ids: np.ndarray, sizes: np.ndarray, scores: Mapping[int, float] | np.ndarray | None) -> np.ndarray:
    if scores is None:
        return sizes.astype(np.float64)  # mAP_3Dvolume's default when no score file is given: instance size
    if isinstance(scores, Mapping):
        table = {int(k): float(v) for k, v in scores.items()}
    else:
        arr = np.asarray(scores)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise ValueError(f"scores must be a mapping {{pred id: score}} or an (N, 2) array of (id, score) rows, "
                             f"got an array of shape {arr.shape}")
        table = {int(i): float(s) for i, s in arr.tolist()}
    missing = [int(i) for i in ids if int(i) not in table]
    if missing:
        raise ValueError(f"{len(missing)} predicted instance(s) have no score (first ids: {missing[:5]}); give a "
                         "score for every nonzero prediction id, or scores=None to rank by instance size")
    extra = sorted(set(table) - {int(i) for i in ids} - {0})
    if extra:
        raise ValueError(f"scores name {len(extra)} id(s) absent from the prediction (first: {extra[:5]}); "
                         "score the prediction volume the scores were computed for")
    return np.array([table[int(i)] for i in ids], dtype=np.float64)


def average_precision(gt: Any, pred: Any, scores: Mapping[int, float] | np.ndarray | None = None, *,
                      iou_threshold: float = 0.75, voxel_size: Sequence[float] | None = None) -> dict[str, Any]:
    """MitoEM's legacy AP-75: average precision of ranked predicted instances at IoU >= ``iou_threshold``.

    Reproduces mAP_3Dvolume (area range "all"): each predicted instance, in order of decreasing
    ``scores`` (ties by increasing id; default score: the instance's size in voxels, as the tool
    does without a score file) is a true positive when its best-overlapping ground-truth instance
    has IoU >= the threshold. Precision is made monotone and read at the 101 recall points
    0, 0.01, ..., 1 (0 beyond the last recall reached); AP is their mean. Like the tool, a
    ground-truth instance is not removed once matched: at thresholds > 0.5 no two predictions can
    match it anyway. None when the ground truth has no instance.

    >>> gt = np.array([1, 1, 2, 2, 3, 3])
    >>> pred = np.array([4, 4, 5, 5, 6, 0])  # two exact hits and one 50 % overlap
    >>> average_precision(gt, pred, {4: 0.9, 5: 0.8, 6: 0.7})["ap"]  # precision 1 up to recall 2/3
    0.6633663366336634
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    vs = voxel_size_list(voxel_size, len(np.shape(gt)))
    ov = _Overlaps(gt, pred)
    score = _scores_for(ov.pred_ids, ov.pred_sizes, scores)
    best = np.zeros(len(ov.pred_ids))
    if ov.iou.size:
        np.maximum.at(best, ov.cols, ov.iou)
    order = np.lexsort((ov.pred_ids, -score))  # decreasing score, then increasing id
    hit = best[order] >= float(iou_threshold)
    n_gt = len(ov.gt_ids)
    ap: float | None = None
    if n_gt:
        tp = np.cumsum(hit).astype(np.float64)
        fp = np.cumsum(~hit).astype(np.float64)
        recall = tp / n_gt
        precision = tp / (tp + fp + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
        rec_thresholds = 0.01 * np.arange(0, 101)  # mAP_3Dvolume's recThrs
        idx = np.searchsorted(recall, rec_thresholds, side="left")
        q = np.where(idx < precision.size, precision[np.minimum(idx, max(precision.size - 1, 0))]
                     if precision.size else 0.0, 0.0)
        ap = float(np.mean(q))
    n_tp = int(np.count_nonzero(hit))
    values = {"ap": ap, "iou_threshold": float(iou_threshold), "tp": n_tp, "fp": int(hit.size - n_tp),
              "n_true": n_gt, "n_pred": len(ov.pred_ids)}
    conventions = {"background": 0, "ranking": "decreasing score, ties by increasing id" if scores is not None
                   else "decreasing instance size (no scores given), ties by increasing id",
                   "recall_points": "0:0.01:1 (101)", "area_range": "all", "source": MAP3D_SOURCE}
    return result("ap75", f"mitoem-ap{round(float(iou_threshold) * 100)}@1", values, conventions, vs)
