"""Kasthuri 2015 (kasthuri2011): a ``--bbox`` cut-out of ``image_color_corrected`` with the
dense ``ground_truth`` segment ids → one volume.

The bbox is in voxels at the image's mip 0 (6×6×30 nm x×y×z, not the 3×3×30 of the awesome
table; the value in the layer's ``info`` is stored). Ground truth exists only inside the
annotated cylinder (roughly x 3000–8000, y 7200–10100, z 950–1250): outside it 0 means
unannotated, which the volume's notes record. Shared rules:
:mod:`emdata.datasets._precomputed_recipe`.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("kasthuri"):
    ...     (vol,) = emdata.prepare("kasthuri", bbox="9:18,40:70,20:50")
    ...     list(vol.labels)
    ['ground_truth']
"""

from __future__ import annotations

from emdata.datasets._precomputed_recipe import BboxRecipe, LabelRead
from emdata.datasets.contract import EM_BBOX, Option
from emdata.store.volume import Volume

DATASET = "kasthuri"
RECIPE = BboxRecipe(
    dataset=DATASET,
    volume="full",
    image="image_color_corrected",
    labels=(LabelRead("ground_truth", "ground_truth"),),
    notes=("ground_truth covers only the annotated cylinder (roughly x 3000-8000, y 7200-10100, z 950-1250 at "
           "6x6x30 nm); outside it 0 means unannotated, not background",),
)
RECIPE_VERSION = RECIPE.recipe_version
OPTIONS: tuple[Option, ...] = (EM_BBOX,)


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` (image mip-0 voxels) of the image and the ground truth."""
    return RECIPE.prepare(volumes=volumes, force=force, bbox=bbox)
