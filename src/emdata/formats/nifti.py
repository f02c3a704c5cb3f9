"""NIfTI-1/2 images (``.nii``, ``.nii.gz``) → a ``(z, y, x)`` numpy array plus the header's spacing.

nibabel returns arrays in the file's voxel-index order ``(x, y, z)``; this module turns them
into ``(z, y, x)`` once (``transpose(2, 1, 0)``) and reverses the header zooms the same way,
so callers never see the NIfTI order. The orientation in the affine is *not* applied: the
array keeps the stored voxel order, as the nnU-Net readers (SimpleITK, torch-em) do; the
axis codes are reported for the record.

Compressed files are checked whole first: a ``.nii.gz`` (or gzip bytes) whose CRC-32 or
length trailer does not match is an error, never an image with wrong voxels.

Values are returned as **stored** (``dataobj.get_unscaled()``): a header slope/intercept is
reported in :attr:`NiftiVolume.scaling` instead of being applied, so integer data never
becomes float behind the caller's back. Spacing is returned in the header's own numbers;
:attr:`NiftiVolume.unit` says what unit the header claims (writers often leave it
``"unknown"`` or write ``"mm"`` for values that are really nm — the caller decides).

Example:
    >>> import numpy as np, nibabel as nib
    >>> xyz = np.zeros((5, 4, 3), np.uint8)                     # NIfTI order (x, y, z)
    >>> img = nib.Nifti1Image(xyz, np.diag([8.0, 8.0, 30.0, 1.0]))
    >>> vol = read_nifti(img.to_bytes(), name="case.nii")
    >>> vol.data.shape, vol.spacing
    ((3, 4, 5), (30.0, 8.0, 8.0))
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
GZIP_CHECK_CHUNK = 8 << 20


class NiftiFormatError(ValueError):
    """A NIfTI file is unreadable or does not hold a 2D/3D image."""


@dataclass(frozen=True)
class NiftiVolume:
    """One NIfTI image in ``(z, y, x)`` order.

    ``spacing`` is the header's pixdim for the three spatial axes, reversed to ``(z, y, x)``
    and rounded to 6 decimals; ``None`` when a zoom is zero/negative (not set). ``unit`` is
    the header's spatial unit (``"unknown"``, ``"meter"``, ``"mm"``, ``"micron"``).
    ``stored_shape`` is the array shape as the file stores it (``x, y, z, ...``).
    """

    data: np.ndarray
    spacing: tuple[float, float, float] | None
    unit: str
    stored_shape: tuple[int, ...]
    axcodes: tuple[str | None, ...]
    scaling: tuple[float, float] | None
    name: str

    @property
    def spacing_is_default(self) -> bool:
        """True when the header spacing is nibabel's/ITK's default of 1 on every axis."""
        return self.spacing is not None and all(v == 1.0 for v in self.spacing)


def _check_gzip(path: Path, name: str) -> None:
    """Decompress a gzip file to its end, so its CRC-32 and length trailer are checked.

    nibabel reads only the bytes the image needs and never reaches the trailer, so a corrupt
    ``.nii.gz`` would otherwise decode to wrong voxels without an error.
    """
    with open(path, "rb") as fh:
        if fh.read(2) != GZIP_MAGIC:
            return
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(GZIP_CHECK_CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiFormatError(f"{name}: the gzip data is corrupt or truncated ({type(exc).__name__}: {exc}); "
                               "delete the file and fetch it again") from exc


def _load(source: Path | bytes, name: str) -> Any:
    import nibabel as nib

    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            raw = bytes(source)
            if raw[:2] == GZIP_MAGIC:
                raw = gzip.decompress(raw)
            bad_header = (nib.spatialimages.HeaderDataError, nib.wrapstruct.WrapStructError,
                          nib.filebasedimages.ImageFileError, ValueError, EOFError)
            for klass in (nib.Nifti1Image, nib.Nifti2Image):
                try:
                    return klass.from_bytes(raw)
                except bad_header:  # try the next header version
                    continue
            raise NiftiFormatError(f"{name}: not a NIfTI-1 or NIfTI-2 image (header not recognised); "
                                   "delete the file and fetch it again")
        _check_gzip(Path(source), name)
        return nib.load(str(source))
    except NiftiFormatError:
        raise
    except FileNotFoundError as exc:
        raise NiftiFormatError(f"{name}: file not found") from exc
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise NiftiFormatError(f"{name}: not a readable NIfTI image ({type(exc).__name__}: {exc}); "
                               "delete the file and fetch it again") from exc


def read_nifti(source: Path | bytes, name: str | None = None) -> NiftiVolume:
    """Read a NIfTI image from a path or from bytes (gzip-compressed or not).

    2D images come back as ``(1, y, x)``; trailing singleton dimensions (time, channel of
    size 1) are dropped; anything else that is not 2D/3D is an error naming the shape.
    """
    where = name or str(source if isinstance(source, (str, Path)) else "<bytes>")
    img = _load(source, where)
    proxy = img.dataobj
    try:
        data = np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise NiftiFormatError(f"{where}: the image data cannot be read ({type(exc).__name__}: {exc}); "
                               "the file is truncated or corrupt — delete it and fetch it again") from exc
    stored_shape = tuple(int(n) for n in data.shape)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise NiftiFormatError(f"{where}: expected a 2D or 3D image, got array shape {stored_shape} "
                               "(x, y, z, ...); multi-channel or time series NIfTI is not a single volume")
    zyx = np.ascontiguousarray(data.transpose(2, 1, 0))
    spacing, unit, scaling, axcodes = header_fields(img)
    return NiftiVolume(data=zyx, spacing=spacing, unit=unit, stored_shape=stored_shape, axcodes=axcodes,
                       scaling=scaling, name=where)


def header_fields(img: Any) -> tuple[tuple[float, float, float] | None, str, tuple[float, float] | None,
                                     tuple[str | None, ...]]:
    """``(spacing, unit, scaling, axcodes)`` of a loaded nibabel image, as :class:`NiftiVolume` holds them
    (spacing reversed to (z, y, x) and rounded, scaling only when not the identity)."""
    import nibabel as nib

    header, proxy = img.header, img.dataobj
    zooms = [float(z) for z in header.get_zooms()[:3]] + [1.0] * 3
    xyz = zooms[:3]
    spacing = None if any(v <= 0 for v in xyz) else (round(xyz[2], 6), round(xyz[1], 6), round(xyz[0], 6))
    unit = header.get_xyzt_units()[0] or "unknown"
    # nibabel moves scl_slope/scl_inter from the header onto the array proxy when it loads
    slope, inter = getattr(proxy, "slope", None), getattr(proxy, "inter", None)
    if slope is None and inter is None:
        slope, inter = header.get_slope_inter()
    slope = None if slope is None or not np.isfinite(slope) else float(slope)
    inter = None if inter is None or not np.isfinite(inter) else float(inter)
    scaling = None
    if (slope is not None and slope != 1.0) or (inter is not None and inter != 0.0):
        scaling = (1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter))
    try:
        axcodes = tuple(nib.aff2axcodes(img.affine))
    except (ValueError, TypeError):  # a degenerate affine has no axis codes
        axcodes = (None, None, None)
    return spacing, str(unit), scaling, axcodes

