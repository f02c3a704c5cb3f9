"""NIfTI-1/2 images as array sources: the voxels stay on disk and are read box by box.

A ``.nii.gz`` has no random access (gzip must be inflated from its start), so
:func:`open_nifti` first inflates it into an uncompressed ``.nii`` next to a scratch path, in
1 MiB pieces (as much disk as the image, no memory; the gzip CRC-32 and length trailer are
checked on the way, as :func:`emdata.formats.nifti.read_nifti` checks them). The image data
of an uncompressed NIfTI file is one Fortran-ordered ``(x, y, z)`` block at the header's
offset, which is a C-ordered ``(z, y, x)`` array: :class:`NiftiArray` reads a box as one
band of rows per z-plane (``readinto``, no decoding, no mapping left in memory).

The header is interpreted exactly as :func:`~emdata.formats.nifti.read_nifti` does (same
spacing, unit, scaling, axis codes, stored shape; values as stored, never scaled), so
``open_nifti(path).data`` reads the voxels ``read_nifti(path).data`` holds.

Example:
    >>> import tempfile, numpy as np, nibabel as nib
    >>> folder = Path(tempfile.mkdtemp())
    >>> xyz = np.arange(60, dtype=np.int16).reshape(5, 4, 3)   # NIfTI order (x, y, z): zyx[z, y, x] = xyz[x, y, z]
    >>> nib.save(nib.Nifti1Image(xyz, np.diag([8.0, 8.0, 30.0, 1.0])), folder / "case.nii.gz")
    >>> vol = open_nifti(folder / "case.nii.gz", folder / "scratch")
    >>> vol.data.shape, vol.spacing, vol.data.read((slice(1, 2), slice(0, 1), slice(0, 5))).tolist()
    ((3, 4, 5), (30.0, 8.0, 8.0), [[[1, 13, 25, 37, 49]]])
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from emdata.formats.nifti import GZIP_MAGIC, NiftiFormatError, NiftiVolume, header_fields

PIECE = 1 << 20


class NiftiArray:
    """The ``(z, y, x)`` voxels of an uncompressed NIfTI file (``offset``: the header's
    ``vox_offset``; ``dtype`` as stored, byte order included), read box by box.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "v.bin"
        >>> _ = path.write_bytes(b"...." + np.arange(24, dtype="<u2").tobytes())
        >>> NiftiArray(path, 4, (2, 3, 4), "<u2").read((slice(1, 2), slice(2, 3), slice(1, 3))).tolist()
        [[[21, 22]]]
    """

    def __init__(self, path: str | Path, offset: int, shape: tuple[int, int, int], dtype: Any) -> None:
        self.path, self.offset = str(path), int(offset)
        self.shape, self.dtype = tuple(int(n) for n in shape), np.dtype(dtype)

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        (z0, z1, _), (y0, y1, _), (x0, x1, _) = (sl.indices(n) for sl, n in zip(box, self.shape))
        z1, y1, x1 = max(z0, z1), max(y0, y1), max(x0, x1)
        _, ny, nx = self.shape
        row = nx * self.dtype.itemsize
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.dtype)
        band = np.empty((y1 - y0, nx), self.dtype)
        with open(self.path, "rb", buffering=0) as f:
            for z in range(z0, z1):
                f.seek(self.offset + (z * ny + y0) * row)
                if band.nbytes and f.readinto(memoryview(band).cast("B")) != band.nbytes:
                    raise NiftiFormatError(f"{self.path}: the image data ends before plane {z}; the file is "
                                           "truncated — delete it and fetch it again")
                out[z - z0] = band[:, x0:x1]
        return out


def inflate(path: Path, target: Path, name: str) -> Path:
    """``path`` (gzip) inflated into ``target`` in 1 MiB pieces; the CRC-32 and length are checked.
    An existing ``target`` newer than ``path`` is reused."""
    if target.is_file() and target.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with gzip.open(path, "rb") as src, open(partial, "wb") as dst:
            while piece := src.read(PIECE):
                dst.write(piece)
    except (OSError, EOFError, zlib.error) as exc:
        partial.unlink(missing_ok=True)
        raise NiftiFormatError(f"{name}: the gzip data is corrupt or truncated ({type(exc).__name__}: {exc}); "
                               "delete the file and fetch it again") from exc
    os.replace(partial, target)
    return target


def open_nifti(path: Path | str, scratch: Path | str, name: str | None = None) -> NiftiVolume:
    """The NIfTI image at ``path`` as a :class:`~emdata.formats.nifti.NiftiVolume` whose ``data`` is
    a :class:`NiftiArray` (read box by box). A gzip-compressed file is inflated first into the
    folder ``scratch`` (delete it when done: it holds as many bytes as the image)."""
    import nibabel as nib

    path = Path(path)
    where = name or str(path)
    with open(path, "rb") as fh:
        gz = fh.read(2) == GZIP_MAGIC
    plain = inflate(path, Path(scratch) / (path.name.removesuffix(".gz") + ("" if path.name.endswith(".nii.gz")
                                                                           else ".nii")), where) if gz else path
    try:
        img = nib.load(str(plain))
    except FileNotFoundError as exc:
        raise NiftiFormatError(f"{where}: file not found") from exc
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise NiftiFormatError(f"{where}: not a readable NIfTI image ({type(exc).__name__}: {exc}); "
                               "delete the file and fetch it again") from exc
    proxy = img.dataobj
    stored_shape = tuple(int(n) for n in proxy.shape)
    if getattr(proxy, "order", "F") != "F" or not hasattr(proxy, "offset"):
        raise NiftiFormatError(f"{where}: the image data is not one Fortran-ordered block (nibabel order "
                               f"{getattr(proxy, 'order', None)!r}); not a NIfTI-1/2 single-file image")
    dims = list(stored_shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise NiftiFormatError(f"{where}: expected a 2D or 3D image, got array shape {stored_shape} "
                               "(x, y, z, ...); multi-channel or time series NIfTI is not a single volume")
    dtype = np.dtype(proxy.dtype)
    need = int(proxy.offset) + math.prod(dims) * dtype.itemsize
    if plain.stat().st_size < need:
        raise NiftiFormatError(f"{where}: the image data cannot be read (the file holds {plain.stat().st_size} "
                               f"bytes, the header needs {need}); the file is truncated or corrupt — delete it "
                               "and fetch it again")
    data = NiftiArray(plain, int(proxy.offset), (dims[2], dims[1], dims[0]), dtype)
    spacing, unit, scaling, axcodes = header_fields(img)
    return NiftiVolume(data=data, spacing=spacing, unit=unit, stored_shape=stored_shape,  # type: ignore[arg-type]
                       axcodes=axcodes, scaling=scaling, name=where)
