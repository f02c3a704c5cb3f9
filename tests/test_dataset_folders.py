"""One folder per dataset: ``emdata/datasets/<id>/`` holds its card, recipe, replica writer and test;
the catalog reads the cards without importing any dataset code; replicas never import reader code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import emdata
from emdata.catalog import dataset_ids
from emdata.testing import replicas

DATASETS = Path(emdata.__file__).parent / "datasets"
REPLICA_FILES = sorted(DATASETS.glob("*/replica.py"))
READER_PACKAGES = ("emdata.formats", "emdata.sources", "emdata.store", "emdata.labels")


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved against its package)."""
    package = f"emdata.datasets.{path.parent.name}"
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).rstrip(".")
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def reader_imports(path: Path) -> list[str]:
    """The imports of ``path`` that reach recipe or reader code."""
    def reaches_reader(name: str) -> bool:
        parts = name.split(".")
        if name.startswith(READER_PACKAGES):
            return True
        if parts[:2] != ["emdata", "datasets"] or len(parts) == 2:
            return False
        dataset_package = len(parts) == 3 and not parts[2].startswith("_")  # emdata.datasets.<id>
        return not (dataset_package or (len(parts) >= 4 and parts[3] == "replica"))

    return [name for name in imported_modules(path) if reaches_reader(name)]


def test_every_dataset_folder_has_a_card_and_the_catalog_lists_each() -> None:
    folders = sorted(d.name for d in DATASETS.iterdir() if d.is_dir() and (d / "recipe.py").is_file())
    assert folders == sorted(i.replace("-", "_") for i in dataset_ids())
    assert all((DATASETS / f / "card.toml").is_file() for f in folders)


@pytest.mark.parametrize("path", REPLICA_FILES, ids=lambda p: p.parent.name)
def test_replica_writer_imports_no_reader_code(path: Path) -> None:
    assert not reader_imports(path), f"{path}: imports {reader_imports(path)}; a replica shares no code with the reader"


def test_the_import_scan_catches_recipe_and_reader_imports(tmp_path: Path) -> None:
    bad = tmp_path / "x" / "replica.py"
    bad.parent.mkdir()
    bad.write_text("from emdata.datasets.x.recipe import prepare\nimport emdata.formats.tiff\n"
                   "from . import recipe\nfrom emdata.store import writer\nfrom emdata.datasets.y.replica import f\n")
    assert reader_imports(bad) == ["emdata.datasets.x.recipe", "emdata.datasets.x.recipe.prepare",
                                   "emdata.formats.tiff", "emdata.datasets.x.recipe",
                                   "emdata.store", "emdata.store.writer"]


def test_every_replica_is_discovered_and_exported() -> None:
    assert len(REPLICA_FILES) == len(dataset_ids())
    for path in REPLICA_FILES:
        writer = getattr(replicas, f"write_{path.parent.name}_replica")
        assert writer.__module__ == f"emdata.datasets.{path.parent.name}.replica"
    with pytest.raises(AttributeError, match="write_nope_replica"):
        replicas.write_nope_replica  # noqa: B018


def test_list_imports_no_dataset_module() -> None:
    """``emdata list`` reads the TOML cards only: no recipe, replica or dataset test is imported."""
    code = ("import json, sys; from emdata.cli import main; sys.argv = ['emdata', 'list', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('emdata.datasets.')"
            " and m.rsplit('.', 1)[-1] in ('recipe', 'replica') or '.test_' in m)), file=sys.stderr)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(run.stderr.strip().splitlines()[-1]) == []
    assert len(json.loads(run.stdout)) == len(dataset_ids())
