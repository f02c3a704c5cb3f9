"""`emdata fetch` and `emdata cache` over the loopback mirror."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import emdata
from emdata.datasets.snemi3d.replica import HOST_PATH, write_snemi3d_torch_em_replica
from emdata.sources.errors import DownloadError
from emdata.testing import write_snemi3d_replica


def emdata_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120)


def serve_snemi_sources(root: Path, tmp_path: Path, monkeypatch, zip_served: bool = True,
                        h5_served: bool = True) -> dict[str, Path]:
    """snemi.zip and/or torch-em's two HDF5 copies of the same replica, with their sha256 pinned."""
    truth = write_snemi3d_replica(root, shape=(4, 32, 32))
    files = write_snemi3d_torch_em_replica(root, truth)
    if not zip_served:
        (root / HOST_PATH).unlink()
    if not h5_served:
        for path in files.values():
            path.unlink()
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps({url: hashlib.sha256(p.read_bytes()).hexdigest() for url, p in files.items()
                                if p.exists()}))
    monkeypatch.setenv("EMDATA_CHECKSUMS", str(sums))
    return files


def test_fetch_gets_what_prepare_needs_and_all_gets_every_source(mirror_root: Path, mirror, tmp_path: Path,
                                                                  monkeypatch) -> None:
    serve_snemi_sources(mirror_root, tmp_path, monkeypatch)
    report = emdata.fetch("snemi3d")
    assert [f["name"] for f in report["files"]] == ["snemi.zip"]
    assert all(Path(f["path"]).is_file() and not f["from_cache"] for f in report["files"])
    assert {s["name"]: s["reason"].split(";")[0] for s in report["skipped"]} == {
        "snemi_train.h5": "an alternate of snemi.zip", "snemi_test.h5": "an alternate of snemi.zip"}
    assert mirror.requests_for("download") == []
    run = emdata_cli("fetch", "snemi3d", "--all", "--json")
    assert run.returncode == 0, run.stderr
    again = json.loads(run.stdout)
    assert [(f["name"], f["from_cache"]) for f in again["files"]] == [
        ("snemi.zip", True), ("snemi_train.h5", False), ("snemi_test.h5", False)]
    assert again["skipped"] == [] and len(mirror.requests_for("snemi.zip")) == 1


def test_unreachable_alternate_does_not_fail_fetch(mirror_root: Path, mirror, tmp_path: Path, monkeypatch) -> None:
    serve_snemi_sources(mirror_root, tmp_path, monkeypatch, h5_served=False)
    run = emdata_cli("fetch", "snemi3d")
    assert run.returncode == 0, run.stderr
    assert "skipped snemi_train.h5: an alternate of snemi.zip" in run.stdout
    failed = emdata_cli("fetch", "snemi3d", "--all")
    assert failed.returncode == 1 and "43iMotlXPyAB39z/download" in failed.stderr


def test_fetch_falls_back_to_an_alternate_the_recipe_reads(mirror_root: Path, mirror, tmp_path: Path,
                                                           monkeypatch) -> None:
    serve_snemi_sources(mirror_root, tmp_path, monkeypatch, zip_served=False)
    report = emdata.fetch("snemi3d")
    assert [(f["name"], f.get("instead_of")) for f in report["files"]] == [
        ("snemi_train.h5", "snemi.zip"), ("snemi_test.h5", "snemi.zip")]
    assert "snemi.zip" in report["files"][0]["because"] and "404" in report["files"][0]["because"]
    assert report["skipped"] == []
    run = emdata_cli("fetch", "snemi3d")
    assert run.returncode == 0 and "snemi_train.h5 was fetched instead of snemi.zip" in run.stdout


def test_fetch_does_not_fall_back_to_a_fetch_only_alternate(mirror) -> None:
    with pytest.raises(DownloadError, match=r"lucchi_pp.zip"):
        emdata.fetch("lucchi-pp")
    assert mirror.requests_for("Lucchi%2B%2B.zip") == [] and mirror.requests_for("Lucchi++.zip") == []


def test_fetch_skips_what_is_not_a_file() -> None:
    report = emdata.fetch("h01")
    assert report["files"] == [] and {s["reason"].split(";")[0] for s in report["skipped"]} == {
        "a precomputed layer"}


def test_cache_lists_and_cleans(mirror_root: Path, mirror, tmp_path: Path, monkeypatch) -> None:
    serve_snemi_sources(mirror_root, tmp_path, monkeypatch)
    emdata.prepare("snemi3d")
    listing = json.loads(emdata_cli("cache", "--json").stdout)["datasets"]["snemi3d"]
    assert {d["file"] for d in listing["downloads"] if "extracted_from" not in d} == {"snemi.zip"}
    # the TIFF members read out of core are listed as what they are: copies extracted from the archive
    assert {d["file"]: d["extracted_from"] for d in listing["downloads"] if "extracted_from" in d} == {
        "snemi.zip.members/image/train-input.tif": "snemi.zip", "snemi.zip.members/seg/train-labels.tif": "snemi.zip",
        "snemi.zip.members/image/test-input.tif": "snemi.zip"}
    assert [v["volume"] for v in listing["prepared"]] == ["test", "train"]
    assert emdata_cli("cache").returncode == 0
    cleaned = emdata_cli("cache", "clean", "snemi3d", "--json")
    assert cleaned.returncode == 0 and json.loads(cleaned.stdout)["downloads_bytes"] > 0
    listing = json.loads(emdata_cli("cache", "--json").stdout)["datasets"]["snemi3d"]
    assert listing["downloads"] == [] and len(listing["prepared"]) == 2
    emdata_cli("cache", "clean", "snemi3d", "--prepared")
    assert "snemi3d" not in json.loads(emdata_cli("cache", "--json").stdout)["datasets"]
    bad = emdata_cli("cache", "clean", "snemi")
    assert bad.returncode == 1 and "snemi3d" in bad.stderr


def test_fetch_unknown_subset_is_clear() -> None:
    run = emdata_cli("fetch", "mitoem2", "--subset", "betta")
    assert run.returncode == 1 and "no subset 'betta'" in run.stderr and "beta" in run.stderr


def test_fetch_error_names_primary_and_alternate_failures(mirror) -> None:
    with pytest.raises(DownloadError, match=r"snemi3d: snemi.zip failed \(.*404.*\) and its alternate snemi_train.h5 "
                                            r"failed too \(.*43iMotlXPyAB39z/download.*404"):
        emdata.fetch("snemi3d")
