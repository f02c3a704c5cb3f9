"""PatchDataset over precomputed layers (raw + segmentation) served over loopback HTTP: the same
samples as from a prepared volume of the same arrays; a missing chunk raises naming its URL, or
(opt-in) is masked, never zeros."""

from __future__ import annotations

import pickle
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from emdata.store.precomputed import PrecomputedVolume, open_precomputed
from emdata.store.remote import MissingChunkError
from emdata.store.volume import open_volume
from emdata.store.writer import LabelLayerData, write_volume
from emdata.testing.precomputed import write_precomputed_layer
from emdata.testing.server import MirrorServer

pytestmark = pytest.mark.skipif(find_spec("cloudvolume") is None, reason="needs emdata[precomputed]")
torch = pytest.importorskip("torch")

from emdata.torch import IGNORE, PatchDataset, widen  # noqa: E402

SHAPE = (24, 96, 96)
OFFSET = (4, 32, 64)  # the layers start here (absolute voxels), not at 0
CHUNK = (8, 32, 32)


@pytest.fixture(autouse=True)
def tmp_user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing cloudvolume creates ~/.cloudvolume: keep it out of the real home."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


@pytest.fixture
def layers(tmp_path: Path):
    rng = np.random.default_rng(2)
    em = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    ids = rng.integers(1, 9, (SHAPE[0] // 4, SHAPE[1] // 8, SHAPE[2] // 8)).astype(np.uint64)
    seg = ids.repeat(4, 0).repeat(8, 1).repeat(8, 2) * np.uint64(864691136617970907)
    seg[:, :20, :] = 0
    root = tmp_path / "mirror"
    for url, data, kind in (("https://host/em", em, "image"), ("https://host/seg", seg, "segmentation")):
        write_precomputed_layer(root, url, data, (30.0, 8.0, 8.0), layer_type=kind, chunk_size_zyx=CHUNK,
                                voxel_offset_zyx=OFFSET)
    local = tmp_path / "local" / "em.ome.zarr"
    write_volume(local, em, (30, 8, 8), meta={"dataset": "precomputed", "volume": "em", "split": "train"},
                 labels=[LabelLayerData("cells", seg, "instance",
                                        [{"value": 0, "name": "background", "ontology": "background"}],
                                        instance_of="neuron")])
    with MirrorServer(root) as server:
        yield server, root, local, em, seg


def _open(server: MirrorServer, **kw: object) -> PrecomputedVolume:
    return open_precomputed(f"{server.url}/host/em", labels={"cells": f"{server.url}/host/seg"}, **kw)  # type: ignore[arg-type]


def _dataset(volume: object, **kw: object) -> PatchDataset:
    kw = {"samples_per_epoch": 10, "seed": 3, **kw}
    return PatchDataset([volume], (8, 40, 40), labels=["cells"], targets=["semantic", "boundaries"], **kw)


def test_precomputed_samples_equal_prepared_samples(layers) -> None:
    server, _, local, em, seg = layers
    vol = _open(server)
    assert vol.shape == SHAPE and vol.voxel_size == (30.0, 8.0, 8.0) and vol.meta["raw"]["box"][0] == [4, 28]
    np.testing.assert_array_equal(vol.raw[3:20, 30:90, 1:70], em[3:20, 30:90, 1:70])
    np.testing.assert_array_equal(vol.labels["cells"][5, 10:50, :], seg[5, 10:50, :])
    assert vol.labels["cells"][...].dtype == np.uint64
    for kw in ({}, {"voxel_size": (30, 12, 12)}, {"augment": "em"}):
        here, there = _dataset(local, **kw), pickle.loads(pickle.dumps(_dataset(vol, **kw)))
        for key in [(0, 0), (0, 4), (1, 9)]:
            a, b = here[key], there[key]
            for k in ("raw", "labels/cells", "semantic", "boundaries"):
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    reopened = open_volume(vol.folder)
    assert isinstance(reopened, PrecomputedVolume) and reopened.meta == vol.meta


def test_missing_precomputed_chunk_is_an_error_or_masked(layers) -> None:
    server, root, _, _, seg = layers
    scale = next(p for p in (root / "host" / "seg").iterdir() if p.is_dir())
    name = f"{OFFSET[2] + 32}-{OFFSET[2] + 64}_{OFFSET[1]}-{OFFSET[1] + 32}_{OFFSET[0] + 8}-{OFFSET[0] + 16}"
    (scale / name).unlink()  # volume voxels z 8:16, y 0:32, x 32:64
    vol = _open(server)
    with pytest.raises(MissingChunkError) as err:
        vol.labels["cells"][10:12, 0:40, 30:40]
    assert f"{server.url}/host/seg/{scale.name}/{name}" in str(err.value)
    assert vol.raw[10:12, 0:40, 30:40].shape == (2, 40, 10)  # other layers are unaffected
    masked = _open(server, missing="ignore")
    assert masked.missing_boxes("cells", 0, (slice(0, 24), slice(0, 40), slice(0, 40))) == [
        (slice(8, 16), slice(0, 32), slice(32, 64))]
    ds = _dataset(masked, regions_nm=[((8 * 30, 16 * 30), (0, 40 * 8), (20 * 8, 96 * 8))])
    sample = widen(ds[0, 0])  # compact samples mark lost voxels in valid; widen applies it
    z0, y0, x0 = (np.asarray(sample["meta"]["offset_nm"]) / (30, 8, 8)).astype(int)
    lost = np.zeros((8, 40, 40), bool)
    lost[:, : max(0, 32 - y0), max(0, 32 - x0): max(0, 64 - x0)] = True
    assert lost.any() and (~lost).any()
    np.testing.assert_array_equal(sample["valid"].reshape(lost.shape), (~lost).astype(np.uint8))
    cells = sample["labels/cells"].reshape(lost.shape)
    assert (cells[lost] == IGNORE).all()
    np.testing.assert_array_equal(cells[~lost], seg[z0:z0 + 8, y0:y0 + 40, x0:x0 + 40][~lost].astype(np.int64))
