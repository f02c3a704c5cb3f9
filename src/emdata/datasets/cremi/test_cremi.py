"""CREMI end to end through the loopback mirror: six volumes, uint64 ids intact, clefts
background mapped, padded geometry, synaptic partner table, combined code, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import emdata
from emdata.datasets.cremi.replica import HOST_DIR, NO_CLEFT, write_cremi_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe

NAMES = ["A", "B", "C", "A+", "B+", "C+"]
Pin = Callable[[dict[str, Path]], Path]  # the `pin` fixture of emdata.testing.fixtures


def expected_clefts(stored: np.ndarray) -> np.ndarray:
    return np.where(stored == NO_CLEFT, np.uint64(0), stored)


def test_six_volumes_voxel_exact_with_uint64_ids(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root)
    pin(truth["files"])
    vols = emdata.prepare("cremi")
    assert [(v.name, v.split) for v in vols] == [("A", "train"), ("B", "train"), ("C", "train"),
                                                 ("A+", "test"), ("B+", "test"), ("C+", "test")]
    for vol in vols:
        sample = truth["samples"][vol.name]
        assert vol.voxel_size == (40.0, 4.0, 4.0) and vol.raw.dtype == np.uint8
        assert np.array_equal(vol.raw[...], sample["raw"])
        assert vol.meta["variant"] == "cropped"
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
        if vol.split == "test":
            assert vol.labels == {}
            continue
        neurons = vol.labels["neuron_ids"]
        assert neurons.dtype == np.uint64 and np.array_equal(neurons[...], sample["neuron_ids"])
        assert int(neurons[...].max()) == 2**64 - 2  # ids ≥ 2**63 survive unchanged
        clefts = vol.labels["clefts"]
        assert clefts.dtype == np.uint64 and np.array_equal(clefts[...], expected_clefts(sample["clefts"]))
        assert 2**63 + 1 in set(np.unique(clefts[...]).tolist())
        assert vol.meta["clefts_background_mapped"]["voxels"] == int((sample["clefts"] == NO_CLEFT).sum())
        assert any("2**64-1" in n for n in vol.meta["notes"])
        assert vol.meta["labels"]["clefts"]["mapping"] == {"0": {"name": "background", "id": 0},
                                                          "nonzero": {"name": "cleft", "id": 2}}
        assert vol.meta["labels"]["neuron_ids"]["mapping"] == {"nonzero": {"name": "neuron", "id": 1}}
        # ids too wide for the offset code: no combined layer, a note instead
        assert "combined" not in vol.labels and any("combined layer not written" in n for n in vol.meta["notes"])
        table = vol.meta["synaptic_partners"]
        ann = sample["annotations"]
        assert table["ids"] == [int(i) for i in ann["ids"]] and 2**63 + 7 in table["ids"]
        assert table["types"] == ann["types"]
        assert np.allclose(table["locations_nm"], ann["locations"])
        assert table["partners"] == [[int(a), int(b)] for a, b in ann["partners"]]
        assert table["comments"] == [{"target_id": 12, "comment": "uncertain"}]
        assert table["offset_nm"] is None
    prov = vols[3].meta["provenance"]["sources"][0]
    assert prov["url"] == "https://cremi.org/static/data/sample_A%2B_20160601.hdf"
    assert prov["fetched_from"].startswith(mirror.url)
    assert len(mirror.requests_for("sample_A+_20160601.hdf")) == 1  # the mirror sees '+' decoded
    assert [v.name for v in emdata.volumes("cremi", split="test")] == ["A+", "B+", "C+"]


def test_combined_layer_uses_the_offset_code(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, samples=("B",), small_ids=True)
    pin(truth["files"])
    (b,) = emdata.prepare("cremi", volumes=["B"])
    sample = truth["samples"]["B"]
    cleft = sample["clefts"] != NO_CLEFT
    expected = sample["neuron_ids"].copy()
    expected[cleft] = sample["clefts"][cleft] + np.uint64(1_000_000)
    combined = b.labels["combined"]
    assert combined.dtype == np.uint64 and np.array_equal(combined[...], expected)
    assert b.meta["combined_code"]["clefts"]["offset"] == 1_000_000
    assert b.meta["labels"]["combined"]["annotates"] == ["background", "neuron", "cleft"]
    assert b.meta["labels"]["combined"]["mapping"]["ranges"] == [
        {"min": 1, "max": 999_999, "name": "neuron", "id": 1},
        {"min": 1_000_000, "max": 1_999_999, "name": "cleft", "id": 2}]
    assert verify_volume(b.path, deep=True).ok


def test_padded_labels_are_placed_at_their_offset(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, samples=("A", "A+"), types_key="type")
    pin(truth["files"])
    a, a_test = emdata.prepare("cremi", volumes=["A", "A+"], padded=True)
    sample = truth["samples"]["A"]
    box = tuple(slice(p, p + s) for p, s in zip(sample["pad"], sample["raw"].shape))
    assert a.meta["variant"] == "padded" and a.shape == sample["padded_raw"].shape
    assert np.array_equal(a.raw[...], sample["padded_raw"])
    neurons = a.labels["neuron_ids"][...]
    assert np.array_equal(neurons[box], sample["neuron_ids"])
    outside = np.ones(neurons.shape, bool)
    outside[box] = False
    assert not neurons[outside].any() and not a.labels["clefts"][...][outside].any()
    assert np.array_equal(a.labels["clefts"][...][box], expected_clefts(sample["clefts"]))
    region = [[b.start, b.stop] for b in box]
    assert a.meta["annotated_region"] == {"neuron_ids": region, "clefts": region}
    assert any("not annotated" in n for n in a.meta["notes"])
    table = a.meta["synaptic_partners"]
    assert table["offset_nm"] == list(sample["offset_nm"])  # annotations group offset recorded
    assert table["types"] == sample["annotations"]["types"]  # read from annotations/type as well
    assert np.array_equal(a_test.raw[...], truth["samples"]["A+"]["padded_raw"]) and a_test.labels == {}
    cropped_from_padded = truth["samples"]["A+"]["padded_raw"][box]
    assert np.array_equal(cropped_from_padded, truth["samples"]["A+"]["raw"])
    assert verify_volume(a.path, deep=True).ok
    # the cropped variant replaces the padded one under the same name
    (cropped,) = emdata.prepare("cremi", volumes=["A"])
    assert cropped.meta["variant"] == "cropped" and cropped.shape == sample["raw"].shape


def test_padded_labels_on_the_raw_grid_with_fill(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, samples=("C",), padded_labels="full")
    pin(truth["files"])
    (c,) = emdata.prepare("cremi", volumes=["C"], padded=True)
    sample = truth["samples"]["C"]
    stored = sample["padded_neuron_ids"]
    assert np.array_equal(c.labels["neuron_ids"][...], np.where(stored == NO_CLEFT, np.uint64(0), stored))
    assert c.meta["neuron_ids_unlabelled_mapped"]["voxels"] == int((stored == NO_CLEFT).sum())
    assert np.array_equal(c.labels["clefts"][...], expected_clefts(sample["padded_clefts"]))
    assert "annotated_region" not in c.meta


def test_rerun_makes_no_request_and_rewrites_nothing(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, samples=("A",))
    pin(truth["files"])
    (first,) = emdata.prepare("cremi", volumes=["A"])
    stamp = (first.path / "zarr.json").stat().st_mtime_ns
    n_requests = len(mirror.log)
    (second,) = emdata.prepare("cremi", volumes=["A"])
    assert (second.path / "zarr.json").stat().st_mtime_ns == stamp
    assert len(mirror.log) == n_requests and len(mirror.requests_for("sample_A_20160501.hdf")) == 1
    (forced,) = emdata.prepare("cremi", volumes=["A"], force=True)
    assert (forced.path / "zarr.json").stat().st_mtime_ns != stamp and len(mirror.log) == n_requests


def test_resolution_mismatch_names_file_and_values(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, samples=("B",), resolution=(40.0, 8.0, 8.0))
    pin(truth["files"])
    with pytest.raises(ValueError, match=r"sample_B_20160501\.hdf:volumes/raw: attribute resolution = "
                                         r"\(40\.0, 8\.0, 8\.0\).*\(40\.0, 4\.0, 4\.0\)"):
        emdata.prepare("cremi", volumes=["B"])
    assert not (emdata.config.prepared_dir("cremi") / "B.ome.zarr").exists()


def test_missing_key_names_file_and_key(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, samples=("C",))
    with h5py.File(mirror_root / HOST_DIR / "sample_C_20160501.hdf", "a") as f:
        del f["volumes/labels/clefts"]
    pin(truth["files"])
    with pytest.raises(ValueError, match=r"sample_C_20160501\.hdf: no dataset 'volumes/labels/clefts'.*neuron_ids"):
        emdata.prepare("cremi", volumes=["C"])
    assert not (emdata.config.prepared_dir("cremi") / "C.ome.zarr").exists()


def test_bad_selection_and_options_are_refused() -> None:
    with pytest.raises(ValueError, match=r"no volume\(s\) \['D'\]; choose from \['A', 'B', 'C', 'A\+'"):
        emdata.prepare("cremi", volumes=["D"])
    with pytest.raises(ValueError, match=r"does not take option.*bbox.*it takes: padded"):
        emdata.prepare("cremi", bbox="0:1,0:1,0:1")


def test_cli_prepare_json_lists_six_volumes(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_cremi_replica(mirror_root, shape=(4, 32, 32), pad=(1, 4, 4))
    pin(truth["files"])
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", "cremi", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert [(r["volume"], r["split"], r["shape"], r["labels"]) for r in rows] == [
        (n, "train" if "+" not in n else "test", [4, 32, 32], ["neuron_ids", "clefts"] if "+" not in n else [])
        for n in NAMES]
    vol = emdata.open_volume(rows[0]["path"])
    assert vol.labels["neuron_ids"].dtype == np.uint64
    assert np.array_equal(vol.labels["neuron_ids"][...], truth["samples"]["A"]["neuron_ids"])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("cremi", tmp_path, expected=lambda t: {
        s: {"raw": v["raw"], "neuron_ids": v["neuron_ids"],
            "clefts": np.where(v["clefts"] == NO_CLEFT, 0, v["clefts"])} for s, v in t["samples"].items()
    })
