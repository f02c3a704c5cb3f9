"""Rows of a single-image strip TIFF, read through any byte source (no network code here).

Made for very large per-slice TIFFs such as EMPIAR-13356's 20000 x 20000 uint16 slices
(LZW, horizontal predictor, one strip per row, ~880 MB each): only the header, the first
IFD and the strips covering the wanted rows are fetched. A byte source is any callable
``fetch(ranges) -> list[bytes]`` taking ``(start, length)`` pairs, e.g.
``emdata.sources.ranges.RangeReader().file(url)``; all strips of one read are asked for in
one call, so a coalescing source turns them into one request.

The structure is checked, never assumed: classic TIFF and BigTIFF, either byte order,
1 sample per pixel, 8/16/32/64-bit unsigned or signed integers, Compression 1 (none) or
5 (LZW), Predictor 1 (none) or 2 (horizontal), any RowsPerStrip. Anything else (tiles,
RGB, floats, JPEG, ...) raises :class:`~emdata.formats.tiff.TiffFormatError` naming the tag,
the value found and what is supported.

Example (a local file here; remotely, ``fetch`` is a range reader such as
:meth:`emdata.sources.ranges.RangeReader.file`):
    >>> import io, tifffile
    >>> handle = io.BytesIO()
    >>> tifffile.imwrite(handle, np.arange(64 * 80, dtype=np.uint16).reshape(64, 80), rowsperstrip=8,
    ...                  compression="lzw", photometric="minisblack")
    >>> data = handle.getvalue()
    >>> def fetch(ranges):  # the bytes of each (start, length) range
    ...     return [data[s:s + n] for s, n in ranges]
    >>> layout = StripTiffLayout.from_json(StripTiffLayout.from_source(fetch, len(data), name="slice.tif").to_json())
    >>> read_rows(layout, fetch, 10, 20, 5, 9)[0].tolist()
    [805, 806, 807, 808]
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emdata.formats.tiff import TiffFormatError

__all__ = ["Fetch", "StripTiffLayout", "read_rows"]

Fetch = Callable[[list[tuple[int, int]]], list[bytes]]
"""A byte source: ``(start, length)`` pairs in, the bytes of each out, in order."""

PROBE = 64 * 1024  # bytes read at the start when the file size is known: header and usually the IFD
_JSON_FORMAT = "emdata.strip-tiff-layout/1"

_TAG_NAMES = {
    256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression", 273: "StripOffsets",
    277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts", 284: "PlanarConfiguration",
    317: "Predictor", 339: "SampleFormat", 322: "TileWidth", 323: "TileLength", 324: "TileOffsets",
    325: "TileByteCounts",
}
_TILE_TAGS = (322, 323, 324, 325)
# TIFF field type → (numpy kind + size) for the integer types the wanted tags may use
_INT_TYPES = {1: "u1", 3: "u2", 4: "u4", 6: "i1", 8: "i2", 9: "i4", 13: "u4", 16: "u8", 17: "i8", 18: "u8"}
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_COMPRESSIONS = {1: "none", 5: "LZW", 6: "old JPEG", 7: "JPEG", 8: "Adobe deflate", 32773: "PackBits",
                 32946: "deflate", 34925: "LZMA", 50000: "zstd", 50001: "WebP"}
_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "IEEE float", 4: "undefined",
                   5: "complex integer", 6: "complex float"}


def _unsupported(name: str, tag: int, value: object, supported: str, hint: str = "") -> TiffFormatError:
    label = f"{_TAG_NAMES.get(tag, 'tag')} ({tag})"
    return TiffFormatError(f"{name}: {label} = {value}: not supported by the strip reader; supported: {supported}"
                           + (f". {hint}" if hint else ""))


class _Bytes:
    """The bytes of a source fetched so far; ``get`` asks the source only for what is missing."""

    def __init__(self, fetch: Fetch, size: int | None, name: str) -> None:
        self.fetch, self.size, self.name = fetch, size, name
        self.known: list[tuple[int, bytes]] = []

    def _cached(self, start: int, length: int) -> bytes | None:
        for begin, data in self.known:
            if begin <= start and start + length <= begin + len(data):
                return data[start - begin:start - begin + length]
        return None

    def get(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        for start, length in ranges:
            if start < 0 or (self.size is not None and start + length > self.size):
                raise TiffFormatError(f"{self.name}: the TIFF points at bytes {start}..{start + length} outside the "
                                      f"file ({self.size} bytes); the file is truncated or corrupt")
        wanted = [(s, n) for s, n in ranges if self._cached(s, n) is None]
        if wanted:
            for (start, length), data in zip(wanted, self.fetch(list(wanted))):
                if len(data) != length:
                    raise TiffFormatError(f"{self.name}: asked the byte source for {length} bytes at {start}, "
                                          f"got {len(data)}; the file is truncated")
                self.known.append((start, data))
        return [self._cached(s, n) or b"" if n else b"" for s, n in ranges]

    def get_upto(self, start: int, length: int, more: int) -> bytes:
        """``length`` bytes at ``start``, also fetching up to ``more`` bytes beyond if the size allows."""
        if self._cached(start, length) is None and self.size is not None:
            extra = max(min(start + length + more, self.size) - start, length)
            self.get([(start, extra)])
        return self.get([(start, length)])[0]


@dataclass(frozen=True)
class StripTiffLayout:
    """Where the pixels of the first image of a strip TIFF are, and how they are encoded.

    Built by :meth:`from_source`; JSON round-trip with :meth:`to_json` / :meth:`from_json`
    (store it under :attr:`CACHE_KEY`, e.g. in ``RangeReader.metadata``).

    Example:
        >>> import io, tifffile
        >>> handle = io.BytesIO()
        >>> tifffile.imwrite(handle, np.zeros((40, 30), np.uint16), rowsperstrip=1, photometric="minisblack")
        >>> data = handle.getvalue()
        >>> layout = StripTiffLayout.from_source(lambda ranges: [data[s:s + n] for s, n in ranges],
        ...                                      len(data), name="slice.tif")
        >>> layout.shape, layout.dtype, layout.rows_per_strip
        ((40, 30), dtype('uint16'), 1)
    """

    name: str
    byteorder: str  # "<" (II) or ">" (MM)
    bigtiff: bool
    width: int
    height: int
    bits_per_sample: int
    sample_format: int  # 1 unsigned, 2 signed
    compression: int  # 1 none, 5 LZW
    predictor: int  # 1 none, 2 horizontal
    rows_per_strip: int
    strip_offsets: tuple[int, ...]
    strip_byte_counts: tuple[int, ...]

    CACHE_KEY = "strip-tiff-layout/1"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def dtype(self) -> np.dtype:
        """The pixel type in the file's byte order."""
        kind = "u" if self.sample_format == 1 else "i"
        return np.dtype(f"{self.byteorder}{kind}{self.bits_per_sample // 8}")

    def strips(self, y0: int, y1: int) -> range:
        """Indices of the strips holding rows ``y0 .. y1 - 1``."""
        if y1 <= y0:
            return range(0)
        return range(y0 // self.rows_per_strip, (y1 - 1) // self.rows_per_strip + 1)

    def byte_ranges(self, y0: int, y1: int) -> list[tuple[int, int]]:
        """``(offset, length)`` of each non-empty strip holding rows ``y0 .. y1 - 1``."""
        return [(self.strip_offsets[s], self.strip_byte_counts[s]) for s in self.strips(y0, y1)
                if self.strip_byte_counts[s]]

    def to_json(self) -> dict[str, Any]:
        return {"format": _JSON_FORMAT, "name": self.name, "byteorder": self.byteorder, "bigtiff": self.bigtiff,
                "width": self.width, "height": self.height, "bits_per_sample": self.bits_per_sample,
                "sample_format": self.sample_format, "compression": self.compression, "predictor": self.predictor,
                "rows_per_strip": self.rows_per_strip, "strip_offsets": list(self.strip_offsets),
                "strip_byte_counts": list(self.strip_byte_counts)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> StripTiffLayout:
        if not isinstance(doc, dict) or doc.get("format") != _JSON_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"not a strip TIFF layout document (format {found!r}, expected {_JSON_FORMAT!r}); "
                             f"parse the file again with StripTiffLayout.from_source")
        fields = {k: v for k, v in doc.items() if k != "format"}
        fields["strip_offsets"] = tuple(int(v) for v in fields["strip_offsets"])
        fields["strip_byte_counts"] = tuple(int(v) for v in fields["strip_byte_counts"])
        return cls(**fields)

    @classmethod
    def from_source(cls, fetch: Fetch, size: int | None = None, *, name: str = "<tiff>",
                    probe: int = PROBE) -> StripTiffLayout:
        """Parse the header and first IFD, fetching only the bytes needed, and check every tag.

        With ``size`` known the first ``probe`` bytes are read at once (header and, for most
        writers, the IFD and its arrays); without it, exactly the bytes needed, step by step.
        ``name`` (file or URL) is used in errors.
        """
        src = _Bytes(fetch, size, name)
        if size is not None and size < 8:
            raise TiffFormatError(f"{name}: {size} bytes is too short to be a TIFF")
        head = src.get_upto(0, 8, probe - 8) if size is not None else src.get([(0, 8)])[0]
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None:
            raise TiffFormatError(f"{name}: not a TIFF: starts with {head[:4]!r}, expected b'II' or b'MM' "
                                  f"followed by 42 (TIFF) or 43 (BigTIFF)")
        magic = struct.unpack(order + "H", head[2:4])[0]
        if magic == 42:
            bigtiff, ifd = False, struct.unpack(order + "I", head[4:8])[0]
            count_fmt, entry_size, value_size = "H", 12, 4
        elif magic == 43:
            rest = src.get([(8, 8)])[0]
            bytesize, zero = struct.unpack(order + "HH", head[4:8])
            if bytesize != 8 or zero != 0:
                raise TiffFormatError(f"{name}: BigTIFF header has offset size {bytesize} and reserved {zero}; "
                                      f"expected 8 and 0")
            bigtiff, ifd = True, struct.unpack(order + "Q", rest)[0]
            count_fmt, entry_size, value_size = "Q", 20, 8
        else:
            raise TiffFormatError(f"{name}: TIFF version {magic}: expected 42 (TIFF) or 43 (BigTIFF)")
        if ifd == 0:
            raise TiffFormatError(f"{name}: the TIFF has no image (first IFD offset is 0)")
        count_size = struct.calcsize(count_fmt)
        raw_count = src.get_upto(ifd, count_size, 64 * entry_size)
        n = struct.unpack(order + count_fmt, raw_count)[0]
        if n == 0 or n > 4096:
            raise TiffFormatError(f"{name}: first IFD at {ifd} claims {n} entries; the file is corrupt")
        table = src.get([(ifd + count_size, n * entry_size)])[0]
        entry_fmt = order + ("HHI4s" if not bigtiff else "HHQ8s")
        raw: dict[int, tuple[int, int, bytes]] = {}
        for i in range(n):
            tag, ftype, count, field = struct.unpack_from(entry_fmt, table, i * entry_size)
            if tag in _TAG_NAMES:
                raw[tag] = (ftype, count, field)
        tiled = [t for t in _TILE_TAGS if t in raw]
        if tiled:
            raise _unsupported(name, tiled[0], _scalar_preview(raw[tiled[0]], order),
                               "strips (StripOffsets 273, RowsPerStrip 278); this TIFF is tiled",
                               "Read it with tifffile (emdata.formats.tiff.read_stack) instead")
        # values stored outside the IFD: fetch them all in one call
        outside: dict[int, tuple[int, int]] = {}
        for tag, (ftype, count, field) in raw.items():
            if ftype not in _INT_TYPES:
                raise TiffFormatError(f"{name}: {_TAG_NAMES[tag]} ({tag}) has TIFF field type {ftype}; "
                                      f"expected an integer type (BYTE, SHORT, LONG, LONG8)")
            nbytes = count * _TYPE_SIZES[ftype]
            if nbytes > value_size:
                offset = struct.unpack(order + ("I" if not bigtiff else "Q"), field)[0]
                outside[tag] = (offset, nbytes)
        fetched = dict(zip(outside, src.get(list(outside.values()))))
        values: dict[int, tuple[int, ...]] = {}
        for tag, (ftype, count, field) in raw.items():
            data = fetched.get(tag, field)
            values[tag] = tuple(int(v) for v in np.frombuffer(data, order + _INT_TYPES[ftype], count=count))
        return cls._checked(values, name=name, byteorder=order, bigtiff=bigtiff)

    @classmethod
    def _checked(cls, values: dict[int, tuple[int, ...]], *, name: str, byteorder: str,
                 bigtiff: bool) -> StripTiffLayout:
        def one(tag: int, default: int | None) -> int:
            found = values.get(tag)
            if not found:
                if default is None:
                    raise TiffFormatError(f"{name}: required tag {_TAG_NAMES[tag]} ({tag}) is missing from the "
                                          f"first IFD; the file is not a valid strip TIFF")
                return default
            return found[0]

        width, height = one(256, None), one(257, None)
        if width <= 0 or height <= 0:
            raise TiffFormatError(f"{name}: image size {width} x {height} (ImageWidth 256 x ImageLength 257); "
                                  f"expected both > 0")
        samples = one(277, 1)
        if samples != 1:
            raise _unsupported(name, 277, samples, "1 (one grey value per pixel)",
                               "RGB/RGBA images (e.g. colour-coded labels) go through emdata.formats.tiff.read_stack")
        bits = one(258, 1)
        if bits not in (8, 16, 32, 64):
            raise _unsupported(name, 258, bits, "8, 16, 32 or 64 bits per sample")
        sample_format = one(339, 1)
        if sample_format not in (1, 2):
            raise _unsupported(name, 339, f"{sample_format} ({_SAMPLE_FORMATS.get(sample_format, 'unknown')})",
                               "1 (unsigned integer) or 2 (signed integer)")
        compression = one(259, 1)
        if compression not in (1, 5):
            raise _unsupported(name, 259, f"{compression} ({_COMPRESSIONS.get(compression, 'unknown')})",
                               "1 (none) or 5 (LZW)", "Read it with tifffile (emdata.formats.tiff.read_stack)")
        predictor = one(317, 1)
        if predictor not in (1, 2):
            raise _unsupported(name, 317, predictor, "1 (none) or 2 (horizontal differencing)")
        planar = one(284, 1)
        if planar not in (1, 2):
            raise _unsupported(name, 284, planar, "1 (chunky) or 2 (planar)")
        rows_per_strip = min(one(278, 2**32 - 1), height) or height
        offsets, counts = values.get(273), values.get(279)
        if not offsets:
            raise TiffFormatError(f"{name}: StripOffsets (273) is missing; expected one offset per strip")
        if not counts:
            raise TiffFormatError(f"{name}: StripByteCounts (279) is missing; expected one byte count per strip")
        strips = -(-height // rows_per_strip)
        if len(offsets) != strips or len(counts) != strips:
            raise TiffFormatError(f"{name}: {len(offsets)} StripOffsets (273) and {len(counts)} StripByteCounts "
                                  f"(279) for {height} rows at RowsPerStrip (278) {rows_per_strip}; expected "
                                  f"{strips} of each")
        return cls(name=name, byteorder=byteorder, bigtiff=bigtiff, width=width, height=height,
                   bits_per_sample=bits, sample_format=sample_format, compression=compression,
                   predictor=predictor, rows_per_strip=rows_per_strip, strip_offsets=offsets,
                   strip_byte_counts=counts)


def _scalar_preview(entry: tuple[int, int, bytes], order: str) -> object:
    ftype, count, field = entry
    kind = _INT_TYPES.get(ftype)
    if kind is None or count * _TYPE_SIZES[ftype] > len(field):
        return f"<{count} values>"
    return int(np.frombuffer(field, order + kind, count=1)[0])


def read_rows(layout: StripTiffLayout, fetch: Fetch, y0: int, y1: int, x0: int = 0,
              x1: int | None = None) -> np.ndarray:
    """Pixels ``[y0:y1, x0:x1]`` as a ``(y1 - y0, x1 - x0)`` array of the file's dtype in native byte order.

    The strips holding the rows are fetched in one ``fetch`` call, decoded (LZW, predictor)
    and cropped. Empty strips (byte count 0) read as zeros.

    Example:
        >>> import io, tifffile
        >>> handle = io.BytesIO()
        >>> tifffile.imwrite(handle, np.ones((16, 600), np.uint8), rowsperstrip=4, photometric="minisblack")
        >>> data = handle.getvalue()
        >>> def fetch(ranges):
        ...     return [data[s:s + n] for s, n in ranges]
        >>> read_rows(StripTiffLayout.from_source(fetch, len(data)), fetch, 6, 14, 0, 512).shape
        (8, 512)
    """
    import imagecodecs

    x1 = layout.width if x1 is None else x1
    if not (0 <= y0 <= y1 <= layout.height and 0 <= x0 <= x1 <= layout.width):
        raise ValueError(f"{layout.name}: rows {y0}:{y1}, columns {x0}:{x1} are outside the image "
                         f"(height {layout.height}, width {layout.width})")
    native = layout.dtype.newbyteorder("=")
    if y0 == y1 or x0 == x1:
        return np.zeros((y1 - y0, x1 - x0), native)
    strips = layout.strips(y0, y1)
    wanted = [s for s in strips if layout.strip_byte_counts[s]]
    blobs = dict(zip(wanted, fetch([(layout.strip_offsets[s], layout.strip_byte_counts[s]) for s in wanted])))
    row_bytes = layout.width * layout.dtype.itemsize
    rps = layout.rows_per_strip
    parts: list[bytes | memoryview] = []
    for s in strips:
        first_row = s * rps
        rows = min(rps, layout.height - first_row)
        lo, hi = max(y0, first_row) - first_row, min(y1, first_row + rows) - first_row
        data: bytes | memoryview | None = blobs.get(s)
        if data is None:
            parts.append(bytes((hi - lo) * row_bytes))
            continue
        if len(data) != layout.strip_byte_counts[s]:
            raise TiffFormatError(f"{layout.name}: strip {s} at byte {layout.strip_offsets[s]}: the byte source "
                                  f"returned {len(data)} bytes, expected {layout.strip_byte_counts[s]}")
        if layout.compression == 5:
            try:
                data = imagecodecs.lzw_decode(data)
            except Exception as exc:  # imagecodecs.LzwError and friends
                raise TiffFormatError(f"{layout.name}: strip {s} (rows {first_row}..{first_row + rows - 1}, "
                                      f"byte {layout.strip_offsets[s]}) is not valid LZW: {exc}") from exc
        if len(data) < rows * row_bytes:
            raise TiffFormatError(f"{layout.name}: strip {s} decodes to {len(data)} bytes, expected "
                                  f"{rows * row_bytes} ({rows} rows x {layout.width} px x {layout.dtype.itemsize} "
                                  f"bytes); the file is truncated or corrupt")
        parts.append(memoryview(data)[lo * row_bytes:hi * row_bytes])
    pixels = np.frombuffer(b"".join(parts), layout.dtype).reshape(y1 - y0, layout.width)
    if layout.predictor == 2:  # horizontal differencing: each row is a running sum from column 0
        block = np.ascontiguousarray(pixels[:, :x1], dtype=native)
        block = imagecodecs.delta_decode(block, axis=-1)
        return np.ascontiguousarray(block[:, x0:])
    return np.ascontiguousarray(pixels[:, x0:x1], dtype=native)
