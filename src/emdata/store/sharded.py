"""Write a canonical volume too big for memory: arrays created up front, filled region by
region (in parallel, e.g. on dask workers), resumable region by region, published atomically.

The result is the volume :func:`emdata.store.writer.write_volume` would write for the same
arrays: every array, attribute and metadata block comes from the same functions of
:mod:`emdata.store.layout`; the pyramid from :mod:`emdata.store.pyramid`; the region grid from
:mod:`emdata.store.regions`; tasks run through :mod:`emdata.store.tasks`. So ``verify --deep``
checks it the same way. (This module stays one concept over ~400 lines: the lifecycle of one
resumable build — prepare, fill, downsample, finish — whose steps share the on-disk records.)

How a build goes:

1. :meth:`ShardedVolumeWriter.prepare` creates ``.<name>.building/`` next to the final path,
   with every array of every level (zarr v3, shards as chosen) and a build spec
   ``emdata-build.json``; or, if a build with the same spec is there, resumes it.
2. Level 0 is split into *regions*: the array's shard grid (for unsharded arrays, a group of
   chunks the size a shard would have). Every array's checksum block (shard or chunk) lies
   inside one region, so a region is written whole, by one worker, never two at once.
   :meth:`~ShardedVolumeWriter.write_region` asks a ``fill(region, array_name)`` callable for
   the voxels of one array at a time, writes them, digests the blocks, counts the raw
   histogram and the labels' foreground index blocks, downsamples the voxels in memory to
   every pyramid level they tile (:meth:`~ShardedVolumeWriter.piece_levels`), saves those
   counts and pieces in ``.emdata-shards/0/<z>_<y>_<x>.bin`` and then writes the region's
   completion record ``.emdata-shards/0/<z>_<y>_<x>.json`` (which says where each lies).
3. Each coarser level is built region by region (:meth:`~ShardedVolumeWriter.build_region`):
   from the level-0 pieces where they tile it (all such levels in one round), else from the
   level below, read in pieces aligned to the downsampling step (one source region at a
   time); either way block means and label picks equal the whole-array computation.
4. :meth:`~ShardedVolumeWriter.finish` gathers the digests into each array's
   ``emdata.checksum`` attribute, writes the OME and ``emdata`` attributes and publishes the
   folder as the volume's next version (:func:`emdata.store.publish.commit`: completion
   marker, then the ``<name>.ome.zarr`` link switched in one step).

A rerun after an interruption redoes only regions without a record. Memory per task: one
region of one array (level 0: plus its downsampled pieces and whatever ``fill`` needs to
produce it; coarser levels: the output region plus one piece or source region at a time).

:func:`build_volume` drives all of it, serially or on a ``distributed`` client (see
:func:`dask_client`: a ``LocalCluster`` by default, or an existing scheduler's address).

Example:
    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> writer = ShardedVolumeWriter(tmp / "v.ome.zarr", (16, 128, 128), "uint16", (30, 6, 6),
    ...                              meta={"dataset": "demo", "volume": "v", "split": "all"})
    >>> def fill(region, name):  # voxels of one region of one array, from anywhere
    ...     return np.ones(region.shape, "uint16")
    >>> build_volume(writer, fill) == tmp / "v.ome.zarr"
    True
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from emdata.atomic import write_atomic
from emdata.store.checksum import ALGORITHM, block_slices, digest
from emdata.store.chunking import SHARD_CHUNKS, choose_chunks
from emdata.store.fgindex import ForegroundIndex, IndexParts, store_indices
from emdata.store.intensity import IntensityHistogram
from emdata.store.layout import (
    LabelLayerData,
    LabelMeaning,
    StoreWriteError,
    create_label_groups,
    create_level_array,
    level_entry,
    standard_dtype,
    validate_labels,
    validate_meta,
    validate_voxel_size,
    write_metadata,
)
from emdata.store.publish import commit, tidy, volume_lock
from emdata.store.pyramid import downsample_mean, downsample_nearest
from emdata.store.regions import Chunking, Region, Zyx, ceil_div, plan_build_levels
from emdata.store.tasks import BuildError, dask_client, default_workers, run_tasks

__all__ = ["BuildError", "LabelSpec", "Region", "ShardedVolumeWriter", "build_volume", "dask_client", "default_workers",
           "run_tasks"]

Fill = Callable[["Region", str], np.ndarray]
SPEC = "emdata-build.json"
RECORDS = ".emdata-shards"
_SPEC_FORMAT = "emdata.sharded-build/2"  # 2: level-0 regions save index counts and pyramid pieces
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelSpec(LabelMeaning):
    """A label layer to build: :class:`~emdata.store.layout.LabelLayerData` without the data.

    Example:
        >>> LabelSpec("mito", "uint8", "semantic", [{"value": 0, "name": "background", "ontology": "background"},
        ...                                          {"value": 1, "name": "mito", "ontology": "mitochondria"}]).dtype
        'uint8'
    """

    name: str
    dtype: str
    kind: str
    classes: list[dict[str, Any]] = field(default_factory=list)

    def layer_data(self) -> LabelLayerData:
        """The writer's description of this layer (with an empty array: only the meaning is used)."""
        fields = {k: v for k, v in asdict(self).items() if k != "dtype"}
        return LabelLayerData(data=np.empty((0, 0, 0), self.dtype), **fields)


class ShardedVolumeWriter:
    """Build the canonical volume at ``path`` (``…/<volume>.ome.zarr``) region by region.

    ``shape`` and ``dtype`` are those of level-0 raw; ``labels`` the label layers (same
    shape); ``meta`` the ``emdata`` block as for :func:`~emdata.store.writer.write_volume`
    (``dataset``, ``volume``, ``split`` required; JSON-able). ``chunking`` picks (chunks,
    shards) per array (default: the canonical :func:`choose_chunks`; tests force small shards).
    Workers rebuild the writer from the spec on disk with :meth:`attach`.

    Example:
        >>> w = ShardedVolumeWriter(Path("/tmp/x/v.ome.zarr"), (8, 64, 64), "uint8", (1, 1, 1),
        ...                         meta={"dataset": "d", "volume": "v", "split": "all"})
        >>> len(w.regions(0)), w.levels[0]["unit"]
        (1, [8, 64, 64])
    """

    def __init__(self, path: Path, shape: Sequence[int], dtype: Any, voxel_size_nm: Sequence[float], *,
                 labels: Sequence[LabelSpec] = (), meta: dict[str, Any], max_levels: int = 4,
                 chunking: Chunking = choose_chunks, unit_chunks: Sequence[int] = SHARD_CHUNKS) -> None:
        shape = tuple(int(n) for n in shape)
        voxel = tuple(float(v) for v in voxel_size_nm)
        if len(shape) != 3 or min(shape) < 1:
            raise StoreWriteError(f"raw must be a non-empty (z, y, x) volume, got shape {shape}")
        validate_voxel_size(voxel)
        validate_meta(meta)
        raw_dtype = standard_dtype(dtype)
        validate_labels((s.name, s.dtype, s.kind) for s in labels)
        arrays = [("raw", raw_dtype.name, "")] + [(x.name, standard_dtype(x.dtype).name, f"labels/{x.name}/")
                                                  for x in labels]
        levels = plan_build_levels(shape, voxel, arrays, max_levels=max_levels, chunking=chunking,
                                   unit_chunks=unit_chunks)
        self.path = Path(path)
        self.spec: dict[str, Any] = {
            "format": _SPEC_FORMAT, "shape": list(shape), "dtype": raw_dtype.name, "voxel_size_nm": list(voxel),
            "labels": [asdict(s) for s in labels], "meta": json.loads(json.dumps(meta)), "levels": levels,
        }
        self._lock: FileLock | None = None
        self._lock_depth = 0
        self._prepared = False

    # -- description ---------------------------------------------------------------------------

    @property
    def building(self) -> Path:
        """The hidden folder the volume is built in (stable, so a rerun finds it)."""
        return self.path.parent / f".{self.path.name}.building"

    @property
    def levels(self) -> list[dict[str, Any]]:
        return self.spec["levels"]

    @property
    def label_specs(self) -> list[LabelSpec]:
        return [LabelSpec(**s) for s in self.spec["labels"]]

    def array_names(self) -> list[str]:
        """``raw`` and the label layer names, in writing order."""
        return ["raw"] + [s["name"] for s in self.spec["labels"]]

    def regions(self, level: int) -> list[Region]:
        """Every region of ``level`` in C order."""
        lv = self.levels[level]
        shape, unit = lv["shape"], lv["unit"]
        grid = [range(ceil_div(n, u)) for n, u in zip(shape, unit)]
        return [self.region(level, idx) for idx in itertools.product(*grid)]  # type: ignore[arg-type]

    def region(self, level: int, index: Sequence[int]) -> Region:
        lv = self.levels[level]
        start = tuple(i * u for i, u in zip(index, lv["unit"]))
        stop = tuple(min(s + u, n) for s, u, n in zip(start, lv["unit"], lv["shape"]))
        if any(a >= n for a, n in zip(start, lv["shape"])):
            raise IndexError(f"region {tuple(index)} lies outside level {level} of shape {tuple(lv['shape'])}")
        return Region(level, tuple(int(i) for i in index), start, stop)  # type: ignore[arg-type]

    def _record(self, region: Region) -> Path:
        return self.building / RECORDS / str(region.level) / f"{region.key}.json"

    def is_done(self, region: Region) -> bool:
        return self._record(region).is_file()

    def pending(self, level: int) -> list[Region]:
        """Regions of ``level`` without a completion record."""
        folder = self.building / RECORDS / str(level)
        done = {p.stem for p in folder.glob("*.json")} if folder.is_dir() else set()
        return [r for r in self.regions(level) if r.key not in done]

    # -- lifecycle -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[ShardedVolumeWriter]:
        """Hold ``<path>.lock`` (the lock ``write_volume`` uses); re-entrant on this object."""
        if self._lock_depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = volume_lock(self.path)
            self._lock.acquire()
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock is not None:
                self._lock.release()
                self._lock = None

    def prepare(self) -> bool:
        """Create the building folder with all arrays, or resume one with the same spec.

        Returns True when an earlier build was resumed (or this writer prepared it already).
        """
        if self._prepared and (self.building / SPEC).is_file():
            return True
        self._prepared = True
        with self.locked():
            tidy(self.path)
        spec_path = self.building / SPEC
        if spec_path.is_file():
            try:
                old = json.loads(spec_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old == self.spec:
                done = sum(len(list((self.building / RECORDS / str(i)).glob("*.json")))
                           for i in range(len(self.levels)) if (self.building / RECORDS / str(i)).is_dir())
                log.info("%s: resuming an interrupted build (%d region(s) already written)", self.path, done)
                return True
            log.warning("%s: an interrupted build with different parameters is in %s; starting over",
                        self.path, self.building)
        self.discard()
        self._create()
        return False

    def discard(self) -> None:
        """Remove the building folder (a finished volume at :attr:`path` is left alone)."""
        self._prepared = False
        self._arrays: dict[tuple[int, str, bool], Any] = {}
        if self.building.exists():
            trash = self.building.with_name(f"{self.building.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(self.building, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _create(self) -> None:
        import zarr

        self.path.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(self.building), mode="w", zarr_format=3)
        create_label_groups(root, [spec["name"] for spec in self.spec["labels"]])
        for lv in self.levels:
            for plan in lv["arrays"].values():
                create_level_array(root, plan["path"], lv["shape"], plan["dtype"], plan["chunks"], plan["shards"])
        write_atomic(self.building / SPEC, json.dumps(self.spec))  # last: a folder without it is not resumable

    @classmethod
    def attach(cls, building: str | Path) -> ShardedVolumeWriter:
        """The writer of the build in ``building`` (workers call this; no lock is taken)."""
        return _attach(str(building), (Path(building) / SPEC).stat().st_mtime_ns)

    # -- filling regions -----------------------------------------------------------------------

    def _array(self, level: int, name: str, write_empty_chunks: bool = False) -> Any:
        """The open array of ``name`` at ``level`` (opened once per writer: its metadata is read once);
        ``write_empty_chunks``: a handle that writes every chunk given, without testing it for emptiness."""
        import zarr

        cache = self.__dict__.setdefault("_arrays", {})
        array = cache.get((level, name, write_empty_chunks))
        if array is None:
            array = zarr.open_array(str(self.building / self.levels[level]["arrays"][name]["path"]), mode="r+")
            if write_empty_chunks:
                array = array.with_config({"write_empty_chunks": True})
            cache[(level, name, write_empty_chunks)] = array
        return array

    def _store(self, region: Region, name: str, data: np.ndarray) -> list[list[Any]]:
        """Write one array's region and return its block digests ``[[bz, by, bx, digest], ...]``."""
        plan = self.levels[region.level]["arrays"][name]
        if data.shape != region.shape:
            raise StoreWriteError(f"{name} level {region.level} region {region.index}: got shape {data.shape}, "
                                  f"expected {region.shape}")
        if standard_dtype(data.dtype) != np.dtype(plan["dtype"]):
            raise StoreWriteError(f"{name} level {region.level} region {region.index}: got dtype {data.dtype}, "
                                  f"the array is {plan['dtype']}")
        data = np.ascontiguousarray(data, dtype=plan["dtype"])
        array = self._array(region.level, name)
        if all(data[sl].any() for sl in block_slices(region.shape, tuple(plan["chunks"]))):
            # No chunk can equal the fill value (0): zarr's own per-chunk test for "empty" chunks
            # (several passes and copies per chunk) is skipped; the chunks written are the same.
            array = self._array(region.level, name, write_empty_chunks=True)
        array[region.slices] = data
        block = plan["shards"] or plan["chunks"]
        out = []
        for sl in block_slices(region.shape, tuple(block)):
            index = [(s + a.start) // b for s, a, b in zip(region.start, sl, block)]
            out.append([*index, digest(data[sl])])
        return out

    def write_region(self, region: Region, fill: Fill) -> None:
        """Level 0: write every array of ``region`` from ``fill(region, name)``, then its record.

        From the voxels in memory it also counts the region's intensity histogram (raw) and
        foreground index blocks (labels), and downsamples it to every level of
        :meth:`piece_levels` (saved next to the record, assembled by :meth:`build_region`), so
        no later step reads level 0 back.
        """
        if region.level != 0:
            raise ValueError(f"write_region writes level 0; level {region.level} is built with build_region")
        digests = {}
        pieces = self.piece_levels()
        side: dict[str, np.ndarray] = {}  # saved with the record: histogram, index counts, pyramid pieces
        for i, name in enumerate(self.array_names()):
            data = fill(region, name)
            digests[name] = self._store(region, name, data)
            data = np.ascontiguousarray(data, dtype=self.levels[0]["arrays"][name]["dtype"])
            if name == "raw":  # intensity histogram of this region, merged by finish()
                histogram = IntensityHistogram(self.spec["dtype"])
                histogram.add(data)
                side.update({f"intensity_{k}": v for k, v in histogram.state().items()})
            else:  # foreground index blocks (the layer's level-0 chunks), merged by finish()
                spec = self.spec["labels"][i - 1]
                parts = IndexParts(name, spec["kind"], self.levels[0]["arrays"][name]["chunks"], self.spec["shape"])
                parts.add(data, region.start)
                side.update({f"index{i}_{k}": v for k, v in parts.state().items()})
            small = data
            for level in pieces:
                step = tuple(self.levels[level]["step"])
                small = downsample_mean(small, step) if name == "raw" else downsample_nearest(small, step)
                side[f"piece{i}_{level}"] = small
        layout = _save_arrays(self._side_record(region), side)  # one file: creating files costs more than bytes
        write_atomic(self._record(region), json.dumps({"level": 0, "index": list(region.index), "digests": digests,
                                                       "side": layout}))

    def _side_record(self, region: Region) -> Path:
        """What a level-0 region saves next to its record for later steps (raw bytes; where each
        array lies is in the record)."""
        path = self._record(region).with_suffix(".bin")
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _side(self, region: Region, prefix: str) -> dict[str, np.ndarray]:
        """The arrays ``<prefix><key>`` a level-0 region saved, by ``key``."""
        layout = json.loads(self._record(region).read_text(encoding="utf-8"))["side"]
        wanted = {k[len(prefix):]: v for k, v in layout.items() if k.startswith(prefix)}
        return _load_arrays(self._side_record(region), wanted)

    def piece_levels(self) -> list[int]:
        """Pyramid levels computed from each level-0 region in memory while it is written: those
        whose cumulative factor divides the level-0 region shape on every axis the volume has more
        than one region along (so the pieces tile the level, and block means and label picks
        equal the whole-array computation); coarser levels are computed from the level below.

        Example (regions of 2×64×64 voxels: level 2 halves z twice, so it is built from level 1):
            >>> w = ShardedVolumeWriter(Path("/tmp/x/v.ome.zarr"), (8, 512, 512), "uint8", (1, 1, 1),
            ...                         meta={"dataset": "d", "volume": "v", "split": "all"}, max_levels=3,
            ...                         chunking=lambda shape, voxel, size: ((2, 64, 64), None), unit_chunks=(1, 1, 1))
            >>> [lv["factor"] for lv in w.levels], w.piece_levels()
            ([[1, 1, 1], [2, 2, 2], [4, 4, 4]], [1])
        """
        unit, shape = self.levels[0]["unit"], self.spec["shape"]
        out = []
        for lv in self.levels[1:]:
            if any(u % f and u < n for u, f, n in zip(unit, lv["factor"], shape)):
                break
            out.append(lv["level"])
        return out

    def _intensity(self) -> dict[str, Any]:
        """Raw intensity statistics merged from the level-0 regions' histograms."""
        histogram = IntensityHistogram(self.spec["dtype"])
        for region in self.regions(0):
            histogram.merge(self._side(region, "intensity_"))
        return histogram.summary()

    def _indices(self) -> dict[str, ForegroundIndex]:
        """Foreground indices merged from the level-0 regions' block counts, by layer."""
        out = {}
        for i, spec in enumerate(self.spec["labels"], start=1):
            name = spec["name"]
            parts = IndexParts(name, spec["kind"], self.levels[0]["arrays"][name]["chunks"], self.spec["shape"])
            for region in self.regions(0):
                parts.merge(self._side(region, f"index{i}_"))
            out[name] = parts.index()
        return out

    def _from_pieces(self, region: Region, i: int, name: str, out: np.ndarray) -> None:
        """Fill ``out`` (``region`` of array ``name``, the ``i``-th) from the level-0 regions' pieces."""
        factor = self.levels[region.level]["factor"]
        unit0 = self.levels[0]["unit"]
        shape0 = self.spec["shape"]
        first = [a * f // u for a, f, u in zip(region.start, factor, unit0)]
        last = [ceil_div(min(b * f, n), u) for b, f, n, u in zip(region.stop, factor, shape0, unit0)]
        for index in itertools.product(*(range(a, b) for a, b in zip(first, last))):
            source = self.region(0, index)
            piece = self._side(source, f"piece{i}_{region.level}")[""]
            at = [s // f for s, f in zip(source.start, factor)]  # the piece's origin at this level
            lo = [max(a, r) for a, r in zip(at, region.start)]
            hi = [min(a + n, r) for a, n, r in zip(at, piece.shape, region.stop)]
            out[tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, region.start))] = \
                piece[tuple(slice(a - p, b - p) for a, b, p in zip(lo, hi, at))]

    def build_region(self, region: Region) -> None:
        """Level ≥ 1: compute ``region`` of every array from the level below, then its record."""
        if region.level < 1:
            raise ValueError("build_region computes pyramid levels >= 1; level 0 is written with write_region")
        lv = self.levels[region.level]
        step = tuple(lv["step"])
        digests = {}
        for i, name in enumerate(self.array_names()):
            out = np.empty(region.shape, dtype=lv["arrays"][name]["dtype"])
            if region.level in self.piece_levels():  # downsampled while level 0 was written
                self._from_pieces(region, i, name, out)
                digests[name] = self._store(region, name, out)
                continue
            source = self._array(region.level - 1, name)
            src_unit = self.levels[region.level - 1]["unit"]
            piece = tuple(max(1, ceil_div(u, s)) for u, s in zip(src_unit, step))  # one source region at a time
            for sub in block_slices(region.shape, piece):
                t0 = [r + s.start for r, s in zip(region.start, sub)]
                t1 = [r + s.stop for r, s in zip(region.start, sub)]
                src = tuple(slice(a * f, min(b * f, n)) for a, b, f, n in zip(t0, t1, step, source.shape))
                values = np.asarray(source[src])
                small = downsample_mean(values, step) if name == "raw" else downsample_nearest(values, step)
                out[sub] = small
            digests[name] = self._store(region, name, out)
        record = {"level": region.level, "index": list(region.index), "digests": digests}
        write_atomic(self._record(region), json.dumps(record))

    # -- publishing ----------------------------------------------------------------------------

    def _level_meta(self, name: str, is_label: bool) -> list[dict[str, Any]]:
        voxel = self.spec["voxel_size_nm"]
        return [level_entry(str(lv["level"]), lv["shape"], lv["arrays"][name]["dtype"], lv["arrays"][name]["chunks"],
                            lv["arrays"][name]["shards"], voxel, lv["factor"], is_label=is_label)
                for lv in self.levels]

    def _checksums(self) -> None:
        import zarr

        for lv in self.levels:
            found: dict[str, dict[tuple[int, ...], str]] = {name: {} for name in lv["arrays"]}
            for record in (self.building / RECORDS / str(lv["level"])).glob("*.json"):
                doc = json.loads(record.read_text(encoding="utf-8"))
                for name, rows in doc["digests"].items():
                    found[name].update({tuple(row[:3]): row[3] for row in rows})
            for name, plan in lv["arrays"].items():
                block = tuple(plan["shards"] or plan["chunks"])
                blocks = []
                for sl in block_slices(tuple(lv["shape"]), block):
                    key = tuple(s.start // b for s, b in zip(sl, block))
                    if key not in found[name]:
                        raise BuildError(f"{self.path}: level {lv['level']} of {name} has no checksum for block "
                                         f"{key}; a region was not written (rerun to resume)")
                    blocks.append(found[name][key])
                arr = zarr.open_array(str(self.building / plan["path"]), mode="r+")
                arr.attrs["emdata"] = {"checksum": {"algorithm": ALGORITHM, "block_shape": list(block),
                                                    "blocks": blocks}}

    def finish(self) -> Path:
        """Checksums and metadata into the arrays and groups, rename into place, marker last."""
        import zarr

        missing = {lv["level"]: len(self.pending(lv["level"])) for lv in self.levels}
        if any(missing.values()):
            raise BuildError(f"{self.path}: regions still missing per level {missing}; run the build again")
        self._checksums()
        root = zarr.open_group(str(self.building), mode="r+")
        labels = [(spec.layer_data(), spec.dtype, self._level_meta(spec.name, is_label=True))
                  for spec in self.label_specs]
        write_metadata(root, self.spec["meta"], self.spec["voxel_size_nm"], self.spec["shape"], self.spec["dtype"],
                       self._level_meta("raw", is_label=False), self._intensity(), labels)
        store_indices(self.building, computed=self._indices())  # samplers' foreground indices, before publishing
        shutil.rmtree(self.building / RECORDS, ignore_errors=True)
        (self.building / SPEC).unlink(missing_ok=True)
        with self.locked():
            # Everything is written: from here on the folder is only marked complete and published.
            commit(self.path, self.building, {"arrays": len(self.array_names()), "levels": len(self.levels)})
        return self.path


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    """Write ``arrays`` back to back into ``path``; returns where each lies ``{key: [offset, dtype, shape]}``."""
    layout: dict[str, list[Any]] = {}
    offset = 0
    with open(path, "wb") as f:
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            if value.nbytes:
                f.write(memoryview(value).cast("B"))
            layout[key] = [offset, value.dtype.str, list(value.shape)]
            offset += value.nbytes
    return layout


def _load_arrays(path: Path, layout: dict[str, list[Any]]) -> dict[str, np.ndarray]:
    """The arrays of ``layout`` (from :func:`_save_arrays`) read back from ``path``."""
    out = {}
    with open(path, "rb", buffering=0) as f:
        for key, (offset, dtype, shape) in layout.items():
            value = np.empty(shape, dtype)
            f.seek(offset)
            if value.nbytes and f.readinto(memoryview(value).cast("B")) != value.nbytes:
                raise BuildError(f"{path}: ends before {key!r}; the build folder was damaged: run again with force")
            out[key] = value
    return out


@functools.lru_cache(maxsize=8)
def _attach(building: str, mtime_ns: int) -> ShardedVolumeWriter:
    spec = json.loads((Path(building) / SPEC).read_text(encoding="utf-8"))
    if spec.get("format") != _SPEC_FORMAT:
        raise StoreWriteError(f"{building}: not an emdata sharded build (format {spec.get('format')!r})")
    writer = ShardedVolumeWriter.__new__(ShardedVolumeWriter)
    name = Path(building).name
    writer.path = Path(building).parent / name.removeprefix(".").removesuffix(".building")
    writer.spec = spec
    writer._lock, writer._lock_depth, writer._prepared = None, 0, True
    return writer


# -- driving a build ---------------------------------------------------------------------------


def _region_task(building: str, level: int, index: Zyx, fill: Fill | None) -> Zyx:
    """One region on a worker: attach to the build on disk and write it."""
    writer = ShardedVolumeWriter.attach(building)
    region = writer.region(level, index)
    if level == 0:
        if fill is None:
            raise ValueError("level 0 needs a fill function")
        writer.write_region(region, fill)
    else:
        writer.build_region(region)
    return region.index


def build_volume(writer: ShardedVolumeWriter, fill: Fill, *, client: Any = None,
                 on_region: Callable[[Region], None] | None = None) -> Path:
    """Build (or resume) the whole volume: level 0 from ``fill``, the pyramid, then publish.

    ``fill`` must be picklable for a process or remote cluster (a module-level function or a
    ``functools.partial`` of one). ``on_region`` runs on this side after each region; raising
    in it stops the build like an interruption (tests use it).

    Example (on a cluster: ``with dask_client() as client: build_volume(writer, fill, client=client)``):
        >>> import tempfile
        >>> writer = ShardedVolumeWriter(Path(tempfile.mkdtemp()) / "v.ome.zarr", (8, 64, 64), "uint8", (1, 1, 1),
        ...                              meta={"dataset": "d", "volume": "v", "split": "all"})
        >>> build_volume(writer, lambda region, name: np.full(region.shape, 3, "uint8")).name
        'v.ome.zarr'
    """
    with writer.locked():
        writer.prepare()
        building = str(writer.building)
        pieces = writer.piece_levels()  # built from level 0's pieces only: one round for all of them
        rounds = [[0], pieces, *([lv["level"]] for lv in writer.levels[1:] if lv["level"] not in pieces)]
        for levels in rounds:
            items = []
            for level in levels:
                pending = writer.pending(level)
                if pending:
                    log.info("%s: level %d: %d of %d region(s) to write", writer.path, level, len(pending),
                             len(writer.regions(level)))
                items += [(building, level, r.index, fill if level == 0 else None) for r in pending]
            if not items:
                continue

            def done(item: tuple[Any, ...], _result: Any) -> None:
                if on_region is not None:
                    on_region(writer.region(item[1], item[2]))

            what = f"level-{levels[0]} region" if len(levels) == 1 else f"level-{levels[0]}..{levels[-1]} region"
            run_tasks(client, _region_task, items, on_done=done, what=what)
        return writer.finish()
