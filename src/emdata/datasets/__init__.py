"""Dataset recipes: one sub-package per dataset, imported only when used.

Each recipe module exposes ``OPTIONS`` (the keyword options it accepts besides
``volumes`` and ``force``) and ``prepare(volumes=None, force=False, **options) -> list[Volume]``.

Example:
    >>> from emdata.datasets import recipe_for
    >>> recipe_for("snemi3d").OPTIONS
    frozenset()
"""

from __future__ import annotations

import importlib
from types import ModuleType

from emdata.catalog import dataset_ids, get_card

RECIPES = {
    "snemi3d": "emdata.datasets.snemi3d.recipe",
}


class NoRecipeError(NotImplementedError):
    """The dataset is in the catalog but cannot be prepared by this emdata version yet."""


def recipe_for(dataset_id: str) -> ModuleType:
    """The recipe module of ``dataset_id`` (validates the id against the catalog)."""
    get_card(dataset_id)  # unknown ids raise with suggestions
    if dataset_id not in RECIPES:
        ready = ", ".join(sorted(RECIPES))
        raise NoRecipeError(f"{dataset_id} is in the catalog but has no recipe yet (preparable now: {ready}); "
                            f"`emdata info {dataset_id}` lists its sources")
    return importlib.import_module(RECIPES[dataset_id])


def preparable() -> list[str]:
    return [d for d in dataset_ids() if d in RECIPES]
