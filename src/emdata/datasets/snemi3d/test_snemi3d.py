"""SNEMI3D end to end through the loopback mirror: voxel-exact, verified, idempotent."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

import emdata
from emdata.datasets.snemi3d.replica import HOST_PATH, TORCH_EM_URLS, write_snemi3d_torch_em_replica
from emdata.sources.errors import DownloadError
from emdata.store.verify import verify_volume
from emdata.testing import write_snemi3d_replica
from emdata.testing.harness import check_recipe


def test_prepare_is_voxel_exact_and_verified(mirror_root: Path, mirror) -> None:
    truth = write_snemi3d_replica(mirror_root, shape=(10, 96, 112))
    train, test = emdata.prepare("snemi3d")
    assert (train.name, train.split, test.name, test.split) == ("train", "train", "test", "test")
    assert np.array_equal(train.raw[...], truth["train_raw"]) and train.raw.dtype == np.uint8
    labels = train.labels["neurons"]
    assert labels.dtype == np.uint16 and np.array_equal(labels[...], truth["train_labels"])
    assert np.array_equal(test.raw[...], truth["test_raw"]) and test.labels == {}
    assert train.voxel_size == (30.0, 6.0, 6.0)
    assert train.meta["labels"]["neurons"]["mapping"] == {"0": {"name": "background", "id": 0},
                                                         "nonzero": {"name": "neuron", "id": 1}}
    prov = train.meta["provenance"]
    assert prov["sources"][0]["url"] == "http://rhoana.rc.fas.harvard.edu/dataset/snemi.zip"
    assert prov["sources"][0]["fetched_from"].startswith(mirror.url)
    for vol in (train, test):
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    assert [v.name for v in emdata.volumes("snemi3d", split="train")] == ["train"]


def test_rerun_reuses_finished_volumes(mirror_root: Path, mirror) -> None:
    write_snemi3d_replica(mirror_root, shape=(4, 64, 64))
    first = emdata.prepare("snemi3d")
    stamp = (first[0].path / "zarr.json").stat().st_mtime_ns
    second = emdata.prepare("snemi3d")
    assert (second[0].path / "zarr.json").stat().st_mtime_ns == stamp
    assert len(mirror.requests_for("snemi.zip")) == 1
    forced = emdata.prepare("snemi3d", volumes=["test"], force=True)
    assert [v.name for v in forced] == ["test"]


def _independent_snemi_zip(root: Path) -> dict[str, np.ndarray]:
    """Another writer: pages appended one by one, LZW, uint32 ids, a top-level folder."""
    rng = np.random.default_rng(11)
    shape = (6, 40, 52)
    raw = rng.integers(0, 256, shape, dtype=np.uint8)
    ids = rng.choice(np.array([0, 5, 70000, 4_000_000_000], dtype=np.uint32), size=shape)

    def pages(data: np.ndarray) -> bytes:
        buf = io.BytesIO()
        with tifffile.TiffWriter(buf) as tif:
            for page in data:
                tif.write(page, compression="lzw", photometric="minisblack")
        return buf.getvalue()

    target = root / HOST_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("snemi/image/train-input.tif", pages(raw))
        zf.writestr("snemi/seg/train-labels.tif", pages(ids))
        zf.writestr("snemi/image/test-input.tif", pages(raw[::-1].copy()))
    return {"raw": raw, "ids": ids}


def test_independently_written_replica(mirror_root: Path, mirror) -> None:
    truth = _independent_snemi_zip(mirror_root)
    train, test = emdata.prepare("snemi3d")
    assert train.labels["neurons"].dtype == np.uint32
    assert np.array_equal(train.labels["neurons"][...], truth["ids"])
    assert np.array_equal(train.raw[...], truth["raw"]) and np.array_equal(test.raw[...], truth["raw"][::-1])


def test_colour_labels_are_refused_with_the_file_named(mirror_root: Path, mirror) -> None:
    target = mirror_root / HOST_PATH
    target.parent.mkdir(parents=True)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((3, 16, 16, 3), np.uint8), photometric="rgb")
    raw = io.BytesIO()
    tifffile.imwrite(raw, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    with zipfile.ZipFile(target, "w") as zf:
        zf.writestr("image/train-input.tif", raw.getvalue())
        zf.writestr("seg/train-labels.tif", buf.getvalue())
        zf.writestr("image/test-input.tif", raw.getvalue())
    with pytest.raises(ValueError, match=r"snemi.zip:seg/train-labels.tif.*colour"):
        emdata.prepare("snemi3d", volumes=["train"])
    assert not (emdata.config.prepared_dir("snemi3d") / "train.ome.zarr").exists()


def test_cli_prepare_json_and_verify(mirror_root: Path, mirror, emdata_home: Path) -> None:
    write_snemi3d_replica(mirror_root, shape=(4, 64, 64))
    run = subprocess.run([sys.executable, "-m", "emdata", "prepare", "snemi3d", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert [(r["volume"], r["split"], r["shape"], r["voxel_size_nm"], r["labels"]) for r in rows] == [
        ("train", "train", [4, 64, 64], [30.0, 6.0, 6.0], ["neurons"]),
        ("test", "test", [4, 64, 64], [30.0, 6.0, 6.0], [])]
    dataset_dir = Path(rows[0]["path"]).parent
    ok = subprocess.run([sys.executable, "-m", "emdata", "verify", str(dataset_dir), "--deep", "--json"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    chunk = next(p for p in (Path(rows[0]["path"]) / "labels" / "neurons" / "0" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-7])
    bad = subprocess.run([sys.executable, "-m", "emdata", "verify", rows[0]["path"], "--deep"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "labels/neurons/0: block" in bad.stdout


def _serve_torch_em_copies_only(root: Path, pin, label_dtype: str = "uint16") -> dict[str, np.ndarray]:
    truth = write_snemi3d_replica(root, shape=(5, 40, 48))
    (root / HOST_PATH).unlink()  # every URL of snemi.zip now answers 404
    pin(write_snemi3d_torch_em_replica(root, truth, label_dtype=label_dtype))
    return truth


def test_prepare_reads_the_torch_em_copies_when_snemi_zip_fails(mirror_root: Path, mirror, pin) -> None:
    truth = _serve_torch_em_copies_only(mirror_root, pin, label_dtype="uint32")
    train, test = emdata.prepare("snemi3d")
    assert np.array_equal(train.raw[...], truth["train_raw"]) and np.array_equal(test.raw[...], truth["test_raw"])
    labels = train.labels["neurons"]
    assert labels.dtype == np.uint32 and np.array_equal(labels[...], truth["train_labels"]) and test.labels == {}
    prov = train.meta["provenance"]
    assert prov["sources"][0]["url"] == TORCH_EM_URLS["train"]
    assert prov["alternate"]["used"] == ["snemi_train.h5", "snemi_test.h5"]
    assert prov["alternate"]["instead_of"] == "snemi.zip" and "404" in prov["alternate"]["because"]
    assert test.meta["provenance"]["sources"][0]["url"] == TORCH_EM_URLS["test"]
    assert verify_volume(train.path, deep=True).ok


def test_prepare_of_one_volume_fetches_only_its_alternate(mirror_root: Path, mirror, pin) -> None:
    _serve_torch_em_copies_only(mirror_root, pin)
    [test] = emdata.prepare("snemi3d", volumes=["test"])
    assert test.meta["provenance"]["alternate"]["used"] == ["snemi_test.h5"]
    assert mirror.requests_for("43iMotlXPyAB39z/download") == []


def test_when_primary_and_alternate_fail_the_error_names_both(mirror_root: Path, mirror) -> None:
    with pytest.raises(DownloadError, match=r"snemi3d: snemi.zip failed \(.*404.*\) and its alternate "
                                            r"snemi_train.h5 failed too \(.*404"):
        emdata.prepare("snemi3d")


def test_rerun_on_a_copy_without_lock_files_creates_or_changes_nothing(mirror_root: Path, mirror,
                                                                       emdata_home: Path) -> None:
    """A finished data folder (e.g. copied to read-only shared storage) is reused without a lock file."""
    write_snemi3d_replica(mirror_root, shape=(4, 64, 64))
    emdata.prepare("snemi3d")
    for lock in emdata_home.rglob("*.lock"):
        lock.unlink()
    before = {p: p.lstat().st_mtime_ns for p in emdata_home.rglob("*")}
    assert [v.name for v in emdata.prepare("snemi3d")] == ["train", "test"]
    after = {p: p.lstat().st_mtime_ns for p in emdata_home.rglob("*")}
    assert after == before


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("snemi3d", tmp_path, expected=lambda t: {
        "train": {"raw": t["train_raw"], "neurons": t["train_labels"]}, "test": {"raw": t["test_raw"]}
    })
