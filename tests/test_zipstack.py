"""TIFF stacks in a zip read while they are copied out: the same voxels as the copy, the copy
``extract_member`` reuses, and a member that fails its CRC leaves nothing built from it."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from emdata.datasets._zipstack import ZipTiffStack, zip_tiff_stack
from emdata.formats.lazy import TiffStack
from emdata.sources.archive import ArchiveError, extract_member
from emdata.store.writer import write_volume

META = {"dataset": "demo", "volume": "v", "split": "train"}


def _zip(tmp: Path, data: np.ndarray, method: int = zipfile.ZIP_DEFLATED, **tiff: object) -> Path:
    tifffile.imwrite(tmp / "s.tif", data, photometric="minisblack", **tiff)
    archive = tmp / "a.zip"
    with zipfile.ZipFile(archive, "w", method) as zf:
        zf.write(tmp / "s.tif", "top/stack.tif")
    return archive


def test_read_while_copied_equals_the_copy_and_is_reused(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 60000, (9, 70, 50), dtype=np.uint16)
    archive = _zip(tmp_path, data)
    stack = zip_tiff_stack(archive, "stack.tif")
    assert isinstance(stack, ZipTiffStack) and stack.shape == data.shape and stack.dtype == data.dtype
    assert np.array_equal(stack.read((slice(2, 5), slice(10, 40), slice(3, 50))), data[2:5, 10:40, 3:50])
    assert np.array_equal(stack.read((slice(0, 9), slice(0, 70), slice(0, 50))), data)
    assert not stack.failed()
    copy = Path(stack.path)
    stamp = copy.stat().st_mtime_ns
    assert extract_member(archive, "stack.tif") == copy and copy.stat().st_mtime_ns == stamp  # reused, not redone
    import pickle

    again = pickle.loads(pickle.dumps(stack))  # what a cluster worker gets: the complete copy
    assert np.array_equal(again.read((slice(8, 9), slice(0, 70), slice(0, 50))), data[8:9])


def test_compressed_pages_are_copied_out_first(tmp_path: Path) -> None:
    data = np.arange(3 * 32 * 32, dtype=np.uint8).reshape(3, 32, 32)
    stack = zip_tiff_stack(_zip(tmp_path, data, compression="zlib"), "stack.tif")
    assert type(stack) is TiffStack and not stack.contiguous
    assert np.array_equal(stack.read((slice(0, 3), slice(0, 32), slice(0, 32))), data)


def test_a_member_failing_its_crc_leaves_nothing_built(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 255, (6, 512, 512), dtype=np.uint8)  # more than the head
    archive = _zip(tmp_path, data, zipfile.ZIP_STORED)
    raw = bytearray(archive.read_bytes())
    at = raw.find(data[5].tobytes()[:64])  # a byte of the last slice, stored as is
    raw[at] ^= 0xFF
    archive.write_bytes(bytes(raw))
    stack = zip_tiff_stack(archive, "stack.tif")
    assert isinstance(stack, ZipTiffStack)
    with pytest.raises(ArchiveError, match="Bad CRC-32"):
        stack.read((slice(5, 6), slice(0, 64), slice(0, 64)))  # the last slice waits for the CRC
    assert stack.failed()
    target = tmp_path / "out" / "v.ome.zarr"
    with pytest.raises(Exception, match="CRC"):
        write_volume(target, stack, (30, 6, 6), meta=META, blockwise=True)
    assert not target.exists() and not list(target.parent.glob(".v.ome.zarr.building*"))

