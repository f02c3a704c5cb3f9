"""`emdata demo`: its folder is its own (never a user's), and `--dataset` demos any recipe end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from emdata.store.volume import open_volume


def demo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", "demo", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_a_folder_holding_a_users_files_is_refused_and_survives(tmp_path: Path) -> None:
    home = tmp_path / "mine"
    (home / "prepared").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    (home / "prepared" / "keep.txt").write_text("mine too")
    run = demo("--home", str(home))
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert str(home) in run.stderr and "not made by `emdata demo`" in run.stderr
    assert (home / "thesis.tex").read_text() == "years of work"
    assert (home / "prepared" / "keep.txt").read_text() == "mine too"
    assert sorted(p.name for p in home.iterdir()) == ["prepared", "thesis.tex"]  # nothing written either


def test_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    run = demo("--home", str(target))
    assert run.returncode == 1 and "is a file" in run.stderr and target.read_text() == "keep"


def test_platelet_em_and_tem_neutrostruct_end_to_end_and_a_rerun_cleans_only_its_own(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    run = demo("--home", str(home), "--dataset", "platelet-em", "--dataset", "tem-neutrostruct")
    assert run.returncode == 0, run.stderr
    assert "5 prepared volumes" in run.stdout and "FAILED" not in run.stdout
    assert "patches per dataset" in run.stdout and "platelet-em" in run.stdout
    marker = json.loads((home / "emdata-demo.json").read_text())
    assert marker["made_by"] == "emdata demo"
    platelet = sorted((home / "prepared" / "platelet-em").glob("*.ome.zarr"))
    neutro = sorted((home / "prepared" / "tem-neutrostruct").glob("*.ome.zarr"))
    assert [p.name for p in platelet] == ["volume-24.ome.zarr", "volume-50.ome.zarr"]
    assert len(neutro) == 3
    assert open_volume(platelet[0]).labels["semantic"].shape == open_volume(platelet[0]).raw.shape
    # a second demo in the same folder: what the first wrote is replaced, a file put beside it stays
    (home / "my-notes.txt").write_text("keep me")
    (home / "prepared" / "stale.txt").write_text("written into the demo's own folder")
    again = demo("--home", str(home), "--dataset", "platelet-em")
    assert again.returncode == 0, again.stderr
    assert (home / "my-notes.txt").read_text() == "keep me"
    assert not (home / "prepared" / "stale.txt").exists()
    assert not (home / "prepared" / "tem-neutrostruct").exists()
    assert sorted(p.name for p in (home / "prepared" / "platelet-em").glob("*.ome.zarr")) == [p.name for p in platelet]


def test_an_unknown_dataset_names_those_with_replicas(tmp_path: Path) -> None:
    run = demo("--home", str(tmp_path / "d"), "--dataset", "snemi3df")
    assert run.returncode == 1 and "snemi3df" in run.stderr and "tem-neutrostruct" in run.stderr
    assert not (tmp_path / "d").exists()


def test_the_round_trip_trains_predicts_stores_and_scores_offline(tmp_path: Path) -> None:
    from emdata.demo import DATASETS, round_trip
    from emdata.testing.replica_sets import prepared_replicas

    with prepared_replicas(tmp_path / "demo", DATASETS, small=True) as prepared:
        doc = round_trip(prepared, steps=4, patch=(4, 8, 8))
    assert doc["training"]["steps"] == 4 and doc["verify_deep_problems"] == []
    assert doc["dataset"] == "mitoem2" and doc["split"] == "test" and doc["metrics_from"] == "card:mitoem2"
    assert list(doc["results"]) == ["instance-accuracy", "dice"]
    assert doc["results"]["instance-accuracy"]["iou_threshold"] == 0.75
    vol = open_volume(doc["volume"])
    assert set(vol.predictions) == {"demo-semantic", "demo-mito"}
    assert vol.predictions["demo-semantic"]["provenance"]["model"] == "demo tiny 3D CNN"
    assert doc["prediction"]["layer"] == "demo-mito"
