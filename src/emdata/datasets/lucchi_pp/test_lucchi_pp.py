"""Lucchi++ end to end through the loopback mirror: voxel-exact, both label encodings, numeric
slice order, folder-name splits, verified, idempotent, clear errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import emdata
from emdata.config import prepared_dir
from emdata.datasets.lucchi_pp.recipe import LucchiPPFormatError
from emdata.datasets.lucchi_pp.replica import HOST_PATH, URL, source_files, write_lucchi_pp_replica
from emdata.labels.remap import LabelEncodingError
from emdata.store.verify import verify_volume
from emdata.testing.harness import check_recipe
from emdata.testing.tamper import rewrite_zip

Pin = Callable[[dict[str, Path]], None]  # the `pin` fixture of emdata.testing.fixtures


def test_prepare_rgba_labels_voxel_exact_and_verified(mirror_root: Path, mirror, pin: Pin) -> None:
    truth = write_lucchi_pp_replica(mirror_root, slices=(12, 11))  # 10.png, 11.png sort before 2.png as text
    pin(source_files(mirror_root))
    train, test = emdata.prepare("lucchi-pp")
    assert (train.name, train.split, test.name, test.split) == ("train", "train", "test", "test")
    for vol in (train, test):
        want = truth[vol.name]
        assert vol.raw.dtype == np.uint8 and np.array_equal(vol.raw[...], want["raw"])
        mito = vol.labels["mitochondria"]
        assert mito.dtype == np.uint8 and np.array_equal(mito[...], want["labels"])
        assert vol.voxel_size == (5.0, 5.0, 5.0)
        assert vol.meta["labels"]["mitochondria"]["mapping"] == {"0": {"name": "background", "id": 0},
                                                                 "1": {"name": "mitochondria", "id": 3}}
        assert vol.meta["label_encoding"] == ["rgba"]
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems
    assert train.meta["source_folders"] == {"raw": "Lucchi++/Train_In", "labels": "Lucchi++/Train_Out"}
    assert (train.meta["torch_em_split"], test.meta["torch_em_split"]) == ("test", "train")
    assert any("torch-em swaps them" in n for n in train.meta["notes"])
    assert train.meta["source_slices"] == [0, 11] and test.meta["source_slices"] == [0, 10]
    source = train.meta["provenance"]["sources"][0]
    assert source["url"] == URL and source["fetched_from"].startswith(mirror.url)


@pytest.mark.parametrize(("mode", "background"), [("grey", (0, 0, 0, 255)), ("rgba", (0, 0, 0, 0))])
def test_greyscale_labels_and_transparent_background(mirror_root: Path, mirror, pin: Pin, mode: str,
                                                     background: tuple[int, int, int, int]) -> None:
    truth = write_lucchi_pp_replica(mirror_root, slices=(3, 2), label_mode=mode, background=background)
    pin(source_files(mirror_root))
    for vol in emdata.prepare("lucchi-pp"):
        assert np.array_equal(vol.labels["mitochondria"][...], truth[vol.name]["labels"])
        assert vol.meta["label_encoding"] == ["greyscale" if mode == "grey" else "rgba"]


def test_force_rebuilds_only_the_chosen_volume(mirror_root: Path, mirror, pin: Pin) -> None:
    write_lucchi_pp_replica(mirror_root, slices=(3, 2))
    pin(source_files(mirror_root))
    emdata.prepare("lucchi-pp")
    # a plain rerun (no request, nothing rewritten) is checked by the shared harness
    assert [v.name for v in emdata.prepare("lucchi-pp", volumes=["test"], force=True)] == ["test"]
    with pytest.raises(ValueError, match=r"no volume\(s\) \['val'\]; choose from \['train', 'test'\]"):
        emdata.prepare("lucchi-pp", volumes=["val"])


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _grey_128(root: Path) -> None:
    grey = np.zeros((48, 64), np.uint8)
    grey[5, 9] = 128
    rewrite_zip(root / HOST_PATH, replace={"Lucchi++/Train_Out/7.png": _png(grey, "L")})


def _red(root: Path) -> None:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[2, 3] = (255, 0, 0, 255)
    rewrite_zip(root / HOST_PATH, replace={"Lucchi++/Test_Out/3.png": _png(rgba, "RGBA")})


def _rgb(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, replace={"Lucchi++/Train_Out/0.png": _png(np.zeros((48, 64, 3), np.uint8), "RGB")})


def _palette(root: Path) -> None:
    img = Image.fromarray(np.zeros((48, 64), np.uint8), mode="L").convert("P")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rewrite_zip(root / HOST_PATH, replace={"Lucchi++/Train_Out/2.png": buf.getvalue()})


def _missing(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, drop=("Lucchi++/Train_Out/5.png",))


def _duplicate(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, replace={"Lucchi++/Train_In/mask3.png": _png(np.zeros((48, 64), np.uint8), "L")})


def _no_folder(root: Path) -> None:
    rewrite_zip(root / HOST_PATH, drop=tuple(f"Lucchi++/Test_In/mask{z:04d}.png" for z in range(11)))


@pytest.mark.parametrize(("corrupt", "message"), [
    (_grey_128, r"lucchi_pp.zip:Lucchi\+\+/Train_Out/7.png \(slice 7\): value\(s\) \[128\] are not in the expected "
                r"encoding \[0, 255\]"),
    (_red, r"lucchi_pp.zip:Lucchi\+\+/Test_Out/3.png \(slice 3\): colour \(255, 0, 0, 255\)"),
    (_rgb, r"Train_Out/0.png \(slice 0\): expected a greyscale or an RGBA label image, got shape \(48, 64, 3\)"),
    (_palette, r"lucchi_pp.zip:Lucchi\+\+/Train_Out/2.png: palette \(indexed-colour\) PNG"),
    (_missing, r"Train_In and Lucchi\+\+/Train_Out hold different slices: numbers \[5\] have no label"),
    (_duplicate, r"Train_In/mask0003.png and Lucchi\+\+/Train_In/mask3.png both name slice 3"),
    (_no_folder, r"no PNG slices in a folder Lucchi\+\+/Test_In/"),
])
def test_bad_archives_are_refused_with_file_and_value_named(mirror_root: Path, mirror, pin: Pin,
                                                            corrupt: Callable[[Path], None], message: str) -> None:
    write_lucchi_pp_replica(mirror_root, slices=(12, 11))
    corrupt(mirror_root)
    pin(source_files(mirror_root))
    with pytest.raises((LucchiPPFormatError, LabelEncodingError), match=message):
        emdata.prepare("lucchi-pp")
    failed = "test" if corrupt is _red else "train"
    assert not (prepared_dir("lucchi-pp") / f"{failed}.ome.zarr").exists()


def test_failed_archive_names_the_fetch_only_alternate(mirror) -> None:
    from emdata.sources.errors import DownloadError

    with pytest.raises(DownloadError) as err:
        emdata.prepare("lucchi-pp")
    message = str(err.value)
    assert "lucchi_pp.zip" in message and "404" in message and "\n" not in message
    assert "Lucchi++.zip can be fetched with `emdata fetch lucchi-pp --all`, but prepare does not read" in message
    assert mirror.requests_for("Lucchi%2B%2B.zip") == []


def test_force_refuses_a_cached_archive_the_card_checksum_no_longer_accepts(mirror_root: Path, mirror, pin: Pin,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.sources.download import CacheMismatchError

    write_lucchi_pp_replica(mirror_root, slices=(2, 2))
    pin(source_files(mirror_root))  # the replica is accepted under an EMDATA_CHECKSUMS override
    emdata.prepare("lucchi-pp")
    monkeypatch.delenv("EMDATA_CHECKSUMS")  # now only the card's sha256 (the real archive's) counts
    with pytest.raises(CacheMismatchError) as err:
        emdata.prepare("lucchi-pp", force=True)
    message = str(err.value)
    assert "lucchi_pp.zip" in message and "770ce9e98fc6f29c" in message and "delete" in message
    assert len(mirror.requests_for("lucchi_pp.zip")) == 1


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("lucchi-pp", tmp_path, expected=lambda t: {split: {"raw": v["raw"], "mitochondria": v["labels"]}
                                                            for split, v in t.items()})
