"""The recipe contract: what every ``emdata/datasets/<id>/recipe.py`` declares.

A recipe module has ``OPTIONS: tuple[Option, ...]`` (the keyword options ``prepare`` takes
besides ``volumes`` and ``force``, each with its type, help, choices and default) and
``prepare(volumes=None, force=False, **options) -> list[Volume]``; :class:`Recipe` is that
shape as a protocol. The CLI builds ``emdata prepare ID``'s options and ``emdata info``'s
option list from the declarations, and :func:`check_options` refuses undeclared options.

A dataset may add its own CLI verbs in ``emdata/datasets/<id>/cli.py``: module-level
``VERB = "<name>"``, ``HELP = "<one line>"`` (plain literals, read without importing the
module) and ``app``, a ``typer.Typer``; ``emdata <name>`` then loads it on first use.

Example:
    >>> CLASSES = Option("classes", int, "Class scheme.", choices=(4, 7), default=7)
    >>> CLASSES.flag, CLASSES.to_json()["choices"]
    ('--classes', [4, 7])
    >>> check_options("demo", (CLASSES,), {"classes": 4, "bbox": None})
    {'classes': 4}
    >>> check_options("demo", (CLASSES,), {"bbox": "0:1,0:8,0:8"})
    Traceback (most recent call last):
    ...
    ValueError: demo does not take option(s) bbox (it takes: classes)
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from emdata.store.volume import Volume

OPTION_TYPES: tuple[type, ...] = (str, int, float, bool)
"""The value types an option may declare (``bool`` options are flags)."""


@dataclass(frozen=True)
class Option:
    """One keyword option of a recipe's ``prepare``.

    ``type`` is one of :data:`OPTION_TYPES` (``bool``: a flag, given or not); ``choices`` the
    accepted values (strings compared case-insensitively), ``default`` what the recipe uses
    when the option is left out (documentation: an option not given is not passed);
    ``repeatable`` options take a list (``--subset a --subset b``).

    Example:
        >>> Option("subset", str, "Only this subset.", repeatable=True).metavar_text
        'TEXT'
        >>> Option("classes", int, "Class scheme.", choices=(4, 5), default=3)
        Traceback (most recent call last):
        ...
        ValueError: option classes: default 3 is not one of its choices (4, 5)
    """

    name: str
    type: type = str
    help: str = ""
    choices: tuple[Any, ...] | None = None
    default: Any = None
    repeatable: bool = False
    metavar: str | None = None

    def __post_init__(self) -> None:
        where = f"option {self.name}"
        if not self.name.isidentifier():
            raise ValueError(f"{where}: the name must be a Python identifier (it is a keyword of prepare)")
        if self.type not in OPTION_TYPES:
            raise ValueError(f"{where}: type {self.type!r} is not one of {[t.__name__ for t in OPTION_TYPES]}")
        if not self.help:
            raise ValueError(f"{where}: give a help text saying what the option does")
        if self.type is bool and (self.repeatable or self.choices):
            raise ValueError(f"{where}: a bool option is a flag; it takes no choices and cannot repeat")
        if self.choices is not None:
            if not self.choices or any(type(c) is not self.type for c in self.choices):
                raise ValueError(f"{where}: choices {self.choices!r} must be non-empty values of type "
                                 f"{self.type.__name__}")
            if self.default is not None and self.default not in self.choices:
                raise ValueError(f"{where}: default {self.default!r} is not one of its choices {self.choices}")
        elif self.default is not None and type(self.default) is not self.type:
            raise ValueError(f"{where}: default {self.default!r} is not of type {self.type.__name__}")

    @property
    def flag(self) -> str:
        """The command-line spelling, ``--name`` (``_`` written ``-``)."""
        return "--" + self.name.replace("_", "-")

    @property
    def metavar_text(self) -> str:
        """How the value is shown in help: ``metavar``, the choices, or the type name."""
        if self.metavar:
            return self.metavar
        if self.choices:
            return "[" + "|".join(str(c) for c in self.choices) + "]"
        return {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: ""}[self.type]

    def to_json(self) -> dict[str, Any]:
        """The declaration as JSON (``emdata info --json``)."""
        return {"name": self.name, "type": self.type.__name__, "help": self.help,
                "choices": list(self.choices) if self.choices else None, "default": self.default,
                "repeatable": self.repeatable}


BBOX = Option("bbox", str, "Region z0:z1,y0:y1,x0:x1 in voxels (mip 0), half-open; open ends reach the volume's "
              "bounds.", metavar="Z0:Z1,Y0:Y1,X0:X1")
"""The ``bbox`` option of box-cutting recipes (parse with :func:`emdata.boxes.parse_bbox`)."""

EM_BBOX = Option("bbox", str, "Region z0:z1,y0:y1,x0:x1 in voxels of the EM layer's mip 0 (required); open ends "
                 "reach the EM layer's bounds.", metavar="Z0:Z1,Y0:Y1,X0:X1")
"""The ``bbox`` option of the precomputed (Neuroglancer) datasets."""

SUBSET = Option("subset", str, "Only this subset of the card (`emdata info ID` lists them); "
                "default: all.", repeatable=True, metavar="SUBSET")
"""The ``subset`` option of recipes whose card has subsets."""


SHARED: dict[str, Option] = {"BBOX": BBOX, "EM_BBOX": EM_BBOX, "SUBSET": SUBSET}
"""The shared declarations a recipe's ``OPTIONS`` may name."""


def read_declarations(source: str, where: str) -> tuple[Option, ...]:
    """The ``OPTIONS`` of a recipe module's source text, read without importing (running) it.

    ``OPTIONS`` must be written with literals, ``Option(...)`` calls and the names in
    :data:`SHARED`, so ``emdata info`` can show them without importing a recipe.

    Example:
        >>> read_declarations('OPTIONS = (SUBSET, Option("padded", bool, "Padded files."))', "demo.py")[1].type
        <class 'bool'>
        >>> read_declarations("OPTIONS = RECIPE.options", "demo.py")
        Traceback (most recent call last):
        ...
        ValueError: demo.py: OPTIONS must be a tuple of Option(...) calls with literal arguments and the shared \
declarations BBOX, EM_BBOX, SUBSET; found RECIPE.options
    """
    names: dict[str, Any] = {**SHARED, **{t.__name__: t for t in OPTION_TYPES}, "None": None}

    def value(node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Option":
            return Option(*map(value, node.args), **{k.arg: value(k.value) for k in node.keywords if k.arg})
        raise ValueError(f"{where}: OPTIONS must be a tuple of Option(...) calls with literal arguments and the "
                         f"shared declarations {', '.join(SHARED)}; found {ast.unparse(node)}")

    for node in ast.parse(source, filename=where).body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id == "OPTIONS" and getattr(node, "value", None) is not None:
            declared = value(node.value)  # type: ignore[attr-defined]
            if not isinstance(declared, tuple) or not all(isinstance(o, Option) for o in declared):
                raise ValueError(f"{where}: OPTIONS must be a tuple of Option declarations")
            return declared
    raise ValueError(f"{where}: no module-level OPTIONS; declare the options prepare takes (OPTIONS = () for none)")


@runtime_checkable
class Recipe(Protocol):
    """The shape of a recipe module (modules satisfy it structurally).

    Example:
        >>> from emdata.datasets import recipe_for
        >>> isinstance(recipe_for("snemi3d"), Recipe)
        True
    """

    OPTIONS: tuple[Option, ...]

    def prepare(self, volumes: list[str] | None = None, force: bool = False, **options: Any) -> list[Volume]: ...


def option_names(declared: Sequence[Option]) -> list[str]:
    """The sorted names of ``declared`` (``emdata info``'s ``prepare.options``).

    Example:
        >>> option_names((SUBSET, BBOX))
        ['bbox', 'subset']
    """
    return sorted(o.name for o in declared)


def check_options(dataset_id: str, declared: Sequence[Option], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options given (not None), after refusing in one line any that ``declared`` lacks."""
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - {o.name for o in declared})
    if unknown:
        accepted = ", ".join(option_names(declared)) or "none"
        raise ValueError(f"{dataset_id} does not take option(s) {', '.join(unknown)} (it takes: {accepted})")
    return given


__all__ = ["BBOX", "EM_BBOX", "OPTION_TYPES", "SHARED", "SUBSET", "Option", "Recipe", "check_options", "option_names",
           "read_declarations"]
