"""The canonical volume's format, in one place: validation, arrays, level and label metadata,
the ``emdata`` block and the OME attributes.

Both writers use these functions and nothing else to decide what lands on disk:
:func:`emdata.store.writer.write_volume` (whole arrays in memory) and
:class:`emdata.store.sharded.ShardedVolumeWriter` (region by region). So the two write the
same bytes of metadata for the same arrays.

Example:
    >>> entry = level_entry("1", (4, 32, 32), "uint8", (4, 32, 32), None, (30.0, 6.0, 6.0), (2, 2, 2), is_label=False)
    >>> entry["scale"], entry["translation"]
    ([60.0, 12.0, 12.0], [15.0, 3.0, 3.0])
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

from emdata.labels.ontology import ontology
from emdata.store import ome
from emdata.store.publish import SCHEMA

__all__ = ["LABEL_ZSTD_LEVEL", "RAW_COMPRESSORS",
           "REQUIRED_META", "LabelLayerData", "LabelMeaning", "StoreWriteError", "create_label_groups",
           "create_level_array", "emdata_block", "label_entry", "level_entry", "ome_levels", "standard_dtype",
           "union_mapping", "validate_labels", "validate_meta", "validate_voxel_size", "write_metadata"]

REQUIRED_META = ("dataset", "volume", "split")
"""Keys every volume's ``meta`` must hold."""


class StoreWriteError(ValueError):
    """The data handed to the writer cannot form a valid volume, or the disk refused it."""


@dataclass(frozen=True)
class LabelMeaning:
    """What a label layer's values mean, beyond its name, kind and classes (keyword-only fields).

    For instance layers, ``instance_of`` names the union class every non-zero id belongs to;
    offset-coded layers whose ids mean different classes by range give ``value_ranges``
    instead (``{"min", "max", "ontology"}``, inclusive). ``annotates`` lists the union
    classes this layer labels (default: every structure class named; ignore-role classes
    such as ``unannotated`` mark where nothing is known).
    """

    _: KW_ONLY
    instance_of: str | None = None
    annotates: list[str] | None = None
    ignore_value: int | None = None
    description: str = ""
    value_ranges: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LabelLayerData(LabelMeaning):
    """One label layer to store, with its meaning (see :class:`LabelMeaning`).

    ``classes`` are dicts with ``value``, ``name`` and optionally ``ontology`` (a union class
    name) and ``color``.

    Example:
        >>> LabelLayerData("cells", np.zeros((1, 2, 2), "u4"), "instance", instance_of="cell").kind
        'instance'
    """

    name: str
    data: np.ndarray
    kind: str
    classes: list[dict[str, Any]] = field(default_factory=list)


def standard_dtype(dtype: Any) -> np.dtype:
    """The standard, native numpy dtype of ``dtype`` (tifffile's 'Q' uint64 is one zarr refuses).

    Example:
        >>> standard_dtype(">u2").name, standard_dtype(">u2").isnative
        ('uint16', True)
    """
    return np.dtype(np.dtype(dtype).name).newbyteorder("=")


def validate_voxel_size(voxel_size: Sequence[float]) -> None:
    """Refuse anything but three positive nm values (z, y, x).

    Example:
        >>> validate_voxel_size((30.0, 0.0, 6.0))
        Traceback (most recent call last):
        ...
        emdata.store.layout.StoreWriteError: voxel size must be three positive nm values (z, y, x), got (30.0, 0.0, 6.0)
    """
    if len(voxel_size) != 3 or not all(v > 0 for v in voxel_size):
        raise StoreWriteError(f"voxel size must be three positive nm values (z, y, x), got {tuple(voxel_size)}")


def validate_meta(meta: dict[str, Any]) -> None:
    """Refuse a ``meta`` without ``dataset``, ``volume`` or ``split``.

    Example:
        >>> validate_meta({"dataset": "d", "volume": "v"})
        Traceback (most recent call last):
        ...
        emdata.store.layout.StoreWriteError: volume metadata needs 'split'
    """
    for key in REQUIRED_META:
        if key not in meta:
            raise StoreWriteError(f"volume metadata needs {key!r}")


def validate_labels(layers: Iterable[tuple[str, Any, str]]) -> None:
    """Refuse label layers ``(name, dtype, kind)`` with duplicate or odd names, float dtypes or unknown kinds.

    Example:
        >>> validate_labels([("mito", "uint8", "semantic"), ("mito", "uint8", "semantic")])
        Traceback (most recent call last):
        ...
        emdata.store.layout.StoreWriteError: label layer name 'mito' is duplicated or not [A-Za-z0-9_-]
    """
    names: set[str] = set()
    for name, dtype, kind in layers:
        if name in names or not name.replace("_", "").replace("-", "").isalnum():
            raise StoreWriteError(f"label layer name {name!r} is duplicated or not [A-Za-z0-9_-]")
        names.add(name)
        if not np.issubdtype(np.dtype(dtype), np.integer):
            raise StoreWriteError(f"label layer {name!r} must be integer, got {np.dtype(dtype)}")
        if kind not in ("instance", "semantic"):
            raise StoreWriteError(f"label layer {name!r}: kind must be instance or semantic")


def create_label_groups(root: Any, names: Sequence[str]) -> None:
    """Create the ``labels`` group and one group per label layer under ``root`` (nothing without labels)."""
    if names:
        labels_group = root.create_group("labels")
        for name in names:
            labels_group.create_group(name)


RAW_COMPRESSORS: tuple[Any, ...] = ()
"""Raw levels are stored uncompressed. Measured (``benchmarks/loader.py``, results in
``benchmarks/results/loader.md``): EM raw barely compresses (zstd level 1 or 3: 1.12× on 8-bit
EM-like data with noise, lz4: 1.00×) while zstd decodes it at about 0.9 GB/s per core, the bound
of every loader reading from disk; stored plain, a chunk costs a file read and nothing else, for
12 % more disk. Volumes written with zstd before stay readable (zarr reads each array's codecs)."""

LABEL_ZSTD_LEVEL = 3
"""Label levels: zstd level 3 (label chunks compress 30–200×, and decode at over 10 GB/s)."""


def create_level_array(group: Any, path: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int],
                       shards: Sequence[int] | None, *, is_label: bool | None = None) -> Any:
    """Create one pyramid level's array under ``group``: raw uncompressed (:data:`RAW_COMPRESSORS`),
    labels zstd level 3, fill 0, z/y/x dimension names. ``is_label`` defaults to whether the array
    lies under a ``labels`` group (``path`` or ``group``)."""
    import zarr

    if is_label is None:
        where = f"{getattr(group, 'path', '')}/{path}".strip("/")
        is_label = where.startswith("labels/") or "/labels/" in f"/{where}"
    compressors = zarr.codecs.ZstdCodec(level=LABEL_ZSTD_LEVEL) if is_label else RAW_COMPRESSORS
    return group.create_array(path, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks),
                              shards=tuple(shards) if shards else None, compressors=compressors,
                              fill_value=0, dimension_names=list(ome.AXES))


def level_entry(path: str, shape: Sequence[int], dtype: Any, chunks: Sequence[int], shards: Sequence[int] | None,
                voxel_size: Sequence[float], factor: Sequence[int], *, is_label: bool) -> dict[str, Any]:
    """One level's description in the ``emdata`` block (raw levels are shifted to the block centre)."""
    scale = tuple(v * f for v, f in zip(voxel_size, factor))
    translation = None if is_label else tuple(v * (f - 1) / 2 for v, f in zip(voxel_size, factor))
    return {"path": path, "shape": list(shape), "dtype": str(np.dtype(dtype)), "chunks": list(chunks),
            "shards": list(shards) if shards else None, "scale": list(scale),
            "translation": list(translation) if translation else None}


def ome_levels(levels: list[dict[str, Any]]) -> list[tuple[str, tuple[float, ...], tuple[float, ...] | None]]:
    """(path, scale, translation) of each level entry, as :func:`emdata.store.ome.multiscales` takes them."""
    return [(lv["path"], tuple(lv["scale"]), tuple(lv["translation"]) if lv["translation"] else None)
            for lv in levels]


def union_mapping(layer: LabelLayerData) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """(native value → union class, annotated union classes, classes with ontology ids) of ``layer``.

    Example:
        >>> layer = LabelLayerData("m", np.zeros((1, 1, 1), "u1"), "semantic",
        ...                        [{"value": 1, "name": "mito", "ontology": "mitochondria"}])
        >>> union_mapping(layer)[1]
        ['mitochondria']
    """
    onto = ontology()
    mapping: dict[str, Any] = {}
    classes = []
    for c in layer.classes:
        c = dict(c)
        if c.get("ontology"):
            cls = onto.resolve(c["ontology"])
            c["ontology"], c["ontology_id"] = cls.name, cls.id
            mapping[str(c["value"])] = {"name": cls.name, "id": cls.id}
        classes.append(c)
    if layer.instance_of:
        cls = onto.resolve(layer.instance_of)
        mapping["nonzero"] = {"name": cls.name, "id": cls.id}
    if layer.value_ranges:
        ranges = []
        for r in layer.value_ranges:
            cls = onto.resolve(r["ontology"])
            ranges.append({"min": int(r["min"]), "max": int(r["max"]), "name": cls.name, "id": cls.id})
        mapping["ranges"] = ranges
    annotates = layer.annotates
    if annotates is None:
        named = [v for v in mapping.values() if isinstance(v, dict)] + mapping.get("ranges", [])
        annotates = sorted({v["name"] for v in named if onto.resolve(v["name"]).role != "ignore"},
                           key=lambda n: onto.resolve(n).id)
    else:
        annotates = [onto.resolve(a).name for a in annotates]
    return mapping, annotates, classes


def label_entry(layer: LabelLayerData, dtype: Any,
                levels: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the layer group's ``ome`` attribute, the layer's entry in the ``emdata`` block's ``labels``)."""
    mapping, annotates, classes = union_mapping(layer)
    attrs = ome.multiscales(layer.name, ome_levels(levels), method="nearest")
    attrs["image-label"] = ome.image_label(classes)
    entry = {
        "kind": layer.kind, "dtype": standard_dtype(dtype).name, "description": layer.description,
        "instance_of": layer.instance_of, "classes": classes, "ontology_version": ontology().version,
        "mapping": mapping, "annotates": annotates, "ignore_value": layer.ignore_value, "levels": levels,
    }
    return attrs, entry


def emdata_block(meta: dict[str, Any], voxel_size: Sequence[float], shape: Sequence[int], raw_dtype: Any,
                 raw_levels: list[dict[str, Any]], intensity: dict[str, Any],
                 labels: dict[str, Any]) -> dict[str, Any]:
    """The root group's ``emdata`` attribute (``created`` is now)."""
    return {"schema": SCHEMA, **meta, "voxel_size_nm": list(voxel_size), "shape": list(shape),
            "raw": {"dtype": standard_dtype(raw_dtype).name, "levels": raw_levels, "intensity": intensity},
            "labels": labels, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_metadata(root: Any, meta: dict[str, Any], voxel_size: Sequence[float], shape: Sequence[int],
                   raw_dtype: Any, raw_levels: list[dict[str, Any]], intensity: dict[str, Any],
                   labels: Sequence[tuple[LabelLayerData, Any, list[dict[str, Any]]]]) -> None:
    """Write every group attribute of a volume whose arrays are written: the ``labels`` group's
    list, each layer's OME multiscales and ``image-label``, the root's OME multiscales and
    ``emdata`` block. ``labels`` are (layer, dtype, level entries)."""
    label_meta: dict[str, Any] = {}
    if labels:
        root["labels"].attrs["ome"] = {"version": ome.OME_VERSION, "labels": [layer.name for layer, _, _ in labels]}
    for layer, dtype, levels in labels:
        root[f"labels/{layer.name}"].attrs["ome"], label_meta[layer.name] = label_entry(layer, dtype, levels)
    block = emdata_block(meta, voxel_size, shape, raw_dtype, raw_levels, intensity, label_meta)
    root.attrs.update({"ome": ome.multiscales(meta["volume"], ome_levels(raw_levels), method="mean"),
                       "emdata": block})


def plain_chunk_decoder(array: Any) -> Any:
    """``decode(data, where, advice, out=None) -> ndarray`` for a zarr v3 ``array`` whose codecs
    are plain (bytes, then zstd without checksum, blosc or nothing; not sharded): the full decoded
    chunk, read without zarr-python's per-call overhead. With ``out`` (a writable uint8 buffer of
    at least the chunk's bytes) a compressed chunk is decoded into it, so a caller reusing one
    buffer allocates nothing per chunk; the result is then a view of ``out``. A chunk of the wrong
    size raises ``OSError`` naming ``where`` and ending with ``advice``. ``decode.compressed``
    says whether the chunk files are compressed (False: a chunk file is the chunk's bytes, C order,
    in ``decode.dtype``). None for any other array (read it through zarr).

    Example:
        >>> import zarr
        >>> arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(4, 4), chunks=(2, 2), dtype="u1",
        ...                         compressors=None)
        >>> decode = plain_chunk_decoder(arr)
        >>> decode(bytes(range(4)), "c/0/0", "").tolist(), decode.compressed
        ([[0, 1], [2, 3]], False)
    """
    try:
        from zarr.codecs import BloscCodec, BytesCodec, ZstdCodec

        meta = array.metadata
        codecs = list(meta.codecs) if meta.zarr_format == 3 else []
    except (AttributeError, ImportError, TypeError):
        return None
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None
    decompress: Any = None
    content_size: Any = None
    if len(codecs) == 2:
        if isinstance(codecs[1], ZstdCodec) and not codecs[1].checksum:
            from numcodecs import Zstd

            zstd = Zstd()

            def decompress(data: Any, out: Any = None) -> Any:
                return zstd.decode(data, out=out)

            content_size = _zstd_content_size
        elif isinstance(codecs[1], BloscCodec):
            from numcodecs import blosc

            decompress = blosc.decompress  # the blosc header says how; thread-safe outside the main thread
            content_size = _blosc_content_size
        else:
            return None
    dtype = np.dtype(array.dtype)
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if getattr(codecs[0].endian, "value", "little") == "big" else "<")
    chunks = tuple(int(c) for c in array.chunks)
    nbytes = int(np.prod(chunks)) * dtype.itemsize

    def decode(data: Any, where: str, advice: str, out: np.ndarray | None = None) -> np.ndarray:
        size = content_size(data) if decompress is not None and out is not None else None
        if size is not None:  # the header says the size: checked first, a smaller chunk would leave ``out`` stale
            if size != nbytes:
                raise OSError(f"{where}: chunk decodes to {size} bytes, expected {nbytes} for {chunks} {dtype}; "
                              f"{advice}")
            raw = decompress(data, out[:nbytes])  # type: ignore[index]
        else:
            raw = decompress(data) if decompress is not None else data
        if len(memoryview(raw).cast("B")) != nbytes:
            raise OSError(f"{where}: chunk decodes to {len(memoryview(raw).cast('B'))} bytes, expected {nbytes} "
                          f"for {chunks} {dtype}; {advice}")
        return np.frombuffer(raw, dtype).reshape(chunks)

    decode.compressed = decompress is not None  # type: ignore[attr-defined]
    decode.dtype = dtype  # type: ignore[attr-defined]
    return decode


def _zstd_content_size(data: Any) -> int | None:
    """The decoded size a zstd frame's header declares (RFC 8878, 3.1.1.1), None when it declares none."""
    head = bytes(memoryview(data)[:18])
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd":
        return None
    flags = head[4]
    single = (flags >> 5) & 1
    fcs_size = (0 if not single else 1, 2, 4, 8)[flags >> 6]
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[flags & 3]
    if fcs_size == 0 or len(head) < at + fcs_size:
        return None
    size = int.from_bytes(head[at:at + fcs_size], "little")
    return size + 256 if fcs_size == 2 else size


def _blosc_content_size(data: Any) -> int | None:
    """The decoded size a blosc header declares (bytes 4 to 8, little endian)."""
    head = bytes(memoryview(data)[:8])
    return int.from_bytes(head[4:8], "little") if len(head) == 8 else None

