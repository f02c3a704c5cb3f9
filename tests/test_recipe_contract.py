"""The recipe contract: typed option declarations, the CLI built from them, dataset verbs."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import emdata
import emdata.datasets
from emdata.catalog import dataset_ids
from emdata.cli import app
from emdata.datasets import DatasetVerb, dataset_verbs, declared_options, preparable, recipe_for
from emdata.datasets.contract import Option, Recipe

CLI_DIR = Path(__file__).resolve().parents[1] / "src" / "emdata" / "cli"


def emdata_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("dataset", preparable())
def test_every_recipe_declares_typed_options_matching_prepare(dataset: str) -> None:
    recipe = recipe_for(dataset)
    assert isinstance(recipe, Recipe)
    assert isinstance(recipe.OPTIONS, tuple) and all(isinstance(o, Option) for o in recipe.OPTIONS)
    names = [o.name for o in recipe.OPTIONS]
    assert len(names) == len(set(names)), f"{dataset}: an option is declared twice: {names}"
    keywords = set(inspect.signature(recipe.prepare).parameters) - {"volumes", "force"}
    assert set(names) == keywords, f"{dataset}: declared {sorted(names)}, prepare takes {sorted(keywords)}"
    assert all(len(o.help) > 15 for o in recipe.OPTIONS)
    parameters = inspect.signature(recipe.prepare).parameters
    for o in recipe.OPTIONS:  # a default in prepare's signature is the declared one
        assert parameters[o.name].default in (None, False, o.default), f"{dataset}: {o.name}"
    assert declared_options(dataset) == recipe.OPTIONS  # what `emdata info` reads without importing the recipe
    bbox_recipe = getattr(recipe, "RECIPE", None)
    if bbox_recipe is not None and bbox_recipe.versions:
        (version,) = [o for o in recipe.OPTIONS if o.name == "version"]
        assert version.default == bbox_recipe.default_version
        assert all(v in version.help for v in bbox_recipe.versions)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"name": "bounding-box"}, "must be a Python identifier"),
    ({"type": list}, "is not one of"),
    ({"help": ""}, "give a help text"),
    ({"type": bool, "repeatable": True}, "a bool option is a flag"),
    ({"type": int, "choices": (4, "7")}, "must be non-empty values of type int"),
    ({"type": int, "choices": (4, 7), "default": 5}, "default 5 is not one of its choices"),
    ({"type": int, "default": "7"}, "default '7' is not of type int"),
])
def test_a_bad_declaration_is_refused_when_declared(kwargs: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        Option(**{"name": "classes", "type": str, "help": "What it does.", **kwargs})


def test_prepare_help_shows_the_dataset_options() -> None:
    platelet = emdata_cli("prepare", "platelet-em", "--help")
    assert platelet.returncode == 0 and "--release [json|rgba|rgb]" in platelet.stdout
    assert "[default: json]" in platelet.stdout and "--volume" in platelet.stdout and "--bbox" not in platelet.stdout
    minnie = CliRunner().invoke(app, ["prepare", "--help", "microns-minnie65"])
    assert minnie.exit_code == 0 and "--bbox Z0:Z1,Y0:Y1,X0:X1" in minnie.output and "1300" in minnie.output
    generic = CliRunner().invoke(app, ["prepare", "--help"])
    assert generic.exit_code == 0 and "`emdata prepare ID --help` shows them" in " ".join(generic.output.split())


def test_info_lists_the_declarations() -> None:
    doc = json.loads(emdata_cli("info", "tem-neutrostruct", "--json").stdout)
    assert doc["prepare"] == {"available": True, "options": ["classes"]}
    assert doc["prepare_options"] == [{"name": "classes", "type": "int", "help": recipe_for("tem-neutrostruct")
                                       .OPTIONS[0].help, "choices": [7, 4], "default": 7, "repeatable": False}]
    text = CliRunner().invoke(app, ["info", "mitoem"]).output
    assert "--subset str: Only this subset" in text and "(repeatable)" in text


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(emdata, "prepare", lambda dataset, **kw: seen.append((dataset, kw)) or [])
    return seen


@pytest.mark.parametrize(("args", "dataset", "options"), [
    (["snemi3d"], "snemi3d", {}),
    (["mitoem", "--subset", "rat", "--subset=human"], "mitoem", {"subset": ["rat", "human"]}),
    (["--subset", "rat", "mitoem", "--force"], "mitoem", {"subset": ["rat"], "force": True}),
    (["platelet-em", "--release", "RGB"], "platelet-em", {"release": "rgb"}),
    (["tem-neutrostruct", "--classes", "4"], "tem-neutrostruct", {"classes": 4}),
    (["cremi", "--padded", "--volume", "A"], "cremi", {"padded": True, "volumes": ["A"]}),
    (["human-liver-em", "--full", "--scheduler", "tcp://127.0.0.1:8786"], "human-liver-em",
     {"full": True, "scheduler": "tcp://127.0.0.1:8786"}),
])
def test_prepare_passes_the_declared_options_typed(calls: list, args: list[str], dataset: str,
                                                   options: dict[str, Any]) -> None:
    result = CliRunner().invoke(app, ["prepare", *args, "--json"])
    assert result.exit_code == 0, result.output
    expected = {"volumes": options.pop("volumes", None), "force": options.pop("force", False), **options}
    assert calls == [(dataset, expected)]


@pytest.mark.parametrize(("args", "line"), [
    (["snemi3d", "--bbox", "0:1,0:8,0:8", "--subset", "x"],
     "emdata: error: snemi3d does not take option(s) bbox, subset (it takes: none)"),
    (["tem-neutrostruct", "--classes", "5"],
     "emdata: error: tem-neutrostruct: argument --classes: 5 is not one of 7, 4"),
    (["tem-neutrostruct", "--classes", "x"],
     "emdata: error: tem-neutrostruct: argument --classes: 'x' is not an integer"),
    (["platelet-em", "--release"], "emdata: error: platelet-em: argument --release: expected one argument"),
])
def test_a_bad_option_is_one_line(args: list[str], line: str) -> None:
    run = emdata_cli("prepare", *args)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [line]


def test_a_dataset_verb_registers_through_the_declaration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert dataset_verbs()["neutrostruct"] == DatasetVerb("neutrostruct", "TEM-NeutroStruct tools (4→7 class "
                                                          "reclassification).", "emdata.datasets.tem_neutrostruct.cli")
    assert "reclassify" in CliRunner().invoke(app, ["neutrostruct", "--help"]).output
    (tmp_path / "demo_verb_cli.py").write_text(
        "import typer\nVERB = 'demo-verb'\nHELP = 'Demo tools.'\napp = typer.Typer()\n"
        "@app.command()\ndef hello(name: str) -> None:\n    print(f'hello {name}')\n"
        "@app.command()\ndef bye() -> None:\n    print('bye')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(emdata.datasets, "dataset_verbs",
                        lambda: {"demo-verb": DatasetVerb("demo-verb", "Demo tools.", "demo_verb_cli")})
    result = CliRunner().invoke(app, ["demo-verb", "hello", "world"])
    assert result.exit_code == 0 and result.output == "hello world\n"
    assert "Demo tools." in CliRunner().invoke(app, ["--help"]).output
    assert typer.main.get_command(app).get_command(None, "nothing-here") is None


def test_a_dataset_cli_without_its_declaration_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "emdata_fake_datasets" / "somedata"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("", encoding="utf-8")
    (package / "cli.py").write_text("import typer\nHELP = 'x'\napp = typer.Typer()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(emdata.datasets.resources, "files", lambda _: package.parent)
    emdata.datasets.dataset_verbs.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"emdata/datasets/somedata/cli.py: a dataset cli.py must assign VERB"):
            dataset_verbs()
    finally:
        emdata.datasets.dataset_verbs.cache_clear()


def test_no_dataset_name_in_the_cli() -> None:
    found = []
    for path in sorted(CLI_DIR.glob("*.py")):
        text = path.read_text(encoding="utf-8")
        for name in {n for d in dataset_ids() for n in (d, d.replace("-", "_"))}:
            found += [f"{path.name}: {name}" for _ in re.finditer(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)]
    assert found == []


def test_list_and_info_import_no_recipe_module() -> None:
    code = ("import contextlib, io, sys\nfrom emdata.cli import app\n"
            "for argv in (['list', '--json'], ['info', 'snemi3d', '--json']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try:\n            app(argv)\n        except SystemExit:\n            pass\n"
            "    print(sorted(m for m in sys.modules if m.startswith('emdata.datasets.')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.splitlines() == ["[]", "['emdata.datasets.contract']"], run.stderr
