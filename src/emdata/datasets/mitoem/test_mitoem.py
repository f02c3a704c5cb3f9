"""MitoEM end to end through the loopback mirror: voxel-exact, split by the archives' contents,
numeric slice order, ids never narrowed, verified, idempotent, clear errors."""

from __future__ import annotations

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
from emdata.datasets.mitoem import recipe
from emdata.datasets.mitoem.replica import URLS, local_path, source_files, write_mitoem_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe
from emdata.testing.tamper import rewrite_zip

Pin = Callable[[dict[str, Path]], None]  # the `pin` fixture of emdata.testing.fixtures


def _snapshot(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in root.rglob("*") if p.is_file()}


def test_prepare_both_subsets_is_voxel_exact_and_verified(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_mitoem_replica(mirror_root, slices=(4, 2, 3))
    pin(source_files(mirror_root))
    vols = emdata.prepare("mitoem")
    assert [(v.name, v.split) for v in vols] == [
        ("human-train", "train"), ("human-val", "val"), ("human-test", "test"),
        ("rat-train", "train"), ("rat-val", "val"), ("rat-test", "test")]
    for vol in vols:
        want = truth[vol.name]
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], want["raw"])
        assert vol.voxel_size == (30.0, 8.0, 8.0) and vol.meta["subset"] == vol.name.split("-")[0]
        first = int(want["first"])
        assert vol.meta["source_slices"] == [first, first + len(want["raw"]) - 1]
        if vol.split == "test":
            assert vol.labels == {}
        else:
            ids = vol.labels["mito"]
            assert ids.dtype == np.uint16 and np.array_equal(ids[...], want["labels"])
            assert vol.meta["labels"]["mito"]["kind"] == "instance"
            assert vol.meta["labels"]["mito"]["mapping"] == {"0": {"name": "background", "id": 0},
                                                             "nonzero": {"name": "mitochondria", "id": 3}}
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    sources = vols[0].meta["provenance"]["sources"]
    assert [s["url"] for s in sources] == list(URLS["human"])
    assert all(s["fetched_from"].startswith(mirror.url) for s in sources)
    assert [v.name for v in emdata.volumes("mitoem", split="val")] == ["human-val", "rat-val"]


def test_subset_option_rerun_and_force(mirror_root: Path, mirror, pin: Pin) -> None:
    write_mitoem_replica(mirror_root, slices=(3, 2, 2))
    pin(source_files(mirror_root))
    rat = emdata.prepare("mitoem", subset=["rat"])
    assert [v.name for v in rat] == ["rat-train", "rat-val", "rat-test"]
    assert mirror.requests_for("EM30-H-im.zip") == [] and len(mirror.requests_for("EM30-R-im.zip")) == 1
    before, requests = _snapshot(prepared_dir("mitoem"), downloads_dir("mitoem")), len(mirror.log)
    again = emdata.prepare("mitoem", subset="rat")
    assert [v.name for v in again] == ["rat-train", "rat-val", "rat-test"]
    assert len(mirror.log) == requests, "a rerun must not touch the network"
    assert _snapshot(prepared_dir("mitoem"), downloads_dir("mitoem")) == before, "a rerun must rewrite nothing"
    forced = emdata.prepare("mitoem", volumes=["rat-val"], force=True)
    assert [v.name for v in forced] == ["rat-val"] and len(mirror.log) == requests
    after = _snapshot(prepared_dir("mitoem"))
    untouched = {p: t for p, t in before.items() if ".ome.zarr" in p and "rat-val.ome.zarr" not in p}
    assert untouched and all(after[p] == t for p, t in untouched.items()), "force rebuilds only what was asked"


def test_splits_follow_the_archive_and_slices_sort_by_number(mirror_root: Path, mirror, pin: Pin,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Counts differ from the card (7/4/2), padding differs between names, members are shuffled."""
    def raw_name(z: int) -> str:
        return f"im{z}.png" if z % 2 else f"im{z:04d}.png"

    names = [raw_name(z) for z in range(13)]
    assert sorted(names) != names, "the names must not sort correctly as text, or the test proves nothing"
    truth = write_mitoem_replica(mirror_root, subsets=("human",), slices=(7, 4, 2), raw_name=raw_name,
                                 label_name="seg{}.tif".format, shuffle=True)
    pin(source_files(mirror_root, ("human",)))
    with caplog.at_level(logging.WARNING, logger="emdata.datasets.mitoem.recipe"):
        vols = emdata.prepare("mitoem", subset=["human"])
    assert {v.name: v.meta["source_slices"] for v in vols} == {
        "human-train": [0, 6], "human-val": [7, 10], "human-test": [11, 12]}
    for vol in vols:
        assert np.array_equal(vol.raw[...], truth[vol.name]["raw"])
        if vol.labels:
            assert np.array_equal(vol.labels["mito"][...], truth[vol.name]["labels"])
    assert "7 train slices (0-6), the card says 400" in caplog.text
    assert "13 raw slices, the card says 1000" in caplog.text


def test_uint64_ids_are_not_narrowed_and_big_volumes_use_scratch(mirror_root: Path, mirror, pin: Pin,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipe, "IN_MEMORY_LIMIT", 0)  # every stack goes through the memory map
    truth = write_mitoem_replica(mirror_root, subsets=("rat",), slices=(3, 1, 1), label_dtype=np.uint64,
                                 id_base=2**40)
    pin(source_files(mirror_root, ("rat",)))
    (train,) = emdata.prepare("mitoem", volumes=["rat-train"])
    ids = train.labels["mito"]
    assert ids.dtype == np.uint64 and int(ids[...].max()) > 2**40
    assert np.array_equal(ids[...], truth["rat-train"]["labels"])
    assert np.array_equal(train.raw[...], truth["rat-train"]["raw"])
    assert not list(downloads_dir("mitoem").glob(".scratch-*")), "scratch memory maps must be removed"
    assert verify_volume(train.path, deep=True).ok


def _tif(img: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, img, **kwargs)  # type: ignore[arg-type]
    return buf.getvalue()


def test_label_slices_of_different_widths_are_widened(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_mitoem_replica(mirror_root, subsets=("human",), slices=(3, 1, 1))
    wide = truth["human-train"]["labels"][1].astype(np.uint32)
    wide[0, 0] = 70_000
    rewrite_zip(local_path(mirror_root, URLS["human"][1]), replace={"mito-train-v2/seg0001.tif": _tif(wide)})
    pin(source_files(mirror_root, ("human",)))
    (train,) = emdata.prepare("mitoem", volumes=["human-train"])
    want = truth["human-train"]["labels"].astype(np.uint32)
    want[1] = wide
    assert train.labels["mito"].dtype == np.uint32 and np.array_equal(train.labels["mito"][...], want)
    assert any("lossless widening" in n for n in train.meta["notes"])


def _gap(root: Path) -> None:
    rewrite_zip(local_path(root, URLS["human"][1]), drop=("mito-train-v2/seg0002.tif",))


def _colour_label(root: Path) -> None:
    rgb = np.zeros((40, 48, 3), np.uint8)
    rewrite_zip(local_path(root, URLS["human"][1]),
             replace={"mito-train-v2/seg0001.tif": _tif(rgb, photometric="rgb")})


def _small_label(root: Path) -> None:
    rewrite_zip(local_path(root, URLS["human"][1]),
             replace={"mito-val-v2/seg0004.tif": _tif(np.zeros((40, 47), np.uint16))})


def _orphan_label(root: Path) -> None:
    rewrite_zip(local_path(root, URLS["human"][1]),
             replace={"mito-val-v2/seg0042.tif": _tif(np.zeros((40, 48), np.uint16))})


def _old_release(root: Path) -> None:
    path = local_path(root, URLS["human"][1])
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mito_train/seg0000.png", b"")


@pytest.mark.parametrize(("corrupt", "message", "refused"), [
    (_gap, r"EM30-H-mito-train-val-v2.zip:mito-train-v2/: the train slices \(0-1, 3\) have a gap at 2", "train"),
    (_colour_label, r"EM30-H-mito-train-val-v2.zip:mito-train-v2/seg0001.tif: expected one single-channel page.*"
                    r"shape \(1, 40, 48, 3\).*colour labels", "train"),
    (_small_label, r"mito-val-v2/seg0004.tif: slice size \(40, 47\) differs from its raw slice's \(40, 48\)", "val"),
    (_orphan_label, r"mito-val-v2/ labels slice\(s\) 42, which EM30-H-im.zip has no im/ slice for", "train"),
    (_old_release, r"no folder mito-train-v2/.*has the folders \['mito_train'\].*mito_train/ and mito_val/", "train"),
])
def test_bad_archives_are_refused_with_file_and_value_named(mirror_root: Path, mirror, pin: Pin,
                                                            corrupt: Callable[[Path], None], message: str,
                                                            refused: str) -> None:
    write_mitoem_replica(mirror_root, subsets=("human",), slices=(4, 2, 1))
    corrupt(mirror_root)
    pin(source_files(mirror_root, ("human",)))
    with pytest.raises(recipe.MitoEMFormatError, match=message):
        emdata.prepare("mitoem", subset=["human"])
    assert not (prepared_dir("mitoem") / f"human-{refused}.ome.zarr").exists()
    assert not list(downloads_dir("mitoem").glob(".scratch-*"))


def test_unknown_options_are_clear() -> None:
    with pytest.raises(ValueError, match=r"no subset\(s\) \['mouse'\]; choose from \['human', 'rat'\]"):
        emdata.prepare("mitoem", subset=["mouse"])
    with pytest.raises(ValueError, match=r"no volume\(s\) \['human-tets'\]; choose from \['human-train'"):
        emdata.prepare("mitoem", volumes=["human-tets"])
    with pytest.raises(ValueError, match=r"\['human-val'\] are not in subset\(s\) \['rat'\]"):
        emdata.prepare("mitoem", volumes=["human-val"], subset=["rat"])
    with pytest.raises(ValueError, match="does not take option"):
        emdata.prepare("mitoem", bbox="0:1,0:1,0:1")


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("mitoem", tmp_path, expected=lambda t: {
        name: {"raw": v["raw"], **({"mito": v["labels"]} if "labels" in v else {})} for name, v in t.items()
    })
