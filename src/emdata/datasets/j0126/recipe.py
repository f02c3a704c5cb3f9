"""J0126 (zebra finch Area X): a ``--bbox`` cut-out of ``rawdata_realigned`` with the FFN
segmentation (``ffn_segmentation``) → one volume.

The bbox is in voxels at the raw layer's mip 0. The card's voxel size (10×10×20 nm x×y×z,
torch-em; 9×9×20 in awesome-em-datasets) is unverified: the volume stores what the layer's
``info`` says and logs a difference. The segmentation is automated (FFN), not ground truth.
Shared rules: :mod:`emdata.datasets._precomputed_recipe`.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("j0126"):
    ...     (vol,) = emdata.prepare("j0126", bbox="5:14,20:50,35:70")
    ...     list(vol.labels)
    ['ffn_segmentation']
"""

from __future__ import annotations

from emdata.datasets._precomputed_recipe import BboxRecipe, LabelRead
from emdata.datasets.contract import EM_BBOX, Option
from emdata.store.volume import Volume

DATASET = "j0126"
RECIPE = BboxRecipe(
    dataset=DATASET,
    volume="full",
    image="rawdata_realigned",
    labels=(LabelRead("ffn_segmentation", "ffn_segmentation"),),
    notes=("ffn_segmentation is the automated flood-filling-network result, not manual ground truth",),
)
RECIPE_VERSION = RECIPE.recipe_version
OPTIONS: tuple[Option, ...] = (EM_BBOX,)


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` (raw mip-0 voxels) of the raw EM and the FFN segmentation."""
    return RECIPE.prepare(volumes=volumes, force=force, bbox=bbox)
