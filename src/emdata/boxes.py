"""Voxel boxes written as ``z0:z1,y0:y1,x0:x1`` (the CLI's ``--bbox``), as (z, y, x) slices, and
the size guard that refuses boxes too big to read by mistake.

Example:
    >>> parse_bbox("0:16,100:356,200:456")
    (slice(0, 16, None), slice(100, 356, None), slice(200, 456, None))
    >>> format_bbox(parse_bbox("0:16,:,5:"))
    '0:16,:,5:'
    >>> bbox_name(parse_bbox("0:16,100:356,200:456"))
    'z0-16_y100-356_x200-456'
    >>> box_bytes(parse_bbox("0:16,0:256,0:256"), 1 + 8)  # uint8 EM and one uint64 label layer
    9437184
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from emdata import config
from emdata.config import MAX_BOX_ENV

Box = tuple[slice, slice, slice]
EXPECTED = "'z0:z1,y0:y1,x0:x1' in voxels (ends may be left open, e.g. '0:16,:,:')"
DEFAULT_MAX_BOX_BYTES = 16 * 10**9
"""Boxes estimated above this many bytes are refused before anything is read (16 GB)."""

_COORD = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take '１２', '1_000', ' +5', '٣'


class BoxTooLargeError(ValueError):
    """A box would read more bytes than :func:`max_box_bytes` allows."""


def _coord(value: str, text: str) -> int | None:
    if value == "":
        return None
    if not _COORD.fullmatch(value):
        raise ValueError(f"bbox {text!r}: {value!r} is not a voxel coordinate (ASCII digits 0-9 only); "
                         f"expected {EXPECTED}")
    return int(value)


def parse_bbox(text: str) -> Box:
    """Parse ``z0:z1,y0:y1,x0:x1``; raises ValueError naming the text and the expected form.

    Coordinates are plain ASCII digits (no sign, no ``_``, no spaces, no other scripts' digits).

    Example:
        >>> parse_bbox("1_000:2000,:,:")
        Traceback (most recent call last):
        ...
        ValueError: bbox '1_000:2000,:,:': '1_000' is not a voxel coordinate (ASCII digits 0-9 only); expected ...
    """
    parts = [p.split(":") for p in text.split(",")]
    if len(parts) != 3 or any(len(p) != 2 for p in parts):
        raise ValueError(f"bbox {text!r} is not {EXPECTED}")
    box = tuple(slice(_coord(a, text), _coord(b, text)) for a, b in parts)
    for s in box:
        if s.start is not None and s.stop is not None and s.start >= s.stop:
            raise ValueError(f"bbox {text!r} has an empty range {s.start}:{s.stop}; expected start < stop")
    return box  # type: ignore[return-value]


def format_bbox(box: Box) -> str:
    return ",".join(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}" for s in box)


def parse_bbox_option(where: str, bbox: object) -> Box:
    """:func:`parse_bbox` of a recipe's ``bbox`` option; errors start with ``where`` (the dataset).

    Example:
        >>> parse_bbox_option("h01", 5)
        Traceback (most recent call last):
        ...
        ValueError: h01: bbox must be a string 'z0:z1,y0:y1,x0:x1', got 5
    """
    if not isinstance(bbox, str):
        raise ValueError(f"{where}: bbox must be a string 'z0:z1,y0:y1,x0:x1', got {bbox!r}")
    try:
        return parse_bbox(bbox)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def is_closed(box: Box) -> bool:
    """Whether every end of ``box`` is given (so its volume name is known without reading anything).

    Example:
        >>> is_closed(parse_bbox("0:16,0:64,0:64")), is_closed(parse_bbox("0:16,:,0:64"))
        (True, False)
    """
    return all(s.start is not None and s.stop is not None for s in box)


def _as_bounds(bounds: Box | Sequence[int]) -> Box:
    """A closed box from a closed box or a shape (``(z, y, x)`` sizes, starting at 0)."""
    return tuple(b if isinstance(b, slice) else slice(0, int(b)) for b in bounds)  # type: ignore[return-value]


def resolve_bbox(box: Box, bounds: Box | Sequence[int]) -> Box:
    """``box`` with open ends filled from ``bounds`` (a closed box, or a shape starting at 0).

    Example:
        >>> resolve_bbox(parse_bbox("2:4,:,5:"), (8, 64, 80))
        (slice(2, 4, None), slice(0, 64, None), slice(5, 80, None))
    """
    return tuple(slice(b.start if s.start is None else s.start, b.stop if s.stop is None else s.stop)
                 for s, b in zip(box, _as_bounds(bounds)))  # type: ignore[return-value]


def inside(box: Box, bounds: Box | Sequence[int]) -> bool:
    """Whether the closed, non-empty ``box`` lies within ``bounds`` (a closed box, or a shape).

    Example:
        >>> inside(parse_bbox("0:8,0:64,70:90"), (8, 64, 80))
        False
    """
    return all(b.start <= s.start < s.stop <= b.stop for s, b in zip(box, _as_bounds(bounds)))


def example_bbox(bounds: Box | Sequence[int], size: Sequence[int] = (16, 256, 256)) -> str:
    """A bbox of up to ``size`` voxels in the middle of ``bounds`` (a closed box, or a shape), for messages.

    Example:
        >>> example_bbox((5638, 8000, 12000))
        '2811:2827,3872:4128,5872:6128'
        >>> example_bbox((slice(0, 100), slice(0, 1000), slice(50, 150)))
        '42:58,372:628,50:150'
    """
    parts = []
    for b, n in zip(_as_bounds(bounds), size):
        extent = min(int(n), b.stop - b.start)
        start = b.start + (b.stop - b.start - extent) // 2
        parts.append(f"{start}:{start + extent}")
    return ",".join(parts)


def bbox_name(box: Box) -> str:
    """A file-system friendly name for a resolved box (volume names of bbox recipes)."""
    return "_".join(f"{axis}{s.start}-{s.stop}" for axis, s in zip("zyx", box))


def box_bytes(box: Box, bytes_per_voxel: int) -> int:
    """Bytes of a resolved (closed) box at ``bytes_per_voxel`` (sum of the layers' item sizes)."""
    return math.prod(s.stop - s.start for s in box) * int(bytes_per_voxel)


def max_box_bytes() -> int:
    """The size limit for one box: the settings' ``max_box_gb`` (``EMDATA_MAX_BOX_GB``, decimal
    GB) if set, else 16 GB.

    Example:
        >>> from emdata import config
        >>> with config.using(max_box_gb=64):
        ...     max_box_bytes()
        64000000000
    """
    limit = config.current().max_box_gb
    return DEFAULT_MAX_BOX_BYTES if limit is None else int(limit * 10**9)


def _size(n: float) -> str:
    """Decimal units: ``_size(97_200) == '97.2 kB'``."""
    unit = "B"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            break
        n /= 1000
    return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"


def check_box_size(where: str, box: Box, bytes_per_voxel: int, what: str = "the box") -> int:
    """Refuse ``box`` above :func:`max_box_bytes`; returns its estimated bytes.

    Example:
        >>> check_box_size("h01", parse_bbox("0:1000,0:100000,0:100000"), 1)
        Traceback (most recent call last):
        ...
        emdata.boxes.BoxTooLargeError: h01: the box z 0:1000, y 0:100000, x 0:100000 (1000×100000×100000 voxels) \
would read 10000.0 GB, over the limit of 16.0 GB; check the bbox for a typo, or set EMDATA_MAX_BOX_GB=10000 to \
allow it
    """
    need = box_bytes(box, bytes_per_voxel)
    limit = max_box_bytes()
    if need > limit:
        shape = "×".join(str(s.stop - s.start) for s in box)
        where_box = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", box))
        raise BoxTooLargeError(
            f"{where}: {what} {where_box} ({shape} voxels) would read {_size(need)}, over the limit of "
            f"{_size(limit)}; check the bbox for a typo, or set {MAX_BOX_ENV}={math.ceil(need / 1e9)} to "
            "allow it")
    return need
