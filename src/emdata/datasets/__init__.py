"""Dataset recipes: one sub-package per dataset (``emdata/datasets/<id with _>/recipe.py``),
found on disk and imported only when used.

Each recipe module follows :class:`emdata.datasets.contract.Recipe`: ``OPTIONS``, the typed
declarations of the keyword options it accepts besides ``volumes`` and ``force``, and
``prepare(volumes=None, force=False, **options) -> list[Volume]``. A dataset's own CLI verbs
live in its ``cli.py`` (see :func:`dataset_verbs`).

Example:
    >>> from emdata.datasets import recipe_for
    >>> recipe_for("snemi3d").OPTIONS
    ()
    >>> [o.name for o in recipe_for("cremi").OPTIONS]
    ['padded']
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import ModuleType

from emdata.catalog import dataset_ids, get_card
from emdata.datasets.contract import Option, read_declarations


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


def _check_recipe(dataset_id: str) -> str:
    """The recipe package name of ``dataset_id``; unknown ids and ids without a recipe raise."""
    get_card(dataset_id)  # unknown ids raise with suggestions
    if module_name(dataset_id) not in _recipe_packages():
        raise NoRecipeError(f"{dataset_id} is in the catalog but has no recipe yet (preparable now: "
                            f"{', '.join(preparable()) or 'none'}); `emdata info {dataset_id}` lists its sources")
    return module_name(dataset_id)


def recipe_for(dataset_id: str) -> ModuleType:
    """The recipe module of ``dataset_id`` (validates the id against the catalog)."""
    return importlib.import_module(f"emdata.datasets.{_check_recipe(dataset_id)}.recipe")


@cache
def declared_options(dataset_id: str) -> tuple[Option, ...]:
    """The ``OPTIONS`` of ``dataset_id``'s recipe, read from its source without importing it.

    Example:
        >>> [(o.name, o.choices) for o in declared_options("platelet-em")]
        [('release', ('json', 'rgba', 'rgb'))]
    """
    package = _check_recipe(dataset_id)
    source = resources.files("emdata.datasets").joinpath(package, "recipe.py").read_text(encoding="utf-8")
    return read_declarations(source, f"emdata/datasets/{package}/recipe.py")


@dataclass(frozen=True)
class DatasetVerb:
    """A CLI verb a dataset adds (``emdata <name>``): its typer app is ``app`` in ``module``."""

    name: str
    help: str
    module: str


def _literal(tree: ast.Module, name: str, path: str) -> str:
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            return node.value.value
    raise ValueError(f"{path}: a dataset cli.py must assign {name} = \"...\" (a plain string) at module level")


@cache
def dataset_verbs() -> dict[str, DatasetVerb]:
    """The CLI verbs datasets add, by name: ``VERB`` and ``HELP`` read from each
    ``emdata/datasets/<mod>/cli.py`` as text (nothing imported); the module's ``app`` is
    imported only when the verb runs.

    Example:
        >>> dataset_verbs()["neutrostruct"].module
        'emdata.datasets.tem_neutrostruct.cli'
    """
    verbs: dict[str, DatasetVerb] = {}
    root = resources.files("emdata.datasets")
    for package in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.name):
        source = package.joinpath("cli.py")
        if not source.is_file():
            continue
        where = f"emdata/datasets/{package.name}/cli.py"
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=where)
        verb = DatasetVerb(_literal(tree, "VERB", where), _literal(tree, "HELP", where),
                           f"emdata.datasets.{package.name}.cli")
        if verb.name in verbs:
            raise ValueError(f"{where}: VERB {verb.name!r} is already taken by {verbs[verb.name].module}; "
                             "choose another name")
        verbs[verb.name] = verb
    return verbs


def load_verb(name: str) -> ModuleType:
    """Import the module of the dataset verb ``name`` (it holds the typer ``app``)."""
    return importlib.import_module(dataset_verbs()[name].module)
