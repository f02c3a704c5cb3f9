"""`emdata evaluate`: predictions from layers, TIFF, HDF5 and zarr, scored with the dataset card's
metrics; mismatches are one clear error; `--json` prints one document."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import zarr

import emdata
from emdata.catalog import list_cards
from emdata.catalog.card import CardError, parse_card
from emdata.evaluation import EvaluationError, evaluate
from emdata.metrics import METRICS
from emdata.store.predictions import add_prediction
from emdata.store.volume import open_volume
from emdata.store.writer import LabelLayerData, write_volume
from emdata.testing import serve_replicas


def cli(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"EMDATA_HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def snemi_arand(gt: np.ndarray, pred: np.ndarray) -> float:
    """SNEMI3D's adapted Rand error written out for a prediction without zeros (no singleton term):
    over the voxels where gt != 0, p_ij = voxels with gt i and prediction j, a_i = sum_j p_ij,
    b_j = sum_i p_ij; P = sum p_ij^2 / sum b_j^2, R = sum p_ij^2 / sum a_i^2, error = 1 - 2PR / (P + R)
    (the organisers' script, https://snemi3d.grand-challenge.org/)."""
    assert (pred != 0).all()
    keep = gt != 0
    pairs: dict[tuple[int, int], int] = {}
    for g, p in zip(gt[keep].tolist(), pred[keep].tolist()):
        pairs[(g, p)] = pairs.get((g, p), 0) + 1
    a: dict[int, int] = {}
    b: dict[int, int] = {}
    for (g, p), n in pairs.items():
        a[g] = a.get(g, 0) + n
        b[p] = b.get(p, 0) + n
    sum_ab = sum(n * n for n in pairs.values())
    precision = sum_ab / sum(n * n for n in b.values())
    recall = sum_ab / sum(n * n for n in a.values())
    return 1 - 2 * precision * recall / (precision + recall)


@pytest.fixture(scope="module")
def snemi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("snemi")
    with serve_replicas(["snemi3d"], home, small=True):
        train = next(v for v in emdata.prepare("snemi3d") if v.split == "train")
    return Path(train.path)


def test_a_prediction_tiff_on_a_prepared_snemi3d_replica_prints_the_adapted_rand_error(snemi: Path,
                                                                                       tmp_path: Path) -> None:
    gt = np.asarray(open_volume(snemi).labels["neurons"])
    ids = np.unique(gt[gt != 0])
    assert len(ids) >= 3
    pred = gt.astype("u2") + 1  # every voxel labelled (membrane 0 becomes its own segment 1)
    pred[gt == ids[1]] = ids[0] + 1  # two neurons merged
    pred[: gt.shape[0] // 2][gt[: gt.shape[0] // 2] == ids[2]] = 60000  # one neuron split in z
    tiff = tmp_path / "pred.tif"
    tifffile.imwrite(tiff, pred)
    run = cli("evaluate", str(snemi), str(tiff), "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)  # exactly one document on stdout
    assert doc["metrics_from"] == "card:snemi3d" and doc["gt_layer"] == "neurons"
    assert list(doc["results"]) == ["arand"]
    result = doc["results"]["arand"]
    assert result["version"] == "snemi3d-arand@1" and result["voxel_size"] == [30.0, 6.0, 6.0]
    assert result["arand"] == pytest.approx(snemi_arand(gt, pred), rel=1e-12)
    assert 0 < result["arand"] < 1
    assert doc["prediction"] == {"source": str(tiff), "format": "tiff", "shape": list(gt.shape), "dtype": "uint16",
                                 "voxel_size_nm": None}
    # the same by dataset/volume name, and as a table
    home = snemi.parent.parent.parent
    table = cli("evaluate", "snemi3d/train", str(tiff), home=home)
    assert table.returncode == 0, table.stderr
    assert "arand=" in table.stdout and "snemi3d-arand@1" in table.stdout


def test_every_source_form_gives_the_same_score(snemi: Path, tmp_path: Path) -> None:
    vol = open_volume(snemi)
    gt = np.asarray(vol.labels["neurons"])
    pred = (gt // 3 + 1).astype("u4")
    want = snemi_arand(gt, pred)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.create_dataset("seg/ids", data=pred).attrs["resolution"] = [30.0, 6.0, 6.0]
        f.create_dataset("other", data=pred)
    zarr.create_array(str(tmp_path / "p.zarr"), data=pred)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("seg", data=pred)
    copy = tmp_path / "copy" / "train.ome.zarr"
    write_volume(copy, np.asarray(vol.raw), vol.voxel_size, meta={"dataset": "snemi3d", "volume": "train",
                                                                  "split": "train"})
    add_prediction(copy, "mine", pred, provenance={"model": "integer division"})
    forms = [f"{tmp_path / 'p.h5'}:seg/ids", str(tmp_path / "p.zarr"), f"{tmp_path / 'g.zarr'}:seg", str(copy), pred]
    for form in forms:
        doc = evaluate(snemi, form, metrics=["arand"])
        assert doc["results"]["arand"]["arand"] == pytest.approx(want, rel=1e-12), form
    add_prediction(snemi, "guess", pred, provenance={"model": "integer division"})
    doc = evaluate(snemi, "guess")
    assert doc["prediction"]["format"] == "layer" and doc["prediction"]["provenance"]["model"] == "integer division"
    assert doc["results"]["arand"]["arand"] == pytest.approx(want, rel=1e-12)
    with pytest.raises(EvaluationError, match=r"datasets in the file: \['other', 'seg/ids'\]"):
        evaluate(snemi, str(tmp_path / "p.h5"))


def test_mismatches_are_one_clear_error(snemi: Path, tmp_path: Path) -> None:
    gt = np.asarray(open_volume(snemi).labels["neurons"])
    with h5py.File(tmp_path / "coarse.h5", "w") as f:
        f.create_dataset("ids", data=gt).attrs["resolution"] = [30.0, 12.0, 12.0]
    tifffile.imwrite(tmp_path / "t.tif", np.ascontiguousarray(gt.transpose(2, 1, 0)))
    tifffile.imwrite(tmp_path / "f.tif", gt.astype("f4"))
    cases = {
        f"{tmp_path / 'coarse.h5'}:ids": "voxel size [30.0, 12.0, 12.0] nm",
        str(tmp_path / "t.tif"): "another order",
        str(tmp_path / "f.tif"): "float32",
        str(tmp_path / "nothing.tif"): "no such file",
    }
    for spec, message in cases.items():
        with pytest.raises((EvaluationError, FileNotFoundError), match=re.escape(message)):
            evaluate(snemi, spec)
    run = cli("evaluate", str(snemi), str(tmp_path / "t.tif"))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "another order" in run.stderr, run.stderr
    with pytest.raises(EvaluationError, match="unknown metric"):
        evaluate(snemi, gt, metrics=["arandd"])
    with pytest.raises(EvaluationError, match="no ground-truth layer 'mito'"):
        evaluate(snemi, gt, gt_layer="mito", metrics=["dice"])
    probabilities = np.random.default_rng(0).random((2, *gt.shape)).astype("f2")
    copy = tmp_path / "c" / "v.ome.zarr"
    write_volume(copy, np.zeros(gt.shape, "u1"), (30, 6, 6), labels=[LabelLayerData("neurons", gt, "instance")],
                 meta={"dataset": "snemi3d", "volume": "v", "split": "train"})
    add_prediction(copy, "probs", probabilities, provenance={"model": "random"})
    with pytest.raises(EvaluationError, match="holds probabilities"):
        evaluate(copy, "probs")


def test_foreground_metrics_select_values_and_skip_the_ignore_value(tmp_path: Path) -> None:
    gt = np.zeros((2, 8, 8), "u1")
    gt[:, :4] = 1
    gt[:, 6:] = 9  # unannotated: never scored
    path = write_volume(tmp_path / "m.ome.zarr", np.zeros(gt.shape, "u1"), (30, 6, 6),
                        labels=[LabelLayerData("mitochondria", gt, "semantic", ignore_value=9)],
                        meta={"dataset": "lucchi-pp", "volume": "m", "split": "test"})
    pred = np.zeros(gt.shape, "u1")
    pred[:, :2] = 3  # class 3 of some model means mitochondria
    pred[:, 2:] = 1
    pred[:, 6] = 3  # inside the unannotated rows: neither false nor true
    doc = evaluate(path, pred, pred_foreground=[3])
    assert doc["gt_layer"] == "mitochondria"
    assert doc["metrics_from"] == "card:lucchi-pp" and list(doc["results"]) == ["dice", "iou"]
    # over the 2*6*8 scored voxels: gt foreground rows 0-3, predicted rows 0-1 -> tp 32, fn 32, fp 0
    assert doc["results"]["dice"]["dice"] == pytest.approx(2 * 32 / (2 * 32 + 32))
    assert doc["results"]["iou"]["iou"] == pytest.approx(32 / 64)


def test_cards_name_registered_metrics_and_their_own_layers() -> None:
    with_evaluation = {c.id for c in list_cards() if c.evaluation}
    assert {"snemi3d", "cremi", "mitoem", "mitoem2", "isbi2012", "lucchi-pp", "tem-neutrostruct"} <= with_evaluation
    for card in list_cards():
        for entry in card.evaluation:
            assert set(entry["metrics"]) <= set(METRICS), (card.id, entry)
    cremi = next(c for c in list_cards() if c.id == "cremi")
    assert [e["gt_layer"] for e in cremi.evaluation] == ["neuron_ids", "clefts"]
    doc = dict(cremi.raw)
    doc["evaluation"] = [{"gt_layer": "neurons", "metrics": ["arand"]}]
    with pytest.raises(CardError, match="'neurons' is not a label layer"):
        parse_card(doc)
    doc["evaluation"] = [{"gt_layer": "clefts", "metrics": ["arand"], "options": {"voi": {}}}]
    with pytest.raises(CardError, match="options"):
        parse_card(doc)


def test_cremi_scores_neurons_by_default_and_clefts_on_request(tmp_path: Path) -> None:
    neurons = np.zeros((3, 16, 16), "u8")
    neurons[:, :, :8], neurons[:, :, 8:] = 5, 2**63 + 7  # uint64 ids beyond int64
    clefts = np.zeros_like(neurons)
    clefts[1, 4:6, 7:9] = 1
    path = write_volume(tmp_path / "A.ome.zarr", np.zeros(neurons.shape, "u1"), (40, 4, 4),
                        labels=[LabelLayerData("neuron_ids", neurons, "instance", instance_of="neuron"),
                                LabelLayerData("clefts", clefts, "instance", instance_of="cleft")],
                        meta={"dataset": "cremi", "volume": "A", "split": "train"})
    merged = np.ones(neurons.shape, "u8")
    doc = evaluate(path, merged)
    assert doc["gt_layer"] == "neuron_ids" and list(doc["results"]) == ["voi", "arand", "cremi-score"]
    assert doc["results"]["voi"]["merge"] == pytest.approx(1.0)  # two equal halves merged: H(gt | pred) = 1 bit
    assert doc["results"]["voi"]["split"] == 0.0
    shifted = np.zeros_like(clefts)
    shifted[1, 4:6, 9:11] = 1  # the cleft (x 7, 8) predicted at x 9, 10
    doc = evaluate(path, shifted, gt_layer="clefts")
    result = doc["results"]["cleft-distance"]
    assert list(doc["results"]) == ["cleft-distance"] and result["voxel_size"] == [40.0, 4.0, 4.0]
    # predicted x 9 and 10 lie 1 and 2 voxels (4, 8 nm) from the cleft's x 8; the cleft's x 7 and 8 lie 8 and 4
    # nm from the prediction's x 9: both means are 6 nm
    assert result["fp_mean"] == pytest.approx(6.0) and result["fn_mean"] == pytest.approx(6.0)
