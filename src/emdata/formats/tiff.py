"""Multipage TIFF stacks → (z, y, x) numpy arrays, with the file's structure checked.

Example:
    >>> import tifffile
    >>> handle = io.BytesIO()
    >>> tifffile.imwrite(handle, np.zeros((3, 16, 16), np.uint8), photometric="minisblack", compression="zlib")
    >>> stack = read_stack(handle.getvalue(), name="train-input.tif")
    >>> stack.data.shape, stack.data.dtype, stack.compression
    ((3, 16, 16), dtype('uint8'), 'ADOBE_DEFLATE')
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class TiffFormatError(ValueError):
    """A TIFF does not have the structure a recipe expects."""


@dataclass(frozen=True)
class TiffStack:
    data: np.ndarray
    pages: int
    photometric: str
    compression: str


def read_stack(source: Path | bytes, name: str | None = None) -> TiffStack:
    """Read every page of a multipage TIFF as one ``(z, y, x[, samples])`` array.

    A single-page 2D image comes back as ``(1, y, x)``. ``name`` is used in errors.
    """
    import tifffile

    label = name or str(source if isinstance(source, Path) else "<bytes>")
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with tifffile.TiffFile(handle) as tif:
            series = tif.series
            first = series[0]
            if len(series) > 1 and all(s.shape == first.shape and s.dtype == first.dtype for s in series):
                data = np.stack([s.asarray() for s in series])  # pages appended one by one
            else:
                data = first.asarray()
            page = tif.pages.first
            photometric = page.photometric.name
            compression = page.compression.name
            pages = len(tif.pages)
    except (tifffile.TiffFileError, ValueError, OSError, RuntimeError) as exc:  # codec errors are RuntimeErrors
        raise TiffFormatError(f"{label}: not a readable TIFF ({type(exc).__name__}: {exc}); the file is truncated "
                              "or corrupt — delete it and fetch it again") from exc
    samples = page.samplesperpixel
    if data.ndim == 2 or (samples > 1 and data.ndim == 3):
        data = data[np.newaxis]
    expected = 4 if samples > 1 else 3
    if data.ndim != expected:
        raise TiffFormatError(f"{label}: expected a z-stack of {'colour' if samples > 1 else 'grey'} "
                              f"pages, got an array of shape {data.shape}")
    return TiffStack(np.ascontiguousarray(data), pages, photometric, compression)
