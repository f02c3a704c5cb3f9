"""Read a prepared volume from a URL (``https://``, ``http://``, ``s3://``, ``gs://``) without copying it.

:func:`emdata.store.volume.open_volume` hands URLs to :class:`RemoteVolume`: the same
:class:`~emdata.store.volume.Volume` interface over zarr's ``FsspecStore`` (fsspec with aiohttp
for HTTP; ``s3fs`` / ``gcsfs`` must be installed for ``s3://`` / ``gs://``, credentials come
from their usual environment or fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>`` variables). Upload or
serve the *contents* of a prepared ``<name>.ome.zarr`` folder (a static file server following
the link serves the published version as it is).

- **Concurrent range reads**: zarr fetches the chunks of one read concurrently (up to
  ``zarr.config['async.concurrency']`` requests); shards are read by byte range.
  :meth:`RemoteVolume.prefetch` starts the fetches of a whole patch (raw and labels) at once and
  returns: reads decode each chunk once it has arrived and join the requests still in flight.
- **Bounded cache**: fetched (still encoded) chunks are kept in a :class:`ByteCache` of
  ``cache_bytes`` per process (default 256 MiB) that evicts large chunks before small ones
  used at the same time (a miss costs a request whatever its size); decoded chunks are the
  reader's business.
- **Missing chunks are never zeros.** zarr reads an absent chunk as the fill value, and our
  writers do leave out chunks that are all fill value. The block checksums every array records
  (``emdata.checksum``, one per shard or chunk) tell the two apart: an absent chunk whose
  checksum is that of an all-fill block was left out by the writer; any other absent chunk is
  missing from the copy and raises :class:`MissingChunkError` naming its URL. With
  ``missing="ignore"`` it is read as fill value instead and listed by
  :meth:`RemoteVolume.missing_boxes`, which :class:`~emdata.torch.dataset.PatchDataset` turns
  into an ignore mask (``valid`` 0, labels the ignore value). An array without checksums
  cannot tell, so every absent chunk of it counts as missing.
- **Pinned**: a remote store has no lock. The completion marker's id is read when the volume
  is opened and checked again every :data:`RECHECK_S` seconds and before any missing chunk is
  reported; a different id (the volume was prepared again and re-uploaded) raises
  :class:`~emdata.store.publish.VolumeReplacedError` instead of mixing two versions.
- **Pickle-safe**: a pickled volume carries its URL, options and pin only; each process opens
  its own connections on first use. :attr:`RemoteVolume.folder` is the URL with the options in
  its fragment (``#emdata:missing=ignore&cache=…&pin=…``; fragments never reach the server),
  so anything that re-opens a volume by its folder (the loader's workers) reads the same
  version the same way.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from emdata.store.volume import open_volume
    >>> from emdata.store.writer import write_volume
    >>> from emdata.testing.server import MirrorServer
    >>> root = Path(tempfile.mkdtemp())
    >>> raw = np.arange(8 * 64 * 64, dtype=np.uint32).reshape(8, 64, 64)
    >>> meta = {"dataset": "demo", "volume": "v", "split": "train"}
    >>> _ = write_volume(root / "v.ome.zarr", raw, (30, 6, 6), meta=meta)
    >>> with MirrorServer(root) as server:
    ...     vol = open_volume(server.url + "/v.ome.zarr", cache_bytes=1 << 20)
    ...     same = bool((vol.raw[2:6, 10:50, 3:33] == raw[2:6, 10:50, 3:33]).all())
    >>> type(vol).__name__, same, vol.shape
    ('RemoteVolume', True, (8, 64, 64))
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import os
import re
import threading
import time
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlencode

import numpy as np

from emdata.store.checksum import ALGORITHM, LEGACY_ALGORITHMS, hasher
from emdata.store.layout import plain_chunk_decoder
from emdata.store.publish import COMPLETE_MARKER, VolumeReplacedError
from emdata.store.volume import IncompleteVolumeError, Volume, VolumeNotFoundError

SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://")
MISSING = ("error", "ignore")
DEFAULT_CACHE_BYTES = 256 << 20
PREFETCH_CONCURRENCY = 32
RECHECK_S = 30.0
RETRIES = 3
_FRAGMENT = "#emdata:"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_CHUNK_KEY = re.compile(r"^(?P<array>.+?)/c(?P<sep>[/.])(?P<coords>\d+(?:[/.]\d+)*)$")
log = logging.getLogger(__name__)


class MissingChunkError(RuntimeError):
    """A chunk the volume records content for is absent from the remote copy (``url`` names it)."""

    def __init__(self, message: str, url: str, key: str) -> None:
        super().__init__(message)
        self.url, self.key = url, key


class RemoteReadError(OSError):
    """A remote read failed for another reason than a missing object (network, permissions)."""


def is_url(path: object) -> bool:
    """Whether ``path`` names a remote volume (a URL :func:`open_remote` reads, or a ``precomputed://`` locator).

    Any ``<scheme>://`` URL counts: the common ones are :data:`SCHEMES`, and every other fsspec
    protocol (``memory://``, ``file://``, ``abfs://``, …) is read the same way.

    Example:
        >>> is_url("https://example.org/v.ome.zarr"), is_url("s3://bucket/v.ome.zarr"), is_url("/data/v.ome.zarr")
        (True, True, False)
    """
    return isinstance(path, str) and _URL.match(path) is not None


def split_locator(locator: str) -> tuple[str, dict[str, str]]:
    """(URL, options) of a remote volume's locator (its URL, optionally with an ``#emdata:`` fragment).

    Example:
        >>> split_locator("https://example.org/v.ome.zarr#emdata:missing=ignore&pin=ab12")
        ('https://example.org/v.ome.zarr', {'missing': 'ignore', 'pin': 'ab12'})
    """
    url, sep, fragment = locator.partition(_FRAGMENT)
    return url.rstrip("/"), dict(parse_qsl(fragment)) if sep else {}


def open_remote(locator: str, *, missing: str | None = None, cache_bytes: int | None = None) -> RemoteVolume:
    """Open the prepared volume at a URL; fails at once (naming the URL) when none is there.

    ``missing``: ``"error"`` (default) or ``"ignore"``; ``cache_bytes``: the per-process bound
    of fetched chunks kept (default 256 MiB). Options in the locator's fragment apply when
    not given here.
    """
    url, options = split_locator(locator)
    vol = RemoteVolume(url, missing=missing or options.get("missing", "error"),
                       cache_bytes=int(cache_bytes if cache_bytes is not None
                                       else options.get("cache", DEFAULT_CACHE_BYTES)),
                       pin=options.get("pin"))
    vol.marker_id  # noqa: B018  (fetch the marker now: a wrong URL fails here, not in a worker)
    return vol


class ByteCache:
    """Fetched bytes, bounded in total size, evicted so as to save requests; thread-safe.

    Every miss costs one request whatever its size, so eviction follows GreedyDual-Size (Cao &
    Irani, "Cost-Aware WWW Proxy Caching Algorithms", USENIX USITS 1997) with a cost of one
    request per item: each item's priority is the cache's clock when last used plus
    ``1 / size``; the lowest goes first and the clock moves up to it. Among items of one size
    this is LRU; a small item (a compressed label chunk of a few KiB) outlives large ones (raw
    chunks of hundreds of KiB) used at the same time, so a cache smaller than the volume keeps
    all of the small chunks and spends its misses on few, large requests.

    Example:
        >>> cache = ByteCache(max_bytes=10)
        >>> cache.put("a", b"12345"); cache.put("b", b"123456"); cache.get("a"), cache.get("b"), cache.nbytes
        (None, b'123456', 6)
        >>> cache = ByteCache(max_bytes=12)
        >>> cache.put("small", b"12"); cache.put("big", b"12345678"); cache.put("big2", b"12345678")
        >>> cache.get("small"), cache.get("big"), cache.get("big2")  # the big one used with "small" went first
        (b'12', None, b'12345678')
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._items: dict[Any, tuple[int, bytes]] = {}  # key -> (its row's order, value)
        self._heap: list[tuple[float, int, Any]] = []  # (priority, order, key); rows of older uses skipped
        self._clock = 0.0
        self._order = 0
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def _touch(self, key: Any, value: bytes) -> None:
        """(Re)rank ``key`` as used now (under the lock)."""
        priority = self._clock + 1.0 / max(len(value), 1)
        self._order += 1
        self._items[key] = (self._order, value)
        heapq.heappush(self._heap, (priority, self._order, key))
        if len(self._heap) > 4 * len(self._items) + 64:  # drop the rows of older uses now and then
            self._heap = [(p, i, k) for p, i, k in self._heap if self._items.get(k, (None,))[0] == i]
            heapq.heapify(self._heap)

    def get(self, key: Any) -> bytes | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._touch(key, item[1])
            return item[1]

    def holds(self, key: Any) -> bool:
        """Whether ``key`` is held (without counting a hit or miss, or refreshing it)."""
        return key in self._items

    def touch(self, key: Any) -> bool:
        """Whether ``key`` is held; if so it is ranked as used now (it will be read soon), without
        counting a hit."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._touch(key, item[1])
            return item is not None

    def put(self, key: Any, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[1])
            while self._bytes + len(value) > self.max_bytes and self._heap:  # room first, then the new item
                priority, order, victim = heapq.heappop(self._heap)
                held = self._items.get(victim)
                if held is None or held[0] != order:
                    continue  # a stale row: the item was used again since (or is gone)
                del self._items[victim]
                self._bytes -= len(held[1])
                self._clock = priority
            self._bytes += len(value)
            self._touch(key, value)


def _fill_digest(shape: tuple[int, ...], dtype: np.dtype, fill: Any, algorithm: str = ALGORITHM) -> str:
    """The checksum digest of a block of ``shape`` holding only ``fill`` (one plane in memory at a time)."""
    h = hasher(algorithm)
    plane = np.full(shape[1:], fill, dtype=dtype).tobytes()
    for _ in range(shape[0]):
        h.update(plane)
    return h.hexdigest()


class _ArrayFacts:
    """What a missing-chunk decision needs from one array's ``zarr.json``."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.shape = tuple(int(n) for n in doc["shape"])
        self.block = tuple(int(n) for n in doc["chunk_grid"]["configuration"]["chunk_shape"])
        self.dtype = np.dtype(doc["data_type"]) if isinstance(doc["data_type"], str) else None
        self.fill = doc.get("fill_value", 0)
        checksum = (doc.get("attributes") or {}).get("emdata", {}).get("checksum") or {}
        self.algorithm = str(checksum.get("algorithm"))
        usable = (self.algorithm in (ALGORITHM, *LEGACY_ALGORITHMS)
                  and tuple(checksum.get("block_shape") or ()) == self.block
                  and len(checksum.get("blocks") or ()) == math.prod(self.grid))
        self.digests: list[str] | None = list(checksum["blocks"]) if usable else None
        encoding = doc.get("chunk_key_encoding") or {}
        self.separator = str((encoding.get("configuration") or {}).get("separator", "/"))
        self.sharded = any(c.get("name") == "sharding_indexed" for c in doc.get("codecs") or ())
        self._fill: dict[tuple[int, ...], str] = {}

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block))

    def keys(self, array: str, box: tuple[slice, ...]) -> dict[str, tuple[int, ...]]:
        """Store keys (and grid coordinates) of the blocks touching ``box`` (clipped to the array)."""
        clipped = [(max(s.start, 0), min(s.stop, n)) for s, n in zip(box, self.shape)]
        if any(lo >= hi for lo, hi in clipped):
            return {}
        ranges = [range(lo // b, (hi - 1) // b + 1) for (lo, hi), b in zip(clipped, self.block)]
        sep = self.separator
        return {f"{array}/c{sep}{sep.join(map(str, c))}": c
                for c in (tuple(r[i] for r, i in zip(ranges, idx)) for idx in np.ndindex(*(len(r) for r in ranges)))}

    def box(self, coords: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(c * b, min((c + 1) * b, n)) for c, b, n in zip(coords, self.block, self.shape))

    def left_out(self, coords: tuple[int, ...]) -> bool | None:
        """True: the writer recorded this block as all fill value (absent by design); False: it
        recorded content; None: no usable checksum to tell."""
        if self.digests is None or self.dtype is None or len(coords) != len(self.shape):
            return None
        if any(not 0 <= c < g for c, g in zip(coords, self.grid)):
            return None
        shape = tuple(s.stop - s.start for s in self.box(coords))
        if shape not in self._fill:
            self._fill[shape] = _fill_digest(shape, self.dtype, self.fill, self.algorithm)
        return self.digests[int(np.ravel_multi_index(coords, self.grid))] == self._fill[shape]


class RemoteArray:
    """A remote zarr array that decodes whole chunks itself: a read of exactly one chunk's box (what
    the loader's reader asks for) takes the stored bytes from the cache and decodes them with
    numcodecs, skipping zarr-python's per-call overhead, for plain codecs (bytes, then zstd, blosc
    or nothing; unsharded). Any other read, and every other attribute, is the zarr array's.
    """

    def __init__(self, volume: RemoteVolume, path: str, array: Any) -> None:
        self._volume, self._path, self._zarr = volume, path, array
        self.shape = tuple(int(n) for n in array.shape)
        self.chunks = tuple(int(c) for c in array.chunks)
        self.dtype = np.dtype(array.dtype)
        self._decode = plain_chunk_decoder(array)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._zarr, name)

    def __repr__(self) -> str:
        return f"RemoteArray({self._volume.url}/{self._path}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> Any:
        if self._decode is not None and isinstance(key, tuple) and len(key) == len(self.shape) and all(
                isinstance(k, slice) and k.step in (None, 1) for k in key):
            idx = [k.start // c if isinstance(k.start, int) and k.start % c == 0 else None
                   for k, c in zip(key, self.chunks)]
            if None not in idx and all(k.stop == min(k.start + c, n) for k, c, n in zip(key, self.chunks, self.shape)):
                return self._chunk(tuple(idx), key)  # type: ignore[arg-type]
        return self._zarr[key]

    def _chunk(self, idx: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
        meta = self._zarr.metadata
        data = self._volume.chunk_bytes(f"{self._path}/{meta.encode_chunk_key(idx)}")
        size = tuple(k.stop - k.start for k in box)
        if data is None:
            fill = meta.fill_value if meta.fill_value is not None else 0
            return np.full(size, fill, self.dtype)
        block = self._decode(data, f"{self._path}/{meta.encode_chunk_key(idx)}",  # type: ignore[misc]
                             "the remote copy is damaged: upload the volume again")
        return block[tuple(slice(0, n) for n in size)]


class _Shared:
    """A volume version's fetched-chunk cache and chunk status in one process."""

    def __init__(self, cache_bytes: int) -> None:
        self.cache = ByteCache(cache_bytes)
        self.status: dict[str, str] = {}
        self.inflight: dict[Any, asyncio.Future[bytes | None]] = {}  # on zarr's event loop only
        self.prefetching: set[Any] = set()  # concurrent futures of prefetches under way


_SHARED: dict[tuple[int, str, str, int], _Shared] = {}
_SHARED_LOCK = threading.Lock()


def _shared(url: str, version: str, cache_bytes: int) -> _Shared:
    """The state every instance of this volume version shares in this process (a forked worker starts empty)."""
    pid = os.getpid()
    with _SHARED_LOCK:
        for key in [k for k in _SHARED if k[0] != pid]:  # inherited from the parent by fork
            del _SHARED[key]
        return _SHARED.setdefault((pid, url, version, cache_bytes), _Shared(cache_bytes))


def chunk_coords(key: str) -> tuple[str, tuple[int, ...]] | None:
    """(array path, chunk grid coordinates) of a zarr v3 chunk key, else None (metadata).

    Example:
        >>> chunk_coords("labels/cells/0/c/1/0/2"), chunk_coords("labels/cells/0/zarr.json")
        (('labels/cells/0', (1, 0, 2)), None)
    """
    m = _CHUNK_KEY.match(key)
    if m is None:
        return None
    return m["array"], tuple(int(c) for c in re.split(r"[/.]", m["coords"]))


def _store_class() -> type:
    from zarr.abc.store import RangeByteRequest
    from zarr.storage import FsspecStore, WrapperStore

    class CheckedStore(WrapperStore[FsspecStore]):
        """A read-only remote store: cached, retried, pinned, and strict about absent chunks."""

        def __init__(self, store: FsspecStore, volume: RemoteVolume | None = None) -> None:
            super().__init__(store)
            self.volume = volume

        def _with_store(self, store: FsspecStore) -> CheckedStore:
            return type(self)(store, self.volume)

        async def _fetch(self, key: str, prototype: Any, byte_range: Any) -> Any:
            delay = 0.05
            for attempt in range(RETRIES):
                try:
                    return await self._store.get(key, prototype, byte_range)
                except (OSError, TimeoutError, _client_error()) as exc:
                    if attempt + 1 == RETRIES:
                        raise RemoteReadError(f"{self.volume.url if self.volume else ''}/{key}: read failed after "
                                              f"{RETRIES} tries: {type(exc).__name__}: {exc}") from exc
                    await asyncio.sleep(delay)
                    delay *= 4
            return None  # unreachable

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            vol = self.volume
            if vol is None:
                return await self._fetch(key, prototype, byte_range)
            await vol._recheck_if_due(self, prototype)
            known = vol._status.get(key)
            if known == "left-out" or (known == "missing" and vol.missing == "ignore"):
                return None  # absent in this (pinned) version: no need to ask again
            cache_key = (key, repr(byte_range))
            cached = vol.cache.get(cache_key)
            if cached is not None:
                return prototype.buffer.from_bytes(cached)
            inflight = vol._shared.inflight
            task = inflight.get(cache_key)
            if task is None:  # one request per key at a time: later readers wait for the first
                task = inflight[cache_key] = asyncio.ensure_future(self._load(key, prototype, byte_range, cache_key))
                task.add_done_callback(lambda _: inflight.pop(cache_key, None))
            data = await asyncio.shield(task)
            return None if data is None else prototype.buffer.from_bytes(data)

        async def _load(self, key: str, prototype: Any, byte_range: Any, cache_key: Any) -> bytes | None:
            vol = self.volume
            value = await self._fetch(key, prototype, byte_range)
            if value is None:
                await vol._absent(self, key, prototype)  # type: ignore[union-attr]
                return None
            data = _as_bytes(value)
            vol._status[key] = "present"  # type: ignore[union-attr]
            vol.cache.put(cache_key, data)  # type: ignore[union-attr]
            return data

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
            return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

        async def probe(self, key: str, prototype: Any) -> bool:
            """Whether ``key`` exists (one 1-byte range read)."""
            return await self._fetch(key, prototype, RangeByteRequest(0, 1)) is not None

    return CheckedStore


def _client_error() -> type[BaseException]:
    try:
        from aiohttp import ClientError
    except ImportError:  # not the HTTP backend
        return OSError
    return ClientError


class RemoteVolume(Volume):
    """A prepared volume read over the network (see the module docstring); ``path`` is its URL."""

    remote = True

    def __init__(self, url: str, *, missing: str = "error", cache_bytes: int = DEFAULT_CACHE_BYTES,
                 pin: str | None = None) -> None:
        if missing not in MISSING:
            raise ValueError(f"missing must be one of {MISSING} (a missing chunk raises, or is masked), "
                             f"got {missing!r}")
        if int(cache_bytes) < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.url = url.rstrip("/")
        self.path = self.url  # type: ignore[assignment]
        self.missing = missing
        self.cache_bytes = int(cache_bytes)
        self._pinned = pin
        self._pin = None
        self._fixed = pin is not None
        self._facts: dict[str, _ArrayFacts] = {}
        self._checked = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "missing": self.missing, "cache_bytes": self.cache_bytes,
                "pin": self.__dict__.get("marker_id", self._pinned)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], missing=state["missing"],  # type: ignore[misc]
                      cache_bytes=state["cache_bytes"], pin=state["pin"])

    def close(self) -> None:
        """Nothing to release: connections belong to fsspec's per-process session."""

    def __repr__(self) -> str:
        return f"RemoteVolume({self.url}, missing={self.missing!r})"

    @cached_property
    def _shared(self) -> _Shared:
        return _shared(self.url, self.marker_id, self.cache_bytes)

    @property
    def cache(self) -> ByteCache:
        """Fetched chunks of this volume in this process (shared by every instance of the same version)."""
        return self._shared.cache

    @property
    def _status(self) -> dict[str, str]:
        """Chunk key -> present | left-out | missing, as found in this process."""
        return self._shared.status

    @cached_property
    def store(self) -> Any:
        """The zarr store reading this volume (cached, pinned, strict about absent chunks)."""
        from zarr.storage import FsspecStore

        try:
            base = FsspecStore.from_url(self.url, read_only=True)
        except (ImportError, ValueError) as exc:
            scheme = self.url.split("://")[0]
            extra = {"s3": "pip install s3fs", "gs": "pip install gcsfs", "gcs": "pip install gcsfs"}
            raise ImportError(f"{self.url}: cannot open a {scheme}:// store ({exc}); "
                              f"{extra.get(scheme, 'pip install ' + repr('emdata[remote]'))}") from exc
        return _store_class()(base, self)

    @cached_property
    def marker_id(self) -> str:
        """The id of the published version read (from its completion marker, fetched once)."""
        found = self._read_marker()
        if found is None:
            if self._get_sync("zarr.json") is None:
                raise VolumeNotFoundError(f"{self.url}: no OME-Zarr volume here (no zarr.json at {self.url}/zarr.json);"
                                          " check the URL (it names the <name>.ome.zarr folder of a prepared volume)")
            raise IncompleteVolumeError(
                f"{self.url}: incomplete volume (no {COMPLETE_MARKER}); the copy was interrupted while being "
                "uploaded, or the volume was never completed. Upload a complete prepared volume again.")
        if self._pinned is not None and found != self._pinned:
            raise VolumeReplacedError(f"{self.url}: the version opened earlier ({self._pinned}) was replaced by "
                                      f"{found} on the server; open the volume again")
        return found

    def _get_sync(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        value = sync(self.store._fetch(key, default_buffer_prototype(), None))
        return None if value is None else value.to_bytes()

    def _read_marker(self, raw: bytes | None = None, absent: bool = False) -> str | None:
        if raw is None and not absent:
            raw = self._get_sync(COMPLETE_MARKER)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise IncompleteVolumeError(f"{self.url}/{COMPLETE_MARKER}: unreadable completion marker; upload the "
                                        "volume again") from None
        return str(doc.get("id", doc.get("completed"))) if isinstance(doc, dict) else None

    async def _check_marker(self, store: Any, prototype: Any) -> None:
        value = await store._fetch(COMPLETE_MARKER, prototype, None)
        found = self._read_marker(None if value is None else value.to_bytes(), absent=value is None)
        expected = self.__dict__.get("marker_id", self._pinned)
        if found != expected:
            now = "removed" if found is None else f"replaced by {found}"
            raise VolumeReplacedError(f"{self.url}: the version being read ({expected}) was {now} on the server "
                                      "while it was read; open the volume again")

    async def _recheck_if_due(self, store: Any, prototype: Any) -> None:
        if time.monotonic() - self._checked < RECHECK_S:
            return
        self._checked = time.monotonic()  # before awaiting: concurrent reads do not all check
        await self._check_marker(store, prototype)

    async def _array_facts(self, store: Any, array: str, prototype: Any) -> _ArrayFacts | None:
        facts = self._facts.get(array)
        if facts is None:
            value = await store.get(f"{array}/zarr.json", prototype)
            if value is None:
                return None
            facts = self._facts.setdefault(array, _ArrayFacts(json.loads(value.to_bytes())))
        return facts

    async def _absent(self, store: Any, key: str, prototype: Any) -> None:
        """An absent object: fine for metadata and left-out chunks; a missing chunk raises or is recorded."""
        parsed = chunk_coords(key)
        if parsed is None:
            return
        array, coords = parsed
        facts = await self._array_facts(store, array, prototype)
        left_out = facts.left_out(coords) if facts is not None else None
        if left_out:
            self._status[key] = "left-out"
            return
        await self._check_marker(store, prototype)  # a re-upload in progress looks like missing chunks
        self._status[key] = "missing"
        if self.missing == "ignore":
            log.warning("%s/%s: chunk missing; read as fill value and masked (missing='ignore')", self.url, key)
            return
        where = ""
        if facts is not None:
            box = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", facts.box(coords)))
            where = f" (voxels {box} of array {array})"
        why = ("its recorded checksum says it holds data" if left_out is False else
               "the array records no block checksums, so an absent chunk cannot be told from one left out as "
               "all fill value")
        raise MissingChunkError(
            f"{self.url}/{key}: chunk missing on the server{where}; {why}. The remote copy is incomplete: upload "
            f"the volume again, or open it with missing='ignore' to mask such chunks (never read as zeros)",
            f"{self.url}/{key}", key)

    # -- the Volume interface ----------------------------------------------------------------

    @cached_property
    def folder(self) -> str:  # type: ignore[override]
        """The locator workers re-open: the URL with options and pin in an ``#emdata:`` fragment."""
        options = {"missing": self.missing, "cache": str(self.cache_bytes), "pin": self.marker_id}
        return f"{self.url}{_FRAGMENT}{urlencode(options)}"

    @cached_property
    def _root(self) -> Any:
        import zarr

        self.marker_id  # noqa: B018  (pin before reading anything else)
        return zarr.open_group(self.store, mode="r")

    def _array(self, key: str) -> Any:
        try:
            return RemoteArray(self, key, self._root[key])
        except KeyError:
            raise KeyError(f"{self.url}/{key}: array missing from the remote volume; the copy is incomplete, "
                           "upload it again") from None

    def chunk_bytes(self, key: str) -> bytes | None:
        """The stored bytes of chunk ``key`` (None: absent, read as fill value): from this process's
        cache when held (no trip through zarr's event loop), else fetched with every check of a read."""
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        known = self._status.get(key)
        if known == "left-out" or (known == "missing" and self.missing == "ignore"):
            return None
        cached = self.cache.get((key, "None"))
        if cached is not None:
            return cached
        value = sync(self.store.get(key, default_buffer_prototype()))
        return None if value is None else _as_bytes(value)

    def read_file(self, relpath: str) -> bytes | None:
        """The bytes of a file inside the volume (e.g. ``indices/cells.npz``), None when absent."""
        return self._get_sync(relpath)

    def array_path(self, layer: str, level: int) -> str:
        """The array of ``layer`` (``"raw"`` or a label layer) at ``level`` inside the volume."""
        return str(level) if layer == "raw" else f"labels/{layer}/{level}"

    def missing_boxes(self, layer: str, level: int, box: tuple[slice, ...]) -> list[tuple[slice, ...]]:
        """Boxes (level voxels) of the chunks of ``layer`` at ``level`` touching ``box`` that are missing
        from the remote copy (read as fill value under ``missing="ignore"``). Chunks not read yet in this
        process are checked (one 1-byte range read each, concurrently), so the answer does not depend on
        what a cache already held.
        """
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        self._root  # noqa: B018
        return sync(self._missing_boxes(self.array_path(layer, level), box, default_buffer_prototype()))

    async def _missing_boxes(self, array: str, box: tuple[slice, ...], prototype: Any) -> list[tuple[slice, ...]]:
        store = self.store
        facts = await self._array_facts(store, array, prototype)
        if facts is None:
            return []
        keys = facts.keys(array, box)
        unknown = [k for k in keys if k not in self._status]

        async def check(key: str) -> None:
            if await store.probe(key, prototype):
                self._status[key] = "present"
            else:
                left_out = facts.left_out(keys[key])
                self._status[key] = "left-out" if left_out else "missing"

        await asyncio.gather(*(check(k) for k in unknown))
        return [facts.box(c) for k, c in keys.items() if self._status.get(k) == "missing"]

    def prefetch(self, reads: list[tuple[str, int, tuple[slice, ...]]], *, wait: bool = False) -> int:
        """Start fetching every chunk that the ``(layer, level, box)`` reads touch into the cache, all
        concurrently (one round trip for a whole patch of raw and labels, in the order given);
        returns how many fetches were started.

        By default it returns at once: the fetches run on the I/O loop while the caller goes on
        (decoding the chunks that have arrived, or building the previous sample), and a read of a
        chunk still in flight waits for that request instead of sending another. A failure (a
        missing chunk, a network error) is raised by the read that needs the chunk, exactly as
        without prefetching; ``wait=True`` waits for all of them and raises the first failure
        here. Chunks already cached or in flight, left out or missing are skipped. Sharded arrays
        are skipped (zarr reads their inner chunks by byte range when the read comes).
        """
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        self._root  # noqa: B018
        prototype = default_buffer_prototype()
        inflight = self._shared.inflight
        keys: list[str] = []
        for layer, level, box in reads:
            array = self.array_path(layer, level)
            facts = self._facts.get(array) or sync(self._array_facts(self.store, array, prototype))
            if facts is None or facts.sharded:
                continue
            # a held chunk is ranked as used now, so that fetches started later do not evict it first
            keys += [k for k in facts.keys(array, box) if k not in keys and self._status.get(k) in (None, "present")
                     and not self.cache.touch((k, "None")) and (k, "None") not in inflight]
        if not keys:
            return 0
        future = asyncio.run_coroutine_threadsafe(self._fetch_all(keys, prototype), _io_loop())
        if wait:
            future.result()
        else:
            pending = self._shared.prefetching
            pending.add(future)
            future.add_done_callback(lambda done: (pending.discard(done), _ignore_failure(done)))
        return len(keys)

    def wait_prefetched(self, timeout: float | None = None) -> None:
        """Wait until the prefetches of this volume under way in this process are done (their
        failures are left to the reads); ``TimeoutError`` after ``timeout`` seconds."""
        import concurrent.futures

        pending = list(self._shared.prefetching)
        _, left = concurrent.futures.wait(pending, timeout=timeout)
        if left:
            raise TimeoutError(f"{self.url}: {len(left)} prefetch(es) still running after {timeout} s")

    async def _fetch_all(self, keys: list[str], prototype: Any) -> None:
        """Fetch ``keys`` into the cache (at most :data:`PREFETCH_CONCURRENCY` at a time); every
        fetch runs to its end, then the first failure is raised."""
        store, gate = self.store, asyncio.Semaphore(PREFETCH_CONCURRENCY)

        async def fetch(key: str) -> None:
            async with gate:
                await store.get(key, prototype)

        for result in await asyncio.gather(*(fetch(k) for k in keys), return_exceptions=True):
            if isinstance(result, BaseException):
                raise result


def _io_loop() -> asyncio.AbstractEventLoop:
    """The event loop (in its own thread) that zarr, and so every remote read, runs on."""
    from zarr.core.sync import _get_loop

    return _get_loop()


def _ignore_failure(future: Any) -> None:
    """Done-callback of a prefetch nobody waits for: its failure is raised by the read needing the chunk."""
    if not future.cancelled() and future.exception() is not None:
        log.debug("prefetch failed (the read of the chunk raises it): %s", future.exception())


def _as_bytes(buffer: Any) -> bytes:
    """The bytes of a zarr buffer, without a copy when it wraps a ``bytes`` object (what fsspec returns)."""
    array = buffer.as_numpy_array()
    base = array.base
    if isinstance(base, bytes) and len(base) == array.nbytes:
        return base
    return buffer.to_bytes()
