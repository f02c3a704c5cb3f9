"""NIfTI reader: (x, y, z) files → (z, y, x) arrays and spacing, stored values, clear errors."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from emdata.formats.nifti import NiftiFormatError, read_nifti


def _image(shape_xyz: tuple[int, ...], dtype: str = "uint16", zooms: tuple[float, ...] = (8.0, 7.0, 30.0)
           ) -> tuple[np.ndarray, nib.Nifti1Image]:
    data = np.arange(int(np.prod(shape_xyz)), dtype=dtype).reshape(shape_xyz)
    return data, nib.Nifti1Image(data, np.diag([*zooms, 1.0][:4]))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_path_is_zyx_with_reversed_spacing(tmp_path: Path, suffix: str) -> None:
    xyz, img = _image((5, 4, 3))
    path = tmp_path / f"case{suffix}"
    nib.save(img, path)
    vol = read_nifti(path)
    assert vol.data.shape == (3, 4, 5) and vol.data.dtype == np.uint16
    assert np.array_equal(vol.data, xyz.transpose(2, 1, 0)) and vol.data.flags.c_contiguous
    assert vol.spacing == (30.0, 7.0, 8.0) and vol.stored_shape == (5, 4, 3)
    assert vol.data[2, 1, 4] == xyz[4, 1, 2]
    assert vol.unit == "unknown" and vol.scaling is None and not vol.spacing_is_default


def test_bytes_gzip_or_not_and_units(tmp_path: Path) -> None:
    xyz, img = _image((6, 2, 3), dtype="uint8", zooms=(16.0, 16.0, 16.0))
    img.header.set_xyzt_units("mm")
    for blob in (img.to_bytes(), gzip.compress(img.to_bytes())):
        vol = read_nifti(blob, name="member.nii.gz")
        assert np.array_equal(vol.data, xyz.transpose(2, 1, 0)) and vol.unit == "mm"
        assert vol.spacing == (16.0, 16.0, 16.0) and vol.name == "member.nii.gz"


def test_2d_and_singleton_dimensions() -> None:
    flat = np.arange(12, dtype=np.uint8).reshape(4, 3)  # (x, y)
    vol = read_nifti(nib.Nifti1Image(flat, np.eye(4)).to_bytes())
    assert vol.data.shape == (1, 3, 4) and np.array_equal(vol.data[0], flat.T)
    assert vol.spacing_is_default
    four = np.zeros((4, 3, 2, 1), np.uint8)
    assert read_nifti(nib.Nifti1Image(four, np.eye(4)).to_bytes()).data.shape == (2, 3, 4)


def test_stored_values_are_kept_and_scaling_reported() -> None:
    data = np.array([[[0, 1], [2, 3]]], dtype=np.int16)
    blob = bytearray(nib.Nifti1Image(data, np.eye(4)).to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(blob)))
    header["scl_slope"], header["scl_inter"] = 2.0, 10.0  # nibabel's writer would reset these
    blob[:348] = header.binaryblock
    vol = read_nifti(bytes(blob))
    assert vol.data.dtype == np.int16 and vol.scaling == (2.0, 10.0)
    assert np.array_equal(vol.data, data.transpose(2, 1, 0))


def test_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    series = nib.Nifti1Image(np.zeros((4, 3, 2, 5), np.uint8), np.eye(4))
    with pytest.raises(NiftiFormatError, match=r"series.nii: expected a 2D or 3D image, got array shape "
                                               r"\(4, 3, 2, 5\)"):
        read_nifti(series.to_bytes(), name="series.nii")
    with pytest.raises(NiftiFormatError, match=r"junk.nii.gz: not a NIfTI"):
        read_nifti(gzip.compress(b"not a nifti header at all" * 20), name="junk.nii.gz")
    _, img = _image((40, 40, 40))
    path = tmp_path / "cut.nii.gz"
    nib.save(img, path)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(NiftiFormatError, match=r"cut.nii.gz.*(truncated|not a readable)"):
        read_nifti(path)
    with pytest.raises(NiftiFormatError, match=r"missing.nii.gz"):
        read_nifti(tmp_path / "missing.nii.gz")


def _flip_voxel_keep_gzip_valid(blob: bytes) -> bytes:
    """The gzip of ``blob`` (stored blocks) with one data byte flipped: it inflates fine, only the CRC-32 tells."""
    packed = bytearray(gzip.compress(blob, compresslevel=0))
    at = packed.find(blob[-64:])  # inside the voxel data, past the 352-byte header
    packed[at + 10] ^= 0x5A
    return bytes(packed)


def test_gzip_crc_mismatch_is_refused_naming_the_file(tmp_path: Path) -> None:
    xyz, img = _image((64, 64, 32), dtype="uint8")  # larger than the reader's buffers: nibabel stops short of the end
    path = tmp_path / "case_0000.nii.gz"
    path.write_bytes(_flip_voxel_keep_gzip_valid(img.to_bytes()))
    assert np.asarray(nib.load(path).dataobj).tobytes() != xyz.tobytes()  # nibabel alone decodes a wrong voxel
    with pytest.raises(NiftiFormatError, match=r"case_0000.nii.gz: the gzip data is corrupt or truncated "
                                               r"\(BadGzipFile: CRC check failed.*fetch it again"):
        read_nifti(path)
    with pytest.raises(NiftiFormatError, match=r"member.nii.gz: not a readable NIfTI image \(BadGzipFile: CRC check"):
        read_nifti(path.read_bytes(), name="member.nii.gz")
    path.write_bytes(gzip.compress(img.to_bytes())[:-6])  # truncated trailer
    with pytest.raises(NiftiFormatError, match=r"case_0000.nii.gz: the gzip data is corrupt or truncated \(EOFError"):
        read_nifti(path)
