"""Golden tests of Dice/IoU (masks and per class) and of the CREMI cleft distances.

Expected values are hand counts written out below, and, for clefts, the organisers' formulation
(cremi/cremi_python ``cremi/evaluation/Clefts.py`` @ 4bd2f54: a full-volume
``scipy.ndimage.distance_transform_edt`` with ``sampling`` = the voxel size), recomputed here
independently of emdata's k-d tree.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from emdata.metrics import METRICS, cleft_distances, dice, iou, per_class_overlap

U63 = 2**63
UMAX = 2**64 - 1

# (case, gt mask, pred mask, ignore, tp, fp, fn) counted by hand
HAND_MASKS = [
    ("identical", [1, 1, 0, 0], [1, 1, 0, 0], None, 2, 0, 0),
    ("any nonzero is foreground", [3, 3, 0, 0], [7, 9, 0, 0], None, 2, 0, 0),
    ("disjoint", [1, 1, 0, 0], [0, 0, 1, 1], None, 0, 2, 2),
    ("half overlap", [1, 1, 0, 0], [1, 0, 1, 0], None, 1, 1, 1),
    ("all-zero prediction", [1, 1, 0, 0], [0, 0, 0, 0], None, 0, 0, 2),
    ("empty gt", [0, 0, 0, 0], [0, 1, 1, 0], None, 0, 2, 0),
    ("both empty", [0, 0, 0], [0, 0, 0], None, 0, 0, 0),
    ("single voxel", [0, 1, 0], [0, 1, 0], None, 1, 0, 0),
    ("ignore region", [255, 255, 1, 0], [1, 0, 1, 1], 255, 1, 1, 0),
    ("ignore covers all foreground", [255, 255, 0], [1, 1, 0], 255, 0, 0, 0),
    ("ignore value absent", [1, 0], [1, 1], 255, 1, 1, 0),
    ("bool masks", np.array([True, False]), np.array([True, True]), None, 1, 1, 0),
    ("uint64 ids >= 2**63", np.array([U63, 0], np.uint64), np.array([0, UMAX], np.uint64), None, 0, 1, 1),
    ("signed ignore -1, mixed dtypes", np.array([-1, 1, 1, 0], np.int8), np.array([1, 1, 0, 0], np.uint16), -1,
     1, 0, 1),
    ("3D shifted cube", np.pad(np.ones((2, 2, 2), int), ((0, 1), (0, 1), (0, 1))),
     np.pad(np.ones((2, 2, 2), int), ((1, 0), (0, 1), (0, 1))), None, 4, 4, 4),
    ("2D, 20 of 25", np.pad(np.ones((5, 5), int), ((0, 3), (0, 3))), np.pad(np.ones((5, 4), int), ((0, 3), (0, 4))),
     None, 20, 0, 5),
]


@pytest.mark.parametrize("case", HAND_MASKS, ids=[c[0] for c in HAND_MASKS])
def test_dice_and_iou_by_hand(case: tuple) -> None:
    _, gt, pred, ignore, tp, fp, fn = case
    d = dice(np.asarray(gt), np.asarray(pred), ignore=ignore)
    j = iou(np.asarray(gt), np.asarray(pred), ignore=ignore)
    assert (d["tp"], d["fp"], d["fn"]) == (tp, fp, fn) == (j["tp"], j["fp"], j["fn"])
    if tp + fp + fn == 0:
        assert d["dice"] is None and j["iou"] is None
    else:
        assert d["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert j["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert (d["version"], j["version"]) == ("dice@1", "iou@1")


# (case, gt, pred, ignore, classes, {class: (tp, fp, fn)}) counted by hand
HAND_CLASSES = [
    ("two classes", [1, 1, 2, 2, 0], [1, 2, 2, 2, 0], None, None, {1: (1, 0, 1), 2: (2, 1, 0)}),
    ("identical", [1, 2, 3, 0], [1, 2, 3, 0], None, None, {1: (1, 0, 0), 2: (1, 0, 0), 3: (1, 0, 0)}),
    ("relabelled classes are errors", [1, 1, 2, 2], [2, 2, 1, 1], None, None, {1: (0, 2, 2), 2: (0, 2, 2)}),
    ("absent class given", [1, 1, 0], [1, 0, 0], None, [1, 3], {1: (1, 0, 1), 3: (0, 0, 0)}),
    ("ignore value", [255, 1, 2], [2, 1, 2], 255, None, {1: (1, 0, 0), 2: (1, 0, 0)}),
    ("prediction background", [1, 1, 2], [0, 1, 0], None, None, {1: (1, 0, 1), 2: (0, 0, 1)}),
    ("all-zero prediction", [1, 2, 2], [0, 0, 0], None, None, {1: (0, 0, 1), 2: (0, 0, 2)}),
    ("empty gt", [0, 0, 0], [3, 3, 0], None, None, {3: (0, 2, 0)}),
    ("both empty", [0, 0], [0, 0], None, [1], {1: (0, 0, 0)}),
    ("class only predicted", [1, 1, 0], [1, 1, 4], None, None, {1: (2, 0, 0), 4: (0, 1, 0)}),
    ("ignore in prediction is a class", [1, 0], [255, 0], 255, None, {1: (0, 0, 1)}),
    ("uint16 classes", np.array([7, 7, 9], np.uint16), np.array([7, 9, 9], np.uint16), None, None,
     {7: (1, 0, 1), 9: (1, 1, 0)}),
    ("background class counted when asked", [0, 1, 1], [0, 0, 1], None, [0, 1], {0: (1, 1, 0), 1: (1, 0, 1)}),
    ("2D", np.array([[1, 2], [1, 2]]), np.array([[1, 1], [1, 2]]), None, None, {1: (2, 1, 0), 2: (1, 0, 1)}),
    ("3D with ignore", np.array([[[1, 5]], [[2, 5]]]), np.array([[[1, 1]], [[1, 1]]]), 5, None,
     {1: (1, 1, 0), 2: (0, 0, 1)}),
]


@pytest.mark.parametrize("case", HAND_CLASSES, ids=[c[0] for c in HAND_CLASSES])
def test_per_class_overlap_by_hand(case: tuple) -> None:
    _, gt, pred, ignore, classes, expected = case
    r = per_class_overlap(np.asarray(gt), np.asarray(pred), ignore=ignore, classes=classes)
    assert set(r["per_class"]) == {str(c) for c in expected}
    dices, ious = [], []
    for cls, (tp, fp, fn) in expected.items():
        got = r["per_class"][str(cls)]
        assert (got["tp"], got["fp"], got["fn"]) == (tp, fp, fn), cls
        if tp + fp + fn:
            dices.append(2 * tp / (2 * tp + fp + fn))
            ious.append(tp / (tp + fp + fn))
            assert got["dice"] == pytest.approx(dices[-1]) and got["iou"] == pytest.approx(ious[-1])
        else:
            assert got["dice"] is None and got["iou"] is None
    assert r["mean_dice"] == (pytest.approx(np.mean(dices)) if dices else None)
    assert r["mean_iou"] == (pytest.approx(np.mean(ious)) if ious else None)


def _cremi_clefts(gt: np.ndarray, pred: np.ndarray, res: tuple, threshold: float, background: int = 0,
                  invalid: int | None = None) -> dict:
    """The organisers' formulation: EDT of 'no cleft' with sampling = resolution, read at the other's clefts."""
    truth_invalid = gt == invalid if invalid is not None else np.zeros(gt.shape, bool)
    test_mask = (pred == background) | truth_invalid
    truth_mask = (gt == background) | truth_invalid
    test_edt = ndimage.distance_transform_edt(test_mask, sampling=res)
    truth_edt = ndimage.distance_transform_edt(truth_mask, sampling=res)
    fp = truth_edt[~test_mask]
    fn = test_edt[~truth_mask]
    return {"fp_count": int((fp > threshold).sum()), "fn_count": int((fn > threshold).sum()),
            "fp_mean": float(fp.mean()) if fp.size else None, "fn_mean": float(fn.mean()) if fn.size else None,
            "fp_median": float(np.median(fp)) if fp.size else None, "fp_max": float(fp.max()) if fp.size else None,
            "fn_std": float(fn.std()) if fn.size else None}


def _random_clefts(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = np.zeros((6, 30, 30), np.uint64)
    pred = np.zeros_like(gt)
    for k in range(int(rng.integers(1, 5))):
        z, y, x = rng.integers(0, 5), rng.integers(0, 26), rng.integers(0, 26)
        gt[z:z + 2, y:y + 4, x:x + 2] = U63 + k
        if rng.random() < 0.7:
            dz, dy, dx = rng.integers(-1, 2, 3)
            pred[max(z + dz, 0):z + dz + 2, max(y + dy, 0):y + dy + 4, max(x + dx, 0):x + dx + 3] = k + 1
    y, x = rng.integers(0, 28, 2)
    pred[int(rng.integers(0, 6)), y:y + 2, x:x + 2] = 99  # a false detection
    return gt, pred


@pytest.mark.parametrize("seed", range(10))
def test_cleft_distances_match_the_organisers_formulation(seed: int) -> None:
    gt, pred = _random_clefts(seed)
    res = (40.0, 4.0, 4.0)
    threshold = [10.0, 40.0, 200.0][seed % 3]
    expected = _cremi_clefts(gt, pred, res, threshold)
    r = cleft_distances(gt, pred, voxel_size=res, threshold_nm=threshold)
    assert (r["fp_count"], r["fn_count"]) == (expected["fp_count"], expected["fn_count"])
    assert r["fp_mean"] == pytest.approx(expected["fp_mean"], rel=1e-12)
    assert r["fn_mean"] == pytest.approx(expected["fn_mean"], rel=1e-12)
    assert r["fp_stats"]["median"] == pytest.approx(expected["fp_median"], rel=1e-12)
    assert r["fp_stats"]["max"] == pytest.approx(expected["fp_max"], rel=1e-12)
    assert r["fn_stats"]["std"] == pytest.approx(expected["fn_std"], rel=1e-9, abs=1e-9)


def _line(*xs: int, n: int = 8, z: int = 0) -> np.ndarray:
    a = np.zeros((3, 1, n), np.uint64)
    for x in xs:
        a[z, 0, x] = 5
    return a


@pytest.mark.parametrize(("gt", "pred", "res", "thr", "fp_count", "fn_count", "fp_mean", "fn_mean"), [
    (_line(1, 2), _line(1, 2), (40, 4, 4), 200, 0, 0, 0.0, 0.0),  # identical
    (_line(1, 2), _line(1, 2) * 3, (40, 4, 4), 200, 0, 0, 0.0, 0.0),  # other ids: ids do not matter
    (_line(1, 2), _line(1, 2, z=1), (40, 4, 4), 200, 0, 0, 40.0, 40.0),  # one section off: 40 nm (anisotropic)
    (_line(1, 2), _line(2, 3), (40, 4, 4), 3.9, 1, 1, 2.0, 2.0),  # one voxel off in x: 4 nm > 3.9
    (_line(1, 2), _line(2, 3), (40, 4, 4), 4.0, 0, 0, 2.0, 2.0),  # exactly at the threshold: not an error
    (_line(0), _line(0, 7), (40, 4, 4), 20, 1, 0, 14.0, 0.0),  # a detection 28 nm away
    (_line(0), _line(0, 7), (40, 4, 10), 20, 1, 0, 35.0, 0.0),  # same in 10 nm pixels
    (_line(0, 1), _line(0), (30, 6, 6), 200, 0, 0, 0.0, 3.0),  # a missed voxel 6 nm from a detection
])
def test_cleft_distances_by_hand(gt, pred, res, thr, fp_count, fn_count, fp_mean, fn_mean) -> None:
    r = cleft_distances(gt, pred, voxel_size=res, threshold_nm=thr)
    assert (r["fp_count"], r["fn_count"]) == (fp_count, fn_count)
    assert r["fp_mean"] == pytest.approx(fp_mean) and r["fn_mean"] == pytest.approx(fn_mean)


def test_cleft_distances_empty_sides() -> None:
    gt, empty = _line(1, 2), _line()
    r = cleft_distances(gt, empty, voxel_size=(40, 4, 4))  # nothing predicted: every gt voxel is missed
    assert (r["fp_count"], r["fn_count"], r["fp_mean"], r["fn_mean"]) == (0, 2, None, None)
    r = cleft_distances(empty, gt, voxel_size=(40, 4, 4))  # no gt cleft: every detection is false
    assert (r["fp_count"], r["fn_count"], r["fp_mean"], r["fn_mean"]) == (2, 0, None, None)
    r = cleft_distances(empty, empty, voxel_size=(40, 4, 4))
    assert (r["fp_count"], r["fn_count"], r["fp_mean"], r["fn_mean"]) == (0, 0, None, None)


def test_cleft_distances_cremi_sentinels() -> None:
    """CREMI files: 2**64-1 is 'no cleft', 2**64-2 'invalid' (no cleft in either volume)."""
    gt = np.full((2, 4, 6), UMAX, np.uint64)
    pred = np.full_like(gt, UMAX)
    gt[0, 1, 1:3] = 7
    gt[1, 1, 1:3] = UMAX - 1  # invalid
    pred[0, 1, 1:3] = 3
    pred[1, 1, 1:3] = 3  # detections on invalid voxels do not count
    expected = _cremi_clefts(gt, pred, (40, 4, 4), 200, background=UMAX, invalid=UMAX - 1)
    r = cleft_distances(gt, pred, voxel_size=(40, 4, 4), background=UMAX, invalid=UMAX - 1)
    assert (r["fp_count"], r["fn_count"], r["fp_mean"], r["fn_mean"]) == (0, 0, 0.0, 0.0)
    assert (r["fp_mean"], r["fn_mean"]) == (expected["fp_mean"], expected["fn_mean"])


def test_cleft_distances_need_a_voxel_size() -> None:
    with pytest.raises(ValueError, match="voxel_size"):
        METRICS["cleft-distance"](_line(1), _line(1))
    r = METRICS["cleft-distance"](_line(1), _line(1), voxel_size=(40, 4, 4))
    assert r["voxel_size"] == [40.0, 4.0, 4.0] and r["version"] == "cremi-clefts@1"
