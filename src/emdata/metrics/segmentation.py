"""Neuron segmentation scores: adapted Rand error (SNEMI3D), variation of information and the CREMI score.

All three are computed from one chunked contingency table (see ``_contingency``), so a
500 x 4096 x 4096 uint64 volume is scored slab by slab in bounded memory, and ids >= 2**63 work.

Public originals these conventions follow:

- SNEMI3D adapted Rand error: the challenge's evaluation page (http://brainiac2.mit.edu/SNEMI3D/evaluation)
  and the organisers' script as published in cremi/cremi_python (``cremi/evaluation/rand.py`` at commit
  2a7913b, itself taken from janelia-flyem/gala ``evaluate.py``); Arganda-Carreras et al., Front. Neuroanat.
  9:142 (2015), doi:10.3389/fnana.2015.00142.
- Variation of information: Meila, J. Multivariate Anal. 98 (2007) 873-895; CREMI's ``voi`` in
  cremi/cremi_python ``cremi/evaluation/voi.py`` (commit 127841e).
- CREMI border mask: cremi/cremi_python ``cremi/evaluation/border_mask.py`` (commit e0bbb21) and
  ``NeuronIds.py`` (commit 17043cc); the score sqrt(VOI x ARAND) from https://cremi.org/leaderboard/.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from emdata.metrics._contingency import Contingency, check_same_shape, contingency, sums_by
from emdata.metrics._result import ratio, result, voxel_size_list

SNEMI3D_SOURCE = ("SNEMI3D evaluation (http://brainiac2.mit.edu/SNEMI3D/evaluation); organisers' script as "
                  "published in cremi/cremi_python cremi/evaluation/rand.py @ 2a7913b")
VOI_SOURCE = "Meila 2007, doi:10.1016/j.jmva.2006.11.013; cremi/cremi_python cremi/evaluation/voi.py @ 127841e"
BORDER_SOURCE = "cremi/cremi_python cremi/evaluation/border_mask.py @ e0bbb21, NeuronIds.py @ 17043cc"
ARAND_CONVENTIONS = ("snemi3d", "skimage")


def border_mask(gt: Any, voxel_size: Sequence[float], border_threshold_nm: float) -> np.ndarray:
    """CREMI's border mask: True where a ground-truth voxel lies within ``border_threshold_nm`` of a label border.

    Computed per 2D section (axis 0 is z): a pixel is on a border when one of its 4 neighbours in the
    same section has another label (the image edge is not a border); every pixel whose Euclidean
    distance, in xy pixels, to a border pixel is at most ``border_threshold_nm / xy voxel size`` is
    masked. Border pixels themselves are always masked. The xy voxel size must be isotropic, as
    CREMI requires. CREMI evaluates with these voxels relabelled as background and ignored.
    Like the organisers' code, a section holding a single label (no border) still gets the pixels
    within the distance of a point just above its first pixel masked: scipy's Euclidean distance
    transform measures from there when it finds no background.

    >>> gt = np.array([[[1, 1, 1, 2, 2, 2]]])
    >>> border_mask(gt, (40, 4, 4), 4.0).astype(int).tolist()
    [[[0, 1, 1, 1, 1, 0]]]
    """
    vs = voxel_size_list(voxel_size)
    array = np.asarray(gt)
    if array.ndim == 2:
        array = array[None]
        vs = [1.0, *vs] if vs is not None and len(vs) == 2 else vs
    if array.ndim != 3 or vs is None or len(vs) != 3:
        raise ValueError(f"border_mask needs a 3D (z, y, x) or 2D (y, x) label array and its voxel size, got shape "
                         f"{np.shape(gt)} and voxel size {voxel_size}")
    return _border_mask_sections(array, vs, border_threshold_nm).reshape(np.shape(gt))


def _border_mask_sections(sections: np.ndarray, voxel_size: Sequence[float], threshold_nm: float) -> np.ndarray:
    from scipy import ndimage

    if not math.isclose(voxel_size[1], voxel_size[2]):
        raise ValueError(f"the CREMI border mask needs isotropic xy voxels, got y={voxel_size[1]} nm and "
                         f"x={voxel_size[2]} nm; resample the volume or evaluate without border_threshold_nm")
    if threshold_nm < 0:
        raise ValueError(f"border_threshold_nm must be >= 0, got {threshold_nm}")
    max_dist = float(threshold_nm) / float(voxel_size[1])
    out = np.empty(sections.shape, dtype=bool)
    for z, image in enumerate(sections):
        padded = np.pad(image, 1, mode="edge")
        interior = ((image == padded[:-2, 1:-1]) & (image == padded[2:, 1:-1])
                    & (image == padded[1:-1, :-2]) & (image == padded[1:-1, 2:]))
        # as the organisers' code: also where a section has no border at all, and scipy then measures
        # from a point just outside its first row (a quarter disc at the corner gets masked)
        out[z] = ndimage.distance_transform_edt(interior) <= max_dist
    return out


def _table(gt: Any, pred: Any, voxel_size: list[float] | None, border_threshold_nm: float | None) -> Contingency:
    if border_threshold_nm is None:
        return contingency(gt, pred)
    if voxel_size is None:
        raise ValueError("border_threshold_nm is in nm: pass voxel_size=(z, y, x) nm as well")
    ndim = len(np.shape(gt))
    if ndim not in (2, 3):
        raise ValueError(f"the CREMI border mask is defined for 2D or 3D volumes, got {ndim} axes")
    if ndim == 2:  # one section: slabs must hold whole sections
        gt, pred = np.asarray(gt)[None], np.asarray(pred)[None]
        voxel_size = [1.0, *voxel_size]

    def exclude(g: np.ndarray, _index: tuple[slice, ...]) -> np.ndarray:
        return _border_mask_sections(g, voxel_size, border_threshold_nm)

    return contingency(gt, pred, exclude=exclude, slab_voxels=max(1, int(np.prod(np.shape(gt)[1:]))) * 4)


def _ignored(ids: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    if len(labels) == 0 or ids.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    mask = np.zeros(ids.shape, dtype=bool)
    for label in labels:  # compare per value: np.isin would cast uint64 and negative ints to float
        if ids.dtype.kind == "u" and int(label) < 0:
            continue
        if ids.dtype.kind in "iu" and not (np.iinfo(ids.dtype).min <= int(label) <= np.iinfo(ids.dtype).max):
            continue
        mask |= ids == np.asarray(label).astype(ids.dtype)
    return mask


def _labels(values: Sequence[int] | int | None) -> list[int]:
    if values is None:
        return []
    if isinstance(values, (int, np.integer)):
        return [int(values)]
    return [int(v) for v in values]


def arand_from_table(table: Contingency, gt_ignore: Sequence[int] = (0,),
                     convention: str = "snemi3d") -> dict[str, Any]:
    """ARAND, precision and recall from a contingency table (see ``adapted_rand_error``)."""
    if convention not in ARAND_CONVENTIONS:
        raise ValueError(f"unknown adapted Rand convention {convention!r}; choose one of {ARAND_CONVENTIONS}")
    keep = ~_ignored(table.gt, _labels(gt_ignore))
    g, p, c = table.gt[keep], table.pred[keep], table.counts[keep].astype(np.float64)
    a = sums_by(g, c)  # ground-truth segment sizes (all prediction labels, 0 included)
    if convention == "snemi3d":
        zero = p == 0
        singles = float(c[zero].sum()) / table.n_voxels if table.n_voxels else 0.0
        b = sums_by(p[~zero], c[~zero])
        sum_a = float(a @ a)
        sum_b = float(b @ b) + singles
        sum_ab = float(c[~zero] @ c[~zero]) + singles
    else:
        b = sums_by(p, c)
        sum_a = float(a @ a - a.sum())
        sum_b = float(b @ b - b.sum())
        sum_ab = float(c @ c - c.sum())
    precision = ratio(sum_ab, sum_b)
    recall = ratio(sum_ab, sum_a)
    # 1 - 2PR / (P + R) = 1 - 2 sum_AB / (sum_A + sum_B), also defined where P or R is 0/0 (as in scikit-image)
    f_score = ratio(2.0 * sum_ab, sum_a + sum_b)
    are = None if f_score is None else 1.0 - f_score
    return {"arand": are, "precision": precision, "recall": recall}


def voi_from_table(table: Contingency, gt_ignore: Sequence[int] = (0,), pred_ignore: Sequence[int] = ()
                   ) -> dict[str, Any]:
    """VOI split/merge/total in bits from a contingency table (see ``variation_of_information``)."""
    keep = ~_ignored(table.gt, _labels(gt_ignore)) & ~_ignored(table.pred, _labels(pred_ignore))
    g, p, c = table.gt[keep], table.pred[keep], table.counts[keep].astype(np.float64)
    total = float(c.sum())
    if total == 0:
        return {"split": None, "merge": None, "total": None}
    _, gi = np.unique(g, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    a = np.bincount(gi.reshape(-1), weights=c)
    b = np.bincount(pi.reshape(-1), weights=c)
    log_c = np.log2(c)
    split = -float(np.sum(c * (log_c - np.log2(a[gi.reshape(-1)])))) / total  # H(pred | gt)
    merge = -float(np.sum(c * (log_c - np.log2(b[pi.reshape(-1)])))) / total  # H(gt | pred)
    split, merge = (split if split > 0 else 0.0), (merge if merge > 0 else 0.0)  # -0.0 and rounding dust
    return {"split": split, "merge": merge, "total": split + merge}


def adapted_rand_error(gt: Any, pred: Any, *, voxel_size: Sequence[float] | None = None,
                       gt_ignore: Sequence[int] | int = (0,), border_threshold_nm: float | None = None,
                       convention: str = "snemi3d") -> dict[str, Any]:
    """Adapted Rand error (1 - F-score of the Rand precision and recall), SNEMI3D/CREMI convention.

    Follows the organisers' script (SNEMI3D; cremi/cremi_python ``rand.py`` @ 2a7913b): with p_ij the
    number of voxels with ground-truth label i (i not ignored) and prediction label j, and n the
    number of voxels of the whole volume (ignored ones included),
    sum_A = sum_i (sum_j p_ij)^2 (prediction 0 included), sum_B = sum_{j != 0} (sum_i p_ij)^2 + c/n,
    sum_AB = sum_{i, j != 0} p_ij^2 + c/n, where c is the number of prediction-0 voxels inside the
    ground-truth foreground (the "singletons", weighted 1/n exactly as the script does);
    precision = sum_AB / sum_B, recall = sum_AB / sum_A, ARAND = 1 - 2PR / (P + R).
    Values that are undefined (no ground-truth foreground) are None.

    ``convention="skimage"`` reproduces scikit-image's ``skimage.metrics.adapted_rand_error``
    instead: prediction 0 is an ordinary segment and pairs are counted as x(x-1) instead of x^2.
    The keys keep this module's meaning (precision relative to the prediction), which is the value
    scikit-image returns as *recall* (its names are swapped: scikit-image issue #6485).

    ``border_threshold_nm`` adds CREMI's border mask (see ``border_mask``) to the ignored voxels.
    ``gt_ignore``: ground-truth labels left out (default 0). cremi_python's ``NeuronIds`` ignores
    only the border-mask value 2**64-1 and scores gt 0 as an object: pass ``gt_ignore=(2**64 - 1,)``.

    >>> gt = np.array([1, 1, 2, 2])
    >>> r = adapted_rand_error(gt, np.array([7, 7, 7, 7]))  # one merge: P = 8/16, R = 8/8
    >>> r["arand"], r["precision"], r["recall"], r["version"]
    (0.33333333333333337, 0.5, 1.0, 'snemi3d-arand@1')
    """
    vs = voxel_size_list(voxel_size, len(np.shape(gt)))
    check_same_shape(gt, pred)
    table = _table(gt, pred, vs, border_threshold_nm)
    values = arand_from_table(table, _labels(gt_ignore), convention)
    return result("arand", f"{convention}-arand@1", values,
                  _arand_conventions(_labels(gt_ignore), convention, border_threshold_nm), vs)


def _arand_conventions(gt_ignore: list[int], convention: str, border: float | None) -> dict[str, Any]:
    if convention == "snemi3d":
        conv: dict[str, Any] = {
            "gt_ignore": gt_ignore,
            "pred_zero": "singletons inside ground-truth foreground, weighted 1/n (n = all voxels) as in the "
                         "organisers' script",
            "pair_count": "x^2",
            "precision": "sum_AB / sum_B (prediction side)",
            "source": SNEMI3D_SOURCE,
        }
    else:
        conv = {
            "gt_ignore": gt_ignore,
            "pred_zero": "an ordinary segment",
            "pair_count": "x(x-1)",
            "precision": "sum_AB / sum_B (prediction side; scikit-image calls this recall)",
            "source": "scikit-image skimage.metrics.adapted_rand_error (0.26)",
        }
    conv["border_threshold_nm"] = border
    if border is not None:
        conv["border_mask"] = BORDER_SOURCE
    return conv


def variation_of_information(gt: Any, pred: Any, *, voxel_size: Sequence[float] | None = None,
                             gt_ignore: Sequence[int] | int = (0,), pred_ignore: Sequence[int] | int = (),
                             border_threshold_nm: float | None = None) -> dict[str, Any]:
    """Variation of information in bits, CREMI's convention: split = H(pred | gt), merge = H(gt | pred).

    Ground-truth label 0 is ignored (its voxels are removed), prediction 0 is an ordinary label, as
    in cremi/cremi_python ``voi(reconstruction, groundtruth)`` (``voi.py`` @ 127841e). scikit-image's
    ``variation_of_information(gt, pred, ignore_labels=[0])`` follows the same convention and returns
    [split, merge] in this order. ``total`` = split + merge. None when no voxel is left to score.

    >>> variation_of_information(np.array([1, 1, 2, 2]), np.array([5, 5, 5, 5]))["merge"]  # H(gt|pred) = 1 bit
    1.0
    """
    vs = voxel_size_list(voxel_size, len(np.shape(gt)))
    check_same_shape(gt, pred)
    table = _table(gt, pred, vs, border_threshold_nm)
    values = voi_from_table(table, _labels(gt_ignore), _labels(pred_ignore))
    conventions = {"gt_ignore": _labels(gt_ignore), "pred_ignore": _labels(pred_ignore), "log_base": 2,
                   "split": "H(pred | gt)", "merge": "H(gt | pred)", "source": VOI_SOURCE,
                   "border_threshold_nm": border_threshold_nm}
    if border_threshold_nm is not None:
        conventions["border_mask"] = BORDER_SOURCE
    return result("voi", "cremi-voi@1", values, conventions, vs)


def cremi_score(gt: Any, pred: Any, *, voxel_size: Sequence[float] | None = None,
                gt_ignore: Sequence[int] | int = (0,), border_threshold_nm: float | None = None) -> dict[str, Any]:
    """CREMI neuron score sqrt(VOI total x ARAND), with both parts from one contingency table.

    ARAND uses the SNEMI3D convention (``adapted_rand_error``), VOI CREMI's (``variation_of_information``).
    The leaderboard evaluated with a border mask (https://cremi.org/metrics/) whose threshold is not
    stated there; cremi_python's ``example_evaluation.py`` was committed both without one (commit
    23b7a54) and with ``border_threshold=200`` nm (commit 0efb271). The default here is no mask: pass
    ``border_threshold_nm`` (e.g. 200) and ``voxel_size`` to apply one.

    >>> r = cremi_score(np.array([1, 1, 2, 2]), np.array([5, 5, 5, 5]))
    >>> round(r["cremi_score"], 6), r["voi_total"], round(r["arand"], 6)
    (0.57735, 1.0, 0.333333)
    """
    vs = voxel_size_list(voxel_size, len(np.shape(gt)))
    check_same_shape(gt, pred)
    ignore = _labels(gt_ignore)
    table = _table(gt, pred, vs, border_threshold_nm)
    rand = arand_from_table(table, ignore, "snemi3d")
    voi = voi_from_table(table, ignore, ())
    score = None
    if rand["arand"] is not None and voi["total"] is not None:
        score = math.sqrt(max(voi["total"] * rand["arand"], 0.0))
    values = {"cremi_score": score, "arand": rand["arand"], "arand_precision": rand["precision"],
              "arand_recall": rand["recall"], "voi_split": voi["split"], "voi_merge": voi["merge"],
              "voi_total": voi["total"]}
    conventions = {"formula": "sqrt(voi_total * arand)", "source": "https://cremi.org/leaderboard/",
                   "gt_ignore": ignore, "arand": SNEMI3D_SOURCE, "voi": VOI_SOURCE,
                   "border_threshold_nm": border_threshold_nm}
    if border_threshold_nm is not None:
        conventions["border_mask"] = BORDER_SOURCE
    return result("cremi-score", "cremi-score@1", values, conventions, vs)
