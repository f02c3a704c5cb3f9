"""MICrONS minnie65: a ``--bbox`` cut-out of the EM layer (bossdb) with one proofread
segmentation version (``--version`` 117, 343, 943 or 1300; default 1300) → one volume.

The bbox is in voxels at the EM's mip 0 (8×8×40 nm x×y×z, i.e. (40, 8, 8) nm z, y, x — not the
4×4×40 nm annotation frame). Both layers' ``info`` files are read: the segmentation is read at
the mip whose voxel equals the EM's (e.g. mip 1 of a 4×4×40 nm layer, the box converted), or
upsampled by nearest from an integer multiple; anything else is an error. Root ids stay uint64
(18 digits, e.g. 864691136617970907). Volume name: ``<bbox_name>_v<version>``, split ``all``.
Shared rules: :mod:`emdata.datasets._precomputed_recipe`.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("microns-minnie65"):
    ...     (vol,) = emdata.prepare("microns-minnie65", bbox="22:35,100:130,170:200", version="1300")
    ...     vol.name, str(vol.labels["segmentation"].dtype)
    ('z22-35_y100-130_x170-200_v1300', 'uint64')
"""

from __future__ import annotations

from emdata.datasets._precomputed_recipe import BboxRecipe, LabelRead
from emdata.datasets.contract import EM_BBOX, Option
from emdata.store.volume import Volume

DATASET = "microns-minnie65"
VERSIONS = ("117", "343", "943", "1300")
RECIPE = BboxRecipe(
    dataset=DATASET,
    volume="minnie65",
    image="minnie65_em",
    versions={v: (LabelRead("segmentation", f"minnie65_seg_v{v}"),) for v in VERSIONS},
    default_version="1300",
    notes=("segmentation = proofread root ids of the chosen version (uint64, never narrowed); record the version "
           "with any ids taken from this volume",),
)
RECIPE_VERSION = RECIPE.recipe_version
OPTIONS: tuple[Option, ...] = (
    EM_BBOX,
    Option("version", str, "Proofread segmentation version: 117, 343, 943 or 1300 (a leading v is accepted).",
           default="1300", metavar="VERSION"),
)


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None,
            version: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` (EM mip-0 voxels) with segmentation ``version`` (default 1300)."""
    return RECIPE.prepare(volumes=volumes, force=force, bbox=bbox, version=version)
