"""Golden tests of the instance scores: MitoEM accuracy (hand counts), legacy AP-75 and COCO mAP (pycocotools).

Expected values come from hand computation written out below or from pycocotools 2.0.11
(``COCOeval``), never from emdata. AP-75 as computed by mAP_3Dvolume (ygCoconut/mAP_3Dvolume)
is COCO's average precision at one IoU threshold with 101 recall points; at IoU 0.75 its
best-overlap assignment equals COCO's greedy one-to-one matching (two disjoint predictions cannot
both overlap one object by more than half), so COCOeval is an independent oracle once the volume
is flattened to one 2D image (mask IoU depends only on voxel counts).
"""

from __future__ import annotations

import numpy as np
import pytest

from emdata.metrics import METRICS, average_precision, coco_map, instance_matching

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

U63 = 2**63

# (case, gt, pred, threshold, tp, fp, fn, sum of matched IoUs) worked out by hand
HAND_MATCHING = [
    ("identical", [1, 1, 2, 2], [1, 1, 2, 2], 0.75, 2, 0, 0, 2.0),
    ("relabelled", [1, 1, 2, 2], [5, 5, 9, 9], 0.75, 2, 0, 0, 2.0),
    ("merge", [1, 1, 2, 2], [3, 3, 3, 3], 0.75, 0, 1, 2, 0.0),  # IoU 2/4 each
    ("split", [1, 1, 1, 1], [1, 1, 2, 2], 0.75, 0, 2, 1, 0.0),  # IoU 2/4 each
    ("prediction zeros, IoU exactly 0.75", [1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 0, 2, 2, 2, 2], 0.75, 2, 0, 0, 1.75),
    ("IoU 3/5 below threshold", [1, 1, 1, 1, 0], [7, 7, 7, 0, 7], 0.75, 0, 1, 1, 0.0),
    ("all-zero prediction", [1, 1, 2, 2], [0, 0, 0, 0], 0.75, 0, 0, 2, 0.0),
    ("empty gt", [0, 0, 0, 0], [1, 1, 0, 0], 0.75, 0, 1, 0, 0.0),
    ("single object", [4] * 6, [9] * 6, 0.75, 1, 0, 0, 1.0),
    ("extra false positive", [1, 1, 2, 2, 0, 0], [1, 1, 2, 2, 3, 3], 0.75, 2, 1, 0, 2.0),
    ("missed object", [1, 1, 2, 2, 3, 3], [1, 1, 2, 2, 0, 0], 0.75, 2, 0, 1, 2.0),
    ("uint64 ids >= 2**63", np.array([U63, U63, 2**64 - 1, 2**64 - 1], np.uint64),
     np.array([U63 + 7, U63 + 7, 5, 5], np.uint64), 0.75, 2, 0, 0, 2.0),
    ("tie at 0.5: one-to-one", [1, 1, 1, 1], [5, 5, 6, 6], 0.5, 1, 1, 0, 0.5),
    # gt1 = {0..3}, gt2 = {4..7}; A = {2..5} has IoU 2/6 with both, B = {0, 1} IoU 2/4 with gt1:
    # the maximum matching is gt1-B, gt2-A (a greedy best-IoU pass would stop at one match)
    ("maximum matching at 0.25", [1, 1, 1, 1, 2, 2, 2, 2], [8, 8, 6, 6, 6, 6, 0, 0], 0.25, 2, 0, 0, 0.5 + 1 / 3),
    ("2D, mixed dtypes", np.array([[1, 1], [2, 2]], np.int16), np.array([[3, 3], [0, 4]], np.uint32), 0.75,
     1, 1, 1, 1.0),  # 2 vs 4: IoU 1/2
    ("3D", np.array([[[1, 1], [1, 1]], [[1, 1], [2, 2]]]), np.array([[[1, 1], [1, 1]], [[1, 0], [2, 2]]]), 0.75,
     2, 0, 0, 5 / 6 + 1.0),  # 1: 5 of 6 voxels, no extra
]


@pytest.mark.parametrize("case", HAND_MATCHING, ids=[c[0] for c in HAND_MATCHING])
def test_instance_matching_by_hand(case: tuple) -> None:
    _, gt, pred, thr, tp, fp, fn, iou_sum = case
    r = instance_matching(np.asarray(gt), np.asarray(pred), iou_threshold=thr)
    assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn)
    # TIMISE's definitions (0 when TP = 0)
    assert r["accuracy"] == pytest.approx(tp / (tp + fp + fn) if tp else 0.0)
    assert r["precision"] == pytest.approx(tp / (tp + fp) if tp else 0.0)
    assert r["recall"] == pytest.approx(tp / (tp + fn) if tp else 0.0)
    assert r["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert r["panoptic_quality"] == pytest.approx(iou_sum / (tp + fp / 2 + fn / 2) if tp else 0.0)
    assert r["version"] == "mitoem-accuracy@1" and r["metric"] == "instance-accuracy"


def test_instance_matching_both_empty_is_undefined() -> None:
    r = instance_matching(np.zeros(5, np.uint8), np.zeros(5, np.uint8))
    assert r["accuracy"] is None and (r["tp"], r["fp"], r["fn"]) == (0, 0, 0)


def _coco_ap(gt: np.ndarray, pred: np.ndarray, scores: dict[int, float], thr: float) -> float | None:
    """pycocotools' AP at one IoU threshold, all areas, no detection cap, 101 recall points as mAP_3Dvolume."""
    gt2 = np.asfortranarray(gt.reshape(-1, gt.shape[-1]) if gt.ndim > 1 else gt[None])
    pred2 = np.asfortranarray(pred.reshape(gt2.shape))
    anns = []
    for k, i in enumerate(i for i in np.unique(gt2) if i != 0):
        rle = mask_utils.encode(np.asfortranarray((gt2 == i).astype(np.uint8)))
        anns.append({"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": rle, "iscrowd": 0,
                     "area": float(mask_utils.area(rle)), "bbox": list(mask_utils.toBbox(rle))})
    dets = [{"image_id": 1, "category_id": 1, "score": scores[int(j)],
             "segmentation": mask_utils.encode(np.asfortranarray((pred2 == j).astype(np.uint8)))}
            for j in np.unique(pred2) if j != 0]
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "height": gt2.shape[0], "width": gt2.shape[1]}], "annotations": anns,
                    "categories": [{"id": 1, "name": "mito"}]}
    coco.createIndex()
    if not dets:
        return 0.0 if anns else None
    ev = COCOeval(coco, coco.loadRes(dets), iouType="segm")
    ev.params.iouThrs = np.array([thr])
    ev.params.recThrs = 0.01 * np.arange(0, 101)
    ev.params.maxDets = [10**6]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    p = ev.eval["precision"][0, :, 0, 0, 0]
    return None if (p < 0).all() else float(p.mean())


def _blobs(seed: int) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    """Boxes as instances; the prediction shifts, shrinks, drops and invents some; distinct scores."""
    rng = np.random.default_rng(seed)
    shape = (3, 40, 40)
    gt = np.zeros(shape, np.uint32)
    pred = np.zeros(shape, np.uint32)
    k = 0
    for i in range(int(rng.integers(1, 9))):
        z, y, x = rng.integers(0, 2), rng.integers(0, 34), rng.integers(0, 34)
        h, w = rng.integers(3, 7, 2)
        gt[z:z + 2, y:y + h, x:x + w] = i + 1
        if rng.random() < 0.8:
            dy, dx = rng.integers(-1, 2, 2)
            k += 1
            pred[z:z + 2, max(y + dy, 0):y + dy + h, max(x + dx, 0):x + dx + w] = 10 + k
    for _ in range(int(rng.integers(0, 3))):  # invented objects
        k += 1
        y, x = rng.integers(0, 36, 2)
        pred[2, y:y + 3, x:x + 3] = 10 + k
    ids = [int(j) for j in np.unique(pred) if j != 0]
    scores = dict(zip(ids, rng.permutation(len(ids)) / max(len(ids), 1) + 0.01))
    return gt, pred, scores


@pytest.mark.parametrize("seed", range(14))
def test_ap75_matches_pycocotools(seed: int) -> None:
    gt, pred, scores = _blobs(seed)
    expected = _coco_ap(gt, pred, scores, 0.75)
    got = average_precision(gt, pred, scores)
    assert got["ap"] == pytest.approx(expected, abs=1e-12)
    assert got["version"] == "mitoem-ap75@1"


@pytest.mark.parametrize(("gt", "pred", "scores", "expected"), [
    ([1, 1, 2, 2], [3, 3, 4, 4], {3: 0.5, 4: 0.6}, 1.0),  # both found: precision 1 at every recall
    ([1, 1, 2, 2], [3, 3, 0, 0], {3: 0.5}, 51 / 101),  # recall 1/2: recall points 0..0.50 have precision 1
    # the FP ranks first: precision 0, 1/2, 2/3 at recall 0, 1/2, 1 -> interpolated 2/3 at every recall point
    ([1, 1, 2, 2, 0, 0], [3, 3, 4, 4, 5, 5], {3: 0.9, 4: 0.8, 5: 0.95}, 2 / 3),
    ([1, 1, 0, 0], [0, 0, 3, 3], {3: 0.9}, 0.0),  # no overlap
    ([1, 1, 0, 0], [0, 0, 0, 0], {}, 0.0),  # nothing predicted
    ([0, 0, 0, 0], [0, 0, 5, 5], {5: 1.0}, None),  # no ground truth: undefined
])
def test_ap75_by_hand(gt: list[int], pred: list[int], scores: dict[int, float], expected: float | None) -> None:
    got = average_precision(np.array(gt), np.array(pred), scores)["ap"]
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-12))


@pytest.mark.parametrize("seed", [3, 4, 7])
def test_ap75_uint64_ids_and_default_size_ranking(seed: int) -> None:
    """Without scores, mAP_3Dvolume ranks by instance size; ties here go to the smaller id."""
    gt, pred, _ = _blobs(seed)
    big = np.where(pred > 0, pred.astype(np.uint64) + np.uint64(U63), np.uint64(0))
    by_size = {int(j): float((pred == j).sum()) - 1e-6 * int(j) for j in np.unique(pred) if j != 0}
    assert average_precision(gt, big)["ap"] == pytest.approx(_coco_ap(gt, pred, by_size, 0.75), abs=1e-12)


def test_ap75_scores_must_cover_the_prediction() -> None:
    with pytest.raises(ValueError, match="no score"):
        average_precision(np.array([1, 1]), np.array([2, 3]), {2: 0.5})
    with pytest.raises(ValueError, match="absent from the prediction"):
        average_precision(np.array([1, 1]), np.array([2, 2]), {2: 0.5, 9: 0.1})


def _coco_direct(gt: np.ndarray, pred: np.ndarray, scores: dict[int, float], classes: dict[int, int] | None,
                 pred_classes: dict[int, int] | None) -> list[float]:
    """COCOeval stats straight from pycocotools on masks built here, one image per z section."""
    images, anns, dets = [], [], []
    for z in range(gt.shape[0]):
        images.append({"id": z, "height": gt.shape[1], "width": gt.shape[2]})
        for i in np.unique(gt[z]):
            if i == 0:
                continue
            rle = mask_utils.encode(np.asfortranarray((gt[z] == i).astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": z, "category_id": classes[int(i)] if classes else 1,
                         "segmentation": rle, "iscrowd": 0, "area": float(mask_utils.area(rle)),
                         "bbox": list(mask_utils.toBbox(rle))})
        for j in np.unique(pred[z]):
            if j == 0:
                continue
            dets.append({"image_id": z, "category_id": pred_classes[int(j)] if pred_classes else 1,
                         "score": scores[int(j)],
                         "segmentation": mask_utils.encode(np.asfortranarray((pred[z] == j).astype(np.uint8)))})
    cats = sorted({a["category_id"] for a in anns} | {d["category_id"] for d in dets} | {1})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in cats]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return [float(s) for s in ev.stats]


@pytest.mark.parametrize("seed", range(12))
def test_coco_map_matches_pycocotools_on_masks_built_independently(seed: int, capsys: pytest.CaptureFixture) -> None:
    gt, pred, scores = _blobs(seed)
    rng = np.random.default_rng(100 + seed)
    classes = {int(i): int(rng.integers(1, 4)) for i in np.unique(gt) if i} if seed % 2 else None
    pred_classes = {int(j): int(rng.integers(1, 4)) for j in np.unique(pred) if j} if seed % 2 else None
    if not any(j for j in np.unique(pred)):
        pytest.skip("no detection in this draw")
    expected = _coco_direct(gt, pred, scores, classes, pred_classes)
    got = coco_map(gt, pred, scores=scores, gt_classes=classes, pred_classes=pred_classes)
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_max",
             "mar_small", "mar_medium", "mar_large"]
    for name, value in zip(names, expected):
        assert got[name] == (None if value < 0 else pytest.approx(value, abs=1e-12)), name


@pytest.mark.parametrize(("pred_ids", "pred_cls", "expected_map"), [
    ([1, 2], {1: 1, 2: 1}, 1.0),  # both found exactly
    ([1, 0], {1: 1}, 51 / 101),  # one of two: precision 1 up to recall 0.5 at every IoU threshold
    ([1, 2], {1: 2, 2: 2}, 0.0),  # right masks, wrong class: category 1 has no detection, category 2 no gt
])
def test_coco_map_by_hand(pred_ids: list[int], pred_cls: dict[int, int], expected_map: float) -> None:
    gt = np.zeros((1, 8, 8), np.uint64)
    gt[0, :4, :4] = U63 + 1
    gt[0, 4:, 4:] = U63 + 2
    pred = np.zeros_like(gt, dtype=np.uint16)
    pred[0, :4, :4] = pred_ids[0]
    pred[0, 4:, 4:] = pred_ids[1]
    classes = {U63 + 1: 1, U63 + 2: 1}
    r = coco_map(gt, pred, scores={1: 0.9, 2: 0.8}, gt_classes=classes, pred_classes=pred_cls)
    assert r["map"] == pytest.approx(expected_map, abs=1e-12)
    assert r["version"] == "coco-map@1"


def test_registry_contract() -> None:
    expected = {"arand", "voi", "cremi-score", "cleft-distance", "dice", "iou", "instance-accuracy", "ap75",
                "coco-map"}
    assert expected <= set(METRICS)
    for name, m in METRICS.items():
        assert m.name == name and m.kind in {"instance", "semantic-mask", "semantic-classes", "cleft", "coco"}
        assert "@" in m.version
    gt = np.array([[[1, 1, 2, 2]]], np.uint32)
    r = METRICS["instance-accuracy"](gt, gt, voxel_size=(30, 8, 8))
    assert r["accuracy"] == 1.0 and r["voxel_size"] == [30.0, 8.0, 8.0] and r["iou_threshold"] == 0.75
    assert METRICS["ap75"](gt, gt, scores={1: 0.2, 2: 0.1})["ap"] == 1.0
