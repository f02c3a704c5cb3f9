"""Remote volumes: the same samples as locally, missing chunks raise or are masked (never zeros),
a replaced version is refused, the cache is bounded and chunk reads run concurrently."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emdata.store import remote
from emdata.store.publish import VolumeReplacedError, resolve
from emdata.store.remote import MissingChunkError, RemoteReadError, RemoteVolume
from emdata.store.volume import IncompleteVolumeError, VolumeNotFoundError, open_volume
from emdata.store.writer import COMPLETE_MARKER, LabelLayerData, write_volume
from emdata.testing.server import MirrorServer

torch = pytest.importorskip("torch")

from emdata.torch import IGNORE, Foreground, PatchDataset, make_loader, widen  # noqa: E402

META = {"dataset": "demo", "volume": "v", "split": "train"}
SHAPE = (40, 300, 300)  # chunks of 32x128x128 at 30x6x6 nm: a 2x3x3 grid per array


def _write(path: Path, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3 + shift)
    raw = rng.integers(1, 255, SHAPE, dtype=np.uint8)
    cells = np.zeros(SHAPE, np.uint16)
    cells[:, 40:220, 30:250] = rng.integers(1, 40, (SHAPE[0], 180, 220), dtype=np.uint16)
    # chunk (0, 2, 2) (z 0:32, y 256:300, x 256:300) stays all 0: the writer leaves it out
    mito = (cells % 3 == 0).astype(np.uint8) * (cells > 0)
    layers = [LabelLayerData("cells", cells, "instance", instance_of="neuron"),
              LabelLayerData("mito", mito, "semantic",
                             [{"value": 0, "name": "background", "ontology": "background"},
                              {"value": 1, "name": "mito", "ontology": "mitochondrion"}])]
    write_volume(path, raw, (30, 6, 6), labels=layers, meta=META)
    return raw, cells


@pytest.fixture
def served(tmp_path: Path):
    raw, cells = _write(tmp_path / "v.ome.zarr")
    with MirrorServer(tmp_path) as server:
        yield tmp_path / "v.ome.zarr", server.url + "/v.ome.zarr", raw, cells, server


def _chunk_file(path: Path, array: str, coords: tuple[int, int, int]) -> Path:
    return resolve(path) / array / "c" / "/".join(map(str, coords))


def _dataset(volume: object, **kw: object) -> PatchDataset:
    kw = {"samples_per_epoch": 12, "seed": 5, **kw}
    return PatchDataset([volume], (8, 64, 64), labels=["cells"], targets=["semantic", "boundaries"], **kw)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_remote_samples_equal_local_samples(served) -> None:
    path, url, raw, _, server = served
    vol = open_volume(url)
    assert isinstance(vol, RemoteVolume) and vol.shape == SHAPE and vol.meta == open_volume(path).meta
    np.testing.assert_array_equal(vol.raw[3:37, 100:290, 5:200], raw[3:37, 100:290, 5:200])
    np.testing.assert_array_equal(vol.label_level("cells", 1)[...], open_volume(path).label_level("cells", 1)[...])
    for kw in ({}, {"voxel_size": (30, 9, 9), "sampler": Foreground("mito")}, {"augment": "em"}):
        local, far = _dataset(path, **kw), _dataset(url, **kw)
        for key in [(0, 0), (0, 7), (2, 3)]:
            _same(local[key], far[key])
    assert server.requests_for("indices/mito.npz"), "the stored foreground index is fetched, not recomputed"
    assert not any(r.status >= 500 for r in server.log)


def test_remote_dataset_in_process_workers(served) -> None:
    path, url, *_ = served
    local, far = _dataset(path), pickle.loads(pickle.dumps(_dataset(url)))
    loader = make_loader(far, batch_size=4, num_workers=2, multiprocessing_context="fork")
    got = [b["raw"].numpy() for b in loader]
    want = [b["raw"].numpy() for b in make_loader(local, batch_size=4)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_left_out_chunk_reads_as_fill_but_missing_chunk_is_an_error_naming_its_url(served) -> None:
    path, url, raw, _, _ = served
    assert not _chunk_file(path, "labels/cells/0", (0, 2, 2)).exists(), "the writer leaves all-0 chunks out"
    vol = open_volume(url)
    assert not vol.labels["cells"][0:32, 256:300, 256:300].any()  # left out by design: fill value, no error
    _chunk_file(path, "labels/cells/0", (1, 0, 1)).unlink()  # holds data: now missing from the copy
    with pytest.raises(MissingChunkError) as err:
        vol.labels["cells"][30:34, 100:140, 120:140]
    assert f"{url}/labels/cells/0/c/1/0/1" in str(err.value) and "z 32:40, y 0:128, x 128:256" in str(err.value)
    assert err.value.url == f"{url}/labels/cells/0/c/1/0/1"
    with pytest.raises(MissingChunkError):
        _dataset(url, regions_nm=[((32 * 30, 40 * 30), (0, 128 * 6), (128 * 6, 256 * 6))])[0, 1]
    np.testing.assert_array_equal(vol.raw[30:34, 100:140, 120:140], raw[30:34, 100:140, 120:140])


def test_missing_chunk_without_checksums_is_an_error(served) -> None:
    path, url, *_ = served
    import json

    meta = resolve(path) / "labels/cells/0/zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["emdata"]["checksum"]
    meta.write_text(json.dumps(doc))
    with pytest.raises(MissingChunkError, match="records no block checksums"):
        open_volume(url).labels["cells"][0:32, 256:300, 256:300]  # absent, and nothing says it may be


def test_ignore_mode_masks_voxels_of_missing_chunks(served) -> None:
    path, url, *_ = served
    _chunk_file(path, "labels/cells/0", (1, 0, 1)).unlink()
    _chunk_file(path, "0", (1, 1, 0)).unlink()
    local = _dataset(path, regions_nm=[((24 * 30, 40 * 30), (0, 1800), (0, 1800))], samples_per_epoch=40)
    far = _dataset(open_volume(url, missing="ignore"), regions_nm=[((24 * 30, 40 * 30), (0, 1800), (0, 1800))],
                   samples_per_epoch=40)
    hit = 0
    for i in range(40):
        a, b = widen(local[0, i]), widen(far[0, i])  # compact samples mark lost voxels in valid; widen applies it
        z0, y0, x0 = (np.asarray(b["meta"]["offset_nm"]) / (30, 6, 6)).astype(int)
        z, y, x = np.meshgrid(*(np.arange(o, o + n) for o, n in zip((z0, y0, x0), (8, 64, 64))), indexing="ij")
        lost = ((z >= 32) & (y < 128) & (x >= 128) & (x < 256)) | ((z >= 32) & (y >= 128) & (y < 256) & (x < 128))
        a, b = ({k: v.reshape(lost.shape) for k, v in s.items() if k in ("valid", "raw", "labels/cells", "semantic")}
                for s in (a, b))
        np.testing.assert_array_equal(b["valid"], (~lost).astype(np.uint8))
        hit += bool(lost.any())
        assert (b["labels/cells"][lost] == IGNORE).all() and (b["semantic"][lost] == IGNORE).all()
        for key in ("labels/cells", "raw"):
            np.testing.assert_array_equal(b[key][~lost], a[key][~lost])
    assert 0 < hit < 40, "some samples touch the missing chunks, some do not"


def test_ignore_mask_does_not_depend_on_what_was_read_before(served) -> None:
    path, url, *_ = served
    _chunk_file(path, "labels/cells/0", (1, 0, 1)).unlink()
    vol = open_volume(url, missing="ignore")
    box = (slice(30, 34), slice(100, 140), slice(120, 140))
    assert vol.missing_boxes("cells", 0, box) == [(slice(32, 40), slice(0, 128), slice(128, 256))]
    assert vol.missing_boxes("raw", 0, box) == []
    assert vol.missing_boxes("cells", 0, (slice(0, 32), slice(256, 300), slice(256, 300))) == []  # left out


def test_replaced_remote_version_is_refused(served, monkeypatch: pytest.MonkeyPatch) -> None:
    path, url, *_ = served
    vol = open_volume(url)
    pickled = pickle.dumps(vol)
    vol.raw[0:4, 0:4, 0:4]
    _write(path, shift=1)  # prepared again: the server now serves another version
    with pytest.raises(VolumeReplacedError, match="open the volume again"):
        pickle.loads(pickled).raw  # noqa: B018  (a worker opening the pinned version)
    with pytest.raises(VolumeReplacedError):
        open_volume(vol.folder)
    monkeypatch.setattr(remote, "RECHECK_S", 0.0)
    with pytest.raises(VolumeReplacedError, match="replaced by"):
        vol.raw[10:20, 130:140, 0:10]
    assert isinstance(open_volume(url), RemoteVolume)  # opened afresh: the new version


def test_cache_is_bounded(served) -> None:
    _, url, raw, _, server = served
    vol = open_volume(url, cache_bytes=2_000_000)  # the raw level is 3.6 MB, a chunk about 0.5 MB
    for _ in range(2):
        np.testing.assert_array_equal(vol.raw[...], raw)
        assert 1_000_000 < vol.cache.nbytes <= 2_000_000
    first, hits = len(server.requests_for("/c/0/0/0")), vol.cache.hits
    vol.raw[0:2, 0:2, 0:2]
    vol.raw[0:2, 0:2, 0:2]
    assert len(server.requests_for("/c/0/0/0")) <= first + 1 and vol.cache.hits >= hits + 1


def test_chunks_of_one_read_are_fetched_concurrently(tmp_path: Path) -> None:
    _write(tmp_path / "v.ome.zarr")
    active = peak = 0
    lock = threading.Lock()

    def count(request: object) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1

    with MirrorServer(tmp_path, hook=count) as server:
        vol = open_volume(server.url + "/v.ome.zarr")
        vol.raw[...]
    assert peak >= 4, f"at most {peak} request(s) in flight for an 18-chunk read"


def test_latency_is_injected(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    import requests

    with MirrorServer(tmp_path, latency_s=0.2) as server:
        start = time.perf_counter()
        assert requests.get(server.url + "/a").content == b"x"
        assert time.perf_counter() - start >= 0.2


def test_wrong_urls_say_what_is_wrong(served, tmp_path: Path) -> None:
    path, url, *_ = served
    with pytest.raises(VolumeNotFoundError, match=r"no zarr\.json"):
        open_volume(url.replace("v.ome.zarr", "w.ome.zarr"))
    (resolve(path) / COMPLETE_MARKER).unlink()
    with pytest.raises(IncompleteVolumeError, match="incomplete volume"):
        open_volume(url)
    with pytest.raises(ValueError, match="missing must be one of"):
        open_volume(url, missing="zeros")
    with pytest.raises(ValueError, match="remote volumes"):
        open_volume(path, missing="ignore")
    with MirrorServer(tmp_path) as gone:
        closed = gone.url
    with pytest.raises(RemoteReadError, match="read failed after"):
        open_volume(closed + "/v.ome.zarr")


def test_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "remote.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "docs/remote.md has a runnable python example"
    for block in blocks:
        exec(compile(block, "docs/remote.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and all(line.startswith("torch.Size([4, 1, 8, 128, 128]) ") for line in printed)


def test_any_fsspec_protocol_takes_the_same_path(tmp_path: Path) -> None:
    """What s3:// and gs:// do (objects, no HTTP) shown with fsspec's in-memory filesystem."""
    fsspec = pytest.importorskip("fsspec")
    path = tmp_path / "v.ome.zarr"
    raw, cells = _write(path)
    fs = fsspec.filesystem("memory")
    fs.put(str(resolve(path)), "/bucket/v.ome.zarr", recursive=True)
    try:
        vol = open_volume("memory://bucket/v.ome.zarr")
        np.testing.assert_array_equal(vol.labels["cells"][...], cells)
        assert not vol.labels["cells"][0:32, 256:300, 256:300].any()  # left out by the writer
        fs.rm("/bucket/v.ome.zarr/0/c/1/2/0")
        with pytest.raises(MissingChunkError, match=r"memory://bucket/v\.ome\.zarr/0/c/1/2/0"):
            open_volume("memory://bucket/v.ome.zarr").raw[35, 260, 10]
        np.testing.assert_array_equal(vol.raw[0:32, 0:10, 0:10], raw[0:32, 0:10, 0:10])
    finally:
        fs.rm("/bucket", recursive=True)


def test_next_samples_are_fetched_ahead(served) -> None:
    _, url, _, _, server = served
    ds = _dataset(url)
    ds[0, 0]
    for future in list(ds._ahead[2].values()):
        future.result(timeout=60)
    ds._remote(ds._plans[0]).wait_prefetched(timeout=60)  # the read-ahead's fetches run on after it returns
    before = len(server.log)
    ds._has_remote = False  # no read-ahead from here on: only the samples' own requests would show
    ds[0, 1], ds[0, 2]  # fetched while sample 0 was decoded: no request of their own
    assert len(server.log) == before


def test_whole_chunk_reads_decode_from_the_cache(served) -> None:
    _, url, raw, cells, server = served
    vol = open_volume(url)
    assert vol.raw._decode is not None and vol.labels["cells"]._decode is not None  # plain codecs: fast path
    edge = (slice(32, 40), slice(256, 300), slice(128, 256))  # a chunk cut by the array's edge
    np.testing.assert_array_equal(vol.raw[edge], raw[edge])
    np.testing.assert_array_equal(vol.labels["cells"][edge], cells[edge])
    left_out = (slice(0, 32), slice(256, 300), slice(256, 300))
    assert vol.labels["cells"][left_out].shape == (32, 44, 44) and not vol.labels["cells"][left_out].any()
    before = len(server.log)
    np.testing.assert_array_equal(vol.raw[edge], raw[edge])  # held: no request
    assert vol.labels["cells"][left_out].shape == (32, 44, 44)  # known left out: no request either
    assert len(server.log) == before


def _chunk_requests(server: MirrorServer) -> list[str]:
    return [r.path for r in server.log if "/c/" in r.path and r.method == "GET"]


def test_prefetch_returns_at_once_and_reads_join_its_requests(served) -> None:
    _, url, raw, cells, server = served
    vol = open_volume(url)
    boxes = [(slice(3, 37), slice(100, 290), slice(5, 200)), (slice(0, 40), slice(0, 300), slice(0, 300))]
    started = vol.prefetch([("raw", 0, boxes[0]), ("cells", 0, boxes[0])])
    assert started == 2 * 2 * 3 * 2  # raw and cells chunks of the box, issued together
    np.testing.assert_array_equal(vol.raw[boxes[0]], raw[boxes[0]])  # may run while they arrive
    np.testing.assert_array_equal(vol.labels["cells"][boxes[0]], cells[boxes[0]])
    vol.prefetch([("raw", 0, boxes[1]), ("cells", 0, boxes[1])], wait=True)
    np.testing.assert_array_equal(vol.raw[boxes[1]], raw[boxes[1]])
    np.testing.assert_array_equal(vol.labels["cells"][boxes[1]], cells[boxes[1]])
    requested = _chunk_requests(server)
    assert len(requested) == len(set(requested)), "a chunk in flight or held is never requested again"
    assert vol.prefetch([("raw", 0, boxes[1])]) == 0  # all held: nothing to start


def test_prefetch_leaves_missing_chunks_to_the_read(served) -> None:
    path, url, *_ = served
    _chunk_file(path, "labels/cells/0", (1, 0, 1)).unlink()
    vol = open_volume(url)
    box = (slice(30, 34), slice(100, 140), slice(120, 140))
    vol.prefetch([("cells", 0, box)])  # no error here: the chunk is not asked for yet
    vol.wait_prefetched(timeout=60)
    for _ in range(2):  # known missing now: still raises, never zeros
        with pytest.raises(MissingChunkError, match="labels/cells/0/c/1/0/1"):
            vol.labels["cells"][box]
    _chunk_file(path, "0", (1, 2, 2)).unlink()  # not read yet
    with pytest.raises(MissingChunkError, match="/0/c/1/2/2"):  # waited for: raised here
        vol.prefetch([("raw", 0, (slice(32, 40), slice(256, 300), slice(256, 300)))], wait=True)
    ignoring = open_volume(url, missing="ignore")
    ignoring.prefetch([("cells", 0, box)], wait=True)
    assert ignoring.missing_boxes("cells", 0, box) == [(slice(32, 40), slice(0, 128), slice(128, 256))]


def test_prefetch_after_a_replacement_serves_nothing_of_the_new_version(served, monkeypatch: pytest.MonkeyPatch
                                                                        ) -> None:
    path, url, raw, _, _ = served
    vol = open_volume(url)
    box = (slice(0, 32), slice(0, 128), slice(0, 128))
    vol.prefetch([("raw", 0, box)], wait=True)
    held = vol.cache.nbytes
    new_raw, _ = _write(path, shift=1)  # prepared again: the server now serves another version
    monkeypatch.setattr(remote, "RECHECK_S", 0.0)
    np.testing.assert_array_equal(vol.raw[box], raw[box])  # fetched before: the pinned version's bytes
    other = (slice(32, 40), slice(128, 256), slice(128, 256))
    vol.prefetch([("raw", 0, other)])  # its fetch sees the new marker and stores nothing
    vol.wait_prefetched(timeout=60)
    assert vol.cache.nbytes == held
    with pytest.raises(VolumeReplacedError, match="replaced by"):
        vol.raw[other]
    assert not np.array_equal(new_raw[other], raw[other])


def test_cache_keeps_small_chunks_over_large_ones() -> None:
    cache = remote.ByteCache(max_bytes=1000)
    for i in range(10):
        cache.put(("label", i), bytes(10))  # compressed label chunks: 100 bytes in all
    for _ in range(5):  # raw chunks cycling through a cache too small for them
        for i in range(12):
            cache.put(("raw", i), bytes(200))
            assert cache.nbytes <= 1000
    assert all(cache.holds(("label", i)) for i in range(10)), "an LRU would have dropped every label chunk"
    assert sum(cache.holds(("raw", i)) for i in range(12)) == 4
    cache.put("too big", bytes(1001))
    assert not cache.holds("too big") and len(cache) == 14
    for i in range(200):  # the rows of re-used keys do not pile up
        cache.get(("label", i % 10))
    assert len(cache._heap) <= 4 * len(cache) + 64


def test_prefetch_keeps_the_held_chunks_it_will_need(served) -> None:
    _, url, raw, _, server = served
    vol = open_volume(url, cache_bytes=2 * (1 << 19) + 100_000)  # two raw chunks of 0.5 MB and the metadata
    a, b = (slice(0, 32), slice(0, 128), slice(0, 128)), (slice(0, 32), slice(128, 256), slice(0, 128))
    vol.raw[a], vol.raw[b]  # both held, a the older
    more = (slice(0, 32), slice(0, 128), slice(128, 256))  # one more chunk: a held one must go
    vol.prefetch([("raw", 0, a), ("raw", 0, more)], wait=True)
    before = len(server.log)
    np.testing.assert_array_equal(vol.raw[a], raw[a])  # not a: the prefetch said it is needed
    assert len(server.log) == before
    np.testing.assert_array_equal(vol.raw[b], raw[b])
    assert len(server.log) == before + 1
