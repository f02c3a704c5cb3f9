"""The public Python API (re-exported by ``emdata``).

Example:
    >>> import emdata
    >>> [d["id"] for d in emdata.list_datasets(species="fly")]  # doctest: +SKIP
    ['isbi2012']
    >>> volumes = emdata.prepare("snemi3d")  # doctest: +SKIP
    >>> emdata.open_volume(volumes[0].path).voxel_size  # doctest: +SKIP
    (30.0, 6.0, 6.0)
"""

from __future__ import annotations

from typing import Any

from emdata.catalog import get_card, list_cards
from emdata.config import prepared_dir
from emdata.store.manifest import read_manifest
from emdata.store.volume import Volume, open_volume


def list_datasets(species: str | None = None, microscopy: str | None = None) -> list[dict[str, Any]]:
    """Summaries (id, title, species, microscopy, voxel_size_nm, …) of matching datasets."""
    return [card.summary() for card in list_cards(species=species, microscopy=microscopy)]


def info(dataset_id: str) -> dict[str, Any]:
    """Everything the catalog knows about one dataset (the card as JSON)."""
    return get_card(dataset_id).to_json()


def prepare(dataset_id: str, volumes: list[str] | None = None, force: bool = False, **options: Any) -> list[Volume]:
    """Fetch and convert a dataset into canonical volumes; returns them.

    Re-running returns the finished volumes without rework; ``force=True`` rebuilds.
    Options a recipe does not take are refused with the list of those it does.
    """
    from emdata.datasets import recipe_for

    recipe = recipe_for(dataset_id)
    given = {k for k, v in options.items() if v is not None}
    unknown = sorted(given - set(recipe.OPTIONS))
    if unknown:
        accepted = ", ".join(sorted(recipe.OPTIONS)) or "none"
        raise ValueError(f"{dataset_id} does not take option(s) {', '.join(unknown)} (it takes: {accepted})")
    return recipe.prepare(volumes=volumes, force=force, **{k: options[k] for k in given})


def volumes(dataset_id: str, split: str | None = None) -> list[Volume]:
    """The prepared volumes of a dataset (optionally one split), from its manifest."""
    get_card(dataset_id)
    root = prepared_dir(dataset_id)
    manifest = read_manifest(root)
    if not manifest["volumes"]:
        raise FileNotFoundError(f"{dataset_id} is not prepared under {root}; run `emdata prepare {dataset_id}`")
    return [open_volume(root / entry["path"]) for entry in manifest["volumes"].values()
            if split is None or entry["split"] == split]


__all__ = ["Volume", "info", "list_datasets", "open_volume", "prepare", "volumes"]
