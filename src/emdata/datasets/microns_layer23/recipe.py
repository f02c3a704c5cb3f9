"""MICrONS layer 2/3 (phase 1, "pinky100"): a ``--bbox`` cut-out of the EM layer with the v185
segmentation → one volume.

The bbox is in voxels at the EM's mip 0. The layers are laid out in a nominal 4×4×40 nm frame
(x×y×z) while the imaging voxel is 3.58×3.58×40 nm: the stored voxel size is the one the EM
``info`` states, and a difference from the card (3.58 nm, with 4 nm as an alternative) is logged
and recorded in the volume's notes. The segmentation's mip 0 is half the EM's resolution in x
and y; it is upsampled ×2 by nearest neighbour onto the EM grid (exact). Root ids stay uint64.
Shared rules: :mod:`emdata.datasets._precomputed_recipe`.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("microns-layer23"):
    ...     (vol,) = emdata.prepare("microns-layer23", bbox="3:14,101:141,119:157")
    ...     vol.name, vol.voxel_size, str(vol.labels["segmentation"].dtype)
    ('z3-14_y101-141_x119-157', (40.0, 4.0, 4.0), 'uint64')
"""

from __future__ import annotations

from emdata.datasets._precomputed_recipe import BboxRecipe, LabelRead
from emdata.datasets.contract import EM_BBOX, Option
from emdata.store.volume import Volume

DATASET = "microns-layer23"
RECIPE = BboxRecipe(
    dataset=DATASET,
    volume="pinky100",
    image="pinky100_em",
    labels=(LabelRead("segmentation", "pinky100_seg_v185"),),
    notes=("segmentation = v185 root ids (uint64, never narrowed), read at half the EM resolution in x, y and "
           "upsampled by nearest",
           "physical voxel: 3.58×3.58×40 nm (x×y×z) per the dataset pages; where the stored voxel size is the "
           "layers' nominal 4×4×40 nm frame, scale x and y by 0.895 for physical distances"),
)
RECIPE_VERSION = RECIPE.recipe_version
OPTIONS: tuple[Option, ...] = (EM_BBOX,)


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` (EM mip-0 voxels) of the EM and the v185 segmentation."""
    return RECIPE.prepare(volumes=volumes, force=force, bbox=bbox)
