"""The CLI contract: JSON only on stdout with --json, one-line errors, exit codes."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import emdata as emdata_pkg
from emdata.catalog import dataset_ids, get_card


def emdata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120)


def test_list_json_lists_every_id() -> None:
    run = emdata("list", "--json")
    assert run.returncode == 0
    rows = json.loads(run.stdout)
    assert {r["id"] for r in rows} == set(dataset_ids())
    for r in rows:
        assert {"id", "title", "species", "microscopy", "voxel_size_nm"} <= set(r)
        nm = r["voxel_size_nm"]
        assert nm is None or (len(nm) == 3 and all(isinstance(v, (int, float)) for v in nm))
    snemi = next(r for r in rows if r["id"] == "snemi3d")
    assert snemi["voxel_size_nm"] == [30, 6, 6] and snemi["microscopy"] == "ATUM-SEM"


def test_list_filters_and_table() -> None:
    rows = json.loads(emdata("list", "--species", "fly", "--json").stdout)
    assert {r["id"] for r in rows} == {"isbi2012", "cremi", "fib25", "hemibrain"}
    rows = json.loads(emdata("list", "--microscopy", "FIB-SEM", "--json").stdout)
    assert {"fib25", "hemibrain", "parlakgul-liver"} <= {r["id"] for r in rows}
    table = emdata("list")
    assert table.returncode == 0 and "snemi3d" in table.stdout


@pytest.mark.parametrize("dataset", ["snemi3d", "mitoem2", "cremi"])
def test_info_json(dataset: str) -> None:
    run = emdata("info", dataset, "--json")
    assert run.returncode == 0
    doc = json.loads(run.stdout)
    assert {"id", "title", "species", "microscopy", "voxel_size_nm", "classes", "sources", "citation",
            "license"} <= set(doc)
    if dataset == "mitoem2":
        assert len(doc["subsets"]) == 8
    assert set(doc["prepare"]) == {"available", "options"}
    if dataset == "snemi3d":
        assert doc["prepare"] == {"available": True, "options": []}
    assert all("url" in s and "checksum" in s for s in doc["sources"])
    human = emdata("info", dataset)
    assert human.returncode == 0 and dataset in human.stdout


def test_cite_prints_bibtex() -> None:
    run = emdata("cite", "snemi3d")
    assert run.returncode == 0 and run.stdout.startswith("@") and "10.1016/j.cell.2015.06.054" in run.stdout


def test_cite_json_is_one_document_with_the_bibtex() -> None:
    run = emdata("cite", "cremi", "--json")
    assert run.returncode == 0 and run.stderr == ""
    doc = json.loads(run.stdout)
    card = get_card("cremi")
    assert doc == {"dataset": "cremi", "title": card.title, "homepage": card.homepage, "license": card.license,
                   "bibtex": card.citation}
    assert doc["bibtex"].startswith("@misc{cremi2016")


def test_version_is_the_installed_package_version() -> None:
    run = emdata("--version")
    assert run.returncode == 0 and run.stdout == f"emdata {importlib.metadata.version('emdata')}\n"
    assert emdata_pkg.__version__ == importlib.metadata.version("emdata")


@pytest.mark.parametrize("verb", [["info", "snemi3df"], ["cite", "snemi3df"], ["info", "snemi3df", "--json"],
                                  ["prepare", "snemi3df"]])
def test_unknown_id_is_one_line_with_suggestion(verb: list[str]) -> None:
    run = emdata(*verb)
    assert run.returncode != 0 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "snemi3d" in lines[0] and "Traceback" not in run.stderr


# The CLI in a subprocess whose recipe lookup finds no recipe packages: every card is then one
# without a recipe, whatever recipes this checkout ships.
WITHOUT_RECIPES = ("import emdata.datasets; emdata.datasets._recipe_packages = lambda: frozenset(); "
                   "from emdata.cli import main; main()")


def emdata_without_recipes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_RECIPES, *args], capture_output=True, text=True,
                          timeout=120)


def test_card_without_recipe_is_clear() -> None:
    run = emdata_without_recipes("prepare", "snemi3d")
    assert run.returncode == 1 and run.stdout == "" and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "emdata: error: snemi3d is in the catalog but has no recipe yet (preparable now: none); "
        "`emdata info snemi3d` lists its sources"]
    doc = json.loads(emdata_without_recipes("info", "snemi3d", "--json").stdout)
    assert doc["prepare"] == {"available": False, "options": []}
    human = emdata_without_recipes("info", "snemi3d")
    assert human.returncode == 0 and "prepare: no recipe yet; `emdata fetch` downloads its files" in human.stdout


def test_verify_of_a_missing_path_names_it() -> None:
    run = emdata("verify", "/nonexistent/place")
    assert run.returncode == 1 and "/nonexistent/place" in run.stderr
