"""H01: a ``--bbox`` cut-out of the 4 nm EM (``4nm_raw``) with the c3 cell segmentation → one volume.

The bbox is in voxels at the EM's mip 0 (4×4×33 nm x×y×z per torch-em; the stored voxel size is
the one the layer's ``info`` states, and a difference from the card — which records the 30 vs
33 nm conflict — is logged). The output keeps the EM's mip-0 resolution: the 8×8×33 nm c3
segmentation is upsampled ×2 in y and x by nearest neighbour (exact; no EM detail is dropped).
Shared rules: :mod:`emdata.datasets._precomputed_recipe`.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("h01"):
    ...     (vol,) = emdata.prepare("h01", bbox="6:15,130:170,70:100")
    ...     vol.voxel_size, list(vol.labels)
    ((33.0, 4.0, 4.0), ['c3'])
"""

from __future__ import annotations

from emdata.datasets._precomputed_recipe import BboxRecipe, LabelRead
from emdata.datasets.contract import EM_BBOX, Option
from emdata.store.volume import Volume

DATASET = "h01"
RECIPE = BboxRecipe(
    dataset=DATASET,
    volume="full",
    image="4nm_raw",
    labels=(LabelRead("c3", "c3"),),
    notes=("c3 is the automated segmentation, not proofread ground truth",),
)
RECIPE_VERSION = RECIPE.recipe_version
OPTIONS: tuple[Option, ...] = (EM_BBOX,)


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` (EM mip-0 voxels) of the EM and the c3 segmentation."""
    return RECIPE.prepare(volumes=volumes, force=force, bbox=bbox)
