"""Boxes of remote zarr v2 arrays over plain HTTP: only the chunk files a box touches are fetched.

Why not zarr-python's own HTTP store: it needs fsspec's HTTP backend (aiohttp, not an emdata
dependency), bypasses ``EMDATA_MIRROR`` rewriting, and reads a missing chunk as ``fill_value``
without saying so. Here every URL goes through :func:`emdata.sources.urls.mirror_url`, chunk
files are fetched with the retrying GET of :mod:`emdata.sources.http` (a few threads at once,
under the caller's settings), decoded with numcodecs (the codec library zarr v2 arrays name in
``.zarray``), and a chunk the server does not have (``404``) is filled with the array's ``fill_value`` **and listed** in
:attr:`Box.missing`, so the caller decides whether that is acceptable.

Example:
    >>> meta = {"shape": [4, 6], "chunks": [2, 4], "dtype": "|u1", "fill_value": 0, "order": "C",
    ...         "compressor": None, "filters": None, "zarr_format": 2}
    >>> arr = ArrayMeta.from_zarray("https://example.org/a", meta)
    >>> arr.chunk_keys((slice(1, 3), slice(3, 6)))
    ['0.0', '0.1', '1.0', '1.1']
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emdata import config
from emdata.sources.errors import DownloadError, OfflineError
from emdata.sources.http import get_with_retries
from emdata.sources.urls import mirror_url

MAX_WORKERS = 8
"""Chunk files fetched at once."""


def get_bytes(url: str, *, missing_ok: bool = False) -> bytes | None:
    """GET one object (upstream ``url``, mirror applied); None for a missing one when ``missing_ok``."""
    if config.offline():
        raise OfflineError(f"EMDATA_OFFLINE=1: cannot read {url} (remote zarr arrays are read over the network, "
                           "not cached); unset EMDATA_OFFLINE")
    try:
        return get_with_retries(mirror_url(url), missing_ok=missing_ok)
    except DownloadError as exc:
        raise DownloadError(f"reading {url} failed: {exc}") from exc


def get_json(url: str, *, missing_ok: bool = False) -> dict[str, Any] | None:
    """A JSON object (``.zarray``, ``.zattrs``) or None when missing and ``missing_ok``."""
    body = get_bytes(url, missing_ok=missing_ok)
    if body is None:
        return None
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise DownloadError(f"{url} is not JSON ({exc}); check the array or group path") from exc
    if not isinstance(doc, dict):
        raise DownloadError(f"{url} holds {type(doc).__name__}, expected a JSON object")
    return doc


@dataclass(frozen=True)
class ArrayMeta:
    """What a zarr v2 ``.zarray`` says about the array at ``url``."""

    url: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    order: str
    compressor: dict[str, Any] | None
    filters: tuple[dict[str, Any], ...]
    separator: str

    @classmethod
    def from_zarray(cls, url: str, meta: dict[str, Any]) -> ArrayMeta:
        """Parse a ``.zarray`` document (refusing anything that is not zarr v2)."""
        if meta.get("zarr_format") != 2:
            raise DownloadError(f"{url}/.zarray: zarr_format {meta.get('zarr_format')!r}, expected 2")
        try:
            return cls(url=url.rstrip("/"), shape=tuple(int(n) for n in meta["shape"]),
                       chunks=tuple(int(n) for n in meta["chunks"]), dtype=np.dtype(meta["dtype"]),
                       fill_value=meta.get("fill_value"), order=meta.get("order", "C"),
                       compressor=meta.get("compressor"), filters=tuple(meta.get("filters") or ()),
                       separator=meta.get("dimension_separator", "."))
        except (KeyError, TypeError, ValueError) as exc:
            raise DownloadError(f"{url}/.zarray is not a zarr v2 array description (bad or missing {exc})") from exc

    def chunk_grid(self, box: tuple[slice, ...]) -> list[tuple[int, ...]]:
        """Grid indices of the chunks that ``box`` (array voxels) touches."""
        ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, self.chunks)]
        return list(itertools.product(*ranges))

    def chunk_keys(self, box: tuple[slice, ...]) -> list[str]:
        """Keys of the chunk files ``box`` touches, as named on the server."""
        return [self.separator.join(map(str, g)) for g in self.chunk_grid(box)]

    def decode(self, key: str, body: bytes) -> np.ndarray:
        """One stored chunk as an array of ``chunks`` shape."""
        from numcodecs import get_codec

        data: Any = body
        try:
            if self.compressor is not None:
                data = get_codec(dict(self.compressor)).decode(data)
            for spec in reversed(self.filters):
                data = get_codec(dict(spec)).decode(data)
            flat = np.frombuffer(memoryview(data), dtype=self.dtype) if not isinstance(data, np.ndarray) else data
            return flat.reshape(self.chunks, order=self.order)  # type: ignore[call-overload]
        except (ValueError, TypeError, RuntimeError) as exc:
            raise DownloadError(f"{self.url}/{key}: cannot decode the chunk with compressor {self.compressor} "
                                f"and filters {list(self.filters)} ({exc})") from exc

    def fill(self) -> Any:
        return 0 if self.fill_value is None else self.fill_value


@dataclass
class Box:
    """Voxels read from an array: ``data`` and the chunk keys the server did not have."""

    data: np.ndarray
    missing: list[str] = field(default_factory=list)
    chunks_read: int = 0


def open_array(url: str) -> ArrayMeta:
    """The ``.zarray`` of the array at ``url`` (one request)."""
    meta = get_json(f"{url.rstrip('/')}/.zarray", missing_ok=True)
    if meta is None:
        raise DownloadError(f"no zarr v2 array at {url} ({url.rstrip('/')}/.zarray is missing); check the path")
    return ArrayMeta.from_zarray(url, meta)


def read_box(arr: ArrayMeta, box: tuple[slice, ...]) -> Box:
    """The voxels of ``box`` (array coordinates, inside the array) with the chunks missing on the server.

    Example (reads over the network)::

        arr = open_array("https://janelia-cosem-datasets.s3.amazonaws.com/jrc_hela-2/jrc_hela-2.zarr/recon-1/em/fibsem-uint8/s0")
        read_box(arr, (slice(0, 8), slice(0, 64), slice(0, 64))).data.shape  # (8, 64, 64)
    """
    if len(box) != len(arr.shape) or any(not 0 <= s.start < s.stop <= n for s, n in zip(box, arr.shape)):
        raise ValueError(f"{arr.url}: box {[(s.start, s.stop) for s in box]} is not inside the array shape "
                         f"{list(arr.shape)}")
    out = np.empty(tuple(s.stop - s.start for s in box), dtype=arr.dtype)
    grid = arr.chunk_grid(box)
    keys = [arr.separator.join(map(str, g)) for g in grid]
    with config.thread_pool(MAX_WORKERS, "emdata-cellmap") as pool:  # threads see the active settings
        bodies = list(pool.map(lambda k: get_bytes(f"{arr.url}/{k}", missing_ok=True), keys))
    missing = []
    for index, key, body in zip(grid, keys, bodies):
        origin = [i * c for i, c in zip(index, arr.chunks)]
        inner = tuple(slice(max(s.start, o) - o, min(s.stop, o + c) - o) for s, o, c in zip(box, origin, arr.chunks))
        target = tuple(slice(o + i.start - s.start, o + i.stop - s.start) for s, o, i in zip(box, origin, inner))
        if body is None:
            missing.append(key)
            out[target] = arr.fill()
        else:
            out[target] = arr.decode(key, body)[inner]
    return Box(out, missing, len(keys))


MIRROR_BATCH = 64
"""Chunk files fetched and written to disk per batch by :func:`mirror_box` (bounds its memory)."""


@dataclass(frozen=True)
class LocalBox:
    """A box of a remote array whose chunk files were copied into ``folder`` by :func:`mirror_box`,
    read box by box (box coordinates: 0 at the box's start). A chunk the server did not have reads
    as the array's ``fill_value``, as :func:`read_box` fills it; the decoded voxels are those
    :func:`read_box` returns for the same box.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> meta = {"shape": [4, 6], "chunks": [2, 4], "dtype": "|u1", "fill_value": 7, "order": "C",
        ...         "compressor": None, "filters": None, "zarr_format": 2}
        >>> arr = ArrayMeta.from_zarray("https://example.org/a", meta)
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "0.0").write_bytes(np.arange(8, dtype="u1").tobytes())
        >>> LocalBox(str(folder), arr, ((0, 2), (2, 6))).read((slice(0, 2), slice(0, 4))).tolist()
        [[2, 3, 7, 7], [6, 7, 7, 7]]
    """

    folder: str
    array: ArrayMeta
    box: tuple[tuple[int, int], ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        from pathlib import Path

        spans = [sl.indices(n)[:2] for sl, n in zip(box, self.shape)]
        want = tuple(slice(o + a, o + max(a, b)) for (a, b), (o, _) in zip(spans, self.box))
        arr = self.array
        out = np.empty(tuple(s.stop - s.start for s in want), dtype=arr.dtype)
        if not out.size:
            return out
        for index in arr.chunk_grid(want):
            key = arr.separator.join(map(str, index))
            origin = [i * c for i, c in zip(index, arr.chunks)]
            inner = tuple(slice(max(s.start, o) - o, min(s.stop, o + c) - o)
                          for s, o, c in zip(want, origin, arr.chunks))
            target = tuple(slice(o + i.start - s.start, o + i.stop - s.start) for s, o, i in zip(want, origin, inner))
            path = Path(self.folder) / key
            if path.is_file():
                out[target] = arr.decode(key, path.read_bytes())[inner]
            else:
                out[target] = arr.fill()
        return out


def mirror_box(arr: ArrayMeta, box: tuple[slice, ...], folder: Any) -> tuple[LocalBox, list[str], int]:
    """Copy the chunk files of ``box`` into ``folder`` (a few at a time: memory stays one batch of
    compressed chunks); returns the box as a :class:`LocalBox` source, the keys the server did not
    have and how many chunk files the box touches (:func:`read_box`'s ``missing`` and ``chunks_read``)."""
    from pathlib import Path

    if len(box) != len(arr.shape) or any(not 0 <= s.start < s.stop <= n for s, n in zip(box, arr.shape)):
        raise ValueError(f"{arr.url}: box {[(s.start, s.stop) for s in box]} is not inside the array shape "
                         f"{list(arr.shape)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = arr.chunk_keys(box)
    missing: list[str] = []

    def fetch(key: str) -> bool:
        body = get_bytes(f"{arr.url}/{key}", missing_ok=True)
        if body is None:
            (folder / key).unlink(missing_ok=True)
            return False
        arr.decode(key, body)  # a chunk that does not decode fails here, naming it, as read_box fails
        path = folder / key  # a "/" separator nests the chunk files in folders
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(body)
        partial.replace(path)
        return True

    with config.thread_pool(MAX_WORKERS, "emdata-cellmap") as pool:  # threads see the active settings
        for start in range(0, len(keys), MIRROR_BATCH):
            batch = keys[start:start + MIRROR_BATCH]
            missing += [k for k, here in zip(batch, pool.map(fetch, batch)) if not here]
    return LocalBox(str(folder), arr, tuple((s.start, s.stop) for s in box)), missing, len(keys)
