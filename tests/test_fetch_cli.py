"""`emdata fetch` and `emdata cache` over the loopback mirror."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import emdata
from emdata.testing import write_snemi3d_replica


def emdata_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120)


def serve_snemi_sources(root: Path, tmp_path: Path, monkeypatch) -> dict[str, bytes]:
    """snemi.zip plus stand-ins for the torch-em h5 mirrors, with their sha256 overridden."""
    write_snemi3d_replica(root, shape=(4, 32, 32))
    extra = {}
    for name, url in (("snemi_train.h5", "oc.embl.de/index.php/s/43iMotlXPyAB39z/download"),
                      ("snemi_test.h5", "oc.embl.de/index.php/s/aRhphk35H23De2s/download")):
        data = name.encode() * 1000
        (root / url).parent.mkdir(parents=True, exist_ok=True)
        (root / url).write_bytes(data)
        extra["https://" + url] = hashlib.sha256(data).hexdigest()
    sums = tmp_path / "sums.json"
    sums.write_text(json.dumps(extra))
    monkeypatch.setenv("EMDATA_CHECKSUMS", str(sums))
    return extra


def test_fetch_downloads_every_file_and_reports(mirror_root: Path, mirror, tmp_path: Path, monkeypatch) -> None:
    serve_snemi_sources(mirror_root, tmp_path, monkeypatch)
    report = emdata.fetch("snemi3d")
    assert [f["name"] for f in report["files"]] == ["snemi.zip", "snemi_train.h5", "snemi_test.h5"]
    assert all(Path(f["path"]).is_file() and not f["from_cache"] for f in report["files"])
    run = emdata_cli("fetch", "snemi3d", "--json")
    assert run.returncode == 0, run.stderr
    again = json.loads(run.stdout)
    assert all(f["from_cache"] for f in again["files"])
    assert len(mirror.requests_for("snemi.zip")) == 1


def test_fetch_skips_what_is_not_a_file() -> None:
    report = emdata.fetch("h01")
    assert report["files"] == [] and {s["reason"].split(";")[0] for s in report["skipped"]} == {
        "a precomputed layer"}


def test_cache_lists_and_cleans(mirror_root: Path, mirror, tmp_path: Path, monkeypatch) -> None:
    serve_snemi_sources(mirror_root, tmp_path, monkeypatch)
    emdata.prepare("snemi3d")
    listing = json.loads(emdata_cli("cache", "--json").stdout)["datasets"]["snemi3d"]
    assert {d["file"] for d in listing["downloads"]} == {"snemi.zip"}
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
