"""Voxel boxes written as ``z0:z1,y0:y1,x0:x1`` (the CLI's ``--bbox``), as (z, y, x) slices.

Example:
    >>> parse_bbox("0:16,100:356,200:456")
    (slice(0, 16, None), slice(100, 356, None), slice(200, 456, None))
    >>> format_bbox(parse_bbox("0:16,:,5:"))
    '0:16,:,5:'
    >>> bbox_name(parse_bbox("0:16,100:356,200:456"))
    'z0-16_y100-356_x200-456'
"""

from __future__ import annotations

Box = tuple[slice, slice, slice]
EXPECTED = "'z0:z1,y0:y1,x0:x1' in voxels (ends may be left open, e.g. '0:16,:,:')"


def parse_bbox(text: str) -> Box:
    """Parse ``z0:z1,y0:y1,x0:x1``; raises ValueError naming the text and the expected form."""
    try:
        parts = [[int(v) if v.strip() else None for v in p.split(":")] for p in text.split(",")]
        if len(parts) != 3 or any(len(p) != 2 for p in parts):
            raise ValueError
    except ValueError:
        raise ValueError(f"bbox {text!r} is not {EXPECTED}") from None
    box = tuple(slice(a, b) for a, b in parts)
    for s in box:
        if s.start is not None and s.stop is not None and s.start >= s.stop:
            raise ValueError(f"bbox {text!r} has an empty range {s.start}:{s.stop}; expected start < stop")
        if (s.start is not None and s.start < 0) or (s.stop is not None and s.stop < 0):
            raise ValueError(f"bbox {text!r} has a negative coordinate; voxel coordinates start at 0")
    return box  # type: ignore[return-value]


def format_bbox(box: Box) -> str:
    return ",".join(f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}" for s in box)


def resolve_bbox(box: Box, shape: tuple[int, int, int], where: str = "volume") -> Box:
    """Fill open ends from ``shape`` and check the box lies inside it."""
    out = tuple(slice(0 if s.start is None else s.start, n if s.stop is None else s.stop) for s, n in zip(box, shape))
    if any(not (0 <= s.start < s.stop <= n) for s, n in zip(out, shape)):
        raise ValueError(f"bbox {format_bbox(box)} lies outside the {where} of shape {tuple(shape)} (z, y, x)")
    return out  # type: ignore[return-value]


def bbox_name(box: Box) -> str:
    """A file-system friendly name for a resolved box (volume names of bbox recipes)."""
    return "_".join(f"{axis}{s.start}-{s.stop}" for axis, s in zip("zyx", box))
