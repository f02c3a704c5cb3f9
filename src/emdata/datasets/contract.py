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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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

SUBSET = Option("subset", str, "Only this subset of the card (repeatable; `emdata info ID` lists them); "
                "default: all.", repeatable=True, metavar="SUBSET")
"""The ``subset`` option of recipes whose card has subsets."""


class Recipe(Protocol):
    """The shape of a recipe module (modules satisfy it structurally)."""

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


__all__ = ["BBOX", "OPTION_TYPES", "SUBSET", "Option", "Recipe", "check_options", "option_names"]
