"""Cutouts from Neuroglancer precomputed layers, read through CloudVolume, in (z, y, x).

Every path is rewritten through :func:`emdata.sources.urls.mirror_url` first (``EMDATA_MIRROR``),
so ``gs://`` buckets are read over plain HTTPS and no credentials are needed. CloudVolume's
(x, y, z, channel) order is converted here, once. Missing chunks are never silently zero: a box
touching one raises :class:`MissingChunksError` unless ``allow_missing=True``, which zero-fills
them and lists them in :attr:`Cutout.missing_chunks`.

Needs the optional extra: ``pip install 'emdata[precomputed]'``.

Example (reads over the network)::

    cut = read_cutout("precomputed://gs://h01-release/data/20210601/4nm_raw", "0:16,0:256,0:256")
    cut.data.shape, cut.voxel_size_nm  # ((16, 256, 256), (33.0, 4.0, 4.0))
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from emdata import config
from emdata.boxes import check_box_size, parse_bbox
from emdata.sources.download import DownloadError, OfflineError
from emdata.sources.urls import mirror_url

Box = tuple[slice, slice, slice]
"""A (z, y, x) box of absolute voxel coordinates (the layer's ``voxel_offset`` included)."""

_PREFIX = "precomputed://"
_SCHEMES = ("gs://", "s3://", "http://", "https://")
_MAX_REDIRECTS = 5
_AXES = "zyx"


class MissingChunksError(DownloadError):
    """A requested box touches chunk files that do not exist on the server.

    ``url`` is the layer path as given; ``missing`` lists the missing chunk boxes ((z, y, x)
    voxel slices at ``mip``).
    """

    def __init__(self, message: str, url: str, mip: int, missing: list[Box]) -> None:
        super().__init__(message)
        self.url, self.mip, self.missing = url, mip, missing


class BoxOutOfBoundsError(ValueError):
    """A requested box is empty or not inside the layer's bounds at that mip."""


@dataclass(frozen=True)
class Scale:
    """One mip of a layer; all tuples are (z, y, x), bounds in absolute voxels."""

    key: str
    voxel_size_nm: tuple[float, float, float]
    bounds: Box
    chunk_size: tuple[int, int, int]
    encoding: str
    sharded: bool


@dataclass(frozen=True)
class LayerInfo:
    """What a precomputed ``info`` file says, in (z, y, x) order; ``scales[mip]`` per mip.

    Example:
        >>> em = Scale("4_4_33", (33.0, 4.0, 4.0), (slice(0, 100), slice(0, 512), slice(0, 512)), (32, 64, 64),
        ...            "jpeg", sharded=True)
        >>> info = LayerInfo("https://example.org/em", np.dtype("uint8"), "image", 1, (em,))
        >>> info.dtype, info.layer_type, info.encoding, info.voxel_sizes_nm
        (dtype('uint8'), 'image', 'jpeg', ((33.0, 4.0, 4.0),))
    """

    source: str
    dtype: np.dtype
    layer_type: str
    num_channels: int
    scales: tuple[Scale, ...]

    @property
    def encoding(self) -> str:
        """Encoding of mip 0 (other mips may differ: see ``scales``)."""
        return self.scales[0].encoding

    @property
    def voxel_sizes_nm(self) -> tuple[tuple[float, float, float], ...]:
        """The mip ladder: (z, y, x) voxel size in nm per mip."""
        return tuple(s.voxel_size_nm for s in self.scales)

    @property
    def bounds(self) -> tuple[Box, ...]:
        """(z, y, x) bounds in absolute voxels per mip."""
        return tuple(s.bounds for s in self.scales)


@dataclass(eq=False)
class Cutout:
    """A box read from a precomputed layer.

    ``data`` is (z, y, x) in the layer's native dtype, or (c, z, y, x) when the layer has more
    than one channel. ``offset_voxels`` is the box's (z, y, x) start at ``mip``; ``source`` is
    the layer URL actually read (after mirror rewriting and ``redirect`` hops).

    Example (reads over the network)::

        cut = read_cutout("gs://bucket/seg", "0:8,0:64,0:64", allow_missing=True)
        cut.data.dtype, cut.missing_chunks  # (dtype('uint64'), [(slice(0, 8), slice(0, 64), slice(0, 64))])
    """

    data: np.ndarray
    voxel_size_nm: tuple[float, float, float]
    offset_voxels: tuple[int, int, int]
    missing_chunks: list[Box]
    source: str
    mip: int


def layer_info(path: str) -> LayerInfo:
    """Read a layer's ``info`` file (one request) and describe it in (z, y, x).

    ``path`` is ``precomputed://<url>`` or a bare ``gs://``, ``s3://``, ``http(s)://`` URL.

    Example (reads over the network)::

        layer_info("precomputed://gs://bucket/em").bounds[0]  # (slice(0, 100), slice(0, 1024), slice(0, 1024))
    """
    return _describe(*_fetch_info(path))


def read_cutout(path: str, box: Box | str, mip: int = 0, *, allow_missing: bool = False) -> Cutout:
    """Read the (z, y, x) ``box`` of a precomputed layer at ``mip``.

    ``box`` is three slices or ``"z0:z1,y0:y1,x0:x1"``, in absolute voxels at that mip; an
    open end (``":"``) means the layer bound; a box over :func:`emdata.boxes.max_box_bytes`
    (``EMDATA_MAX_BOX_GB``) is refused with :class:`~emdata.boxes.BoxTooLargeError` before any
    chunk is requested. Single-channel data comes back (z, y, x),
    multi-channel data (c, z, y, x). A box touching missing chunk files raises
    :class:`MissingChunksError`; with ``allow_missing=True`` those chunks are zeros and listed
    in ``missing_chunks`` (found before the read by one HEAD per chunk file, or the shard indexes).

    Example (reads over the network)::

        cut = read_cutout("precomputed://gs://bucket/em", "10:20,0:512,0:512", mip=1)
        cut.data.shape, cut.offset_voxels  # ((10, 512, 512), (10, 0, 0))
    """
    info, source = _fetch_info(path)
    layer = _describe(info, source)
    if not isinstance(mip, int) or not 0 <= mip < len(layer.scales):
        ladder = ", ".join(f"{i}: {s.voxel_size_nm}" for i, s in enumerate(layer.scales))
        raise ValueError(f"{path}: mip {mip!r} does not exist; the layer has mips {ladder} ((z, y, x) nm)")
    scale = layer.scales[mip]
    box = _parse_box(box, scale.bounds, path, mip)
    check_box_size(path, box, layer.dtype.itemsize * layer.num_channels, what=f"the box at mip {mip}")
    import requests
    from cloudvolume.exceptions import EmptyVolumeException

    # provenance={}: skip the optional provenance file (one request saved)
    cv = _cloudvolume()(source, info=info, provenance={}, progress=False, fill_missing=False)
    missing: list[Box] = _missing_chunks(cv, scale, mip, _chunk_grid(scale, box)) if allow_missing else []
    try:
        data = _download(cv, box, mip, fill_missing=bool(missing))
    except EmptyVolumeException as exc:
        if allow_missing:  # the existence check found the chunk, the read did not: the server changed under us
            raise DownloadError(f"{path}: chunk {exc} at mip {mip} vanished between the existence check and "
                                f"the read (read from {source}); retry") from exc
        chunks = _chunk_grid(scale, box)
        missing = _missing_chunks(cv, scale, mip, chunks)
        if not missing:
            raise DownloadError(f"{path}: reading chunk {exc} at mip {mip} failed but the existence check finds "
                                f"every chunk (read from {source}); the server answers inconsistently, retry") from exc
        where = f"in a shard of {scale.key}" if scale.sharded else f"file {_chunk_name(scale, missing[0])}"
        raise MissingChunksError(
            f"{path}: {len(missing)} of {len(chunks)} chunks missing at mip {mip} (read from {source}); "
            f"first missing chunk {_fmt(missing[0])} ({where}); pass allow_missing=True "
            "to read them as zeros, listed in Cutout.missing_chunks", path, mip, missing) from exc
    except requests.RequestException as exc:
        raise DownloadError(f"{path}: reading {_fmt(box)} at mip {mip} from {source} failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    return Cutout(data, scale.voxel_size_nm, tuple(s.start for s in box), missing, source, mip)


def _cloudvolume() -> Any:
    """The CloudVolume class, imported lazily (it is a heavy optional extra)."""
    try:
        from cloudvolume import CloudVolume
    except ImportError as exc:
        raise ImportError("reading precomputed layers needs cloud-volume: pip install 'emdata[precomputed]'") from exc
    return CloudVolume


def _source(path: str, origin: str) -> str:
    """The HTTP(S) URL to read ``path`` from (mirror applied), without ``precomputed://``."""
    url = path.removeprefix(_PREFIX)
    if not url.startswith(_SCHEMES):
        raise ValueError(f"{origin}: expected precomputed://<url> or a gs://, s3://, http(s):// URL of a "
                         f"precomputed layer, got {path!r}")
    return mirror_url(url).rstrip("/")


def _fetch_info(path: str) -> tuple[dict, str]:
    """The layer's info JSON and the URL it was read from, following ``redirect`` through the mirror.

    Fetched here (one GET per hop) and handed to CloudVolume, which would otherwise follow
    redirects to the upstream host itself, around the mirror.
    """
    source = _source(path, path)
    if config.offline():
        raise OfflineError(f"EMDATA_OFFLINE=1: cannot read the precomputed layer {path} (cutouts are read over "
                           f"the network from {source} and not cached); unset EMDATA_OFFLINE to read it")
    _cloudvolume()
    import requests
    from cloudfiles import CloudFiles

    visited = [source]
    for _ in range(_MAX_REDIRECTS + 1):
        try:
            info = CloudFiles(source, progress=False).get_json("info")
        except (requests.RequestException, ValueError) as exc:
            raise DownloadError(f"{path}: cannot read {source}/info: {type(exc).__name__}: {exc}") from exc
        if not isinstance(info, dict):
            raise DownloadError(f"{path}: no precomputed info file at {source}/info; check the layer path "
                                "(the layer folder holds an 'info' JSON file)")
        target = info.get("redirect")
        if not target or _source(target, f"{source}/info redirect") == source:
            return info, source
        source = _source(target, f"{source}/info redirect")
        if source in visited:
            raise DownloadError(f"{path}: info files redirect in a cycle: {' -> '.join([*visited, source])}")
        visited.append(source)
    raise DownloadError(f"{path}: more than {_MAX_REDIRECTS} info redirects: {' -> '.join(visited)}")


def _describe(info: dict, source: str) -> LayerInfo:
    try:
        scales = tuple(
            Scale(key=s["key"],
                  voxel_size_nm=tuple(float(v) for v in reversed(s["resolution"])),
                  bounds=tuple(slice(int(o), int(o) + int(n))
                               for o, n in zip(reversed(s.get("voxel_offset", (0, 0, 0))), reversed(s["size"]))),
                  chunk_size=tuple(int(c) for c in reversed(s["chunk_sizes"][0])),
                  encoding=s["encoding"], sharded="sharding" in s)
            for s in info["scales"])
        return LayerInfo(source, np.dtype(info["data_type"]), info["type"], int(info["num_channels"]), scales)
    except (KeyError, IndexError, TypeError) as exc:
        raise DownloadError(f"{source}/info is not the info file of a precomputed image or segmentation volume "
                            f"(bad or missing {exc}); check that the path names a volume layer") from exc


def _fmt(box: Box) -> str:
    return ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip(_AXES, box))


def _parse_box(box: Box | str, bounds: Box, path: str, mip: int) -> Box:
    """Validate ``box`` against ``bounds``; open ends become the bounds."""
    expected = "three (z, y, x) slices or 'z0:z1,y0:y1,x0:x1' in voxels"
    if isinstance(box, str):
        try:
            box = parse_bbox(box)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    if not (isinstance(box, tuple | list) and len(box) == 3 and all(isinstance(s, slice) for s in box)):
        raise ValueError(f"{path}: box {box!r} is not {expected}")
    if any(s.step not in (None, 1) for s in box):
        raise ValueError(f"{path}: box {box!r} has a step; cutouts are contiguous (read a mip for coarser data)")
    box = tuple(slice(b.start if s.start is None else s.start, b.stop if s.stop is None else s.stop)
                for s, b in zip(box, bounds))
    if any(not (b.start <= s.start < s.stop <= b.stop) for s, b in zip(box, bounds)):
        raise BoxOutOfBoundsError(f"{path}: box {_fmt(box)} is empty or outside the layer bounds {_fmt(bounds)} "
                                  f"at mip {mip} (absolute voxels, voxel_offset included); choose a box inside them")
    return box


def _chunk_grid(scale: Scale, box: Box) -> list[tuple[Box, tuple[int, int, int]]]:
    """The chunks intersecting ``box``: (chunk box (z, y, x), grid index (x, y, z))."""
    per_axis = []
    for s, b, c in zip(box, scale.bounds, scale.chunk_size):
        first, last = (s.start - b.start) // c, (s.stop - 1 - b.start) // c
        per_axis.append([(k, slice(b.start + k * c, min(b.start + (k + 1) * c, b.stop)))
                         for k in range(first, last + 1)])
    return [((z, y, x), (kx, ky, kz)) for (kz, z), (ky, y), (kx, x) in itertools.product(*per_axis)]


def _chunk_name(scale: Scale, chunk: Box) -> str:
    """The chunk's file name in an unsharded scale (x, y, z order, as on the server)."""
    z, y, x = chunk
    return f"{scale.key}/{x.start}-{x.stop}_{y.start}-{y.stop}_{z.start}-{z.stop}"


def _missing_chunks(cv: Any, scale: Scale, mip: int, chunks: list[tuple[Box, tuple[int, int, int]]]) -> list[Box]:
    """Boxes of the chunks that do not exist: HEAD per chunk file, or the shard indexes when sharded.

    (CloudVolume's own ``exists`` issues a GET per chunk, which downloads every body.)
    """
    if scale.sharded:
        from cloudvolume.datasource.precomputed.common import compressed_morton_code

        grid = [math.ceil((b.stop - b.start) / c) for b, c in zip(reversed(scale.bounds), reversed(scale.chunk_size))]
        codes = [int(c) for c in compressed_morton_code([g for _, g in chunks], grid)]
        found = cv.image.shard_reader(mip).exists(codes, path=scale.key)
        return [box for (box, _), code in zip(chunks, codes) if found.get(code) is None]
    from cloudfiles import CloudFiles

    names = [_chunk_name(scale, box) for box, _ in chunks]
    heads = CloudFiles(cv.meta.cloudpath, progress=False).head(names)
    return [box for (box, _), name in zip(chunks, names) if heads[name] is None]


def _download(cv: Any, box: Box, mip: int, *, fill_missing: bool) -> np.ndarray:
    """One CloudVolume read of ``box``; (x, y, z, c) → (z, y, x) or (c, z, y, x)."""
    from cloudvolume.lib import Bbox

    cv.fill_missing = fill_missing
    cv.mip = mip  # download(bbox, mip=k) alone checks the box against the bounds of cv.mip, not of k
    z, y, x = box
    xyzc = np.asarray(cv.download(Bbox((x.start, y.start, z.start), (x.stop, y.stop, z.stop))))
    czyx = xyzc.transpose(3, 2, 1, 0)
    return np.ascontiguousarray(czyx[0] if czyx.shape[0] == 1 else czyx)
