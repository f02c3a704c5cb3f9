"""`prepare` out of core: array sources read box by box, the region-by-region writer (threads in
process, or a dask cluster of processes) publishing the store the in-memory writer publishes,
voxel for voxel, and memory that stays bounded while the volume is several times larger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import emdata
from emdata.catalog import get_card
from emdata.datasets import _common
from emdata.formats.lazy import HDF5Array, InMemory, Mapped, TiffStack
from emdata.store.fgindex import INDEX_DIR
from emdata.store.verify import verify_volume
from emdata.store.writer import LabelLayerData, write_volume
from emdata.testing.harness import _same_content, _store_content
from emdata.testing.offline import offline_replica


def _same_store(a: Path, b: Path) -> None:
    """Arrays, attributes (checksums, intensity, metadata) and foreground indices all equal."""
    _same_content(f"{a} vs {b}", _store_content(a), _store_content(b))
    names = sorted(p.name for p in (a / INDEX_DIR).glob("*.npz"))
    assert names == sorted(p.name for p in (b / INDEX_DIR).glob("*.npz"))
    for name in names:
        with np.load(a / INDEX_DIR / name) as x, np.load(b / INDEX_DIR / name) as y:
            assert sorted(x.files) == sorted(y.files)
            for key in x.files:
                assert np.array_equal(x[key], y[key]), f"{name}: {key} differs"


def _arrays(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 65535, shape, dtype=np.uint16)
    cells = (rng.integers(0, 40, shape) * (rng.random(shape) > 0.3)).astype(np.uint32)
    return raw, cells


def test_sources_write_the_in_memory_store(tmp_path: Path) -> None:
    """A volume written from a TIFF (compressed pages), an HDF5 dataset and a mapped source is the
    one ``write_volume`` writes from the same arrays in memory (odd shape: edge regions, padding)."""
    import h5py
    import tifffile

    shape = (37, 300, 260)
    raw, cells = _arrays(shape)
    tifffile.imwrite(tmp_path / "raw.tif", raw, photometric="minisblack", compression="zlib")
    with h5py.File(tmp_path / "cells.h5", "w") as f:
        f.create_dataset("cells", data=cells, chunks=(8, 64, 64), compression="gzip")
    meta = {"dataset": "demo", "volume": "v", "split": "train"}
    semantic = [{"value": 0, "name": "background", "ontology": "background"},
                {"value": 1, "name": "cell", "ontology": "cell"}]
    memory = write_volume(tmp_path / "a" / "v.ome.zarr", raw, (30, 6, 6), meta=meta, labels=[
        LabelLayerData("cells", cells, "instance", instance_of="cell"),
        LabelLayerData("fg", (cells > 0).astype(np.uint8), "semantic", semantic)])
    stack = TiffStack(tmp_path / "raw.tif")
    assert not stack.contiguous  # compressed pages: decoded one at a time
    blockwise = write_volume(tmp_path / "b" / "v.ome.zarr", stack, (30, 6, 6), meta=meta, labels=[
        LabelLayerData("cells", HDF5Array(tmp_path / "cells.h5", "cells"), "instance", instance_of="cell"),
        LabelLayerData("fg", Mapped(InMemory(cells), np.sign, "uint8"), "semantic", semantic)])
    _same_store(memory, blockwise)
    report = verify_volume(blockwise, deep=True)
    assert report.ok, report.problems


def test_snemi3d_on_a_local_cluster_of_two_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The unchanged recipe on a dask LocalCluster of 2 worker processes publishes the store the
    in-memory writer publishes from the same files; ``verify --deep`` passes."""
    import shutil

    monkeypatch.setattr(_common, "LOCAL_CLUSTER", {"n_workers": 2, "processes": True})
    with offline_replica("snemi3d", shape=(20, 200, 176)):
        (train,) = emdata.prepare("snemi3d", volumes=["train"], scheduler="local")
        report = verify_volume(train.path, deep=True)
        assert report.ok, report.problems
        on_cluster = tmp_path / "cluster.ome.zarr"
        shutil.copytree(train.path, on_cluster)
        monkeypatch.setattr(_common, "build_plan", lambda *args, **kwargs: ("in-memory", None))
        (again,) = emdata.prepare("snemi3d", volumes=["train"], force=True)
        _same_store(on_cluster, again.path)


def test_build_plan_follows_the_scheduler_setting() -> None:
    """In memory for small volumes by default; region by region when large or when a scheduler is
    named; clusters for large file-backed volumes or when asked; arrays held in this process
    never travel to a cluster."""
    small = np.zeros((4, 64, 64), "u1")
    big = TiffStack.__new__(TiffStack)
    big.shape, big.dtype = (4096, 4096, 4096), np.dtype("u1")
    assert _common.build_plan(small, []) == ("in-memory", None)
    small_file = TiffStack.__new__(TiffStack)
    small_file.shape, small_file.dtype = (4, 64, 64), np.dtype("u1")
    assert _common.build_plan(small_file, []) == ("in-memory", None)
    assert _common.build_plan(small_file, [], "local") == ("blockwise", "local")
    assert _common.build_plan(small, [], "in-process") == ("blockwise", None)
    assert _common.build_plan(big, []) == ("blockwise", "local")
    assert _common.build_plan(big, [], "in-process") == ("blockwise", None)
    assert _common.build_plan(big, [], "tcp://10.0.0.1:8786") == ("blockwise", "tcp://10.0.0.1:8786")
    held = LabelLayerData("cells", InMemory(np.zeros((*big.shape[:1], 1, 1), "u4")), "instance")
    assert _common.build_plan(big, [held], "local") == ("blockwise", None)
    with pytest.raises(ValueError, match="expected auto, in-process, local or a dask scheduler address"):
        emdata.prepare("snemi3d", scheduler="somewhere")


_MEASURE = r"""
import json, resource, sys
import h5py, numcodecs, tifffile, zarr  # imported before the baseline: only the prepare's own memory counts
import emdata
import emdata.store.writer as writer
from emdata.store import sharded, fgindex, pyramid, intensity  # noqa: F401
writer.IN_PROCESS_THREADS = 1  # each further thread adds one region in flight
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
base = rss()
(vol,) = emdata.prepare("snemi3d", volumes=["train"], scheduler="in-process")
# VmHWM: this process's own peak (ru_maxrss would include the parent's size at fork)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak, "shape": list(vol.shape)}))
"""


def _tiff_member(zf: zipfile.ZipFile, member: str, pages: object, shape: tuple[int, ...], dtype: str,
                 scratch: Path) -> None:
    import tifffile

    tmp = scratch / Path(member).name
    with tifffile.TiffWriter(tmp) as tif:
        tif.write(pages, shape=shape, dtype=dtype, photometric="minisblack")
    zf.write(tmp, member)
    tmp.unlink()


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads its RSS from /proc (Linux)")
def test_prepare_memory_stays_bounded_on_a_volume_three_times_larger(tmp_path: Path) -> None:
    """``prepare`` in a subprocess on a 400 MB SNEMI3D-layout volume (raw uint8 + ids uint16, in
    a deflated zip), on one writer thread: its peak RSS grows by less than a third of the volume over its baseline
    after imports (the whole-array path grew by ~2x the volume)."""
    import hashlib

    n, ny, nx = 128, 1024, 1024
    volume = n * ny * nx * 3
    cap = volume // 3
    home = tmp_path / "home"
    archive = home / "downloads" / "snemi3d" / "snemi.zip"
    archive.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _tiff_member(zf, "image/train-input.tif", (rng.integers(0, 255, (ny, nx), np.uint8) for _ in range(n)),
                     (n, ny, nx), "uint8", tmp_path)
        _tiff_member(zf, "seg/train-labels.tif",
                     ((((yy + z) // 41) * 30 + xx // 53 + 1).astype(np.uint16) for z in range(n)),
                     (n, ny, nx), "uint16", tmp_path)
        _tiff_member(zf, "image/test-input.tif", iter([np.zeros((ny, nx), np.uint8)]), (1, ny, nx), "uint8",
                     tmp_path)
    digest = hashlib.sha256()
    with open(archive, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    sums = home / "sums.json"
    sums.write_text(json.dumps({get_card("snemi3d").source("snemi.zip").url: digest.hexdigest()}))
    env = {**os.environ, "EMDATA_HOME": str(home), "EMDATA_CHECKSUMS": str(sums), "EMDATA_OFFLINE": "1",
           "EMDATA_QUIET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["shape"] == [n, ny, nx]
    grew = got["peak"] - got["base"]
    assert grew < cap, (f"prepare grew by {grew / 2**20:.0f} MiB over its {got['base'] / 2**20:.0f} MiB baseline on "
                        f"a {volume / 2**20:.0f} MiB volume (bound {cap / 2**20:.0f} MiB)")


@pytest.mark.parametrize("layout", ["one series", "pages appended", "compressed", "colour"])
def test_tiff_stack_reads_what_read_stack_reads(tmp_path: Path, layout: str) -> None:
    """Every box of a TIFF read page by page equals the same box of the whole stack."""
    import tifffile

    from emdata.formats.tiff import read_stack

    rng = np.random.default_rng(1)
    data = rng.integers(0, 60000, (5, 21, 17, 3) if layout == "colour" else (5, 21, 17), dtype=np.uint16)
    path = tmp_path / "s.tif"
    if layout == "pages appended":
        with tifffile.TiffWriter(path) as tif:
            for page in data:
                tif.write(page, photometric="minisblack", metadata=None)
    else:
        tifffile.imwrite(path, data, photometric="rgb" if layout == "colour" else "minisblack",
                         compression="zlib" if layout == "compressed" else None)
    whole = read_stack(path).data
    stack = TiffStack(path)
    assert stack.shape == whole.shape and stack.dtype == whole.dtype
    assert stack.contiguous == (layout in ("one series", "colour"))
    for box in [(slice(0, 5), slice(0, 21), slice(0, 17)), (slice(1, 4), slice(3, 20), slice(5, 6)),
                (slice(4, 5), slice(20, 21), slice(0, 17))]:
        assert np.array_equal(stack.read(box), whole[box]), box


def _cremi_expected(t: dict) -> dict:
    from emdata.datasets.cremi.recipe import NO_LABEL

    return {s: {"raw": v["raw"], "neuron_ids": v["neuron_ids"],
                "clefts": np.where(v["clefts"] == NO_LABEL, 0, v["clefts"])} for s, v in t["samples"].items()}


EXPECTED = {
    "snemi3d": lambda t: {"train": {"raw": t["train_raw"], "neurons": t["train_labels"]},
                          "test": {"raw": t["test_raw"]}},
    "cremi": _cremi_expected,
}


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_region_by_region_prepare_passes_the_recipe_checks(dataset: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared recipe checks (voxel-exact against the replica, kill at the first volume write then
    resume to the same store, rerun rewrites nothing, ``verify --deep``) on the region-by-region
    path: ``EMDATA_SCHEDULER=in-process`` reaches the killed subprocess and this process alike."""
    from emdata.testing.harness import check_recipe

    def whole(*args: object, **kwargs: object) -> None:
        raise AssertionError("the in-memory writer was used")

    monkeypatch.setenv("EMDATA_SCHEDULER", "in-process")
    monkeypatch.setattr(_common, "write_volume", whole)
    check_recipe(dataset, tmp_path, expected=EXPECTED[dataset])
