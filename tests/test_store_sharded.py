"""The sharded writer: the same volume as write_volume (layout, metadata, checksums, pyramid),
real shards, region-by-region resume after failures and interruptions, on a dask cluster."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emdata.store.chunking import choose_chunks
from emdata.store.sharded import (
    BuildError,
    LabelSpec,
    Region,
    ShardedVolumeWriter,
    build_volume,
    dask_client,
    run_tasks,
)
from emdata.store.verify import verify_volume
from emdata.store.volume import VolumeNotFoundError, open_volume
from emdata.store.writer import COMPLETE_MARKER, LabelLayerData, StoreWriteError, write_volume

META = {"dataset": "demo", "volume": "v", "split": "all", "notes": ["built in regions"]}
VOXEL = (30.0, 6.0, 6.0)
CLASSES = [{"value": 0, "name": "background", "ontology": "background"},
           {"value": 1, "name": "mito", "ontology": "mitochondria", "color": [0, 255, 0]}]


def _data(shape: tuple[int, int, int] = (19, 150, 134)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 65535, shape, dtype=np.uint16)
    mito = (rng.random(shape) > 0.8).astype(np.uint8)
    ids = rng.integers(0, 2**63, size=5, dtype=np.uint64)[rng.integers(0, 5, shape)]
    return raw, mito, ids


def _labels() -> list[LabelSpec]:
    return [LabelSpec("mito", "uint8", "semantic", CLASSES, description="binary"),
            LabelSpec("cells", "uint64", "instance", [CLASSES[0]], instance_of="neuron")]


def _reference(tmp: Path, raw: np.ndarray, mito: np.ndarray, ids: np.ndarray,
               voxel: tuple[float, float, float] = VOXEL) -> Path:
    layers = [LabelLayerData("mito", mito, "semantic", CLASSES, description="binary"),
              LabelLayerData("cells", ids, "instance", [CLASSES[0]], instance_of="neuron")]
    return write_volume(tmp / "ref.ome.zarr", raw, voxel, labels=layers, meta=META)


def _small_shards(shape: tuple[int, ...], voxel: tuple[float, float, float], itemsize: int) -> tuple[Any, Any]:
    """Real shards on a small volume: chunks of at most 4×32×32, shards of 2×2×2 chunks (clipped)."""
    chunks, _ = choose_chunks(shape, voxel, itemsize)
    chunks = tuple(min(c, m) for c, m in zip(chunks, (4, 32, 32)))
    return chunks, tuple(min(2 * c, -(-n // c) * c) for c, n in zip(chunks, shape))


_LIVE: dict[int, Source] = {}


def _live(key: int) -> Source:
    return _LIVE[key]


class Source:
    """A fill that counts the regions it was asked for and can fail some. Pickled (dask sends
    tasks through pickle even to in-process workers) as a reference to the one live object."""

    def __init__(self, arrays: dict[str, np.ndarray], fail: set[tuple[int, int, int]] | None = None) -> None:
        self.arrays, self.fail = arrays, fail or set()
        self.filled: list[tuple[int, int, int]] = []
        self._lock = threading.Lock()
        _LIVE[id(self)] = self

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _live, (id(self),)

    def __call__(self, region: Region, name: str) -> np.ndarray:
        if region.index in self.fail:
            raise OSError(f"injected failure in region {region.index}")
        if name == "raw":
            with self._lock:
                self.filled.append(region.index)
        return self.arrays[name][region.slices]


def _assert_same_volume(a: Path, b: Path) -> None:
    va, vb = open_volume(a), open_volume(b)
    assert va.n_levels == vb.n_levels > 1
    for i in range(va.n_levels):
        assert np.array_equal(va.level(i)[...], vb.level(i)[...]), f"raw level {i}"
        for name in va.meta["labels"]:
            assert vb.label_level(name, i).dtype == va.label_level(name, i).dtype
            assert np.array_equal(va.label_level(name, i)[...], vb.label_level(name, i)[...]), f"{name} level {i}"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with dask_client(n_workers=2, processes=False) as c:
        yield c


def test_same_volume_as_write_volume_byte_for_byte_metadata(tmp_path: Path) -> None:
    raw, mito, ids = _data()
    ref = _reference(tmp_path, raw, mito, ids)
    writer = ShardedVolumeWriter(tmp_path / "v.ome.zarr", raw.shape, raw.dtype, VOXEL, labels=_labels(), meta=META)
    path = build_volume(writer, Source({"raw": raw, "mito": mito, "cells": ids}))
    assert (path / COMPLETE_MARKER).is_file() and not writer.building.exists()
    _assert_same_volume(ref, path)
    # every zarr.json (arrays: codecs, chunks, checksums; groups: OME and emdata attributes) is identical
    for meta_file in sorted(ref.rglob("zarr.json")):
        rel = meta_file.relative_to(ref)
        mine, theirs = json.loads((path / rel).read_text()), json.loads(meta_file.read_text())
        for doc in (mine, theirs):
            doc.get("attributes", {}).get("emdata", {}).pop("created", None)
        assert mine == theirs, rel
    marker, ref_marker = (json.loads((p / COMPLETE_MARKER).read_text()) for p in (path, ref))
    volatile = ("completed", "id")
    assert {k: v for k, v in marker.items() if k not in volatile} == {k: v for k, v in ref_marker.items()
                                                                      if k not in volatile}
    report = verify_volume(path, deep=True)
    assert report.ok and report.blocks > 0


def test_both_writers_write_the_documented_layout(tmp_path: Path) -> None:
    """The shared format, checked against fixed facts (not one writer against the other)."""
    raw, mito, ids = _data((19, 150, 134))
    writer = ShardedVolumeWriter(tmp_path / "v.ome.zarr", raw.shape, raw.dtype, VOXEL, labels=_labels(), meta=META)
    for path in (_reference(tmp_path, raw, mito, ids),
                 build_volume(writer, Source({"raw": raw, "mito": mito, "cells": ids}))):
        level0 = json.loads((path / "0" / "zarr.json").read_text())
        assert level0["data_type"] == "uint16" and level0["fill_value"] == 0
        assert level0["dimension_names"] == ["z", "y", "x"]
        codecs = json.dumps(level0["codecs"])
        assert '"zstd"' not in codecs  # raw stored plain (layout.RAW_COMPRESSORS); labels zstd level 3
        assert '"level": 3' in json.dumps(json.loads((path / "labels" / "cells" / "0" / "zarr.json").read_text()))
        root = json.loads((path / "zarr.json").read_text())["attributes"]
        ms = root["ome"]["multiscales"][0]
        assert root["ome"]["version"] == "0.5" and ms["name"] == "v" and ms["type"] == "mean"
        assert ms["datasets"][1]["coordinateTransformations"] == [
            {"type": "scale", "scale": [30.0, 12.0, 12.0]}, {"type": "translation", "translation": [0.0, 3.0, 3.0]}]
        block = root["emdata"]
        assert block["schema"] == "emdata-volume/1" and block["voxel_size_nm"] == list(VOXEL)
        assert block["shape"] == [19, 150, 134] and block["notes"] == ["built in regions"]
        assert block["raw"]["levels"][1]["shape"] == [19, 75, 67] and block["raw"]["intensity"]
        labels = json.loads((path / "labels" / "zarr.json").read_text())["attributes"]["ome"]
        assert labels == {"version": "0.5", "labels": ["mito", "cells"]}
        mito_attrs = json.loads((path / "labels" / "mito" / "zarr.json").read_text())["attributes"]["ome"]
        assert mito_attrs["multiscales"][0]["type"] == "nearest"
        assert mito_attrs["image-label"]["colors"][1] == {"label-value": 1, "rgba": [0, 255, 0, 255]}
        cells = block["labels"]["cells"]
        assert cells["kind"] == "instance" and cells["dtype"] == "uint64"
        assert cells["mapping"]["nonzero"] == {"name": "neuron", "id": 1}
        assert block["labels"]["mito"]["annotates"] == ["background", "mitochondria"]


def test_real_shards_pyramid_equals_whole_array_computation(tmp_path: Path, client: Any) -> None:
    raw, mito, ids = _data((21, 261, 77))  # no axis a multiple of the shard; odd sizes at every level
    isotropic = (8.0, 8.0, 8.0)  # so z is halved too: levels (21, 261, 77) → (11, 131, 39) → (6, 66, 20)
    ref = _reference(tmp_path, raw, mito, ids, isotropic)
    writer = ShardedVolumeWriter(tmp_path / "v.ome.zarr", raw.shape, raw.dtype, isotropic, labels=_labels(),
                                 meta=META, chunking=_small_shards)
    assert [lv["step"] for lv in writer.levels] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert len(writer.regions(0)) >= 8 and writer.levels[0]["arrays"]["raw"]["shards"]
    path = build_volume(writer, Source({"raw": raw, "mito": mito, "cells": ids}), client=client)
    level0 = json.loads((path / "0" / "zarr.json").read_text())
    assert level0["codecs"][0]["name"] == "sharding_indexed"
    assert level0["chunk_grid"]["configuration"]["chunk_shape"] == writer.levels[0]["arrays"]["raw"]["shards"]
    _assert_same_volume(ref, path)
    report = verify_volume(path, deep=True)
    assert report.ok, report.problems
    # a damaged shard is found by verify --deep, per block
    shard = next(p for p in sorted((path / "labels" / "mito" / "0" / "c").rglob("*")) if p.is_file())
    shard.write_bytes(shard.read_bytes()[:-7] + b"\0" * 7)
    assert not verify_volume(path, deep=True).ok


def test_failed_regions_resume_region_by_region(tmp_path: Path) -> None:
    raw, mito, ids = _data((9, 150, 134))
    arrays = {"raw": raw, "mito": mito, "cells": ids}
    target = tmp_path / "v.ome.zarr"

    def writer() -> ShardedVolumeWriter:
        return ShardedVolumeWriter(target, raw.shape, raw.dtype, VOXEL, labels=_labels(), meta=META,
                                   chunking=_small_shards)

    regions = [r.index for r in writer().regions(0)]
    first = Source(arrays, fail={regions[5], regions[-2]})
    with pytest.raises(BuildError, match=r"level-0 region .* failed \(OSError: injected failure.*5 of \d+ done"):
        build_volume(writer(), first)  # serially: the first failure stops the run
    assert first.filled == regions[:5] and not target.exists()
    with pytest.raises(VolumeNotFoundError):
        open_volume(target)
    folder = writer().building / ".emdata-shards" / "0"
    records = {p.name: p.read_bytes() for p in folder.glob("*.json")}
    assert len(records) == 5
    second = Source(arrays, fail={regions[-2]})
    with pytest.raises(BuildError):
        build_volume(writer(), second)
    assert second.filled == regions[5:-2]  # only what was missing, up to the next failure
    assert {p.name: p.read_bytes() for p in folder.glob("*.json") if p.name in records} == records  # untouched
    third = Source(arrays)
    path = build_volume(writer(), third)
    assert third.filled == regions[-2:]
    _assert_same_volume(_reference(tmp_path, raw, mito, ids), path)
    assert verify_volume(path, deep=True).ok


def test_interrupted_parallel_build_resumes_only_missing_regions(tmp_path: Path, client: Any) -> None:
    raw, mito, ids = _data((10, 128, 96))
    arrays = {"raw": raw, "mito": mito, "cells": ids}
    make = lambda: ShardedVolumeWriter(tmp_path / "v.ome.zarr", raw.shape, raw.dtype, VOXEL,  # noqa: E731
                                       labels=_labels(), meta=META, chunking=_small_shards)
    total = len(make().regions(0))
    seen: list[Region] = []

    def interrupt(region: Region) -> None:
        seen.append(region)
        if len(seen) == 3:
            raise RuntimeError("stop after 3 regions")

    first = Source(arrays)
    with pytest.raises(BuildError, match="stop after 3 regions"):
        build_volume(make(), first, client=client, on_region=interrupt)
    pending = {r.index for r in make().pending(0)}
    assert set(first.filled) == {r.index for r in make().regions(0)} - pending  # all running work finished
    assert 3 <= len(first.filled) < total
    second = Source(arrays)
    path = build_volume(make(), second, client=client)
    assert sorted(second.filled) == sorted(pending)
    _assert_same_volume(_reference(tmp_path, raw, mito, ids), path)
    assert verify_volume(path, deep=True).ok


def test_changed_parameters_start_over_and_bad_regions_are_refused(tmp_path: Path) -> None:
    raw, mito, ids = _data((6, 64, 64))
    target = tmp_path / "v.ome.zarr"
    w = ShardedVolumeWriter(target, raw.shape, raw.dtype, VOXEL, labels=_labels(), meta=META, chunking=_small_shards)
    assert w.prepare() is False
    region = w.regions(0)[0]
    w.write_region(region, Source({"raw": raw, "mito": mito, "cells": ids}))
    assert w.is_done(region)
    other = ShardedVolumeWriter(target, raw.shape, raw.dtype, VOXEL, labels=_labels(),
                                meta={**META, "notes": ["other"]}, chunking=_small_shards)
    assert other.prepare() is False and other.pending(0) == other.regions(0)  # different spec: starts over
    with pytest.raises(StoreWriteError, match=r"mito level 0 region \(0, 0, 0\): got dtype uint16, the array is uint8"):
        other.write_region(region, lambda r, name: raw[r.slices])
    with pytest.raises(StoreWriteError, match=r"got shape \(1, 1, 1\)"):
        other.write_region(region, lambda r, name: np.zeros((1, 1, 1), raw.dtype))
    with pytest.raises(StoreWriteError, match="duplicated"):
        ShardedVolumeWriter(target, raw.shape, raw.dtype, VOXEL, labels=_labels() * 2, meta=META)
    with pytest.raises(StoreWriteError, match="needs 'split'"):
        ShardedVolumeWriter(target, raw.shape, raw.dtype, VOXEL, meta={"dataset": "d", "volume": "v"})
    assert run_tasks(None, divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]


def test_levels_not_tiled_by_level0_pieces_are_built_from_the_level_below(tmp_path: Path) -> None:
    """Regions two slices deep cannot carry level 2 (z halved twice): level 1 is assembled from the
    level-0 regions' pieces, level 2 from level 1 — and the volume is still the in-memory one."""
    raw, mito, ids = _data((5, 260, 150))
    isotropic = (8.0, 8.0, 8.0)
    thin = lambda shape, voxel, itemsize: ((2, 64, 64), None)  # noqa: E731
    writer = ShardedVolumeWriter(tmp_path / "v.ome.zarr", raw.shape, raw.dtype, isotropic, labels=_labels(),
                                 meta=META, max_levels=3, chunking=thin, unit_chunks=(1, 1, 1))
    assert [lv["step"] for lv in writer.levels] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert writer.piece_levels() == [1]
    path = build_volume(writer, Source({"raw": raw, "mito": mito, "cells": ids}))
    _assert_same_volume(_reference(tmp_path, raw, mito, ids, isotropic), path)
    assert verify_volume(path, deep=True).ok
