"""`emdata info` tells the truth: every label layer and volume a recipe writes is on its card.

Each case prepares a small replica of the dataset (its published layout, served by the
loopback mirror) and compares what was written with the card: layer names with
``[[labels]]``, volume names and splits with ``[[volumes]]`` (a volume's own name or one of
its ``cases``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

import emdata
from emdata.catalog import get_card
from emdata.catalog.card import Card
from emdata.config import downloads_dir
from emdata.testing import replicas

Writer = Callable[[Path], Any]


def _tem_neutrostruct(root: Path) -> None:
    """No download URL is published: the user places the Zenodo folder in the download folder."""
    truth = replicas.write_tem_neutrostruct_replica(root.parent / "tem-src")
    shutil.copytree(truth["folder"], downloads_dir("tem-neutrostruct"), dirs_exist_ok=True)

# dataset -> (replica writer, prepare options, label layers this replica makes the recipe write)
CASES: dict[str, tuple[Writer, dict[str, Any], set[str]]] = {
    "snemi3d": (lambda r: replicas.write_snemi3d_replica(r, shape=(4, 64, 64)), {}, {"neurons"}),
    "cremi": (lambda r: replicas.write_cremi_replica(r, small_ids=True), {}, {"neuron_ids", "clefts", "combined"}),
    "mitoem2": (lambda r: replicas.write_mitoem2_replica(r, subsets=("beta", "mossy")),
                {"subset": ["beta", "mossy"]}, {"semantic", "instances"}),
    "lucchi-pp": (lambda r: replicas.write_lucchi_pp_replica(r, slices=(3, 2)), {}, {"mitochondria"}),
    "axonem": (replicas.write_axonem_replica, {}, {"axons"}),
    "fib25": (replicas.write_fib25_replica, {}, {"neurons"}),
    "isbi2012": (replicas.write_isbi2012_replica, {}, {"membranes", "gt_segmentation"}),
    "kasthuri-pp": (replicas.write_kasthuri_pp_replica, {}, {"mitochondria"}),
    "mitoem": (lambda r: replicas.write_mitoem_replica(r, slices=(3, 2, 2)), {}, {"mito"}),
    "densecell": (lambda r: replicas.write_densecell_replica(r, weights="whole"), {}, {"semantic", "error-weights"}),
    "platelet-em": (replicas.write_platelet_em_replica, {}, {"semantic", "instance-cell", "instance-organelle"}),
    # the replica serves four of the nine mask folders; the others are left out with a warning
    "human-liver-em": (replicas.write_human_liver_em_replica, {"bbox": "1:5,20:200,30:300"},
                       {"er", "hepatocyte", "mito", "nucleus"}),
    "parlakgul-liver": (lambda r: replicas.write_parlakgul_liver_replica(r, samples=("6461", "1857")),
                        {"sample": ["6461", "1857"], "bbox": "1:5,13:45,7:70"},
                        {"er", "er_sheets", "er_tubules", "lipid_droplet", "mito", "nuclear_membrane",
                         "plasma_membrane"}),
    "tem-neutrostruct": (_tem_neutrostruct, {}, {"semantic", "instances"}),
}
# the precomputed bbox recipes (CloudVolume-written replica layers; need emdata[precomputed])
PRECOMPUTED: dict[str, tuple[Writer, dict[str, Any], set[str]]] = {
    "h01": (replicas.write_h01_replica, {"bbox": "6:15,130:170,70:100"}, {"c3"}),
    "j0126": (replicas.write_j0126_replica, {"bbox": "5:14,20:50,35:70"}, {"ffn_segmentation"}),
    "hemibrain": (replicas.write_hemibrain_replica, {"bbox": "33:50,65:100,97:130"}, {"segmentation", "mito"}),
    "kasthuri": (replicas.write_kasthuri_replica, {"bbox": "9:18,40:70,20:50"}, {"ground_truth"}),
    "microns-minnie65": (replicas.write_microns_minnie65_replica, {"bbox": "22:35,100:130,170:200"},
                         {"segmentation"}),
    "microns-layer23": (replicas.write_microns_layer23_replica, {"bbox": "3:14,101:141,119:157"}, {"segmentation"}),
}
if find_spec("cloudvolume") is not None:
    CASES.update(PRECOMPUTED)


@pytest.fixture(autouse=True)
def tmp_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing cloudvolume creates ~/.cloudvolume: keep it out of the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def _replica_files(card: Card, root: Path) -> dict[str, Path]:
    """{card source URL: replica file} for the sources the replica wrote (mirror layout)."""
    files = {}
    for source in card.sources:
        parts = urlsplit(source.url)
        path = root / parts.netloc / unquote(parts.path).lstrip("/")
        if path.is_file():
            files[source.url] = path
    return files


@pytest.mark.parametrize("dataset", sorted(CASES))
def test_prepare_writes_only_what_the_card_lists(dataset: str, mirror_root: Path, mirror: Any,
                                                 pin: Callable[[dict[str, Path]], None]) -> None:
    writer, options, expected_layers = CASES[dataset]
    card = get_card(dataset)
    writer(mirror_root)
    pin(_replica_files(card, mirror_root))
    vols = emdata.prepare(dataset, **options)
    assert vols, f"{dataset}: prepare wrote no volume"

    written_layers = {name for vol in vols for name in vol.meta["labels"]}
    card_layers = {layer.stored_name for layer in card.labels if layer.prepared}
    assert written_layers <= card_layers, (f"{dataset}: prepare wrote label layer(s) "
                                           f"{sorted(written_layers - card_layers)} that the card does not list")
    assert written_layers == expected_layers, f"{dataset}: wrote {sorted(written_layers)}"

    for vol in vols:
        entries = [spec for spec in card.volumes if spec.prepared and spec.writes(vol.name)]
        assert entries, (f"{dataset}: prepare wrote volume {vol.name!r}, which no card [[volumes]] entry names "
                         f"(names: {[spec.name for spec in card.volumes]}; add it to one entry's cases)")
        assert vol.split in {spec.split for spec in entries}, (dataset, vol.name, vol.split)


def test_every_card_layer_is_written_by_some_case() -> None:
    """The cases above cover every layer of their cards except those a replica cannot trigger."""
    not_written = {("human-liver-em", name) for name in
                   ("bile_duct", "cell_boundary", "cholangiocyte", "endothelial", "sinusoid")}
    for dataset, (_, _, layers) in CASES.items():
        missing = {layer.name for layer in get_card(dataset).labels
                   if layer.prepared and layer.stored_name not in layers}
        assert {(dataset, name) for name in missing} <= not_written, f"{dataset}: card layers {missing} never written"


def test_volume_cases_match_names_and_patterns() -> None:
    beta = next(v for v in get_card("mitoem2").volumes if v.name == "beta-train")
    assert beta.writes("beta-train") and beta.writes("beta-train04") and not beta.writes("beta-train05")
    human = next(v for v in get_card("axonem").volumes if v.name == "human-train")
    assert human.writes("human-train-0-0-0_pad") and not human.writes("mouse-train-0-0-0_pad")
    crop = next(v for v in get_card("parlakgul-liver").volumes if v.name == "6461")
    assert crop.writes("6461-z1-5_y13-45_x7-70") and not crop.writes("1857-z1-5_y13-45_x7-70")


def test_info_shows_volume_cases_and_licence_source() -> None:
    from typer.testing import CliRunner

    from emdata.cli import app

    runner = CliRunner()
    mitoem2 = runner.invoke(app, ["info", "mitoem2"], env={"COLUMNS": "400"})
    assert mitoem2.exit_code == 0, mitoem2.output
    assert "beta-train01, beta-train02, beta-train03, beta-train04" in mitoem2.output
    assert "labels instances" in mitoem2.output and "labels semantic" in mitoem2.output
    mitoem = runner.invoke(app, ["info", "mitoem"], env={"COLUMNS": "400"})
    assert "licence: MIT (https://huggingface.co/datasets/pytc/MitoEM)" in mitoem.output
