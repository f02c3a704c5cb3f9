"""Corrupt HDF5, TIFF and PNG inputs are refused with errors naming the file (container checksums checked)."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from PIL import Image

from emdata.formats.hdf5 import HDF5FormatError, read_dataset
from emdata.formats.png import ImageFormatError, read_image
from emdata.formats.tiff import TiffFormatError, read_stack

DATA = (np.arange(4 * 64 * 64) % 251).astype(np.uint8).reshape(4, 64, 64)


def flip(raw: bytes, at: int) -> bytes:
    out = bytearray(raw)
    out[at] ^= 0xFF
    return bytes(out)


def test_hdf5_fletcher32_mismatch_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "sample_A.hdf"
    with h5py.File(path, "w") as f:
        f.create_dataset("volumes/raw", data=DATA, chunks=(4, 64, 64), fletcher32=True)
    np.testing.assert_array_equal(read_dataset(path, "volumes/raw").data, DATA)
    raw = path.read_bytes()
    path.write_bytes(flip(raw, raw.find(DATA.tobytes()[:256]) + 5000))  # one byte of the chunk: only the checksum tells
    with pytest.raises(HDF5FormatError, match=r"sample_A.hdf: dataset 'volumes/raw' cannot be read \(.*\); a chunk "
                                              r"checksum or decompression failed"):
        read_dataset(path, "volumes/raw")


@pytest.mark.parametrize("compression", ["zlib", "lzw"])
def test_corrupt_compressed_tiff_names_the_file(compression: str) -> None:
    handle = io.BytesIO()
    tifffile.imwrite(handle, np.random.default_rng(0).integers(0, 4, (3, 64, 64), dtype=np.uint8),
                     compression=compression, photometric="minisblack")
    bad = flip(flip(handle.getvalue(), 200), 300)
    with pytest.raises(TiffFormatError, match=r"^labels.tif: not a readable TIFF \(\w+Error: .*corrupt"):
        read_stack(bad, name="labels.tif")
    with pytest.raises(ImageFormatError, match=r"^slice_0001.tif: not a readable image \(\w+Error: .*corrupt"):
        read_image(bad, name="slice_0001.tif")


def test_png_with_a_damaged_data_chunk_names_the_file() -> None:
    handle = io.BytesIO()
    Image.fromarray(DATA[0]).save(handle, "PNG")
    raw = handle.getvalue()
    with pytest.raises(ImageFormatError, match=r"^im0001.png: not a readable image"):
        read_image(flip(raw, raw.find(b"IDAT") + 30), name="im0001.png")


def test_not_an_hdf5_file_is_named_by_every_reader(tmp_path: Path) -> None:
    from emdata.formats.hdf5 import list_keys, read_group_attrs

    path = tmp_path / "sample_B.hdf"
    path.write_bytes(b"<html>not found</html>")
    for call in (lambda: list_keys(path), lambda: read_dataset(path, "volumes/raw"),
                 lambda: read_group_attrs(path, "volumes")):
        with pytest.raises(HDF5FormatError, match=r"sample_B.hdf: not a readable HDF5 file \(.*\); delete it"):
            call()
