"""PNG images and PNG/TIFF slice stacks → numpy (z, y, x[, c]).

Example:
    >>> from PIL import Image
    >>> def png(value):
    ...     handle = io.BytesIO()
    ...     Image.fromarray(np.full((4, 6), value, np.uint8)).save(handle, "PNG")
    ...     return handle.getvalue()
    >>> read_slices([png(0), png(255)], names=["im0000.png", "im0001.png"]).shape
    (2, 4, 6)
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ImageFormatError(ValueError):
    """A slice image is unreadable or does not match the others."""


def read_image(source: Path | bytes, name: str | None = None) -> np.ndarray:
    """One 2D image (PNG, or any format Pillow reads; TIFF through tifffile): (y, x) or (y, x, c)."""
    label = name or str(source if isinstance(source, Path) else "<bytes>")
    raw = source.read_bytes() if isinstance(source, Path) else source
    try:
        if raw[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            import tifffile

            return np.asarray(tifffile.imread(io.BytesIO(raw)))
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # EM slices are legitimately huge (20000×20000)
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return np.asarray(img)
    except Exception as exc:  # Pillow, tifffile and its codecs raise many types for broken files
        raise ImageFormatError(f"{label}: not a readable image ({type(exc).__name__}: {exc}); the file is truncated "
                               "or corrupt — delete it and fetch it again") from exc


def read_slices(sources: Sequence[Path | bytes], names: Sequence[str] | None = None) -> np.ndarray:
    """Stack 2D slices in the given order into (z, y, x[, c]); all must share shape and dtype."""
    if not sources:
        raise ImageFormatError("no slices to stack")
    slices = []
    for i, src in enumerate(sources):
        name = names[i] if names else None
        img = read_image(src, name)
        if slices and (img.shape != slices[0].shape or img.dtype != slices[0].dtype):
            raise ImageFormatError(f"{name or f'slice {i}'}: shape {img.shape} dtype {img.dtype} differs from the "
                                   f"first slice's {slices[0].shape} {slices[0].dtype}")
        slices.append(img)
    return np.stack(slices)
