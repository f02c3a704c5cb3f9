"""What users install: supported Pythons, dependency ranges (exact pins only in constraints.txt),
and no reliance on private APIs of the libraries we depend on."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_python_3_11_to_3_13_are_supported() -> None:
    supported = SpecifierSet(PROJECT["requires-python"])
    assert all(v in supported for v in ("3.11", "3.12", "3.13")), PROJECT["requires-python"]
    classifiers = set(PROJECT["classifiers"])
    assert {f"Programming Language :: Python :: 3.{m}" for m in (11, 12, 13)} <= classifiers


def test_dependencies_are_ranges_and_pins_live_in_constraints() -> None:
    extras = PROJECT["optional-dependencies"].values()
    requirements = [*PROJECT["dependencies"], *(r for extra in extras for r in extra)]
    exact = [r for r in requirements if any(s.operator == "==" for s in Requirement(r).specifier)
             and Requirement(r).name not in ("ome-zarr-models",)]  # a test-only validator, pinned on purpose
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"
    constraints = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    assert re.search(r"^torch==2\.13\.0$", constraints, re.MULTILINE), "make must keep taking the local CPU wheel"
    for name in ("torch", "lightning"):
        spec = next(Requirement(r).specifier for r in PROJECT["optional-dependencies"][name]
                    if Requirement(r).name == name)
        assert any(s.operator == "<" for s in spec), f"{name} needs an upper bound, got {spec}"


def test_lightning_integration_uses_no_private_attribute_of_lightning_objects() -> None:
    tree = ast.parse((ROOT / "src" / "emdata" / "lightning" / "__init__.py").read_text(encoding="utf-8"))
    private = sorted({f"{ast.unparse(node.value)}.{node.attr}" for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr.startswith("_")
                      and not node.attr.startswith("__") and ast.unparse(node.value) != "self"})
    assert not private, f"private attributes of other objects (e.g. the Trainer): {private}"
