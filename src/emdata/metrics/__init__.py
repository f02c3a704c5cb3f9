"""Challenge-exact evaluation metrics: numpy arrays in, JSON-ready dicts out.

Every result carries ``metric`` (the registry name), ``version`` (convention and revision, e.g.
``snemi3d-arand@1``: a change of convention or formula bumps it), ``conventions`` (what was
ignored, how edge cases are scored, the public original followed) and ``voxel_size`` (nm per axis,
or None). Undefined values (e.g. Dice of two empty masks) are None, never NaN.

Segmentation scores come from a chunked contingency table (slabs along axis 0), so inputs may be
zarr arrays as large as a full 500 x 4096 x 4096 volume, and uint64 ids >= 2**63 are exact.

``METRICS`` maps short names to ``Metric`` objects with ``name``, ``version``, ``kind`` and a uniform
``metric(gt, pred, *, voxel_size=None, **options)`` call:

>>> import numpy as np
>>> from emdata.metrics import METRICS
>>> sorted(METRICS)  # doctest: +NORMALIZE_WHITESPACE
['ap75', 'arand', 'cleft-distance', 'coco-map', 'cremi-score', 'dice', 'dice-per-class', 'instance-accuracy',
 'iou', 'iou-per-class', 'voi']
>>> m = METRICS["arand"]
>>> m.kind, m.version
('instance', 'snemi3d-arand@1')
>>> m(np.array([[1, 1], [2, 2]]), np.array([[3, 3], [4, 4]], dtype=np.uint64))["arand"]
0.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emdata.metrics.clefts import cleft_distances
from emdata.metrics.coco import coco_map
from emdata.metrics.instances import average_precision, instance_matching
from emdata.metrics.overlap import dice, iou, per_class_overlap
from emdata.metrics.segmentation import adapted_rand_error, border_mask, cremi_score, variation_of_information

KINDS = ("instance", "semantic-mask", "semantic-classes", "cleft", "coco")


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``metric(gt, pred, *, voxel_size=None, **options) -> dict``.

    ``kind`` says what the arrays hold: "instance" (instance/neuron ids), "semantic-mask" (a
    foreground mask), "semantic-classes" (class values), "cleft" (cleft labels, needs a voxel
    size), "coco" (2D instance label images, one per z section, with classes and scores).
    """

    name: str
    version: str
    kind: str
    description: str
    function: Callable[..., dict[str, Any]] = field(repr=False)
    defaults: dict[str, Any] = field(default_factory=dict, repr=False)

    def __call__(self, gt: Any, pred: Any, *, voxel_size: Any = None, **options: Any) -> dict[str, Any]:
        out = self.function(gt, pred, voxel_size=voxel_size, **{**self.defaults, **options})
        out["metric"] = self.name
        return out


def _metrics() -> dict[str, Metric]:
    entries = [
        Metric("arand", "snemi3d-arand@1", "instance",
               "SNEMI3D/CREMI adapted Rand error (gt 0 ignored, prediction 0 as singletons)", adapted_rand_error),
        Metric("voi", "cremi-voi@1", "instance",
               "CREMI variation of information in bits: split H(pred|gt), merge H(gt|pred)", variation_of_information),
        Metric("cremi-score", "cremi-score@1", "instance", "CREMI neuron score sqrt(VOI total x ARAND)", cremi_score),
        Metric("cleft-distance", "cremi-clefts@1", "cleft",
               "CREMI cleft FP/FN counts beyond 200 nm and average FP/FN distances (nm)", cleft_distances),
        Metric("dice", "dice@1", "semantic-mask", "Dice of the foreground (nonzero) masks", dice),
        Metric("iou", "iou@1", "semantic-mask", "IoU (Jaccard) of the foreground (nonzero) masks", iou),
        Metric("dice-per-class", "per-class-overlap@1", "semantic-classes",
               "Dice and IoU per semantic class, mean over classes", per_class_overlap),
        Metric("iou-per-class", "per-class-overlap@1", "semantic-classes",
               "Dice and IoU per semantic class, mean over classes", per_class_overlap),
        Metric("instance-accuracy", "mitoem-accuracy@1", "instance",
               "MitoEM accuracy TP/(TP+FP+FN) at IoU >= 0.75, one-to-one matching", instance_matching),
        Metric("ap75", "mitoem-ap75@1", "instance", "MitoEM legacy AP-75 (mAP_3Dvolume), ranked by scores",
               average_precision),
        Metric("coco-map", "coco-map@1", "coco", "COCO mask mAP through pycocotools (TEM-NeutroStruct)", coco_map),
    ]
    return {m.name: m for m in entries}


METRICS: dict[str, Metric] = _metrics()

__all__ = ["KINDS", "METRICS", "Metric", "adapted_rand_error", "average_precision", "border_mask", "cleft_distances",
           "coco_map", "cremi_score", "dice", "instance_matching", "iou", "per_class_overlap",
           "variation_of_information"]
