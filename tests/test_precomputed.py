"""Precomputed cutouts: layers written by CloudVolume, served by the loopback mirror, read back exactly."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from emdata.sources.download import OfflineError
from emdata.sources.precomputed import BoxOutOfBoundsError, MissingChunksError, layer_info, read_cutout
from emdata.testing.precomputed import write_precomputed_layer

pytestmark = pytest.mark.skipif(find_spec("cloudvolume") is None, reason="needs emdata[precomputed]")

OFFSET = (3, 20, 10)  # (z, y, x): the layer starts here, not at 0
CHUNK = (8, 16, 16)
BIG_IDS = np.array([0, 7, 864691136617970907, 2**63, 2**64 - 5], dtype=np.uint64)


@pytest.fixture(autouse=True)
def tmp_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing cloudvolume creates ~/.cloudvolume: keep it out of the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


@pytest.fixture
def image(mirror_root: Path) -> np.ndarray:
    data = np.random.default_rng(1).integers(0, 256, (20, 40, 50), dtype=np.uint8)
    write_precomputed_layer(mirror_root, "gs://bucket/em", data, (40.0, 8.0, 8.0), chunk_size_zyx=CHUNK,
                            voxel_offset_zyx=OFFSET, mips=2)
    return data


def shifted(box: tuple[slice, ...], offset: tuple[int, ...]) -> tuple[slice, ...]:
    """An absolute-voxel box as an index into the array written at ``offset``."""
    return tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, offset))


def chunk_gets(mirror) -> list:
    return [r for r in mirror.log if r.method == "GET" and not r.path.endswith("/info")]


def test_image_uint8_raw_box_across_chunks(image: np.ndarray, mirror) -> None:
    box = (slice(5, 17), slice(30, 50), slice(14, 40))  # crosses chunk edges on every axis
    cut = read_cutout("precomputed://gs://bucket/em", box)
    assert cut.data.dtype == np.uint8 and cut.data.flags.c_contiguous
    np.testing.assert_array_equal(cut.data, image[shifted(box, OFFSET)])
    assert cut.voxel_size_nm == (40.0, 8.0, 8.0) and cut.offset_voxels == (5, 30, 14) and cut.missing_chunks == []
    assert cut.source == f"{mirror.url}/storage.googleapis.com/bucket/em" and cut.mip == 0
    # chunks z 3-11-19, y 20-36-52, x 10-26-42: 2 × 2 × 2, each fetched once over loopback HTTP, no HEADs
    gets = chunk_gets(mirror)
    assert len(gets) == 8 and {r.status for r in gets} == {200}
    assert all(r.path.startswith("/storage.googleapis.com/bucket/em/8.0_8.0_40.0/") for r in gets)
    assert [r.path for r in mirror.log if r.path.endswith("/info")] == ["/storage.googleapis.com/bucket/em/info"]
    assert not any(r.method == "HEAD" for r in mirror.log)


def test_uint64_compressed_segmentation_keeps_ids_above_2_63(mirror_root: Path, mirror) -> None:
    seg = np.random.default_rng(2).choice(BIG_IDS, size=(20, 40, 50))
    write_precomputed_layer(mirror_root, "gs://bucket/seg", seg, (40.0, 8.0, 8.0), layer_type="segmentation",
                            encoding="compressed_segmentation", chunk_size_zyx=CHUNK, voxel_offset_zyx=OFFSET)
    info = layer_info("gs://bucket/seg")
    assert (info.dtype, info.layer_type, info.encoding, info.num_channels) == (
        np.dtype(np.uint64), "segmentation", "compressed_segmentation", 1)
    assert info.bounds == ((slice(3, 23), slice(20, 60), slice(10, 60)),)
    cut = read_cutout("precomputed://gs://bucket/seg", "4:20,21:59,11:45")
    assert cut.data.dtype == np.uint64
    np.testing.assert_array_equal(cut.data, seg[1:17, 1:39, 1:35])
    assert {864691136617970907, 2**64 - 5} <= set(np.unique(cut.data).tolist())
    assert chunk_gets(mirror) and all(r.status == 200 for r in chunk_gets(mirror))


def test_mip1_doubles_xy_voxel_size(image: np.ndarray, mirror) -> None:
    info = layer_info("precomputed://gs://bucket/em")
    assert info.voxel_sizes_nm == ((40.0, 8.0, 8.0), (40.0, 16.0, 16.0))
    # CloudVolume's add_scale: offset floor(o / 2), size ceil(n / 2) in x and y; z untouched
    assert info.bounds[1] == (slice(3, 23), slice(10, 30), slice(5, 30))
    box = (slice(4, 21), slice(11, 29), slice(6, 27))
    cut = read_cutout("precomputed://gs://bucket/em", box, mip=1)
    assert cut.voxel_size_nm == (40.0, 16.0, 16.0) and cut.mip == 1
    np.testing.assert_array_equal(cut.data, image[:, ::2, ::2][shifted(box, (3, 10, 5))])
    assert all("/16.0_16.0_40.0/" in r.path for r in chunk_gets(mirror))


def test_missing_chunk_is_an_error_or_listed_zeros(image: np.ndarray, mirror_root: Path, mirror) -> None:
    layer = mirror_root / "storage.googleapis.com" / "bucket" / "em" / "8.0_8.0_40.0"
    (layer / "26-42_36-52_11-19").unlink()  # chunk x 26:42, y 36:52, z 11:19
    gone = (slice(11, 19), slice(36, 52), slice(26, 42))
    box = (slice(5, 17), slice(30, 50), slice(14, 40))
    with pytest.raises(MissingChunksError) as err:
        read_cutout("precomputed://gs://bucket/em", box)
    message = str(err.value)
    assert "\n" not in message and "precomputed://gs://bucket/em" in message and "mip 0" in message
    assert "1 of 8 chunks missing" in message and "z 11:19, y 36:52, x 26:42" in message
    assert "allow_missing=True" in message and err.value.missing == [gone]

    mirror.log.clear()
    cut = read_cutout("precomputed://gs://bucket/em", box, allow_missing=True)
    assert cut.missing_chunks == [gone]
    expected = image[shifted(box, OFFSET)].copy()
    hole = (slice(11 - 5, 17 - 5), slice(36 - 30, 50 - 30), slice(26 - 14, 40 - 14))  # gone ∩ box, in the cutout
    expected[hole] = 0
    np.testing.assert_array_equal(cut.data, expected)
    assert np.any(image[shifted(box, OFFSET)][hole] != 0)  # the zeros are really the hole, not the data
    # one HEAD per chunk to find the hole (no body), then one GET per chunk
    assert sum(r.method == "HEAD" for r in mirror.log) == 8 and len(chunk_gets(mirror)) == 8


def test_box_outside_bounds_names_box_and_bounds(image: np.ndarray, mirror) -> None:
    with pytest.raises(BoxOutOfBoundsError, match=r"box z 0:10, y 30:40, x 14:20 .*bounds z 3:23, y 20:60, x 10:60"):
        read_cutout("precomputed://gs://bucket/em", "0:10,30:40,14:20")
    with pytest.raises(BoxOutOfBoundsError, match=r"bounds z 3:23, y 10:30, x 5:30 at mip 1"):
        read_cutout("precomputed://gs://bucket/em", "5:10,20:40,5:10", mip=1)
    with pytest.raises(ValueError, match=r"mip 2 does not exist.*1: \(40.0, 16.0, 16.0\)"):
        read_cutout("precomputed://gs://bucket/em", "5:10,20:30,10:20", mip=2)
    with pytest.raises(ValueError, match=r"bbox '5:10,20:30' is not 'z0:z1,y0:y1,x0:x1'"):
        read_cutout("precomputed://gs://bucket/em", "5:10,20:30")
    assert not chunk_gets(mirror)


def test_offline_touches_nothing(image: np.ndarray, mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"EMDATA_OFFLINE=1.*gs://bucket/em"):
        read_cutout("precomputed://gs://bucket/em", "5:10,30:40,14:20")
    with pytest.raises(OfflineError):
        layer_info("gs://bucket/em")
    assert mirror.log == []


def test_channels_come_first(mirror_root: Path, mirror) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (3, 10, 20, 30), dtype=np.uint8)
    write_precomputed_layer(mirror_root, "https://data.example.org/rgb", rgb, (30.0, 6.0, 6.0))
    assert layer_info("https://data.example.org/rgb").num_channels == 3
    cut = read_cutout("precomputed://https://data.example.org/rgb", "2:9,3:19,4:29")
    assert cut.data.shape == (3, 7, 16, 25)
    np.testing.assert_array_equal(cut.data, rgb[:, 2:9, 3:19, 4:29])
    assert cut.source == f"{mirror.url}/data.example.org/rgb"


def test_sharded_layer_with_unwritten_zero_chunk(mirror_root: Path, mirror) -> None:
    seg = np.random.default_rng(4).choice(BIG_IDS[1:], size=(16, 32, 32))
    seg[8:16, 16:32, 0:16] = 0  # CloudVolume leaves this all-zero chunk out of the shard
    write_precomputed_layer(mirror_root, "gs://bucket/sharded", seg, (40.0, 8.0, 8.0), layer_type="segmentation",
                            encoding="compressed_segmentation", chunk_size_zyx=CHUNK, sharded=True,
                            skip_zero_chunks=True)
    assert layer_info("gs://bucket/sharded").scales[0].sharded
    np.testing.assert_array_equal(read_cutout("gs://bucket/sharded", "1:8,2:30,3:31").data, seg[1:8, 2:30, 3:31])
    with pytest.raises(MissingChunksError, match=r"1 of 8 chunks missing .*z 8:16, y 16:32, x 0:16"):
        read_cutout("gs://bucket/sharded", "4:12,12:20,0:20")
    cut = read_cutout("gs://bucket/sharded", "4:12,12:20,0:20", allow_missing=True)
    np.testing.assert_array_equal(cut.data, seg[4:12, 12:20, 0:20])
    assert cut.missing_chunks == [(slice(8, 16), slice(16, 32), slice(0, 16))]
    assert {r.status for r in chunk_gets(mirror)} == {206}  # shard index and chunks by Range


def test_info_redirect_stays_on_the_mirror(image: np.ndarray, mirror_root: Path, mirror) -> None:
    old = mirror_root / "storage.googleapis.com" / "bucket" / "old"
    old.mkdir()
    (old / "info").write_text(json.dumps({"redirect": "gs://bucket/em"}))
    cut = read_cutout("precomputed://gs://bucket/old", "5:6,30:31,14:15")
    assert cut.source == f"{mirror.url}/storage.googleapis.com/bucket/em"
    assert cut.data[0, 0, 0] == image[2, 10, 4]
    assert [r.path for r in mirror.log][:2] == ["/storage.googleapis.com/bucket/old/info",
                                                 "/storage.googleapis.com/bucket/em/info"]


def test_gzipped_chunk_files_on_a_static_mirror_are_missing_not_zeros(mirror_root: Path, mirror) -> None:
    from cloudvolume import CloudVolume

    # CloudVolume's default over file:// stores "<chunk>.gz"; over HTTP it asks for "<chunk>" (404 here),
    # which fill_missing=True readers would turn into zeros without a word.
    info = CloudVolume.create_new_info(1, "image", "uint8", "raw", [8, 8, 40], [0, 0, 0], [32, 32, 16],
                                       chunk_size=[16, 16, 8])
    cv = CloudVolume(f"file://{mirror_root}/storage.googleapis.com/bucket/gz", info=info, progress=False)
    cv.commit_info()
    cv[:, :, :] = np.ones((32, 32, 16, 1), np.uint8)
    with pytest.raises(MissingChunksError, match=r"8 of 8 chunks missing .*file 8_8_40/0-16_0-16_0-8\)"):
        read_cutout("gs://bucket/gz", "0:16,0:32,0:32")
    assert [r.status for r in chunk_gets(mirror) if r.method == "GET"] == [404] * 8


def test_missing_info_and_missing_extra_are_explained(mirror_root: Path, mirror,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.sources.download import DownloadError

    with pytest.raises(DownloadError, match=r"no precomputed info file at http://127\.0\.0\.1:\d+/storage"):
        layer_info("gs://bucket/nothing")
    annotations = mirror_root / "storage.googleapis.com" / "bucket" / "synapses"
    annotations.mkdir(parents=True)
    (annotations / "info").write_text(json.dumps({"@type": "neuroglancer_annotations_v1"}))
    with pytest.raises(DownloadError, match=r"not the info file of a precomputed image or segmentation volume"):
        layer_info("precomputed://gs://bucket/synapses")
    monkeypatch.setitem(sys.modules, "cloudvolume", None)
    with pytest.raises(ImportError, match=r"pip install 'emdata\[precomputed\]'"):
        layer_info("gs://bucket/nothing")


def test_box_over_the_size_limit_is_refused_before_any_chunk_request(image: np.ndarray, mirror,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.boxes import BoxTooLargeError

    monkeypatch.setenv("EMDATA_MAX_BOX_GB", "0.00001")  # 10 kB; the box is 12 × 20 × 50 uint8 = 12 kB
    with pytest.raises(BoxTooLargeError, match=r"^precomputed://gs://bucket/em: the box at mip 0 z 5:17, y 30:50, "
                                               r"x 10:60 \(12×20×50 voxels\) would read 12.0 kB, over the limit"):
        read_cutout("precomputed://gs://bucket/em", "5:17,30:50,10:60")
    assert chunk_gets(mirror) == []
    monkeypatch.setenv("EMDATA_MAX_BOX_GB", "0.001")
    assert read_cutout("precomputed://gs://bucket/em", "5:17,30:50,10:60").data.shape == (12, 20, 50)
