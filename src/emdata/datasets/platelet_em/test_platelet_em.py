"""platelet-em end to end through the loopback mirror, for the RGB (A), RGBA (C1) and JSON (C2)
releases: voxel-exact, verified, idempotent, the class 4/6 and z-order checks in both outcomes,
deterministic instance ids, clear errors."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import emdata
from emdata.config import downloads_dir, prepared_dir
from emdata.datasets.platelet_em.recipe import PlateletEMFormatError
from emdata.datasets.platelet_em.replica import (
    DARK_RED,
    URLS,
    YELLOW,
    host_path,
    rle_json,
    source_files,
    write_platelet_em_replica,
)
from emdata.formats.rle_json import RleJsonFormatError
from emdata.labels.remap import LabelEncodingError
from emdata.store.verify import verify_volume
from emdata.store.volume import Volume
from emdata.testing import MirrorServer
from emdata.testing.harness import check_recipe

Pin = Callable[[dict[str, Path]], Path]  # the `pin` fixture of emdata.testing.fixtures
LAYERS = ("semantic", "instance-cell", "instance-organelle")


def _serve(root: Path, pin: Pin, release: str, **kwargs: Any) -> dict[str, dict[str, np.ndarray]]:
    truth = write_platelet_em_replica(root, release=release, **kwargs)
    pin(source_files(root, release))
    return truth


def _assert_exact(vols: list[Volume], truth: dict[str, dict[str, np.ndarray]]) -> None:
    assert [v.name for v in vols] == ["volume-50", "volume-24"]
    for vol in vols:
        want = truth[vol.name]
        assert vol.split == "all" and vol.voxel_size == (40.0, 10.0, 10.0)
        assert vol.raw.dtype == np.uint16 and np.array_equal(vol.raw[...], want["raw"])
        for name in LAYERS:
            got = vol.labels[name][...]
            assert got.dtype == np.uint16, (name, got.dtype)
            assert np.array_equal(got, want[name]), (vol.name, name)
        report = verify_volume(vol.path, deep=True)
        assert report.ok, report.problems


def test_json_release_is_the_default_and_voxel_exact(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    truth = _serve(mirror_root, pin, "json")
    vols = emdata.prepare("platelet-em")
    _assert_exact(vols, truth)
    vol = vols[0]
    assert (vol.meta["release"], vol.meta["release_letter"], vol.meta["label_encoding"]) == ("json", "C2", "json")
    assert vol.meta["source_files"]["semantic"] == "platelet-em/labels-semantic/50-semantic.json"
    mapping = vol.meta["labels"]["semantic"]["mapping"]
    assert mapping["4"]["name"] == "canalicular_vessel" and mapping["6"]["name"] == "dense_granule_core"
    assert vol.meta["labels"]["instance-cell"]["mapping"]["nonzero"]["name"] == "cell"
    assert vol.meta["labels"]["instance-organelle"]["kind"] == "instance"
    # the authors' ids are kept as published (3, 17, 34), not renumbered
    assert sorted(np.unique(vol.labels["instance-cell"][...]).tolist()) == [0, 3, 17, 34]
    checks = vol.meta["checks"]
    assert checks["dense_core_in_body"]["consistent"] is True
    assert checks["dense_core_in_body"]["class_6"]["verdict"] == "core-like"
    assert all(checks["z_order"][n]["decision"].startswith("as stored") for n in LAYERS[1:])
    source = vol.meta["provenance"]["sources"][0]
    assert source["url"] == URLS["json"] and source["fetched_from"].startswith(mirror.url)


def test_rgb_release_flips_the_z_reversed_cell_instances(mirror_root: Path, mirror: MirrorServer, pin: Pin,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    truth = _serve(mirror_root, pin, "rgb")  # release A: cell instances stored z-reversed
    with caplog.at_level(logging.WARNING):
        vols = emdata.prepare("platelet-em", release="rgb")
    _assert_exact(vols, truth)
    for vol in vols:
        z = vol.meta["checks"]["z_order"]
        assert z["instance-cell"]["decision"].startswith("z-reversed: flipped")
        assert z["instance-cell"]["z_reversed"]["share_on_class"] == 1.0
        assert z["instance-cell"]["as_stored"]["share_on_class"] < 0.75
        assert z["instance-organelle"]["decision"].startswith("as stored")
        assert any("50-instance-cell.tif is z-reversed" in n or "24-instance-cell.tif is z-reversed" in n
                   for n in vol.meta["notes"])
        assert vol.meta["checks"]["dense_core_in_body"]["consistent"] is True
    assert sum("z-reversed relative to the semantic labels" in r.getMessage() for r in caplog.records) == 2


def test_rgb_instances_as_stored_are_kept(mirror_root: Path, mirror: MirrorServer, pin: Pin,
                                          caplog: pytest.LogCaptureFixture) -> None:
    truth = _serve(mirror_root, pin, "rgb", reverse_z=())
    with caplog.at_level(logging.WARNING):
        vols = emdata.prepare("platelet-em", release="rgb", volumes=["volume-24"])
    assert np.array_equal(vols[0].labels["instance-cell"][...], truth["volume-24"]["instance-cell"])
    assert vols[0].meta["checks"]["z_order"]["instance-cell"]["decision"].startswith("as stored")
    assert not [r for r in caplog.records if "z-reversed" in r.getMessage()]


def test_undecidable_z_order_warns_and_keeps_as_stored(mirror_root: Path, mirror: MirrorServer, pin: Pin,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    truth = _serve(mirror_root, pin, "rgb", z_symmetric=True)
    with caplog.at_level(logging.WARNING):
        vol = emdata.prepare("platelet-em", release="rgb", volumes=["volume-50"])[0]
    assert vol.meta["checks"]["z_order"]["instance-cell"]["decision"].startswith("ambiguous: kept as stored")
    assert any("could not be confirmed" in n for n in vol.meta["notes"])
    assert any("cannot tell whether the cell instance volume is z-reversed" in r.getMessage()
               for r in caplog.records)
    assert np.array_equal(vol.labels["instance-cell"][...], truth["volume-50"]["instance-cell"])


@pytest.mark.parametrize(("core", "agrees"), [(DARK_RED, "jet order"), (YELLOW, "FastEstimator")])
def test_rgba_dense_core_colour_is_decided_from_the_data(mirror_root: Path, mirror: MirrorServer, pin: Pin,
                                                         core: tuple[int, ...], agrees: str) -> None:
    truth = _serve(mirror_root, pin, "rgba", rgba_core=core)
    vols = emdata.prepare("platelet-em", release="rgba")
    _assert_exact(vols, truth)
    finding = vols[0].meta["checks"]["dense_core_in_body"]
    assert finding["decision"].startswith(f"{core} = 6 (dense granule core)") and agrees in finding["decision"]
    assert finding["colours"][str(core)]["verdict"] == "core-like"
    assert finding["colours"][str(YELLOW if core == DARK_RED else DARK_RED)]["verdict"] == "not core-like"
    assert any(n.startswith("class 4/6 colours decided from the data") for n in vols[0].meta["notes"])
    assert vols[0].meta["label_sources"]["instance-cell"]["caveat"].startswith("RGBA colours come from")


def test_rgba_dense_core_outside_body_is_refused(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    _serve(mirror_root, pin, "rgba", core_inside_body=False)
    with pytest.raises(PlateletEMFormatError, match=r"50-semantic.tif: cannot tell which of the colours "
                                                    r"\(127, 0, 0, 255\) and \(255, 229, 0, 255\) is class 6.*"
                                                    r"not core-like.*release 'json'"):
        emdata.prepare("platelet-em", release="rgba")
    assert not (prepared_dir("platelet-em") / "volume-50.ome.zarr").exists()


def test_instance_ids_are_deterministic(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    truth = _serve(mirror_root, pin, "rgba")
    first = emdata.prepare("platelet-em", release="rgba", volumes=["volume-50"])[0]
    ids = {n: first.labels[n][...] for n in LAYERS[1:]}
    again = emdata.prepare("platelet-em", release="rgba", volumes=["volume-50"], force=True)[0]
    for name in LAYERS[1:]:
        assert np.array_equal(again.labels[name][...], ids[name])
        assert np.array_equal(ids[name], truth["volume-50"][name])  # 1..n by first appearance in the file
        assert np.unique(ids[name]).tolist() == list(range(int(ids[name].max()) + 1))


def _snapshot(*roots: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for root in roots for p in root.rglob("*") if p.is_file()}


def test_rerun_reuses_and_release_switch_rebuilds(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    _serve(mirror_root, pin, "json")
    emdata.prepare("platelet-em")
    before, requests = _snapshot(prepared_dir("platelet-em"), downloads_dir("platelet-em")), len(mirror.log)
    assert [v.name for v in emdata.prepare("platelet-em", release="json")] == ["volume-50", "volume-24"]
    assert len(mirror.log) == requests
    assert _snapshot(prepared_dir("platelet-em"), downloads_dir("platelet-em")) == before
    truth = _serve(mirror_root, pin, "rgb")
    vols = emdata.prepare("platelet-em", release="RGB")
    assert vols[0].meta["release"] == "rgb" and np.array_equal(vols[0].labels["instance-cell"][...],
                                                                 truth["volume-50"]["instance-cell"])
    assert len(mirror.requests_for("images-and-labels.zip")) == 1
    assert emdata.info("platelet-em")["prepare"]["options"] == ["release"]
    with pytest.raises(ValueError, match=r"no release 'tif'; choose from \['json', 'rgba', 'rgb'\]"):
        emdata.prepare("platelet-em", release="tif")
    with pytest.raises(ValueError, match=r"does not take option\(s\) subset"):
        emdata.prepare("platelet-em", subset=["x"])


# -- bad input ----------------------------------------------------------------------------------

def _rewrite(root: Path, release: str, replace: dict[str, bytes]) -> None:
    path = root / host_path(URLS[release])
    with zipfile.ZipFile(path) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members.update(replace)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _read_tif(root: Path, release: str, member: str) -> np.ndarray:
    with zipfile.ZipFile(root / host_path(URLS[release])) as zf:
        return tifffile.imread(io.BytesIO(zf.read(member)))


def _tif(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, photometric="rgb" if data.ndim == 4 else "minisblack")
    return buf.getvalue()


def test_unknown_colour_names_colour_file_and_slice(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    write_platelet_em_replica(mirror_root, release="rgb")
    member = "platelet-em/labels-semantic/50-semantic.tif"
    rgb = _read_tif(mirror_root, "rgb", member)
    rgb[2, 7, 11] = (9, 9, 9)
    _rewrite(mirror_root, "rgb", {member: _tif(rgb)})
    pin(source_files(mirror_root, "rgb"))
    with pytest.raises(LabelEncodingError, match=r"images-and-labels.zip:platelet-em/labels-semantic/50-semantic.tif "
                                                 r"slice 2: colour \(9, 9, 9\) at \(z, y, x\)=\(2, 7, 11\)"):
        emdata.prepare("platelet-em", release="rgb")


def test_unknown_rgba_colour_hints_at_the_colour_table(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    write_platelet_em_replica(mirror_root, release="rgba")
    member = "platelet-em/labels-semantic/24-semantic.tif"
    rgba = _read_tif(mirror_root, "rgba", member)
    rgba[3, 0, 0] = (0, 0, 127, 255)  # jet(0): a background that was not replaced
    _rewrite(mirror_root, "rgba", {member: _tif(rgba)})
    pin(source_files(mirror_root, "rgba"))
    with pytest.raises(LabelEncodingError, match=r"24-semantic.tif slice 3: colour \(0, 0, 127, 255\).*max label"):
        emdata.prepare("platelet-em", release="rgba", volumes=["volume-24"])


def test_rgb_file_in_the_rgba_release_is_refused(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    write_platelet_em_replica(mirror_root, release="rgba")
    member = "platelet-em/labels-instance/50-instance-cell.tif"
    _rewrite(mirror_root, "rgba", {member: _tif(_read_tif(mirror_root, "rgba", member)[..., :3].copy())})
    pin(source_files(mirror_root, "rgba"))
    with pytest.raises(PlateletEMFormatError, match=r"50-instance-cell.tif: expected RGBA colour-coded label pages "
                                                    r"\(z, y, x, 4\) of uint8 .* got shape \(6, 30, 40, 3\)"):
        emdata.prepare("platelet-em", release="rgba")


def test_bad_json_labels_are_refused(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    truth = write_platelet_em_replica(mirror_root, release="json")
    sem = truth["volume-50"]["semantic"].copy()
    sem[1, 2, 3] = 7
    _rewrite(mirror_root, "json", {"platelet-em/labels-semantic/50-semantic.json": rle_json(sem)})
    pin(source_files(mirror_root, "json"))
    with pytest.raises(LabelEncodingError, match=r"50-semantic.json: value\(s\) \[7\] are not semantic classes"):
        emdata.prepare("platelet-em")


def test_json_labels_in_another_axis_order_are_refused(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    truth = write_platelet_em_replica(mirror_root, release="json")
    cells = np.ascontiguousarray(truth["volume-24"]["instance-cell"].transpose(0, 2, 1))
    _rewrite(mirror_root, "json", {"platelet-em/labels-instance/24-instance-cell.json": rle_json(cells)})
    pin(source_files(mirror_root, "json"))
    with pytest.raises(PlateletEMFormatError, match=r"24-instance-cell.json: label shape \(4, 40, 30\) differs from "
                                                    r"the image shape \(4, 30, 40\) \(the image's y and x swapped"):
        emdata.prepare("platelet-em", volumes=["volume-24"])


def test_overlapping_json_runs_are_refused(mirror_root: Path, mirror: MirrorServer, pin: Pin) -> None:
    write_platelet_em_replica(mirror_root, release="json")
    doc = {".info": {"shape": [6, 30, 40], "dtype": "uint16"}, "1": "1 10", "2": "5 3"}
    _rewrite(mirror_root, "json", {"platelet-em/labels-instance/50-instance-organelle.json": json.dumps(doc).encode()})
    pin(source_files(mirror_root, "json"))
    with pytest.raises(RleJsonFormatError, match=r"50-instance-organelle.json: labels 1 and 2 both claim"):
        emdata.prepare("platelet-em", volumes=["volume-50"])


def test_shared_recipe_checks(tmp_path: Path) -> None:
    """Kill/resume, card, voxel-exact, OME, verify --deep, rerun and offline checks of emdata.testing.harness."""
    check_recipe("platelet-em", tmp_path, expected=lambda t: {name: dict(v) for name, v in t.items()})
