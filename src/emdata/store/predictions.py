"""Prediction layers: a model's output stored in the volume's own OME-Zarr group, with provenance.

A prediction is written block by block into a staging folder beside the volume
(``.<name>.ome.zarr.predict-<layer>/``: resumable, each finished block has a record) and then
published as the volume's next version (:func:`emdata.store.publish.commit`). The new version
shares every unchanged file with the current one through hard links (copy-on-write: published
files are never modified in place, only replaced), so adding a layer to a 10 GB volume writes
the layer and a few metadata files, and a reader of the old version is never disturbed.

Two kinds of layers:

* ``labels``: an integer label image at ``labels/<layer>`` (OME ``image-label`` with colours),
  listed in the OME ``labels`` group so viewers show it, but recorded under ``emdata.predictions``,
  not ``emdata.labels``: training code never mistakes a prediction for ground truth;
* ``probabilities``: a float image with a channel axis, ``(c, z, y, x)``, at
  ``predictions/<layer>`` (its own OME multiscales).

Both get the image's pyramid (labels: nearest, probabilities: block mean) and per-block
checksums, so ``emdata verify --deep`` checks them like every other array. The ``provenance``
(model name and hash, voxel size, tile, halo, …) is kept as given, with the version of the
volume the prediction was computed from.

Example:
    >>> import tempfile
    >>> from emdata.store.writer import write_volume
    >>> from emdata.store.verify import verify_volume
    >>> from emdata.store.volume import open_volume
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.zeros((4, 32, 32), "u1"), (30, 6, 6),
    ...                     meta={"dataset": "demo", "volume": "v", "split": "test"})
    >>> mask = np.zeros((4, 32, 32), "u1"); mask[:, 8:24, 8:24] = 1
    >>> _ = add_prediction(path, "guess", mask, provenance={"model": "by hand"},
    ...                    classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "cell"}])
    >>> vol = open_volume(path)
    >>> int(vol.prediction("guess")[0, 16, 16]), vol.meta["predictions"]["guess"]["path"]
    (1, 'labels/guess')
    >>> verify_volume(path, deep=True).problems
    []
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emdata.atomic import unique_sibling, write_atomic
from emdata.store import ome
from emdata.store.checksum import ALGORITHM, block_slices, digest
from emdata.store.chunking import choose_chunks
from emdata.store.layout import StoreWriteError, standard_dtype
from emdata.store.publish import COMPLETE_MARKER, commit, generation, resolve, tidy, volume_lock
from emdata.store.pyramid import downsample_mean, downsample_nearest

__all__ = ["KINDS", "PredictionWriter", "add_prediction", "prediction_arrays", "staging_folder"]

KINDS = ("labels", "probabilities")
CHANNEL_AXES = ("c", *ome.AXES)
_SPEC = "emdata-predict.json"
_DONE = "done"


class StalePredictionError(RuntimeError):
    """The volume was replaced while a prediction of it was being computed."""


def staging_folder(volume_path: Path, name: str) -> Path:
    """Where the blocks of prediction ``name`` of the volume at ``volume_path`` are staged."""
    volume_path = Path(volume_path)
    return volume_path.parent / f".{volume_path.name}.predict-{name}"


def layer_path(kind: str, name: str) -> str:
    """The group of a prediction layer inside the volume: ``labels/<name>`` or ``predictions/<name>``."""
    return f"labels/{name}" if kind == "labels" else f"predictions/{name}"


def prediction_arrays(em: dict[str, Any]) -> list[str]:
    """Paths of every array of every prediction layer recorded in an ``emdata`` block.

    Example:
        >>> prediction_arrays({"predictions": {"p": {"path": "labels/p", "levels": [{"path": "0"}]}}})
        ['labels/p/0']
    """
    return [f"{p['path']}/{lv['path']}" for p in em.get("predictions", {}).values() for lv in p["levels"]]


def _check_name(name: str, em: dict[str, Any], where: Path) -> None:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise StoreWriteError(f"prediction layer name {name!r} must be letters, digits, '_' or '-'")
    if name in em.get("labels", {}):
        raise StoreWriteError(f"{where}: {name!r} is a ground-truth label layer of this volume; choose another "
                              f"prediction name (layers: {sorted(em['labels'])})")


def _factors(em: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Cumulative downsampling factor of each raw level (from the recorded scales)."""
    voxel = em["voxel_size_nm"]
    return [tuple(round(s / v) for s, v in zip(lv["scale"], voxel)) for lv in em["raw"]["levels"]]  # type: ignore


class PredictionWriter:
    """Stage a prediction layer block by block, then publish it into the volume (resumable).

    ``shape`` is the grid the blocks are written on: the raw level ``level`` of the volume (the
    level whose voxel size the model was trained at); level 0 of the stored layer is that grid
    upsampled (each voxel repeated) when ``level > 0``. ``kind`` is ``labels`` (integer
    ``dtype``) or ``probabilities`` (``channels`` float channels). ``spec`` describes everything
    that determines the values (model hash, tiles, …): a staging folder with another spec is
    discarded, one with the same spec is resumed (blocks already recorded are kept).

    Example:
        >>> import tempfile
        >>> from emdata.store.writer import write_volume
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.zeros((2, 16, 16), "u1"), (30, 6, 6),
        ...                     meta={"dataset": "demo", "volume": "v", "split": "test"})
        >>> w = PredictionWriter(path, "p", "probabilities", "float16", channels=2, block=(2, 8, 16),
        ...                      provenance={"model": "const"})
        >>> for index in w.pending():
        ...     w.write_block(index, np.full((2, *w.block_box(index)[1]), 0.5, "float16"))
        >>> w.finish().name
        'v.ome.zarr'
        >>> from emdata.store.volume import open_volume
        >>> open_volume(path).prediction("p").shape, float(open_volume(path).prediction("p", level=0)[1, 1, 1, 1])
        ((2, 2, 16, 16), 0.5)
    """

    def __init__(self, volume_path: Path, name: str, kind: str, dtype: Any, *, channels: int = 1, level: int = 0,
                 block: Sequence[int] | None = None, classes: Sequence[dict[str, Any]] = (),
                 provenance: dict[str, Any] | None = None, spec: dict[str, Any] | None = None) -> None:
        import zarr

        self.path = Path(volume_path)
        if not (self.path / COMPLETE_MARKER).is_file():
            raise FileNotFoundError(f"{self.path}: no complete volume here; run `emdata prepare` first")
        if kind not in KINDS:
            raise StoreWriteError(f"prediction kind must be one of {KINDS}, got {kind!r}")
        dtype = standard_dtype(dtype)
        if kind == "labels" and not np.issubdtype(dtype, np.integer):
            raise StoreWriteError(f"a labels prediction needs an integer dtype, got {dtype}")
        if kind == "probabilities" and not np.issubdtype(dtype, np.floating):
            raise StoreWriteError(f"a probabilities prediction needs a float dtype, got {dtype}")
        self.source = generation(self.path)
        root = zarr.open_group(str(resolve(self.path)), mode="r")
        self.em: dict[str, Any] = dict(root.attrs["emdata"])
        _check_name(name, self.em, self.path)
        factors = _factors(self.em)
        if not 0 <= level < len(factors):
            raise StoreWriteError(f"{self.path}: level {level} does not exist (the volume has {len(factors)} levels)")
        self.name, self.kind, self.dtype, self.level = name, kind, dtype, level
        self.channels = int(channels) if kind == "probabilities" else 0
        self.shape = tuple(self.em["raw"]["levels"][level]["shape"])
        self.block = tuple(min(int(b), n) for b, n in zip(block or self.shape, self.shape))
        if len(self.block) != 3 or min(self.block) < 1:
            raise StoreWriteError(f"block must be three positive sizes (z, y, x), got {block}")
        self.classes = [dict(c) for c in classes]
        self.provenance = dict(provenance or {})
        self.staging = staging_folder(self.path, name)
        self.spec = json.loads(json.dumps({
            "format": "emdata.prediction-staging/1", "volume_version": self.source, "name": name, "kind": kind,
            "dtype": dtype.name, "channels": self.channels, "level": level, "shape": list(self.shape),
            "block": list(self.block), "spec": spec or {}}, default=str))
        self._prepare()

    # -- staging -------------------------------------------------------------------------------

    def _prepare(self) -> None:
        import zarr

        spec_file = self.staging / _SPEC
        with contextlib.suppress(OSError, ValueError):
            if json.loads(spec_file.read_text(encoding="utf-8")) == self.spec:
                return
        if self.staging.exists():
            shutil.rmtree(self.staging)
        (self.staging / _DONE).mkdir(parents=True)
        shape = ((self.channels,) if self.channels else ()) + self.shape
        chunks = ((self.channels,) if self.channels else ()) + self.block
        zarr.create_array(str(self.staging / "data"), shape=shape, chunks=chunks, dtype=self.dtype,
                          fill_value=0, compressors=zarr.codecs.ZstdCodec(level=1))
        write_atomic(spec_file, json.dumps(self.spec))  # last: a staging folder without it is started over

    def blocks(self) -> list[tuple[int, int, int]]:
        """Index of every block of the grid, C order."""
        grid = [range(-(-n // b)) for n, b in zip(self.shape, self.block)]
        return [(z, y, x) for z in grid[0] for y in grid[1] for x in grid[2]]

    def block_box(self, index: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(start, shape) of block ``index`` on the grid."""
        start = tuple(i * b for i, b in zip(index, self.block))
        return start, tuple(min(b, n - s) for s, b, n in zip(start, self.block, self.shape))

    def _record(self, index: Sequence[int]) -> Path:
        return self.staging / _DONE / "_".join(map(str, index))

    def pending(self) -> list[tuple[int, int, int]]:
        """Blocks not written yet (a rerun after an interruption resumes from here)."""
        done = {p.name for p in (self.staging / _DONE).iterdir()} if (self.staging / _DONE).is_dir() else set()
        return [i for i in self.blocks() if "_".join(map(str, i)) not in done]

    def write_block(self, index: Sequence[int], values: np.ndarray) -> None:
        """Store block ``index`` (``(z, y, x)``, or ``(c, z, y, x)`` for probabilities), then its record."""
        import zarr

        start, size = self.block_box(index)
        want = ((self.channels,) if self.channels else ()) + size
        if tuple(values.shape) != want:
            raise StoreWriteError(f"prediction {self.name!r} block {tuple(index)}: got shape {values.shape}, "
                                  f"expected {want}")
        sl = (slice(None),) * bool(self.channels) + tuple(slice(s, s + n) for s, n in zip(start, size))
        zarr.open_array(str(self.staging / "data"), mode="r+")[sl] = np.asarray(values, dtype=self.dtype)
        write_atomic(self._record(index), "")

    # -- publishing ----------------------------------------------------------------------------

    def finish(self) -> Path:
        """Publish the staged layer as the volume's next version; returns the volume path."""
        import zarr

        missing = self.pending()
        if missing:
            raise StoreWriteError(f"{self.path}: prediction {self.name!r} still misses {len(missing)} block(s) "
                                  f"(first {missing[0]}); write them before finishing")
        staged = zarr.open_array(str(self.staging / "data"), mode="r")
        with volume_lock(self.path):
            if generation(self.path) != self.source:
                shutil.rmtree(self.staging, ignore_errors=True)
                raise StalePredictionError(
                    f"{self.path} was replaced (prepare --force?) while prediction {self.name!r} was computed from "
                    "the version before; the staged blocks were discarded: run the prediction again")
            tidy(self.path)
            folder = resolve(self.path)
            tmp = unique_sibling(self.path)
            try:
                self._publish(folder, tmp, staged)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.path

    def _publish(self, folder: Path, tmp: Path, staged: Any) -> None:
        em = json.loads(json.dumps(self.em))
        old = em.get("predictions", {}).get(self.name)
        target = layer_path(self.kind, self.name)
        skip = {target} | ({old["path"]} if old else set())
        _link_tree(folder, tmp, skip_dirs=skip, skip_files={COMPLETE_MARKER, "zarr.json", "labels/zarr.json"})
        levels = self._write_levels(tmp / target, staged)
        attrs = self._group_attrs(levels)
        _write_json(tmp / target / "zarr.json", _group_doc(attrs))
        if self.kind == "probabilities":
            _write_json(tmp / "predictions" / "zarr.json", _group_doc({}))
        em.setdefault("predictions", {})[self.name] = {
            "kind": self.kind, "path": target, "dtype": self.dtype.name, "channels": self.channels or None,
            "classes": self.classes, "levels": levels,
            "provenance": {**self.provenance, "level": self.level, "volume_version": self.source,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        }
        root_doc = json.loads((folder / "zarr.json").read_text(encoding="utf-8"))
        root_doc.setdefault("attributes", {})["emdata"] = em
        _write_json(tmp / "zarr.json", root_doc)
        label_layers = list(em["labels"]) + [n for n, p in em["predictions"].items() if p["kind"] == "labels"]
        if label_layers:
            labels_doc = _group_doc({})
            with contextlib.suppress(OSError, ValueError):
                labels_doc = json.loads((folder / "labels" / "zarr.json").read_text(encoding="utf-8"))
            labels_doc.setdefault("attributes", {})["ome"] = {"version": ome.OME_VERSION, "labels": label_layers}
            _write_json(tmp / "labels" / "zarr.json", labels_doc)
        arrays = 1 + len(em["labels"]) + len(em["predictions"])
        commit(self.path, tmp, {"arrays": arrays, "levels": len(em["raw"]["levels"])})

    def _write_levels(self, group: Path, staged: Any) -> list[dict[str, Any]]:
        """Every level of the layer under ``group``, computed chunk by chunk; returns the level entries."""
        import zarr

        factors = _factors(self.em)
        voxel = tuple(self.em["voxel_size_nm"])
        lead = (self.channels,) if self.channels else ()
        up = factors[self.level]
        entries = []
        previous = None
        for i, (factor, raw_lv) in enumerate(zip(factors, self.em["raw"]["levels"])):
            shape = tuple(raw_lv["shape"])
            spatial, _ = choose_chunks(shape, tuple(v * f for v, f in zip(voxel, factor)),
                                       self.dtype.itemsize * max(1, self.channels))
            chunks = lead + tuple(spatial)
            arr = zarr.create_array(str(group / str(i)), shape=lead + shape, chunks=chunks, dtype=self.dtype,
                                    fill_value=0, compressors=zarr.codecs.ZstdCodec(level=3),
                                    dimension_names=list(CHANNEL_AXES if self.channels else ome.AXES))
            digests = []
            for sl in block_slices(lead + shape, chunks):
                box = sl[len(lead):]
                if i == 0:
                    values = _upsampled(staged, box, up, lead)
                else:
                    step = tuple(f // p for f, p in zip(factor, factors[i - 1]))
                    assert previous is not None
                    src = tuple(slice(s.start * f, min(s.stop * f, n)) for s, f, n in
                                zip(box, step, previous.shape[len(lead):]))
                    values = self._downsample(np.asarray(previous[(slice(None),) * len(lead) + src]), step)
                arr[sl] = values
                digests.append(digest(values))
            arr.attrs["emdata"] = {"checksum": {"algorithm": ALGORITHM, "block_shape": list(chunks),
                                                "blocks": digests}}
            scale = [v * f for v, f in zip(voxel, factor)]
            translation = None if self.kind == "labels" else [v * (f - 1) / 2 for v, f in zip(voxel, factor)]
            entries.append({"path": str(i), "shape": list(lead + shape), "dtype": self.dtype.name,
                            "chunks": list(chunks), "shards": None, "scale": scale,
                            "translation": translation if translation and any(translation) else None})
            previous = arr
        return entries

    def _downsample(self, values: np.ndarray, step: tuple[int, ...]) -> np.ndarray:
        if self.kind == "labels":
            return downsample_nearest(values, step)  # type: ignore[arg-type]
        return np.stack([downsample_mean(c, step) for c in values])  # type: ignore[arg-type]

    def _group_attrs(self, levels: list[dict[str, Any]]) -> dict[str, Any]:
        if self.kind == "labels":
            attrs = ome.multiscales(self.name, [(lv["path"], tuple(lv["scale"]), None) for lv in levels],
                                    method="nearest")
            classes = self.classes or [{"value": 0, "name": "background"}]
            attrs["image-label"] = ome.image_label(classes)
            return {"ome": attrs}
        attrs = ome.multiscales(self.name, [(lv["path"], (1.0, *lv["scale"]),
                                             (0.0, *lv["translation"]) if lv["translation"] else None)
                                            for lv in levels], method="mean")
        attrs["multiscales"][0]["axes"].insert(0, {"name": "c", "type": "channel"})
        return {"ome": attrs}


def _upsampled(staged: Any, box: tuple[slice, ...], factor: Sequence[int], lead: tuple[int, ...]) -> np.ndarray:
    """Level-0 voxels ``box`` of the staged grid, each staged voxel repeated ``factor`` times."""
    src = tuple(slice(s.start // f, -(-s.stop // f)) for s, f in zip(box, factor))
    values = np.asarray(staged[(slice(None),) * len(lead) + src])
    for axis, f in enumerate(factor):
        if f > 1:
            values = np.repeat(values, f, axis=len(lead) + axis)
    crop = tuple(slice(s.start - c.start * f, s.stop - c.start * f) for s, c, f in zip(box, src, factor))
    return np.ascontiguousarray(values[(slice(None),) * len(lead) + crop])


def _group_doc(attrs: dict[str, Any]) -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": attrs}


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(doc, indent=2))  # a new file: never one shared with the version before


def _link_tree(source: Path, dest: Path, skip_dirs: set[str], skip_files: set[str]) -> None:
    """Recreate ``source`` at ``dest`` with hard links (copies where links are refused), leaving
    out the folders ``skip_dirs`` and the files ``skip_files`` (paths relative to ``source``)."""
    for dirpath, dirnames, filenames in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        dirnames[:] = [d for d in dirnames if (rel / d).as_posix() not in skip_dirs]
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            if (rel / name).as_posix() in skip_files:
                continue
            src, dst = Path(dirpath) / name, dest / rel / name
            try:
                os.link(src, dst)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                    raise
                shutil.copy2(src, dst)


def add_prediction(volume_path: Path, name: str, values: np.ndarray, *, provenance: dict[str, Any],
                   classes: Sequence[dict[str, Any]] = (), level: int = 0) -> Path:
    """Store an in-memory prediction as layer ``name`` of the volume (``labels`` for integer
    ``(z, y, x)`` arrays, ``probabilities`` for float ``(c, z, y, x)``); returns the volume path.

    Use it for post-processed results (e.g. instances from a watershed) that were computed
    outside :func:`emdata.predict`.
    """
    values = np.asarray(values)
    kind = "labels" if np.issubdtype(values.dtype, np.integer) else "probabilities"
    if (kind == "labels" and values.ndim != 3) or (kind == "probabilities" and values.ndim != 4):
        raise StoreWriteError(f"a {kind} prediction must be {'(z, y, x)' if kind == 'labels' else '(c, z, y, x)'}, "
                              f"got shape {values.shape} ({values.dtype})")
    writer = PredictionWriter(volume_path, name, kind, values.dtype, channels=values.shape[0] if kind != "labels"
                              else 1, level=level, classes=classes, provenance=provenance,
                              spec={"in_memory": time.time()})
    grid = writer.shape
    if tuple(values.shape[-3:]) != grid:
        raise StoreWriteError(f"{volume_path}: prediction {name!r} has shape {values.shape[-3:]}, level {level} of the "
                              f"volume is {grid}")
    for index in writer.pending():
        start, size = writer.block_box(index)
        sl = tuple(slice(s, s + n) for s, n in zip(start, size))
        writer.write_block(index, values[(slice(None),) * (values.ndim - 3) + sl])
    return writer.finish()
