"""Replicas of the precomputed datasets (MICrONS minnie65 and layer 2/3, H01, J0126, Hemibrain, Kasthuri 2015).

Each writer puts CloudVolume-written Neuroglancer precomputed layers at the published layer
paths (as the dataset pages and torch-em's loaders give them) under ``<root>/<host>/<path>`` — ``gs://b/p`` as
``storage.googleapis.com/b/p`` — with tiny extents but the published voxel sizes (z, y, x nm),
dtypes and encodings: EM uint8 ``raw`` (hemibrain's EM ``jpeg``, as published), segmentations
uint64 ``compressed_segmentation`` (MICrONS with 18-digit root ids). Layers of one dataset share
one physical frame (voxel ``i`` at resolution ``r`` starts at ``i·r`` nm) and start at non-zero
voxel offsets. Facts the published sources do not state (chunk sizes, offsets, mip ladders of the
segmentations, the EM encodings other than hemibrain's, the mito/ground-truth dtypes) are test
choices, noted per writer. Writes go through :func:`emdata.testing.precomputed.write_precomputed_layer`
(CloudVolume); this module shares no code with the recipes.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     layers = write_h01_replica(Path(tmp))
    >>> layers["c3"].voxel_size_nm, layers["c3"].data.dtype
    ((33.0, 8.0, 8.0), dtype('uint64'))
    >>> layers["c3"].at((slice(5, 7), slice(64, 74), slice(32, 37))).shape  # absolute voxels from the offset
    (2, 10, 5)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emdata.testing.precomputed import write_precomputed_layer

Voxel = tuple[float, float, float]
Zyx = tuple[int, int, int]

MICRONS_EM = "precomputed://https://bossdb-open-data.s3.amazonaws.com/iarpa_microns/minnie/minnie65/em"
MICRONS_SEG = {
    "117": "precomputed://https://bossdb-open-data.s3.amazonaws.com/iarpa_microns/minnie/minnie65/seg",
    "343": "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m343/",
    "943": "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m943/",
    "1300": "precomputed://https://storage.googleapis.com/iarpa_microns/minnie/minnie65/seg_m1300/",
}
LAYER23_EM = ("precomputed://https://storage.googleapis.com/microns_public_datasets/pinky100_v0/"
              "son_of_alignment_v15_rechunked")
LAYER23_SEG = "precomputed://https://storage.googleapis.com/microns_public_datasets/pinky100_v185/seg"
H01_EM = "gs://h01-release/data/20210601/4nm_raw"
H01_C3 = "gs://h01-release/data/20210601/c3"
_J0126 = "https://storage.googleapis.com/j0126-nature-methods-data/GgwKmcKgrcoNxJccKuGIzRnQqfit9hnfK1ctZzNbnuU"
J0126_RAW = f"{_J0126}/rawdata_realigned"
J0126_SEG = f"{_J0126}/ffn_segmentation"
HEMIBRAIN_EM = "gs://neuroglancer-janelia-flyem-hemibrain/emdata/clahe_yz/jpeg"
HEMIBRAIN_SEG = "gs://neuroglancer-janelia-flyem-hemibrain/v1.2/segmentation"
HEMIBRAIN_MITO = "gs://neuroglancer-janelia-flyem-hemibrain/mito_20190717.27250582"
KASTHURI_IMAGE = "gs://neuroglancer-public-data/kasthuri2011/image_color_corrected"
KASTHURI_GT = "gs://neuroglancer-public-data/kasthuri2011/ground_truth"

CHUNK: Zyx = (8, 16, 16)
"""(z, y, x) chunk size of every replica layer (small, so test boxes cross chunk edges)."""


@dataclass(frozen=True)
class ReplicaLayer:
    """One written layer: ``data`` is mip 0 as handed to CloudVolume ((z, y, x)), at absolute
    voxels ``offset`` onward; ``decoded`` is what CloudVolume reads back for lossy encodings.

    Example:
        >>> layer = ReplicaLayer("gs://b/em", Path("em"), np.zeros((8, 40, 40), np.uint8), (30.0, 6.0, 6.0),
        ...                      offset=(16, 80, 150), encoding="raw")
        >>> layer.at((slice(20, 24), slice(100, 120), slice(160, 170))).shape
        (4, 20, 10)
    """

    url: str
    path: Path
    data: np.ndarray
    voxel_size_nm: Voxel
    offset: Zyx
    encoding: str
    decoded: np.ndarray | None = None

    def at(self, box: tuple[slice, slice, slice], decoded: bool = False) -> np.ndarray:
        """The written voxels of an absolute (z, y, x) ``box`` at mip 0."""
        source = self.decoded if decoded and self.decoded is not None else self.data
        return source[tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, self.offset))]

    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        """Absolute (z, y, x) voxel bounds at mip 0."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset, self.data.shape))  # type: ignore[return-value]

    def chunk_file(self, start_zyx: Zyx) -> Path:
        """The file of the mip-0 chunk starting at absolute ``start_zyx`` (unsharded layout)."""
        z, y, x = start_zyx
        ends = [min(s + c, o + n) for s, c, o, n in zip(start_zyx, CHUNK, self.offset, self.data.shape)]
        key = json.loads((self.path / "info").read_text())["scales"][0]["key"]
        return self.path / key / f"{x}-{ends[2]}_{y}-{ends[1]}_{z}-{ends[0]}"


def _em(rng: np.random.Generator, shape: Zyx, smooth: bool = False) -> np.ndarray:
    if not smooth:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    base = 128 + 60 * np.sin(x / 5.0 + z / 7.0) * np.cos(y / 6.0) + rng.normal(0, 4, shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def _ids(rng: np.random.Generator, shape: Zyx, pool: np.ndarray, block: int = 4) -> np.ndarray:
    """Blocky segments from ``pool`` with 10 % single-voxel speckle (so off-by-one reads show)."""
    coarse = rng.choice(pool, size=tuple(-(-n // block) for n in shape))
    ids = coarse.repeat(block, 0).repeat(block, 1).repeat(block, 2)[: shape[0], : shape[1], : shape[2]]
    speckle = rng.random(shape) < 0.1
    ids[speckle] = rng.choice(pool, size=int(speckle.sum()))
    return np.ascontiguousarray(ids.astype(np.uint64))


def _write(root: Path, url: str, data: np.ndarray, voxel: Voxel, offset: Zyx, *, encoding: str = "raw",
           mips: int = 1, decode: bool = False) -> ReplicaLayer:
    layer_type = "segmentation" if encoding == "compressed_segmentation" else "image"
    path = write_precomputed_layer(root, url, data, voxel, layer_type=layer_type,
                                   encoding=encoding,
                                   chunk_size_zyx=CHUNK, voxel_offset_zyx=offset, mips=mips)
    decoded = None
    if decode:
        from cloudvolume import CloudVolume

        cv = CloudVolume(f"file://{path}", mip=0, progress=False)
        decoded = np.ascontiguousarray(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0))
    return ReplicaLayer(url, path, data, voxel, offset, encoding, decoded)


def write_microns_minnie65_replica(root: Path, versions: tuple[str, ...] = ("117", "343", "943", "1300"),
                                   seg_voxel_nm: Mapping[str, Voxel] | None = None,
                                   seed: int = 0) -> dict[str, ReplicaLayer]:
    """EM (uint8 raw, 8×8×40 nm, two mips) and one segmentation layer per version.

    Keys ``em`` and ``seg_v<version>``. Segmentations hold uint64 18-digit root ids (a different
    id pool per version, as proofreading changes roots) on the EM grid. A version listed in
    ``seg_voxel_nm`` as ``(40, 4, 4)`` is written at 4×4×40 nm mip 0 (the ids repeated ×2 in y
    and x, offset doubled) with mip 1 at 8×8×40 nm: the seg mip ladders are unverified upstream,
    so tests use it for the resolution-conversion path. Offsets and chunk sizes are test choices.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     layers = write_microns_minnie65_replica(Path(tmp), versions=("343",),
        ...                                             seg_voxel_nm={"343": (40.0, 4.0, 4.0)})
        >>> layers["seg_v343"].voxel_size_nm
        (40.0, 4.0, 4.0)
    """
    rng = np.random.default_rng(seed)
    shape, offset, voxel = (20, 48, 64), (20, 96, 160), (40.0, 8.0, 8.0)
    out = {"em": _write(root, MICRONS_EM, _em(rng, shape), voxel, offset, mips=2)}
    for i, version in enumerate(versions):
        pool = np.concatenate([[0], 864691135000000000 + np.int64(i) * 10**9
                               + rng.choice(10**9, 40, replace=False)]).astype(np.uint64)
        ids = _ids(rng, shape, pool)
        seg_voxel = (seg_voxel_nm or {}).get(version, voxel)
        f = round(voxel[1] / seg_voxel[1])
        if seg_voxel != (voxel[0], voxel[1] / f, voxel[2] / f) or f not in (1, 2):
            raise ValueError(f"seg_voxel_nm[{version!r}] must be {voxel} or (40, 4, 4), got {seg_voxel}")
        fine = ids.repeat(f, 1).repeat(f, 2)
        out[f"seg_v{version}"] = _write(root, MICRONS_SEG[version], fine, seg_voxel,
                                        (offset[0], offset[1] * f, offset[2] * f),
                                        encoding="compressed_segmentation", mips=f)
    return out


def write_microns_layer23_replica(root: Path, seed: int = 5) -> dict[str, ReplicaLayer]:
    """EM ``pinky100_v0/son_of_alignment_v15_rechunked`` (uint8 raw, nominal 4×4×40 nm, mip 1 =
    8×8×40 nm) and ``pinky100_v185/seg`` (uint64 compressed_segmentation at 8×8×40 nm: half the
    EM's resolution in x and y, as the Allen notebooks show) over the same region, with uint64
    18-digit root ids (``648518346…``). Keys ``em`` and ``segmentation``.

    The EM is written at the nominal 4 nm frame users report in its info, not the physical
    3.58 nm; the encodings, offsets (even, like the published 35000/31000/1) and chunk sizes are
    test choices.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     layers = write_microns_layer23_replica(Path(tmp))
        >>> layers["em"].voxel_size_nm, layers["segmentation"].voxel_size_nm
        ((40.0, 4.0, 4.0), (40.0, 8.0, 8.0))
    """
    rng = np.random.default_rng(seed)
    em = _write(root, LAYER23_EM, _em(rng, (16, 64, 64)), (40.0, 4.0, 4.0), (1, 96, 112), mips=2)
    pool = np.concatenate([[0], 648518346340000000 + rng.choice(10**10, 40, replace=False)]).astype(np.uint64)
    seg = _write(root, LAYER23_SEG, _ids(rng, (16, 32, 32), pool), (40.0, 8.0, 8.0), (1, 48, 56),
                 encoding="compressed_segmentation")
    return {"em": em, "segmentation": seg}


def write_h01_replica(root: Path, seed: int = 1) -> dict[str, ReplicaLayer]:
    """``4nm_raw`` (uint8, 4×4×33 nm, mip 1 = 8×8×33 nm as torch-em states) and ``c3`` (uint64
    compressed_segmentation, 8×8×33 nm) covering the same region. Keys ``em`` and ``c3``.

    The EM encoding is not published: written ``raw``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_h01_replica(Path(tmp))["em"].voxel_size_nm
        (33.0, 4.0, 4.0)
    """
    rng = np.random.default_rng(seed)
    em = _write(root, H01_EM, _em(rng, (12, 64, 80)), (33.0, 4.0, 4.0), (5, 128, 64), mips=2)
    pool = np.concatenate([[0], rng.choice(10**12, 30, replace=False)]).astype(np.uint64)
    c3 = _write(root, H01_C3, _ids(rng, (12, 32, 40), pool), (33.0, 8.0, 8.0), (5, 64, 32),
                encoding="compressed_segmentation")
    return {"em": em, "c3": c3}


def write_j0126_replica(root: Path, voxel_size_nm: Voxel = (20.0, 10.0, 10.0),
                        seed: int = 2) -> dict[str, ReplicaLayer]:
    """``rawdata_realigned`` (uint8 raw) and ``ffn_segmentation`` (uint64 compressed_segmentation)
    on one grid, at ``voxel_size_nm`` (torch-em's 10×10×20 nm x×y×z by default; pass
    ``(20, 9, 9)`` for the value awesome-em-datasets lists). Keys ``em`` and ``ffn_segmentation``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_j0126_replica(Path(tmp))["ffn_segmentation"].data.dtype
        dtype('uint64')
    """
    rng = np.random.default_rng(seed)
    shape, offset = (12, 40, 48), (4, 16, 32)
    pool = np.concatenate([[0], rng.choice(10**7, 30, replace=False)]).astype(np.uint64)
    return {"em": _write(root, J0126_RAW, _em(rng, shape), voxel_size_nm, offset),
            "ffn_segmentation": _write(root, J0126_SEG, _ids(rng, shape, pool), voxel_size_nm, offset,
                                       encoding="compressed_segmentation")}


def write_hemibrain_replica(root: Path, seed: int = 3) -> dict[str, ReplicaLayer]:
    """EM ``emdata/clahe_yz/jpeg`` (uint8 **jpeg**, 8 nm), ``v1.2/segmentation`` (uint64
    compressed_segmentation, 8 nm) and ``mito_20190717.27250582`` (16 nm, values 1 mitochondria,
    2 interior, 3 background, 4 unlabeled; its dtype is not recorded: written uint64
    compressed_segmentation). Keys ``em``, ``segmentation``, ``mito``; ``em.decoded`` is the
    JPEG as CloudVolume decodes it (``em.data`` is what was encoded).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_hemibrain_replica(Path(tmp))["mito"].voxel_size_nm
        (16.0, 16.0, 16.0)
    """
    rng = np.random.default_rng(seed)
    shape, offset = (24, 48, 64), (32, 64, 96)
    em = _write(root, HEMIBRAIN_EM, _em(rng, shape, smooth=True), (8.0, 8.0, 8.0), offset, encoding="jpeg",
                decode=True)
    pool = np.concatenate([[0], 10**9 + rng.choice(10**9, 30, replace=False)]).astype(np.uint64)
    seg = _write(root, HEMIBRAIN_SEG, _ids(rng, shape, pool), (8.0, 8.0, 8.0), offset,
                 encoding="compressed_segmentation")
    mito_values = np.array([1, 2, 3, 3, 3, 4], dtype=np.uint64)
    mito = _write(root, HEMIBRAIN_MITO, _ids(rng, (12, 24, 32), mito_values, block=2), (16.0, 16.0, 16.0),
                  (16, 32, 48), encoding="compressed_segmentation")
    return {"em": em, "segmentation": seg, "mito": mito}


def write_kasthuri_replica(root: Path, seed: int = 4) -> dict[str, ReplicaLayer]:
    """``image_color_corrected`` (uint8 raw, 6×6×30 nm) and ``ground_truth`` (uint64
    compressed_segmentation; dtype not recorded upstream) with ids only inside a cylinder
    along z, 0 outside, as in the annotated cylinder. Keys ``em`` and ``ground_truth``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_kasthuri_replica(Path(tmp))["ground_truth"].voxel_size_nm
        (30.0, 6.0, 6.0)
    """
    rng = np.random.default_rng(seed)
    shape, offset = (12, 48, 56), (8, 32, 16)
    ids = _ids(rng, shape, np.arange(1, 5000, dtype=np.uint64))
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    ids[:, (yy - 24) ** 2 + (xx - 30) ** 2 > 18**2] = 0
    return {"em": _write(root, KASTHURI_IMAGE, _em(rng, shape), (30.0, 6.0, 6.0), offset),
            "ground_truth": _write(root, KASTHURI_GT, ids, (30.0, 6.0, 6.0), offset,
                                   encoding="compressed_segmentation")}
