"""A recipe's declared options on the command line: ``emdata prepare ID [OPTIONS]``.

``prepare`` parses its common options (``--volume``, ``--force``, ``--json``) itself and hands
the rest here, parsed by an :mod:`argparse` parser built from the dataset's
:class:`emdata.datasets.contract.Option` declarations (imported when ``prepare`` runs, never
by ``emdata list``). Every error is one line naming the option and the value.

Example:
    >>> from emdata.datasets.contract import BBOX, SUBSET, Option
    >>> declared = (SUBSET, BBOX, Option("classes", int, "Class scheme.", choices=(4, 7)))
    >>> parse_options("demo", declared, ["--subset", "a", "--subset=b", "--classes", "07"])
    {'subset': ['a', 'b'], 'classes': 7}
    >>> parse_options("demo", declared, ["--classes", "5"])
    Traceback (most recent call last):
    ...
    ValueError: demo: argument --classes: 5 is not one of 4, 7
    >>> parse_options("demo", declared, ["--padded"])
    Traceback (most recent call last):
    ...
    ValueError: demo does not take option(s) padded (it takes: bbox, classes, subset)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from emdata.datasets.contract import Option, check_options

COMMON = (("--volume", "Only this volume (repeatable).", "VOLUME"),
          ("--force", "Rebuild even if the volumes are complete.", None),
          ("--scheduler", "Where large volumes are built: auto, in-process, local (dask LocalCluster) or a "
                          "dask scheduler address (tcp://host:8786).", "ADDRESS"),
          ("--json", "Print one JSON document on stdout and nothing else.", None))
"""The options every ``prepare`` takes (flag, help, metavar or None for a flag), shown in its help."""


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are exceptions (one line), never a usage block and exit."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _converter(option: Option) -> Callable[[str], Any]:
    """The text → value conversion of ``option``: its type, then its choices (strings case-insensitively)."""
    names = {int: "an integer", float: "a number", str: "a text"}

    def convert(text: str) -> Any:
        try:
            value = option.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {names[option.type]}") from None
        if option.choices is None:
            return value
        for choice in option.choices:
            if choice == value or (isinstance(choice, str) and choice.casefold() == value.casefold()):
                return choice
        raise argparse.ArgumentTypeError(f"{text} is not one of {', '.join(map(str, option.choices))}")

    convert.__name__ = option.type.__name__
    return convert


def build_parser(dataset: str, declared: Sequence[Option], with_common: bool = False) -> argparse.ArgumentParser:
    """The parser of ``emdata prepare dataset``'s declared options (with the common ones for help).

    Example:
        >>> from emdata.datasets.contract import BBOX
        >>> "--bbox Z0:Z1,Y0:Y1,X0:X1" in build_parser("demo", (BBOX,)).format_help()
        True
    """
    parser = _Parser(prog=f"emdata prepare {dataset}", add_help=False, allow_abbrev=False,
                     description=f"Fetch {dataset} and write its canonical OME-Zarr volumes.")
    if with_common:
        common = parser.add_argument_group("options of every dataset")
        for flag, text, metavar in COMMON:
            if any(option.flag == flag for option in declared):
                continue  # the dataset declares it with its own meaning
            common.add_argument(flag, help=text, **({"metavar": metavar} if metavar else {"action": "store_true"}))
        common.add_argument("--help", action="store_true", help="Show this message and exit.")
    own = parser.add_argument_group(f"options of {dataset}" if declared else f"{dataset} takes no other options")
    for option in declared:
        text = option.help + (" (repeatable)" if option.repeatable else "")
        text += f" [default: {option.default}]" if option.default is not None else ""
        if option.type is bool:
            own.add_argument(option.flag, dest=option.name, action="store_true", default=None, help=text)
        else:
            own.add_argument(option.flag, dest=option.name, type=_converter(option), metavar=option.metavar_text,
                             action="append" if option.repeatable else "store", help=text)
    return parser


def parse_options(dataset: str, declared: Sequence[Option], tokens: Sequence[str]) -> dict[str, Any]:
    """``tokens`` (the options typed after ``emdata prepare ID``) as ``prepare`` keywords; only those given."""
    flags = {t[2:].split("=", 1)[0].replace("-", "_") for t in tokens if t.startswith("--")}
    check_options(dataset, declared, dict.fromkeys(flags, True))  # undeclared ones: the API's one-line refusal
    try:
        parsed = build_parser(dataset, declared).parse_args(list(tokens))
    except ValueError as exc:
        raise ValueError(f"{dataset}: {exc}") from None
    return {k: v for k, v in vars(parsed).items() if v is not None}


__all__ = ["COMMON", "build_parser", "parse_options"]
