"""Write Neuroglancer precomputed layers with CloudVolume itself into a mirror directory.

This is the independent writer for tests and replicas: it shares no code with
:mod:`emdata.sources.precomputed` (the reader under test). An upstream layer URL maps to
``<mirror_root>/<host>/<path>``, the directory :class:`emdata.testing.MirrorServer` serves
for that URL.

Example:
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     em = np.zeros((8, 16, 16), np.uint8)
    ...     layer = write_precomputed_layer(Path(tmp), "gs://bucket/em", em, (40.0, 8.0, 8.0))
    ...     layer.relative_to(tmp).as_posix()
    'storage.googleapis.com/bucket/em'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np


def layer_dir(mirror_root: Path, url: str) -> Path:
    """The mirror directory serving ``url`` (``precomputed://`` optional; gs://, http(s)://).

    Example:
        >>> layer_dir(Path("/m"), "precomputed://gs://bucket/seg").as_posix()
        '/m/storage.googleapis.com/bucket/seg'
    """
    bare = url.removeprefix("precomputed://")
    scheme, sep, rest = bare.partition("://")
    if not sep or scheme not in ("gs", "http", "https"):
        raise ValueError(f"cannot place {url!r} in a mirror: expected gs://bucket/path or http(s)://host/path")
    host_path = f"storage.googleapis.com/{rest}" if scheme == "gs" else rest
    return Path(mirror_root) / host_path.strip("/")


def write_precomputed_layer(
    mirror_root: Path,
    url: str,
    data_zyx: np.ndarray,
    voxel_size_nm: tuple[float, float, float],
    *,
    layer_type: Literal["image", "segmentation"] = "image",
    encoding: Literal["raw", "compressed_segmentation", "jpeg"] = "raw",
    chunk_size_zyx: tuple[int, int, int] = (8, 16, 16),
    voxel_offset_zyx: tuple[int, int, int] = (0, 0, 0),
    mips: int = 1,
    sharded: bool = False,
    skip_zero_chunks: bool = False,
) -> Path:
    """Write ``data_zyx`` ((z, y, x), or (c, z, y, x) for several channels) as a precomputed layer.

    The info file comes from ``CloudVolume.create_new_info`` (mips above 0 by its default
    factor (x, y, z) = (2, 2, 1)). CloudVolume has no downsampler of its own (igneous/tinybrain
    compute real pyramids), so mip ``k`` holds ``data_zyx[..., ::2**k, ::2**k]``, which is
    exact for images and labels alike; y and x offsets must then be divisible by ``2**(mips-1)``.
    ``sharded`` stores each mip as one ``neuroglancer_uint64_sharded_v1`` shard file;
    ``skip_zero_chunks`` leaves all-zero chunks unwritten (CloudVolume's ``delete_black_uploads``),
    as sparse published layers do. Returns the layer directory.

    Example:
        >>> import json, tempfile
        >>> seg = np.arange(8 * 32 * 32, dtype=np.uint64).reshape(8, 32, 32)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     layer = write_precomputed_layer(Path(tmp), "gs://b/seg", seg, (40.0, 8.0, 8.0),
        ...                                     layer_type="segmentation", encoding="compressed_segmentation", mips=2)
        ...     [s["resolution"] for s in json.loads((layer / "info").read_text())["scales"]]
        [[8.0, 8.0, 40.0], [16.0, 16.0, 40.0]]
    """
    from cloudvolume import CloudVolume
    from cloudvolume.datasource.precomputed.sharding import ShardingSpecification

    data = np.asarray(data_zyx)
    if data.ndim == 3:
        data = data[np.newaxis]
    if data.ndim != 4:
        raise ValueError(f"data_zyx must be (z, y, x) or (c, z, y, x), got shape {np.shape(data_zyx)}")
    step = 2 ** (mips - 1)
    if mips < 1 or voxel_offset_zyx[1] % step or voxel_offset_zyx[2] % step:
        raise ValueError(f"mips={mips} needs y and x voxel offsets divisible by {step}, got {voxel_offset_zyx}")
    target = layer_dir(mirror_root, url)
    target.mkdir(parents=True, exist_ok=True)
    info = CloudVolume.create_new_info(
        num_channels=data.shape[0], layer_type=layer_type, data_type=data.dtype.name, encoding=encoding,
        resolution=list(voxel_size_nm[::-1]), voxel_offset=list(voxel_offset_zyx[::-1]),
        volume_size=list(data.shape[:0:-1]), chunk_size=list(chunk_size_zyx[::-1]), max_mip=mips - 1)
    if sharded:  # one shard per mip (shard_bits=0), four minishards, gzip inside the shard format
        spec = ShardingSpecification("neuroglancer_uint64_sharded_v1", preshift_bits=0, hash="identity",
                                     minishard_bits=2, shard_bits=0, minishard_index_encoding="gzip",
                                     data_encoding="gzip")
        for scale in info["scales"]:
            scale["sharding"] = spec.to_dict()
    # compress=False: over file:// CloudVolume gzips chunks into "<name>.gz", but over HTTP it
    # requests "<name>" and expects the server to send gzip bytes with Content-Encoding: gzip
    # (what GCS does from object metadata). A static mirror serves files by name, so gzipped
    # chunks would all be 404 there: CloudVolume reads them as missing (zeros with fill_missing).
    CloudVolume(f"file://{target}", info=info, compress=False, progress=False).commit_info()
    for mip in range(mips):
        cv = CloudVolume(f"file://{target}", mip=mip, compress=False, progress=False,
                         delete_black_uploads=skip_zero_chunks)
        level = data[:, :, :: 2**mip, :: 2**mip]
        lo, hi = cv.bounds.minpt, cv.bounds.maxpt
        cv[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.ascontiguousarray(level.transpose(3, 2, 1, 0))
    return target


# ---------------------------------------------------------------------------------------------
# helpers of the precomputed datasets' replica writers (emdata/datasets/<id>/replica.py)

Voxel = tuple[float, float, float]
Zyx = tuple[int, int, int]

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


def em_values(rng: np.random.Generator, shape: Zyx, smooth: bool = False) -> np.ndarray:
    """Random uint8 EM of ``shape``; ``smooth`` gives a smooth pattern (for lossy encodings)."""
    if not smooth:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    base = 128 + 60 * np.sin(x / 5.0 + z / 7.0) * np.cos(y / 6.0) + rng.normal(0, 4, shape)
    return np.clip(base, 0, 255).astype(np.uint8)


def segment_ids(rng: np.random.Generator, shape: Zyx, pool: np.ndarray, block: int = 4) -> np.ndarray:
    """Blocky segments from ``pool`` with 10 % single-voxel speckle (so off-by-one reads show)."""
    coarse = rng.choice(pool, size=tuple(-(-n // block) for n in shape))
    ids = coarse.repeat(block, 0).repeat(block, 1).repeat(block, 2)[: shape[0], : shape[1], : shape[2]]
    speckle = rng.random(shape) < 0.1
    ids[speckle] = rng.choice(pool, size=int(speckle.sum()))
    return np.ascontiguousarray(ids.astype(np.uint64))


def write_replica_layer(root: Path, url: str, data: np.ndarray, voxel: Voxel, offset: Zyx, *,
                        encoding: str = "raw",
                        mips: int = 1, decode: bool = False) -> ReplicaLayer:
    """Write ``data`` at ``url`` (chunks of :data:`CHUNK`); ``decode`` keeps what CloudVolume reads back."""
    layer_type = "segmentation" if encoding == "compressed_segmentation" else "image"
    path = write_precomputed_layer(root, url, data, voxel, layer_type=layer_type, encoding=encoding,
                                   chunk_size_zyx=CHUNK, voxel_offset_zyx=offset, mips=mips)
    decoded = None
    if decode:
        from cloudvolume import CloudVolume

        cv = CloudVolume(f"file://{path}", mip=0, progress=False)
        decoded = np.ascontiguousarray(np.asarray(cv[:, :, :])[..., 0].transpose(2, 1, 0))
    return ReplicaLayer(url, path, data, voxel, offset, encoding, decoded)


def prepare_options(truth: dict[str, ReplicaLayer]) -> dict[str, str]:
    """The ``prepare`` options of a precomputed replica: a ``--bbox`` spelling out all of its EM
    layer ``truth["em"]`` (spelled out, a rerun resolves nothing and makes no request).

    Example:
        >>> layer = ReplicaLayer("gs://b/em", Path("em"), np.zeros((2, 3, 4), np.uint8), (33.0, 4.0, 4.0),
        ...                      offset=(5, 128, 64), encoding="raw")
        >>> prepare_options({"em": layer})
        {'bbox': '5:7,128:131,64:68'}
    """
    return {"bbox": ",".join(f"{s.start}:{s.stop}" for s in truth["em"].bounds)}

