"""`emdata.predict`: tiles blended without seams, blocks independent and resumable, the layer
published as a new version that `verify --deep` accepts, models at a coarser level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emdata.cli import _load_model  # noqa: E402
from emdata.evaluation import evaluate  # noqa: E402
from emdata.inference import predict  # noqa: E402
from emdata.store.predictions import StalePredictionError, staging_folder  # noqa: E402
from emdata.store.verify import verify_volume  # noqa: E402
from emdata.store.volume import open_volume  # noqa: E402
from emdata.store.writer import LabelLayerData, write_volume  # noqa: E402


def _volume(tmp: Path, shape: tuple[int, int, int] = (6, 70, 90)) -> Path:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, shape).astype("u1")
    cells = np.zeros(shape, "u4")
    cells[:, 10:40, 10:50] = 5
    return write_volume(tmp / "v.ome.zarr", raw, (30, 6, 6),
                        labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
                        meta={"dataset": "demo", "volume": "v", "split": "test"})


def _conv(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Conv3d(1, 2, 3, padding=1)


def _reference(model: torch.nn.Module, raw: np.ndarray) -> np.ndarray:
    """The model on the whole volume, mirrored at its faces: what tiling must reproduce."""
    x = np.pad(raw.astype(np.float32) / 255.0, 1, mode="reflect")
    with torch.no_grad():
        y = model(torch.from_numpy(x)[None, None])[0].numpy()
    return y[:, 1:-1, 1:-1, 1:-1]


@pytest.mark.parametrize(("tile", "halo", "overlap", "block"), [
    ((4, 24, 24), (1, 1, 1), (0, 0, 0), None),       # halo only: cores abut
    ((4, 32, 32), (1, 2, 2), (1, 6, 6), (3, 40, 50)),  # blended overlaps, blocks not aligned to tiles
    ((6, 70, 90), (1, 1, 1), (0, 0, 0), None),       # one tile larger than the kept core: mirrored context
])
def test_tiles_blend_to_the_whole_volume_result(tmp_path: Path, tile, halo, overlap, block) -> None:
    path = _volume(tmp_path)
    model = _conv()
    vol = predict(model, path, "p", tile=tile, halo=halo, overlap=overlap, block=block, output="probabilities",
                  activation="none", dtype="float32", progress=False)
    got = np.asarray(vol.prediction("p"))
    want = _reference(model, np.asarray(open_volume(path).raw))
    assert got.shape == (2, 6, 70, 90)
    np.testing.assert_allclose(got, want, atol=2e-5)
    report = verify_volume(path, deep=True)
    assert report.ok, report.problems
    prov = vol.predictions["p"]["provenance"]
    assert prov["model"] == "Conv3d" and prov["model_hash"].startswith("sha256:")
    assert prov["tile"] == list(tile) and prov["halo"] == list(halo) and prov["voxel_size_nm"] == [30.0, 6.0, 6.0]


def test_an_interrupted_prediction_resumes_at_the_first_missing_block(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    model = _conv(3)
    options = dict(tile=(4, 32, 32), halo=(1, 2, 2), overlap=(0, 4, 4), block=(6, 32, 32), progress=False)
    seen: list[tuple[int, int, int]] = []

    def stop_after_two(index: tuple[int, int, int]) -> None:
        seen.append(index)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict(model, path, "seg", on_block=stop_after_two, **options)
    assert "seg" not in open_volume(path).predictions and staging_folder(path, "seg").is_dir()
    rest: list[tuple[int, int, int]] = []
    vol = predict(model, path, "seg", on_block=rest.append, **options)
    assert len(rest) == 3 * 3 - 2 and not set(rest) & set(seen)
    fresh = predict(model, _volume(tmp_path / "again"), "seg", **options)
    assert np.array_equal(np.asarray(vol.prediction("seg")), np.asarray(fresh.prediction("seg")))
    assert not staging_folder(path, "seg").exists()
    assert verify_volume(path, deep=True).ok
    # another model never resumes from these blocks
    other: list[tuple[int, int, int]] = []
    predict(_conv(4), path, "seg", on_block=other.append, **options)
    assert len(other) == 9


def test_labels_go_to_the_label_group_and_leave_ground_truth_and_readers_alone(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    before = open_volume(path)
    raw_before = np.asarray(before.raw)
    vol = predict(_conv(), path, "guess", tile=(4, 32, 32), classes={0: "background", 1: "neuron"}, progress=False)
    assert list(vol.labels) == ["cells"] and vol.predictions["guess"]["path"] == "labels/guess"
    seg = np.asarray(vol.prediction("guess"))
    assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 1}
    labels_group = json.loads((path / "labels" / "zarr.json").read_text())["attributes"]["ome"]["labels"]
    assert labels_group == ["cells", "guess"]
    il = json.loads((path / "labels" / "guess" / "zarr.json").read_text())["attributes"]["ome"]["image-label"]
    assert [p["name"] for p in il["properties"]] == ["background", "neuron"]
    assert np.array_equal(np.asarray(before.raw), raw_before) and "guess" not in before.meta.get("predictions", {})
    assert before.folder != vol.folder  # a new version; the reader keeps the one it opened
    assert verify_volume(path, deep=True).ok


def emdata_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120)


def test_the_command_line_predicts_with_a_torchscript_model_then_verifies_and_evaluates(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    model = tmp_path / "net.pt"
    torch.jit.script(_conv(2)).save(str(model))
    run = emdata_cli("predict", str(path), "--model", str(model), "--tile", "4,32,32", "--halo", "1,2,2",
                     "--name", "seg", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["path"] == "labels/seg" and doc["shape"] == [6, 70, 90]
    assert doc["provenance"]["model"] == str(model) and doc["provenance"]["halo"] == [1, 2, 2]
    assert verify_volume(path, deep=True).ok
    result = evaluate(path, "seg", gt_layer="cells", metrics=["dice"])["results"]["dice"]
    seg = np.asarray(open_volume(path).prediction("seg")) != 0
    cells = np.asarray(open_volume(path).labels["cells"]) != 0
    assert result["dice"] == pytest.approx(2 * (seg & cells).sum() / (seg.sum() + cells.sum()))
    with pytest.raises(FileNotFoundError, match="MODULE:FACTORY"):
        _load_model(str(tmp_path / "nothing.pt"), None)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        _load_model(str(tmp_path / "junk.pt"), None)


def test_a_model_trained_at_a_coarser_voxel_size_runs_on_that_level(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (4, 256, 256)).astype("u1")
    path = write_volume(tmp_path / "big.ome.zarr", raw, (30, 6, 6), meta={"dataset": "d", "volume": "big",
                                                                          "split": "test"})
    vol = open_volume(path)
    assert vol.meta["raw"]["levels"][1]["scale"] == [30.0, 12.0, 12.0]
    model = torch.nn.Conv3d(1, 1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), model.bias.fill_(-0.5)
    out = predict(model, path, "coarse", tile=(4, 64, 64), voxel_size=(30, 12, 12), activation="none",
                  threshold=0.0, progress=False)
    seg = np.asarray(out.prediction("coarse"))
    level1 = np.asarray(vol.level(1))
    assert seg.shape == raw.shape
    assert np.array_equal(seg[:, ::2, ::2], (level1 / 255.0 - 0.5 > 0).astype("u1"))
    assert np.array_equal(seg[:, 1::2, 1::2], seg[:, ::2, ::2])
    assert out.predictions["coarse"]["provenance"]["voxel_size_nm"] == [30.0, 12.0, 12.0]
    assert verify_volume(path, deep=True).ok
    with pytest.raises(ValueError, match=r"trained at \(30.0, 8.0, 8.0\) nm.*levels are"):
        predict(model, path, "x", tile=(4, 64, 64), voxel_size=(30, 8, 8), progress=False)


def test_2d_models_run_slice_by_slice(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 3, padding=1)
    vol = predict(model, path, "slices", tile=(32, 32), halo=(2, 2), overlap=(4, 4), progress=False)
    seg = np.asarray(vol.prediction("slices"))
    x = np.pad(np.asarray(open_volume(path).raw, np.float32) / 255.0, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    with torch.no_grad():
        want = model(torch.from_numpy(x)[:, None]).argmax(1)[:, 1:-1, 1:-1].numpy()
    assert np.array_equal(seg, want)


def test_a_volume_replaced_meanwhile_is_not_written_into(tmp_path: Path) -> None:
    path = _volume(tmp_path)

    def replace(index: tuple[int, int, int]) -> None:
        _volume(tmp_path)  # prepare --force wrote a new version while blocks were predicted

    with pytest.raises(StalePredictionError, match="was replaced"):
        predict(_conv(), path, "late", tile=(4, 32, 32), on_block=replace, progress=False)
    assert "late" not in open_volume(path).predictions and not staging_folder(path, "late").exists()


def test_clear_errors(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    with pytest.raises(ValueError, match="leaves no stride"):
        predict(_conv(), path, "p", tile=(4, 8, 8), halo=(1, 4, 4), progress=False)
    with pytest.raises(ValueError, match="ground-truth label layer"):
        predict(_conv(), path, "cells", tile=(4, 32, 32), progress=False)

    class Shrinks(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[..., 1:-1, 1:-1, 1:-1]

    with pytest.raises(ValueError, match="the input's spatial shape"):
        predict(Shrinks(), path, "p", tile=(4, 32, 32), progress=False)


def test_the_replaced_version_is_removed_when_no_reader_holds_it(tmp_path: Path) -> None:
    path = _volume(tmp_path)
    predict(_conv(), path, "a", tile=(4, 32, 32), progress=False)
    versions = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".v.ome.zarr.v"))
    assert versions == [".v.ome.zarr.v2"]
