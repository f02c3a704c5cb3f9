"""What is in a prepared volume, in numbers: ``emdata stats``.

:func:`volume_stats` returns one JSON-able dict per volume:

- ``shape``, ``voxel_size_nm``, ``extent_um`` (shape × voxel size), ``nbytes`` (level 0, raw and
  labels uncompressed) and the pyramid ``levels``;
- ``raw``: the intensity statistics recorded at prepare time (``min``, ``max``,
  ``percentiles``; estimated from a stored level for volumes without them), plus
  ``saturation`` (the share of voxels at the dtype's lowest and highest value, the observed
  extremes for float data) and a ``histogram`` of ``HISTOGRAM_BINS`` bins, both counted on
  ``raw.level``: level 0 when it holds at most ``RAW_LEVEL_VOXELS`` voxels, else the finest
  level that does (coarser levels are block means: the tails are a little narrower there);
- ``labels[<layer>]``: ``values`` (voxels and share of every value of the class table and every
  value found, semantic layers), ``ontology_voxels`` (voxels per union-ontology class, through
  the layer's mapping), ``annotated_fraction`` (voxels whose class is known: not the layer's
  ``ignore_value`` nor an ``unannotated``-role class), ``foreground_fraction`` (annotated and not
  0), ``chunks`` (level-0 chunks holding any foreground), ``instances`` (instance layers: count
  and size distribution in voxels, instances per ontology class) and ``ontology``
  (``present``/``absent``: annotated classes with and without voxels);
- ``ontology``: the same over all layers, plus ``unannotated``: structure classes of the
  ontology no layer annotates (they may be there; nobody said).

Semantic layers are answered from the foreground index stored with the volume (no decode);
instance layers are decoded where that index says they hold foreground. Results are cached
under ``<EMDATA_HOME>/cache/stats/`` keyed by the published version, so a second call is a
file read; a writer may store them in the volume's ``emdata.stats`` at prepare time with
:func:`record_stats` (then nothing is computed at all).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> cells = np.zeros((4, 32, 32), "u4"); cells[:, :8, :8] = 7; cells[:2, 20:, 20:] = 9
    >>> raw = np.full((4, 32, 32), 100, "u1"); raw[0, 0, :4] = 255
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", raw, (30, 6, 6),
    ...                     labels=[LabelLayerData("cells", cells, "instance", instance_of="cell")],
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> s = volume_stats(path)
    >>> s["extent_um"], s["raw"]["saturation"]["high_fraction"]
    ([0.12, 0.192, 0.192], 0.0009765625)
    >>> layer = s["labels"]["cells"]
    >>> layer["instances"]["count"], layer["instances"]["size_voxels"]["max"], layer["foreground_fraction"]
    (2, 288, 0.1328125)
    >>> s["ontology"]["present"], s["source"]
    (['cell'], 'computed')
    >>> volume_stats(path)["source"]
    'cache'
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from emdata.atomic import write_atomic
from emdata.config import emdata_home
from emdata.labels.ontology import ontology
from emdata.store.fgindex import foreground_index
from emdata.store.intensity import IntensityHistogram, estimate_intensity
from emdata.store.publish import generation

__all__ = ["HISTOGRAM_BINS", "RAW_LEVEL_VOXELS", "STATS_VERSION", "cache_dir", "compute_stats", "format_stats",
           "is_ignore", "record_stats", "volume_stats"]

STATS_VERSION = 1
RAW_LEVEL_VOXELS = 1 << 24  # raw saturation and histogram: the finest level with at most this many voxels
HISTOGRAM_BINS = 32
READ_VOXELS = 1 << 23  # voxels per read of raw
LABEL_READ_VOXELS = 1 << 20  # voxels per read of labels (a few chunks: small reads stay in the CPU cache)
log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


def cache_dir() -> Path:
    """Where statistics of published volumes are cached.

    Example:
        >>> cache_dir().parts[-2:]
        ('cache', 'stats')
    """
    return emdata_home() / "cache" / "stats"


def _open(volume: Any) -> Any:
    if isinstance(volume, (str, Path)):
        from emdata.store.volume import open_volume

        return open_volume(volume)
    return volume


def volume_stats(volume: Any, *, cache: bool = True) -> dict[str, Any]:
    """Statistics of ``volume`` (a :class:`~emdata.store.volume.Volume` or its path); see the module doc.

    Taken from the volume's ``emdata.stats`` block when a writer stored one, else from the cache
    (``cache=True``), else computed (and cached). ``source`` says which: ``"volume"``,
    ``"cache"`` or ``"computed"``.
    """
    vol = _open(volume)
    stored = vol.meta.get("stats")
    if isinstance(stored, dict) and stored.get("version") == STATS_VERSION:
        return {**stored, "path": str(vol.path), "source": "volume"}
    key = _cache_key(vol)
    target = cache_dir() / f"{key}.json" if key and cache else None
    if target is not None and target.is_file():
        try:
            doc = json.loads(target.read_text(encoding="utf-8"))
            if doc.get("version") == STATS_VERSION:
                return {**doc, "path": str(vol.path), "source": "cache"}
        except (OSError, ValueError):
            log.debug("%s: unreadable cached statistics, recomputing", target)
    doc = compute_stats(vol)
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, json.dumps(doc))
        except OSError as exc:  # a read-only home: computed, not kept
            log.info("statistics of %s not cached (%s)", vol.path, exc)
    return {**doc, "path": str(vol.path), "source": "computed"}


def _cache_key(vol: Any) -> str | None:
    """The published version's id (its folder and completion marker), None when it has none."""
    folder = getattr(vol, "folder", None)
    gen = generation(folder) if folder is not None else None
    if gen is None:
        return None
    text = f"{STATS_VERSION}|{Path(folder).resolve()}|{gen}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class _Folder:
    """A volume folder being written (no completion marker yet), read like a Volume."""

    def __init__(self, folder: Path) -> None:
        self.path = self.folder = Path(folder)

    @cached_property
    def root(self) -> Any:
        import zarr

        return zarr.open_group(str(self.path), mode="r")

    @cached_property
    def meta(self) -> dict[str, Any]:
        return dict(self.root.attrs["emdata"])

    def level(self, i: int) -> Any:
        return self.root[str(i)]

    def label_level(self, name: str, i: int) -> Any:
        return self.root[f"labels/{name}/{i}"]

    @cached_property
    def labels(self) -> dict[str, Any]:
        return {name: self.label_level(name, 0) for name in self.meta["labels"]}


def record_stats(folder: Path, raw_histogram: IntensityHistogram | None = None) -> dict[str, Any]:
    """For writers: compute the statistics of the volume being written in ``folder`` (arrays,
    metadata and foreground indices written, completion marker not yet) and store them in its
    ``emdata.stats`` attribute, where :func:`volume_stats` finds them. Returns them.

    A writer that accumulated the level-0 raw histogram (the one behind ``emdata.raw.intensity``)
    passes it as ``raw_histogram``: saturation and histogram are then exact at level 0, and raw is
    not read again.

    Example:
        >>> import tempfile, zarr
        >>> from emdata.store.writer import write_volume
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((2, 8, 8), "u1"), (30, 6, 6),
        ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> record_stats(path.resolve())["shape"]  # a published volume here, for the example only
        [2, 8, 8]
        >>> volume_stats(path)["source"]
        'volume'
    """
    import zarr

    doc = compute_stats(_Folder(folder), raw_histogram=raw_histogram)
    root = zarr.open_group(str(folder), mode="r+")
    root.attrs["emdata"] = {**root.attrs["emdata"], "stats": doc}
    return doc


def compute_stats(volume: Any, raw_histogram: IntensityHistogram | None = None) -> dict[str, Any]:
    """The statistics of ``volume`` (a Volume, or anything with its ``meta``, ``path``,
    ``level``, ``label_level`` and ``labels``), computed now; see the module doc and
    :func:`record_stats` for ``raw_histogram``."""
    vol = _open(volume)
    meta = vol.meta
    shape = [int(n) for n in meta["shape"]]
    voxel = [float(v) for v in meta["voxel_size_nm"]]
    raw_levels = meta["raw"]["levels"]
    nbytes = math.prod(shape) * np.dtype(meta["raw"]["dtype"]).itemsize
    nbytes += sum(math.prod(shape) * np.dtype(layer["dtype"]).itemsize for layer in meta["labels"].values())
    labels = {name: _layer_stats(vol, name, layer) for name, layer in meta["labels"].items()}
    doc = {
        "version": STATS_VERSION, "dataset": meta["dataset"], "volume": meta["volume"], "split": meta["split"],
        "shape": shape, "voxel_size_nm": voxel, "voxel_size_verified": meta.get("voxel_size_verified"),
        "extent_um": [n * v / 1000 for n, v in zip(shape, voxel)], "voxels": math.prod(shape),
        "nbytes": nbytes,
        "levels": [{"level": i, "shape": lv["shape"], "voxel_size_nm": lv["scale"]} for i, lv in enumerate(raw_levels)],
        "raw": _raw_stats(vol, meta, raw_histogram),
        "labels": labels,
        "ontology": _volume_ontology(meta["labels"], labels),
    }
    return json.loads(json.dumps(doc))  # plain JSON types: the same whether computed, cached or stored


def _boxes(shape: tuple[int, ...], block: tuple[int, ...], max_voxels: int = READ_VOXELS) -> Iterator[Box]:
    """Boxes tiling ``shape``, aligned to ``block``, of at most ``max_voxels`` voxels (at least one block)."""
    step = list(block)
    for axis in (2, 1, 0):  # grow along x, then y, then z, while the box stays small enough
        while step[axis] < shape[axis] and math.prod(step) * 2 <= max_voxels:
            step[axis] = min(step[axis] * 2, -(-shape[axis] // block[axis]) * block[axis])
    starts = [range(0, n, s) for n, s in zip(shape, step)]
    for z, y, x in itertools.product(*starts):
        yield (slice(z, min(z + step[0], shape[0])), slice(y, min(y + step[1], shape[1])),
               slice(x, min(x + step[2], shape[2])))


def _raw_stats(vol: Any, meta: dict[str, Any], given: IntensityHistogram | None = None) -> dict[str, Any]:
    raw = meta["raw"]
    dtype = np.dtype(raw["dtype"])
    n_levels = len(raw["levels"])
    intensity = raw.get("intensity") or estimate_intensity([vol.level(i) for i in range(n_levels)])
    level = next((i for i, lv in enumerate(raw["levels"]) if math.prod(lv["shape"]) <= RAW_LEVEL_VOXELS),
                 n_levels - 1)
    exact = dtype.kind in "ui" and dtype.itemsize <= 2
    reuse = given is not None and given.counts is not None and given.dtype == dtype  # the writer's, level 0
    if reuse:
        level = 0
    if dtype.kind in "ui":
        low, high = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    else:
        low, high = float(intensity["min"]), float(intensity["max"])
    hist = given if reuse else IntensityHistogram(dtype) if exact else None
    lo_edge, hi_edge = float(intensity["min"]), float(intensity["max"])
    edges = np.linspace(lo_edge, hi_edge if hi_edge > lo_edge else lo_edge + 1, HISTOGRAM_BINS + 1)
    binned = np.zeros(HISTOGRAM_BINS, np.int64)
    n_low = n_high = total = 0
    chunks = tuple(raw["levels"][level]["chunks"])
    array = vol.level(level)
    for box in [] if reuse else _boxes(tuple(array.shape), chunks):
        data = np.asarray(array[box])
        total += data.size
        if hist is not None:
            hist.add(data)
        else:
            n_low += int(np.count_nonzero(data == low))
            n_high += int(np.count_nonzero(data == high))
            binned += np.histogram(data, bins=edges)[0]
    if hist is not None and hist.counts is not None:
        counts = hist.counts
        total = int(counts.sum())
        n_low, n_high = int(counts[low - hist.offset]), int(counts[high - hist.offset])
        values = np.arange(counts.size) + hist.offset
        inside = (values >= edges[0]) & (values <= edges[-1])
        binned = np.histogram(values[inside], bins=edges, weights=counts[inside])[0].astype(np.int64)
    return {
        "dtype": dtype.name, "min": intensity["min"], "max": intensity["max"],
        "percentiles": intensity["percentiles"], "method": intensity["method"],
        "level": level,
        "saturation": {"low_value": low, "low_fraction": n_low / total if total else 0.0,
                       "high_value": high, "high_fraction": n_high / total if total else 0.0},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in binned]},
    }


def _class_of(mapping: dict[str, Any], value: int) -> str | None:
    """The union class of a native ``value`` through a layer's mapping (None when it maps nowhere)."""
    if str(value) in mapping:
        return str(mapping[str(value)]["name"])
    for r in mapping.get("ranges", []):
        if r["min"] <= value <= r["max"]:
            return str(r["name"])
    if value != 0 and "nonzero" in mapping:
        return str(mapping["nonzero"]["name"])
    return None


def is_ignore(layer: dict[str, Any], value: int) -> bool:
    """Whether voxels of ``value`` are of unknown class (the ignore value, or an ignore-role class)."""
    if layer.get("ignore_value") is not None and value == int(layer["ignore_value"]):
        return True
    cls = _class_of(layer["mapping"], value)
    return cls is not None and ontology().resolve(cls).role == "ignore"


def _summary(sizes: np.ndarray) -> dict[str, float]:
    if not sizes.size:
        return {}
    p5, median, p95 = np.percentile(sizes, (5, 50, 95))
    return {"min": int(sizes.min()), "p5": float(p5), "median": float(median), "mean": float(sizes.mean()),
            "p95": float(p95), "max": int(sizes.max())}


def _runs(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, voxel counts) of ``data``, counted over runs along x (labels are runs:
    far fewer than voxels, so this is much faster than sorting every voxel)."""
    flat = data.reshape(-1)
    if not flat.size:
        return flat[:0], np.zeros(0, np.int64)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], starts))
    lengths = np.diff(np.append(starts, flat.size))
    values, inverse = np.unique(flat[starts], return_inverse=True)
    return values, np.bincount(inverse, weights=lengths, minlength=values.size).astype(np.int64)


def _block_sums(mask: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """Per-block sums of a block-aligned boolean box (trailing blocks may be partial)."""
    out = mask.astype(np.int64)
    for axis, b in enumerate(block):
        out = np.add.reduceat(out, np.arange(0, mask.shape[axis], b), axis=axis)
    return out


def _layer_stats(vol: Any, name: str, layer: dict[str, Any]) -> dict[str, Any]:
    index = foreground_index(vol, name)
    total = int(math.prod(int(n) for n in index.shape))
    mapping = layer["mapping"]
    table = {int(c["value"]): c for c in layer.get("classes", [])}
    block = tuple(int(b) for b in index.block_shape)
    if layer["kind"] == "semantic":  # the index holds every value's count per block: no decode
        values = [int(v) for v in index.values]
        counts = index.counts.reshape(-1, len(values)).sum(axis=0) if values else np.zeros(0, np.int64)
        found = dict(zip(values, (int(c) for c in counts)))
        fg_mask = np.array([v != 0 and not is_ignore(layer, v) for v in values], bool)
        per_block = index.counts[..., fg_mask].sum(axis=-1) if values else np.zeros(index.counts.shape[:3])
        instances = None
    else:
        found, per_block, instances = _decode_instances(vol, name, layer, index)
    value_rows = []
    for value in sorted(set(table) | (set(found) if layer["kind"] == "semantic" else set(found) & set(table))):
        n = found.get(value, 0)
        value_rows.append({"value": value, "name": table[value]["name"] if value in table else None,
                           "ontology": _class_of(mapping, value), "voxels": n, "fraction": n / total})
    onto_voxels: dict[str, int] = {}
    ignored = 0
    for value, n in found.items():
        if is_ignore(layer, value):
            ignored += n
        cls = _class_of(mapping, value)
        if cls is not None and n:
            onto_voxels[cls] = onto_voxels.get(cls, 0) + n
    foreground = int(per_block.sum())
    with_fg = int(np.count_nonzero(per_block))
    annotates = list(layer.get("annotates", []))
    out: dict[str, Any] = {
        "kind": layer["kind"], "dtype": layer["dtype"], "voxels": total,
        "values": value_rows,
        "ontology_voxels": dict(sorted(onto_voxels.items(), key=lambda kv: ontology().resolve(kv[0]).id)),
        "annotated_voxels": total - ignored, "annotated_fraction": (total - ignored) / total if total else 0.0,
        "foreground_voxels": foreground, "foreground_fraction": foreground / total if total else 0.0,
        "chunks": {"shape": list(block), "total": int(per_block.size), "with_foreground": with_fg,
                   "fraction": with_fg / per_block.size if per_block.size else 0.0},
        "ontology": {"present": [c for c in annotates if onto_voxels.get(c, 0) > 0],
                     "absent": [c for c in annotates if onto_voxels.get(c, 0) == 0]},
    }
    if instances is not None:
        out["instances"] = instances
    return out


def _decode_instances(vol: Any, name: str, layer: dict[str, Any],
                      index: Any) -> tuple[dict[int, int], np.ndarray, dict[str, Any]]:
    """Decode an instance layer where its index says it holds foreground: (voxels per value,
    foreground voxels per index block, instance summary)."""
    array = vol.labels[name]
    block = tuple(index.block_shape)
    fg_blocks = index.foreground_counts()
    ignore = layer.get("ignore_value")
    per_block = fg_blocks.astype(np.int64).copy()
    found_values, found_counts = [], []
    for box in _boxes(tuple(array.shape), block, LABEL_READ_VOXELS):
        bbox = tuple(slice(s.start // b, -(-s.stop // b)) for s, b in zip(box, block))
        if not fg_blocks[bbox].any():
            continue
        data = np.asarray(array[box])
        values, counts = _runs(data)
        found_values.append(values)
        found_counts.append(counts)
        if ignore is not None and np.any(values == ignore):
            per_block[bbox] -= _block_sums(data == data.dtype.type(ignore), block)
    if found_values:
        values, inverse = np.unique(np.concatenate(found_values), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(found_counts), minlength=values.size).astype(np.int64)
    else:
        values, counts = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    keep = values != 0
    if ignore is not None:
        keep &= values != ignore
    found = {int(v): int(c) for v, c in zip(values[keep], counts[keep])}
    background = int(math.prod(index.shape)) - int(counts[values != 0].sum())
    if background:
        found[0] = background
    ids, sizes = values[keep], counts[keep]
    by_class: dict[str, int] = {}
    for r in layer["mapping"].get("ranges", []):
        inside = (ids >= r["min"]) & (ids <= r["max"])
        by_class[r["name"]] = by_class.get(r["name"], 0) + int(np.count_nonzero(inside))
    if "nonzero" in layer["mapping"]:
        by_class[layer["mapping"]["nonzero"]["name"]] = int(ids.size)
    if ignore is not None and np.any(values == ignore):
        found[int(ignore)] = int(counts[values == ignore][0])
    summary = {"count": int(ids.size), "size_voxels": _summary(sizes), "by_class": by_class}
    return found, per_block, summary


def _volume_ontology(meta_labels: dict[str, Any], labels: dict[str, Any]) -> dict[str, list[str]]:
    onto = ontology()
    annotated = {c for layer in meta_labels.values() for c in layer.get("annotates", [])}
    present = {c for s in labels.values() for c, n in s["ontology_voxels"].items() if n > 0}

    def by_id(names: set[str]) -> list[str]:
        return sorted(names, key=lambda n: onto.resolve(n).id)

    structure = {c.name for c in onto.classes if c.role != "ignore"}
    return {"present": by_id(annotated & present), "absent": by_id(annotated - present),
            "unannotated": by_id(structure - annotated)}


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def format_stats(stats: dict[str, Any]) -> str:
    """The statistics as a few lines of text (what ``emdata stats`` prints without ``--json``).

    Example:
        >>> import tempfile
        >>> from emdata.store.writer import write_volume
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((2, 8, 8), "u1"), (30, 6, 6),
        ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> print(format_stats(volume_stats(path)).splitlines()[1])
        shape 2×8×8 voxels at 30×6×6 nm (z×y×x) = 0.06×0.048×0.048 µm, 128 B uncompressed
    """
    s = stats
    raw = s["raw"]
    sat = raw["saturation"]
    pct = ", ".join(f"p{q} {v}" for q, v in raw["percentiles"].items())
    lines = [
        f"{s['dataset']}/{s['volume']} (split {s['split']}) {s.get('path', '')}",
        f"shape {'×'.join(map(str, s['shape']))} voxels at {'×'.join(f'{v:g}' for v in s['voxel_size_nm'])} nm "
        f"(z×y×x) = {'×'.join(f'{v:g}' for v in s['extent_um'])} µm, {_bytes(s['nbytes'])} uncompressed",
        f"raw {raw['dtype']}: min {raw['min']}, {pct}, max {raw['max']} ({raw['method']}); "
        f"saturated {_pct(sat['low_fraction'])} at {sat['low_value']}, {_pct(sat['high_fraction'])} at "
        f"{sat['high_value']} (level {raw['level']})",
    ]
    for name, layer in s["labels"].items():
        ch = layer["chunks"]
        lines.append(f"labels {name} ({layer['kind']}, {layer['dtype']}): "
                     f"annotated {_pct(layer['annotated_fraction'])}, "
                     f"foreground {_pct(layer['foreground_fraction'])}, chunks with foreground "
                     f"{ch['with_foreground']}/{ch['total']}")
        for row in layer["values"]:
            label = f"{row['value']} {row['name'] or '(not in the class table)'}"
            lines.append(f"  {label}: {row['voxels']} voxels ({_pct(row['fraction'])})")
        inst = layer.get("instances")
        if inst is not None:
            size = inst["size_voxels"]
            spread = (f"; sizes min {size['min']}, median {size['median']:g}, mean {size['mean']:.4g}, "
                      f"max {size['max']} voxels" if size else "")
            lines.append(f"  {inst['count']} instances{spread}")
        if layer["ontology"]["absent"]:
            lines.append(f"  annotated but absent: {', '.join(layer['ontology']['absent'])}")
    onto = s["ontology"]
    lines.append(f"ontology: present {', '.join(onto['present']) or '-'}; absent {', '.join(onto['absent']) or '-'}; "
                 f"{len(onto['unannotated'])} classes unannotated")
    return "\n".join(lines)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n}"
