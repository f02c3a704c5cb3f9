"""Kasthuri++ end to end through the loopback mirror: voxel-exact, ignore region stored as 255
and recorded, other colours → 0 (reference read literally), numeric order of undocumented
file names, verified, idempotent, clear errors."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import emdata
from emdata.config import prepared_dir
from emdata.datasets.kasthuri_pp.recipe import KasthuriPPFormatError
from emdata.datasets.kasthuri_pp.replica import HOST_PATH, URL, source_files, write_kasthuri_pp_replica
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe
from emdata.testing.tamper import rewrite_zip

Pin = Callable[[dict[str, Path]], None]  # the `pin` fixture of emdata.testing.fixtures


def test_prepare_voxel_exact_with_ignore_region(mirror_root: Path, mirror, pin: Pin,
                                                caplog: pytest.LogCaptureFixture) -> None:
    truth = write_kasthuri_pp_replica(mirror_root, slices=(11, 5), other_colours=[(7, 7, 7), (255, 0, 0)])
    pin(source_files(mirror_root))
    with caplog.at_level(logging.WARNING, logger="emdata.datasets.kasthuri_pp.recipe"):
        train, test = emdata.prepare("kasthuri-pp")
    assert (train.name, train.split, test.name, test.split) == ("train", "train", "test", "test")
    for vol in (train, test):
        want = truth[vol.name]
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], want["raw"])
        mito = vol.labels["mitochondria"]
        assert mito.dtype == np.uint8 and np.array_equal(mito[...], want["labels"])
        assert set(np.unique(mito[...]).tolist()) == {0, 1, 255}
        meta = vol.meta["labels"]["mitochondria"]
        assert meta["ignore_value"] == 255 and meta["kind"] == "semantic"
        assert meta["annotates"] == ["background", "mitochondria"]
        assert meta["mapping"] == {"0": {"name": "background", "id": 0}, "1": {"name": "mitochondria", "id": 3},
                                   "255": {"name": "unannotated", "id": 40}}
        ignore = next(c for c in vol.classes("mitochondria") if c["name"] == "ignore")
        assert ignore["value"] == 255 and list(ignore["color"]) == [2, 2, 2]
        assert vol.voxel_size == (30.0, 6.0, 6.0)
        assert vol.meta["other_label_colours"] == {"(7, 7, 7)": 3, "(255, 0, 0)": 3}
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    assert (train.meta["torch_em_split"], test.meta["torch_em_split"]) == ("test", "train")
    assert "mapped to 0 as torch-em's kasthuri.py does" in caplog.text
    source = train.meta["provenance"]["sources"][0]
    assert source["url"] == URL and source["fetched_from"].startswith(mirror.url)


def test_any_png_names_are_ordered_by_their_numbers(mirror_root: Path, mirror, pin: Pin) -> None:
    names = [f"slice_{z}.png" for z in range(12)]
    assert sorted(names) != names, "the names must not sort correctly as text, or the test proves nothing"
    truth = write_kasthuri_pp_replica(mirror_root, slices=(12, 3), raw_name="slice_{}.png".format,
                                      label_name="labels-{:03d}.png".format)
    pin(source_files(mirror_root))
    train, _ = emdata.prepare("kasthuri-pp")
    assert np.array_equal(train.raw[...], truth["train"]["raw"])
    assert np.array_equal(train.labels["mitochondria"][...], truth["train"]["labels"])
    assert train.meta["source_members"]["raw"] == ["Kasthuri++/Train_In/slice_0.png",
                                                   "Kasthuri++/Train_In/slice_11.png"]


def test_force_rebuilds_only_the_chosen_volume(mirror_root: Path, mirror, pin: Pin) -> None:
    write_kasthuri_pp_replica(mirror_root, slices=(3, 2))
    pin(source_files(mirror_root))
    emdata.prepare("kasthuri-pp")
    # a plain rerun (no request, nothing rewritten) is checked by the shared harness
    assert [v.name for v in emdata.prepare("kasthuri-pp", volumes=["train"], force=True)] == ["train"]


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _grey_label(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, replace={"Kasthuri++/Train_Out/4.png": _png(np.zeros((40, 56), np.uint8), "L")})


def _rgba_label(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, replace={"Kasthuri++/Test_Out/1.png": _png(np.zeros((40, 56, 4), np.uint8), "RGBA")})


def _missing_label(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, drop=("Kasthuri++/Train_Out/2.png",))


def _same_number(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, replace={"Kasthuri++/Train_Out/02.png": _png(np.zeros((40, 56, 3), np.uint8), "RGB")})


def _wrong_size(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, replace={"Kasthuri++/Train_Out/0.png": _png(np.zeros((40, 50, 3), np.uint8), "RGB")})


@pytest.mark.parametrize(("corrupt", "message", "failed"), [
    (_grey_label, r"kasthuri_pp.zip:Kasthuri\+\+/Train_Out/4.png \(slice 4, paired with mask0004.png\): expected "
                  r"an 8-bit RGB colour label image \(y, x, 3\), got shape \(40, 56\)", "train"),
    (_rgba_label, r"Test_Out/1.png \(slice 1, paired with mask0001.png\): expected an 8-bit RGB.*"
                  r"got shape \(40, 56, 4\)", "test"),
    (_missing_label, r"Kasthuri\+\+/Train_In has 6 PNG slices but Kasthuri\+\+/Train_Out has 5", "train"),
    (_same_number, r"Train_Out/2.png and Kasthuri\+\+/Train_Out/02.png have the same number", "train"),
    (_wrong_size, r"Train_Out/0.png \(slice 0, .*\): label size \(40, 50\) differs from the raw slice size "
                  r"\(40, 56\)", "train"),
])
def test_bad_archives_are_refused_with_file_and_value_named(mirror_root: Path, mirror, pin: Pin,
                                                            corrupt: Callable[[Path], None], message: str,
                                                            failed: str) -> None:
    write_kasthuri_pp_replica(mirror_root, slices=(6, 3))
    corrupt(mirror_root)
    pin(source_files(mirror_root))
    with pytest.raises(KasthuriPPFormatError, match=message):
        emdata.prepare("kasthuri-pp")
    assert not (prepared_dir("kasthuri-pp") / f"{failed}.ome.zarr").exists()


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("kasthuri-pp", tmp_path, expected=lambda t: {split: {"raw": v["raw"], "mitochondria": v["labels"]}
                                                              for split, v in t.items()})
