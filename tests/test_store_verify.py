"""`verify` checks everything the store promises and reports damage by location, never crashing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emdata import config
from emdata.store.publish import COMPLETE_MARKER, resolve
from emdata.store.verify import verify_volume
from emdata.store.writer import LabelLayerData, write_volume

SHA = "ab" * 32
URL = "https://example.org/data/raw.h5"


def _write(path: Path) -> Path:
    raw = np.arange(8 * 256 * 256, dtype=np.uint32).astype(np.uint16).reshape(8, 256, 256)
    mito = LabelLayerData("mito", (raw % 3).astype(np.uint8), "semantic",
                          [{"value": 0, "name": "background", "ontology": "background"},
                           {"value": 1, "name": "mito", "ontology": "mitochondrion"},
                           {"value": 2, "name": "edge", "ontology": "mito_boundary"}])
    prov = {"recipe": "demo", "recipe_version": 1, "parameters": {},
            "sources": [{"url": URL, "fetched_from": URL, "sha256": SHA, "size": 10}]}
    return write_volume(path, raw, (30, 6, 6), labels=[mito],
                        meta={"dataset": "demo", "volume": "v", "split": "train", "provenance": prov})


def _edit(path: Path, rel: str, change: Callable[[dict[str, Any]], None]) -> None:
    file = resolve(path) / rel
    doc = json.loads(file.read_text())
    change(doc)
    file.write_text(json.dumps(doc))


def _emdata(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["attributes"]["emdata"]


DAMAGE: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("split", "zarr.json", lambda d: _emdata(d).update(split=3), "emdata.split must be a non-empty string"),
    ("kind", "zarr.json", lambda d: _emdata(d)["labels"]["mito"].update(kind="blobs"), "labels/mito: kind 'blobs'"),
    ("mapping id", "zarr.json", lambda d: _emdata(d)["labels"]["mito"]["mapping"]["1"].update(id=99),
     "labels/mito: mapping '1' gives 'mitochondria' id 99"),
    ("mapping key", "zarr.json", lambda d: _emdata(d)["labels"]["mito"]["mapping"].update(
        {"7": {"name": "background", "id": 0}}), "mapping key '7' is not a class value"),
    ("raw dtype", "zarr.json", lambda d: _emdata(d)["raw"].update(dtype="uint8"), "raw: level dtypes"),
    ("label dtype", "zarr.json", lambda d: _emdata(d)["labels"]["mito"].update(dtype="uint16"),
     "labels/mito: level dtypes"),
    ("OME scale", "zarr.json",
     lambda d: d["attributes"]["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"][0].update(
         scale=[30.0, 6.0, 6.0]), "raw: level '1' OME scale"),
    ("OME axes", "labels/mito/zarr.json",
     lambda d: d["attributes"]["ome"]["multiscales"][0]["axes"][0].update(type="time"), "labels/mito: axes"),
    ("label OME scale", "labels/mito/zarr.json",
     lambda d: d["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(
         scale=[1.0, 1.0, 1.0]), "labels/mito: level '0' OME scale"),
    ("array dtype", "1/zarr.json", lambda d: d.update(data_type="int32"), "1: shape/dtype"),
    ("garbage levels", "zarr.json", lambda d: _emdata(d)["raw"].update(levels="x"), "emdata.raw: malformed"),
    ("garbage layer", "zarr.json", lambda d: _emdata(d)["labels"].update(mito=[]), "labels/mito: malformed"),
]


@pytest.mark.parametrize(("case", "rel", "change", "expected"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_is_reported_where_it_is(tmp_path: Path, case: str, rel: str,
                                        change: Callable[[dict[str, Any]], None], expected: str) -> None:
    path = _write(tmp_path / "v.ome.zarr")
    assert verify_volume(path, deep=True).ok
    _edit(path, rel, change)
    report = verify_volume(path, deep=True)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems


def test_malformed_marker_is_a_finding(tmp_path: Path) -> None:
    path = _write(tmp_path / "v.ome.zarr")
    (resolve(path) / COMPLETE_MARKER).write_text("{not json")
    report = verify_volume(path)
    assert any(COMPLETE_MARKER in p and "unreadable marker" in p for p in report.problems), report.problems
    (resolve(path) / COMPLETE_MARKER).write_text(json.dumps({"arrays": 5, "levels": 1}))
    report = verify_volume(path)
    assert any("promises" in p and "array(s)" in p for p in report.problems), report.problems


def test_provenance_is_checked_against_the_download_records(tmp_path: Path) -> None:
    path = _write(config.prepared_dir("demo") / "v.ome.zarr")
    records = config.downloads_dir("demo")
    records.mkdir(parents=True)
    (records / "raw.h5.complete.json").write_text(json.dumps({"url": URL, "sha256": SHA, "size": 10}))
    assert verify_volume(path, deep=True).ok
    (records / "raw.h5.complete.json").write_text(json.dumps({"url": URL, "sha256": "cd" * 32, "size": 10}))
    report = verify_volume(path, deep=True)
    assert [p for p in report.problems if "provenance.sources[0]" in p and "raw.h5.complete.json" in p], report
    assert verify_volume(path, deep=False).ok  # the download cache is only consulted with --deep


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emdata", *args], capture_output=True, text=True, timeout=120)


def test_cli_verify_by_dataset_id_and_clean_all(emdata_home: Path) -> None:
    for name in ("a", "b"):
        _write_demo = _write(config.prepared_dir("snemi3d") / f"{name}.ome.zarr")
        assert _write_demo.exists()
    (config.downloads_dir("cremi")).mkdir(parents=True)
    (config.downloads_dir("cremi") / "x.h5").write_bytes(b"12345")
    run = _cli("verify", "snemi3d", "--json")
    doc = json.loads(run.stdout)
    assert [Path(v["path"]).name for v in doc["volumes"]] == ["a.ome.zarr", "b.ome.zarr"]
    assert not doc["ok"]  # written as dataset "demo" but lying under prepared/snemi3d
    assert all("emdata block says demo/" in " ".join(v["problems"]) for v in doc["volumes"])
    run = _cli("verify", "lucchi-pp")
    assert run.returncode == 1 and "lucchi-pp is not prepared under" in run.stderr
    stats = emdata_home / "cache" / "stats"
    stats.mkdir(parents=True)
    (stats / "ab.json").write_text("{}")  # a summary of a version that clean removes: an orphan otherwise
    run = _cli("cache", "clean", "--all", "--prepared", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["derived_bytes"] == 2 and not stats.exists()
    freed = {d["dataset"]: d for d in json.loads(run.stdout)["datasets"]}
    assert freed["cremi"]["downloads_bytes"] == 5 and freed["snemi3d"]["prepared_bytes"] > 0
    assert not any(config.prepared_dir("snemi3d").glob("*.ome.zarr"))
    run = _cli("cache", "clean")
    assert run.returncode == 1 and "--all" in run.stderr


def test_volumes_with_blake2b_checksums_still_verify(tmp_path: Path) -> None:
    """Volumes written before xxh3-128 record blake2b-128 digests (or no algorithm name at all):
    ``verify --deep`` checks them with BLAKE2b, and still finds a changed block."""
    import hashlib

    import zarr

    from emdata.store.checksum import ALGORITHM, block_slices

    path = resolve(_write(tmp_path / "v.ome.zarr"))
    arr = zarr.open_array(str(path / "0"), mode="r")
    checksum = json.loads((path / "0" / "zarr.json").read_text())["attributes"]["emdata"]["checksum"]
    assert checksum["algorithm"] == ALGORITHM == "xxh3-128"
    old = [hashlib.blake2b(np.ascontiguousarray(arr[sl]).tobytes(), digest_size=16).hexdigest()
           for sl in block_slices(arr.shape, tuple(checksum["block_shape"]))]
    assert old != checksum["blocks"]

    def legacy(doc: dict[str, Any], name: str | None = "blake2b-128") -> None:
        block = doc["attributes"]["emdata"]["checksum"]
        block["blocks"] = list(old)
        block.pop("algorithm", None)
        if name:
            block["algorithm"] = name

    _edit(path, "0/zarr.json", legacy)
    assert verify_volume(path, deep=True).ok, verify_volume(path, deep=True).problems
    _edit(path, "0/zarr.json", lambda doc: legacy(doc, None))  # the first releases named no algorithm
    assert verify_volume(path, deep=True).ok
    _edit(path, "0/zarr.json", lambda doc: doc["attributes"]["emdata"]["checksum"]["blocks"].__setitem__(0, "0" * 32))
    assert any("block [0:8, 0:128, 0:128] content differs" in p for p in verify_volume(path, deep=True).problems)
    _edit(path, "0/zarr.json", lambda doc: legacy(doc, "md6-512"))
    report = verify_volume(path, deep=True)
    assert any("unknown checksum algorithm 'md6-512'" in p for p in report.problems), report.problems
