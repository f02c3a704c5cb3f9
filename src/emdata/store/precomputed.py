"""Neuroglancer precomputed layers (raw + segmentation) read as one volume, without a copy.

:func:`open_precomputed` gives a :class:`PrecomputedVolume`: the
:class:`~emdata.store.volume.Volume` interface over a raw image layer and label layers at one
mip, so :class:`~emdata.torch.dataset.PatchDataset` trains on them as on a prepared volume.
Chunks are read through CloudVolume (the ``precomputed`` extra: ``pip install
'emdata[precomputed]'``), which fetches the chunks of a read concurrently; the reader's
decoded-chunk cache bounds what is kept. The volume spans the box every layer covers (or
``bbox``), level 0 is the chosen mip (other resolutions are resampled from it).

A chunk file missing from a layer is never read as zeros: reads raise
:class:`~emdata.store.remote.MissingChunkError` naming the chunk's URL, or, with
``missing="ignore"``, read it as 0 and list it in :meth:`PrecomputedVolume.missing_boxes`, which
``PatchDataset`` turns into an ignore mask. (Precomputed layers record no checksums, so a chunk a
writer left out because it was empty cannot be told from a lost one: layers written that way need
``missing="ignore"``.) A pickled volume carries only its locator (:attr:`PrecomputedVolume.folder`,
``precomputed://<raw url>#emdata:…``); each process opens its own connections.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from emdata.testing.precomputed import write_precomputed_layer
    >>> from emdata.testing.server import MirrorServer
    >>> root = Path(tempfile.mkdtemp())
    >>> em = np.arange(16 * 32 * 32, dtype=np.uint32).reshape(16, 32, 32).astype(np.uint8)
    >>> seg = (np.arange(16 * 32 * 32) // 100 % 7).reshape(16, 32, 32).astype(np.uint64)
    >>> _ = write_precomputed_layer(root, "https://host/em", em, (30.0, 8.0, 8.0))
    >>> _ = write_precomputed_layer(root, "https://host/seg", seg, (30.0, 8.0, 8.0), layer_type="segmentation")
    >>> with MirrorServer(root) as server:
    ...     vol = open_precomputed(f"{server.url}/host/em", labels={"cells": f"{server.url}/host/seg"})
    ...     same = bool((vol.labels["cells"][2:9, 5:30, 0:17] == seg[2:9, 5:30, 0:17]).all())
    >>> vol.shape, vol.voxel_size, same
    ((16, 32, 32), (30.0, 8.0, 8.0), True)
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Mapping
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np

from emdata.store.layout import LabelLayerData, level_entry, union_mapping
from emdata.store.remote import MISSING, MissingChunkError
from emdata.store.volume import Volume

PREFIX = "precomputed://"
_FRAGMENT = "#emdata:"
Box = tuple[slice, slice, slice]


def open_precomputed(raw: str, labels: Mapping[str, str | Mapping[str, Any]] | None = None, *, mip: int = 0,
                     bbox: str | None = None, dataset: str = "precomputed", volume: str | None = None,
                     split: str = "train", missing: str = "error") -> PrecomputedVolume:
    """Open a precomputed image layer and label layers as one volume.

    ``raw`` and each label are layer URLs (``https://``, ``http://``, ``gs://``, ``s3://``,
    optionally prefixed ``precomputed://``). A label given as a plain URL is an instance layer
    of ``neuron`` ids; give a mapping for anything else: ``{"url": …, "kind": "semantic",
    "classes": [{"value": 1, "name": "mito", "ontology": "mitochondrion"}]}`` or ``{"url": …,
    "instance_of": "cell"}``. Every layer must have ``mip``'s resolution. ``bbox``
    (``"z0:z1,y0:y1,x0:x1"``, absolute voxels at ``mip``) narrows the volume; by default it is
    the box all layers cover. ``missing``: ``"error"`` or ``"ignore"`` (see the module docstring).
    """
    spec = {"raw": raw.removeprefix(PREFIX), "labels": {k: _label_spec(k, v) for k, v in (labels or {}).items()},
            "mip": int(mip), "bbox": bbox, "dataset": dataset, "volume": volume, "split": split, "missing": missing}
    vol = PrecomputedVolume(spec)
    vol.meta  # noqa: B018  (read the info files now: a wrong URL fails here)
    return vol


def _label_spec(name: str, value: str | Mapping[str, Any]) -> dict[str, Any]:
    spec = {"url": value} if isinstance(value, str) else dict(value)
    if "url" not in spec:
        raise ValueError(f"label layer {name!r}: give its layer URL, or a mapping with 'url', got {value!r}")
    spec["url"] = str(spec["url"]).removeprefix(PREFIX)
    spec.setdefault("kind", "instance")
    if spec["kind"] == "instance":
        spec.setdefault("instance_of", "neuron")
    spec.setdefault("classes", [{"value": 0, "name": "background", "ontology": "background"}])
    return spec


def open_precomputed_locator(locator: str) -> PrecomputedVolume:
    """Re-open a volume from its :attr:`PrecomputedVolume.folder` (what loader workers do)."""
    url, sep, fragment = locator.partition(_FRAGMENT)
    if not sep:
        return open_precomputed(url)
    spec = dict(parse_qsl(fragment))
    return PrecomputedVolume({"raw": url.removeprefix(PREFIX), **json.loads(spec["spec"])})


def _cloudvolume() -> Any:
    try:
        from cloudvolume import CloudVolume
    except ImportError as exc:
        raise ImportError("reading precomputed layers needs cloud-volume: pip install 'emdata[precomputed]'") from exc
    return CloudVolume


class _Layer:
    """One precomputed layer at one mip, opened once per process."""

    def __init__(self, url: str, mip: int) -> None:
        self.url, self.mip = url.rstrip("/"), mip
        self._pid: int | None = None
        self._cvs: dict[bool, Any] = {}
        self._lock = threading.Lock()
        self.status: dict[tuple[int, int, int], bool] = {}  # chunk start (z, y, x) -> exists

    def _open(self, fill_missing: bool) -> Any:
        """This process's CloudVolume of the layer (one per ``fill_missing``, so threads never flip it)."""
        with self._lock:
            if self._pid != os.getpid():
                self._cvs, self._pid = {}, os.getpid()
            cv = self._cvs.get(fill_missing)
            if cv is None:
                info = self._cvs[False].info if False in self._cvs else None
                cv = self._cvs[fill_missing] = _cloudvolume()(self.url, mip=self.mip, progress=False, info=info,
                                                              fill_missing=fill_missing, bounded=True, provenance={})
        return cv

    @property
    def cv(self) -> Any:
        return self._open(False)

    @cached_property
    def scale(self) -> dict[str, Any]:
        scales = self.cv.info["scales"]
        if not 0 <= self.mip < len(scales):
            raise ValueError(f"{self.url}: mip {self.mip} does not exist; the layer has {len(scales)} mip(s)")
        return scales[self.mip]

    @property
    def resolution(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in reversed(self.scale["resolution"]))  # type: ignore[return-value]

    @property
    def bounds(self) -> Box:
        offset = self.scale.get("voxel_offset", (0, 0, 0))
        return tuple(slice(int(o), int(o) + int(n))  # type: ignore[return-value]
                     for o, n in zip(reversed(offset), reversed(self.scale["size"])))

    @property
    def chunks(self) -> tuple[int, int, int]:
        return tuple(int(c) for c in reversed(self.scale["chunk_sizes"][0]))  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.cv.info["data_type"])

    def chunk_boxes(self, box: Box) -> list[Box]:
        """The layer's chunks touching ``box`` (absolute voxels), clipped to the layer bounds."""
        per_axis = []
        for s, b, c in zip(box, self.bounds, self.chunks):
            first, last = (s.start - b.start) // c, (s.stop - 1 - b.start) // c
            per_axis.append([slice(b.start + k * c, min(b.start + (k + 1) * c, b.stop))
                             for k in range(first, last + 1)])
        return [tuple(c) for c in itertools.product(*per_axis)]  # type: ignore[misc]

    def chunk_url(self, chunk: Box) -> str:
        z, y, x = chunk
        name = f"{x.start}-{x.stop}_{y.start}-{y.stop}_{z.start}-{z.stop}"
        if "sharding" in self.scale:
            return f"{self.url}/{self.scale['key']} (shard holding chunk {name})"
        return f"{self.url}/{self.scale['key']}/{name}"

    def missing(self, box: Box) -> list[Box]:
        """Chunks touching ``box`` that do not exist (checked once each: a HEAD, or the shard index)."""
        chunks = self.chunk_boxes(box)
        unknown = [c for c in chunks if tuple(s.start for s in c) not in self.status]
        if unknown:
            if "sharding" in self.scale:
                from cloudvolume.datasource.precomputed.common import compressed_morton_code

                grid = [-(-(b.stop - b.start) // c) for b, c in zip(reversed(self.bounds), reversed(self.chunks))]
                index = [tuple((s.start - b.start) // c for s, b, c in zip(reversed(ch), reversed(self.bounds),
                                                                           reversed(self.chunks))) for ch in unknown]
                codes = [int(c) for c in compressed_morton_code(index, grid)]
                found = self.cv.image.shard_reader(self.mip).exists(codes, path=self.scale["key"])
                exists = [found.get(code) is not None for code in codes]
            else:
                from cloudfiles import CloudFiles

                names = [self.chunk_url(c)[len(self.url) + 1:] for c in unknown]
                heads = CloudFiles(self.url, progress=False).head(names)
                exists = [heads[n] is not None for n in names]
            for chunk, ok in zip(unknown, exists):
                self.status[tuple(s.start for s in chunk)] = ok  # type: ignore[index]
        return [c for c in chunks if not self.status[tuple(s.start for s in c)]]  # type: ignore[index]

    def read(self, box: Box, ignore_missing: bool) -> np.ndarray:
        from cloudvolume.exceptions import EmptyVolumeException
        from cloudvolume.lib import Bbox

        lost = self.missing(box) if ignore_missing else []
        cv = self._open(bool(lost))
        z, y, x = box
        try:
            xyzc = np.asarray(cv.download(Bbox((x.start, y.start, z.start), (x.stop, y.stop, z.stop)), mip=self.mip))
        except EmptyVolumeException:
            lost = self.missing(box)
            first = lost[0] if lost else box
            where = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", first))
            raise MissingChunkError(
                f"{self.chunk_url(first)}: chunk missing on the server (voxels {where} at mip {self.mip}, "
                f"{len(lost)} missing chunk(s) in this read); precomputed layers record no checksums, so a chunk "
                "its writer left out as empty cannot be told from a lost one. Open the volume with "
                "missing='ignore' to mask such chunks (never read as zeros)", self.chunk_url(first), "") from None
        return np.ascontiguousarray(xyzc[..., 0].transpose(2, 1, 0))


class PrecomputedArray:
    """One layer of a :class:`PrecomputedVolume` as a zarr-like array (``shape``, ``chunks``,
    ``dtype``, ``attrs``, ``[...]`` with slices) in volume coordinates."""

    def __init__(self, layer: _Layer, origin: tuple[int, int, int], shape: tuple[int, int, int],
                 ignore_missing: bool) -> None:
        self.layer, self.origin, self.shape = layer, origin, shape
        self.chunks = layer.chunks
        self.dtype = layer.dtype
        self.attrs: dict[str, Any] = {}
        self.ignore_missing = ignore_missing

    @property
    def ndim(self) -> int:
        return 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        box, squeeze = [], []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if isinstance(k, int | np.integer):
                k = int(k) + n if k < 0 else int(k)
                box.append(slice(k, k + 1))
                squeeze.append(axis)
            elif isinstance(k, slice) and k.step in (None, 1):
                start, stop, _ = k.indices(n)
                box.append(slice(start, max(start, stop)))
            else:
                raise IndexError(f"{self.layer.url}: only integers and contiguous slices index a precomputed array, "
                                 f"got {key!r}")
        if any(s.start == s.stop for s in box):
            return np.zeros(tuple(s.stop - s.start for s in box), self.dtype).squeeze(tuple(squeeze))
        absolute = tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, self.origin))
        return self.layer.read(absolute, self.ignore_missing).squeeze(tuple(squeeze))  # type: ignore[arg-type]


class PrecomputedVolume(Volume):
    """Precomputed layers read as one volume (see the module docstring)."""

    remote = True

    def __init__(self, spec: dict[str, Any]) -> None:
        if spec.get("missing", "error") not in MISSING:
            raise ValueError(f"missing must be one of {MISSING}, got {spec.get('missing')!r}")
        self.spec = spec
        self.missing = spec.get("missing", "error")
        self.path = PREFIX + spec["raw"]  # type: ignore[assignment]
        self._pin = None
        self._fixed = True
        self._layers = {"raw": _Layer(spec["raw"], spec["mip"]),
                        **{name: _Layer(s["url"], spec["mip"]) for name, s in spec["labels"].items()}}

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])  # type: ignore[misc]

    def close(self) -> None:
        """Nothing to release: CloudVolume's connections belong to the process."""

    def __repr__(self) -> str:
        return f"PrecomputedVolume({self.spec['raw']}, labels={list(self.spec['labels'])}, missing={self.missing!r})"

    @cached_property
    def folder(self) -> str:  # type: ignore[override]
        """The locator workers re-open: the raw layer's URL with the rest in an ``#emdata:`` fragment."""
        rest = {k: v for k, v in self.spec.items() if k != "raw"}
        return f"{PREFIX}{self.spec['raw']}{_FRAGMENT}{urlencode({'spec': json.dumps(rest, sort_keys=True)})}"

    @cached_property
    def box(self) -> Box:
        """The volume's box in absolute voxels at the mip."""
        from emdata.boxes import parse_bbox

        raw = self._layers["raw"]
        for name, layer in self._layers.items():
            if layer.resolution != raw.resolution:
                raise ValueError(f"{layer.url}: mip {self.spec['mip']} is {layer.resolution} nm (z, y, x), the raw "
                                 f"layer's is {raw.resolution} nm; layer {name!r} must match it (choose another mip)")
        box = tuple(slice(max(s.start for s in axis), min(s.stop for s in axis))
                    for axis in zip(*(layer.bounds for layer in self._layers.values())))
        if self.spec.get("bbox"):
            wanted = parse_bbox(self.spec["bbox"])
            box = tuple(slice(w.start if w.start is not None else b.start, w.stop if w.stop is not None else b.stop)
                        for w, b in zip(wanted, box))
        if any(s.start >= s.stop for s in box):
            inside = self.spec.get("bbox") or "their bounds"
            raise ValueError(f"{self.spec['raw']}: the layers share no voxels inside {inside} at mip "
                             f"{self.spec['mip']}")
        return box  # type: ignore[return-value]

    @cached_property
    def meta(self) -> dict[str, Any]:
        """An ``emdata`` block describing the layers as a one-level volume."""
        raw = self._layers["raw"]
        shape = tuple(s.stop - s.start for s in self.box)
        res = raw.resolution
        labels = {}
        for name, spec in self.spec["labels"].items():
            layer = self._layers[name]
            data = LabelLayerData(name, np.zeros((1, 1, 1), layer.dtype), spec["kind"], spec.get("classes", []),
                                  instance_of=spec.get("instance_of"))
            mapping, annotates, classes = union_mapping(data)
            labels[name] = {"kind": spec["kind"], "dtype": layer.dtype.name, "description": "", "classes": classes,
                            "instance_of": spec.get("instance_of"), "mapping": mapping, "annotates": annotates,
                            "ignore_value": None, "source": layer.url,
                            "levels": [level_entry("0", shape, layer.dtype, layer.chunks, None, res, (1, 1, 1),
                                                   is_label=True)]}
        name = self.spec.get("volume") or raw.url.rsplit("/", 1)[-1]
        return {"dataset": self.spec["dataset"], "volume": name, "split": self.spec["split"],
                "voxel_size_nm": list(res), "shape": list(shape),
                "raw": {"dtype": raw.dtype.name, "source": raw.url, "mip": self.spec["mip"],
                        "box": [[s.start, s.stop] for s in self.box],
                        "levels": [level_entry("0", shape, raw.dtype, raw.chunks, None, res, (1, 1, 1),
                                               is_label=False)]},
                "labels": labels}

    def _array(self, key: str) -> Any:
        layer = "raw" if "/" not in key else key.split("/")[1]
        if key not in ("0", f"labels/{layer}/0"):
            raise KeyError(f"{self.spec['raw']}: a precomputed volume has one level (level 0, mip "
                           f"{self.spec['mip']}); {key!r} does not exist")
        origin = tuple(s.start for s in self.box)
        shape = tuple(s.stop - s.start for s in self.box)
        return PrecomputedArray(self._layers[layer], origin, shape, self.missing == "ignore")  # type: ignore[arg-type]

    def read_file(self, relpath: str) -> bytes | None:
        """Precomputed layers carry no emdata files (a foreground index is computed from the labels)."""
        return None

    def missing_boxes(self, layer: str, level: int, box: tuple[slice, ...]) -> list[tuple[slice, ...]]:
        """Boxes (volume voxels) of ``layer``'s chunks touching ``box`` that are missing from the server."""
        origin = tuple(s.start for s in self.box)
        clipped = tuple(slice(max(s.start, 0) + o, min(s.stop, n) + o)
                        for s, o, n in zip(box, origin, (b.stop - b.start for b in self.box)))
        if any(s.start >= s.stop for s in clipped):
            return []
        return [tuple(slice(s.start - o, s.stop - o) for s, o in zip(chunk, origin))
                for chunk in self._layers[layer].missing(clipped)]  # type: ignore[arg-type]

    def prefetch(self, reads: list[tuple[str, int, tuple[slice, ...]]]) -> int:
        """Nothing ahead of time: CloudVolume fetches each read's chunks concurrently."""
        return 0
