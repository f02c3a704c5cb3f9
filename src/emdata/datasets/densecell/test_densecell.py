"""DenseCell end to end through the loopback mirror: voxel-exact images and labels, the three
error-weight encodings, per-member checksums (published table, EMDATA_CHECKSUMS pins,
unverified), verified, idempotent, clear errors."""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

import emdata
from emdata.config import downloads_dir, prepared_dir
from emdata.datasets.densecell import recipe
from emdata.datasets.densecell.recipe import DenseCellFormatError, MemberChecksumError
from emdata.datasets.densecell.replica import (
    HOST_PATH,
    URL,
    member_md5,
    member_sha256,
    source_files,
    write_densecell_replica,
)
from emdata.store.verify import verify_volume
from emdata.store.volume import Volume
from emdata.testing import MirrorServer
from emdata.testing.harness import check_recipe

Pin = Callable[..., Path]  # the `pin` fixture of emdata.testing.fixtures


def _check_common(vols: list[Volume], truth: dict[str, dict[str, np.ndarray]]) -> dict[str, Volume]:
    by_name = {v.name: v for v in vols}
    for name, split in (("train", "train"), ("eval", "val"), ("test", "test")):
        vol = by_name[name]
        assert vol.split == split and vol.voxel_size == (1.0, 1.0, 1.0)
        assert vol.meta["voxel_size_placeholder"] is True and vol.meta["voxel_size_verified"] is False
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], truth[name]["raw"])
        sem = vol.labels["semantic"]
        assert sem.dtype == np.uint8 and np.array_equal(sem[...], truth[name]["labels"])
        mapping = vol.meta["labels"]["semantic"]["mapping"]
        assert mapping["6"]["name"] == "dense_granule_core" and mapping["1"]["name"] == "cell"
    for vol in vols:
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    return by_name


def test_float_weights_become_a_separate_volume(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    truth = write_densecell_replica(mirror_root, weights="float")
    pin(source_files(mirror_root), member_sha256(mirror_root))
    vols = emdata.prepare("densecell")
    assert [v.name for v in vols] == ["train", "train-error-weights", "eval", "test"]
    by_name = _check_common(vols, truth)
    weights = by_name["train-error-weights"]
    assert weights.split == "train" and weights.meta["role"] == "weights" and weights.meta["labels"] == {}
    assert weights.raw.dtype == np.float32 and np.array_equal(weights.raw[...], truth["train"]["weights"])
    train = by_name["train"]
    assert list(train.labels) == ["semantic"]
    assert train.meta["error_weights"]["stored_as"] == "volume train-error-weights"
    assert train.meta["error_weights"]["why_volume"].startswith("not every weight is a finite whole number")
    assert train.meta["error_weights"]["source_dtype"] == "float32"
    assert {c["status"] for c in train.meta["member_checks"].values()} == {"verified: sha256 from EMDATA_CHECKSUMS"}
    assert set(train.meta["member_checks"]) == {"train-images.tif", "train-labels.tif", "train-error-weights.tif"}
    assert train.meta["provenance"]["sources"][0]["url"] == URL


@pytest.mark.parametrize(("kind", "cast"), [("integer", None), ("whole", "float32 -> uint8")])
def test_integer_weights_become_a_layer(mirror_root: Path, mirror: MirrorServer, pin: Pin, kind: str,
                                        cast: str | None) -> None:
    truth = write_densecell_replica(mirror_root, weights=kind)
    pin(source_files(mirror_root), member_sha256(mirror_root))
    vols = emdata.prepare("densecell")
    assert [v.name for v in vols] == ["train", "eval", "test"]
    train = _check_common(vols, truth)["train"]
    got = train.labels["error-weights"][...]
    assert got.dtype == np.uint8 and np.array_equal(got, truth["train"]["weights"].astype(np.uint8))
    info = train.meta["error_weights"]
    assert info["stored_as"] == "layer error-weights"
    assert info["cast"] is None if cast is None else info["cast"].startswith(cast)
    assert train.meta["labels"]["error-weights"]["annotates"] == []
    assert not (prepared_dir("densecell") / "train-error-weights.ome.zarr").exists()


def _snapshot(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in root.rglob("*") if p.is_file()}


def test_rerun_reuses_everything_and_force_rebuilds(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    write_densecell_replica(mirror_root)
    pin(source_files(mirror_root), member_sha256(mirror_root))
    emdata.prepare("densecell")
    before, requests = _snapshot(prepared_dir("densecell"), downloads_dir("densecell")), len(mirror.log)
    again = emdata.prepare("densecell")
    assert [v.name for v in again] == ["train", "train-error-weights", "eval", "test"]
    assert [v.name for v in emdata.prepare("densecell", volumes=["train"])] == ["train", "train-error-weights"]
    assert len(mirror.log) == requests and len(mirror.requests_for("platelet_data_1219.zip")) == 1
    assert _snapshot(prepared_dir("densecell"), downloads_dir("densecell")) == before
    assert [v.name for v in emdata.prepare("densecell", volumes=["eval"], force=True)] == ["eval"]
    with pytest.raises(ValueError, match=r"no volume\(s\) \['val'\]; choose from \['train', 'eval', 'test'\]"):
        emdata.prepare("densecell", volumes=["val"])


def test_members_without_pins_are_used_unverified_with_a_warning(mirror_root: Path, mirror: MirrorServer, pin: Pin,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    write_densecell_replica(mirror_root)
    pin(source_files(mirror_root))
    with caplog.at_level(logging.WARNING):
        test = emdata.prepare("densecell", volumes=["test"])[0]
    status = test.meta["member_checks"]["test-images.tif"]["status"]
    assert status.startswith("unverified: md5 differs from the published d3f296cbedb7c3240e6be0e9e7217f3a")
    assert any("test-labels.tif: md5" in r.getMessage() and "EMDATA_CHECKSUMS" in r.getMessage()
               for r in caplog.records)


def test_a_wrong_member_pin_is_an_error(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    write_densecell_replica(mirror_root)
    pin(source_files(mirror_root), {**member_sha256(mirror_root), f"{URL}#platelet_data/eval-labels.tif": "0" * 64})
    with pytest.raises(MemberChecksumError, match=r"platelet_data_1219.zip:platelet_data/eval-labels.tif: sha256 "
                                                  r"[0-9a-f]{64} differs from 0{64} listed for"):
        emdata.prepare("densecell")
    assert not any(prepared_dir("densecell").glob("*.ome.zarr"))


def test_published_archive_is_checked_against_the_md5_table(mirror_root: Path, mirror: MirrorServer, pin: Pin,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    write_densecell_replica(mirror_root, weights="integer")
    pin(source_files(mirror_root))
    zip_md5 = hashlib.md5((mirror_root / HOST_PATH).read_bytes(), usedforsecurity=False).hexdigest()
    monkeypatch.setattr(recipe, "published_md5", lambda card: zip_md5)  # pretend the replica is the published zip
    monkeypatch.setattr(recipe, "MEMBER_MD5", member_md5(mirror_root))
    train = emdata.prepare("densecell", volumes=["train"])[0]
    assert {c["status"] for c in train.meta["member_checks"].values()} == {"verified: published md5"}
    monkeypatch.setattr(recipe, "MEMBER_MD5", {**member_md5(mirror_root), "test-labels.tif": "f" * 32})
    with pytest.raises(MemberChecksumError, match=r"platelet_data/test-labels.tif: md5 [0-9a-f]{32} differs from "
                                                  r"the published f{32} although the archive itself matches"):
        emdata.prepare("densecell", volumes=["test"])


def _replace(root: Path, member: str, data: np.ndarray) -> None:
    path = root / HOST_PATH
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="minisblack")
    members[member] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)


def test_bad_label_values_and_shapes_are_refused(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    truth = write_densecell_replica(mirror_root)
    labels = truth["eval"]["labels"].copy()
    labels[1, 2, 3] = 9
    _replace(mirror_root, "platelet_data/eval-labels.tif", labels)
    _replace(mirror_root, "platelet_data/train-error-weights.tif", truth["train"]["weights"][:-1])
    pin(source_files(mirror_root), member_sha256(mirror_root))
    with pytest.raises(DenseCellFormatError, match=r"platelet_data/eval-labels.tif: value\(s\) \[9\] are not classes"):
        emdata.prepare("densecell", volumes=["eval"])
    with pytest.raises(DenseCellFormatError, match=r"train-error-weights.tif: weight shape \(7, 24, 32\) differs"):
        emdata.prepare("densecell", volumes=["train"])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    # the kit's replica stores the error weights as their own volume; the layer is tested above
    check_recipe("densecell", tmp_path, expected=lambda t: {split: {"raw": v["raw"], "semantic": v["labels"]}
                                                            for split, v in t.items()},
                 unwritten_layers={"error-weights"})
