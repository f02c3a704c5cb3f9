"""Hemibrain: a ``--bbox`` cut-out of the CLAHE JPEG EM with segmentation v1.2 and the
mitochondria layer → one volume at 8 nm.

The bbox is in voxels at the EM's mip 0 (8 nm). The raw is the published lossy, contrast-
normalised JPEG, decoded as served. The uint64 v1.2 body ids are 8 nm like the EM; the 16 nm
mito layer (1 mitochondria, 2 interior, 3 background, 4 unlabeled) is upsampled ×2 per axis by
nearest neighbour, and 4 is the layer's ignore value. The tissue mask (mask_normalized_round6,
also 16 nm) is not read. Shared rules: :mod:`emdata.datasets._precomputed_recipe`.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("hemibrain"):
    ...     (vol,) = emdata.prepare("hemibrain", bbox="33:50,65:100,97:130")
    ...     sorted(vol.labels), vol.meta["labels"]["mito"]["ignore_value"]
    (['mito', 'segmentation'], 4)
"""

from __future__ import annotations

from emdata.datasets._precomputed_recipe import BboxRecipe, LabelRead
from emdata.datasets.contract import EM_BBOX, Option
from emdata.store.volume import Volume

DATASET = "hemibrain"
RECIPE = BboxRecipe(
    dataset=DATASET,
    volume="full",
    image="emdata/clahe_yz/jpeg",
    labels=(LabelRead("segmentation", "v1.2/segmentation"),
            LabelRead("mito", "mito_20190717.27250582", ignore_value=4)),
    notes=("raw is the published CLAHE-normalised JPEG EM (lossy), not raw intensities",
           "mito value 4 (unlabeled) is the ignore value; the meaning of 2 (interior) is not documented upstream",
           "the tissue mask layer mask_normalized_round6 is not read by this recipe"),
)
RECIPE_VERSION = RECIPE.recipe_version
OPTIONS: tuple[Option, ...] = (EM_BBOX,)


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` (EM mip-0 voxels) of the EM, segmentation v1.2 and mito."""
    return RECIPE.prepare(volumes=volumes, force=force, bbox=bbox)
