"""Dataset recipes: one sub-package per dataset (``emdata/datasets/<id with _>/recipe.py``),
found on disk and imported only when used.

Each recipe module exposes ``OPTIONS`` (the keyword options it accepts besides ``volumes``
and ``force``) and ``prepare(volumes=None, force=False, **options) -> list[Volume]``.

Example:
    >>> from emdata.datasets import recipe_for
    >>> recipe_for("snemi3d").OPTIONS
    frozenset()
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib import resources
from types import ModuleType

from emdata.catalog import dataset_ids, get_card


class NoRecipeError(NotImplementedError):
    """The dataset is in the catalog but cannot be prepared by this emdata version yet."""


def module_name(dataset_id: str) -> str:
    return dataset_id.replace("-", "_")


@cache
def _recipe_packages() -> frozenset[str]:
    root = resources.files("emdata.datasets")
    return frozenset(p.name for p in root.iterdir() if p.is_dir() and p.joinpath("recipe.py").is_file())


def preparable() -> list[str]:
    """Catalog ids that have a recipe."""
    return [d for d in dataset_ids() if module_name(d) in _recipe_packages()]


def recipe_for(dataset_id: str) -> ModuleType:
    """The recipe module of ``dataset_id`` (validates the id against the catalog)."""
    get_card(dataset_id)  # unknown ids raise with suggestions
    if module_name(dataset_id) not in _recipe_packages():
        raise NoRecipeError(f"{dataset_id} is in the catalog but has no recipe yet (preparable now: "
                            f"{', '.join(preparable()) or 'none'}); `emdata info {dataset_id}` lists its sources")
    return importlib.import_module(f"emdata.datasets.{module_name(dataset_id)}.recipe")
