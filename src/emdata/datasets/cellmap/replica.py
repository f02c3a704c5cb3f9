"""CellMap replica in the published layout: the two crop manifests (challenge repository at
pinned commits) and OME-NGFF 0.4 multiscale zarr v2 groups as in the ``janelia-cosem-datasets``
bucket, written with zarr-python (``zarr_format=2``, ``/``-separated chunk keys, zstd); shares
no code with the recipe.

* ``jrc_rep-1`` (raw s0 2 nm, s1 4 nm): train crop 101 (2 nm) with ``mito`` (object ids),
  ``mito_mem`` (0 absent / 1 present / 255 unknown in one slab), ``ecs`` (annotated, all absent:
  *empty*; its all-zero chunks are not written, as zarr skips fill-value chunks); ``er`` is not
  annotated in the crop. Test crop 103 at 4 nm (raw only).
  Train crop 104 is annotated at 1 nm, finer than the raw, with an s1 level at the raw's 2 nm.
* ``jrc_rep-2`` (raw s0 1.74×2×2 nm): train crop 102 with ``er_mem``, ``er_lum`` and ``er``.

Example:
    >>> import tempfile
    >>> truth = write_cellmap_replica(Path(tempfile.mkdtemp()))
    >>> truth["crops"][102]["voxel"], sorted(truth["crops"][101]["classes"])
    ((1.74, 2.0, 2.0), ['ecs', 'mito', 'mito_mem'])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BUCKET_HOST = "janelia-cosem-datasets.s3.amazonaws.com"
REPO = "raw.githubusercontent.com/janelia-cellmap/cellmap-segmentation-challenge"
TRAIN_URL = (f"https://{REPO}/6c9eb77f7551f72f1a35a34e003bdaf86b4c9e85/src/cellmap_segmentation_challenge/utils/"
             "train_crop_manifest.csv")
TEST_URL = (f"https://{REPO}/f70f7f5051aa85ae7a7249de25659775098d9de4/src/cellmap_segmentation_challenge/utils/"
            "test_crop_manifest.csv")
HEADER = "crop_name,dataset,class_label,voxel_size,translation,shape"
SEMANTIC_ENCODING = {"absent": 0, "unknown": 255, "present": 1}
RAW_CHUNKS = (4, 8, 8)
LABEL_CHUNKS = (4, 4, 4)


def _local(root: Path, url: str) -> Path:
    return Path(root) / url.split("://", 1)[1]


def source_files(root: Path) -> dict[str, Path]:
    """``{card URL: replica file}`` of the manifests (for an ``EMDATA_CHECKSUMS`` file)."""
    return {TRAIN_URL: _local(root, TRAIN_URL), TEST_URL: _local(root, TEST_URL)}


def _multiscales(name: str, levels: list[tuple[str, tuple[float, ...], tuple[float, ...]]]) -> dict[str, Any]:
    return {"multiscales": [{
        "version": "0.4", "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": p, "coordinateTransformations": [{"type": "scale", "scale": list(s)},
                                                               {"type": "translation", "translation": list(t)}]}
                     for p, s, t in levels]}]}


def _array(group: Any, path: str, data: np.ndarray, chunks: tuple[int, ...],
           attrs: dict[str, Any] | None = None) -> None:
    from numcodecs import Zstd

    arr = group.create_array(path, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=Zstd(level=3),
                             fill_value=0, chunk_key_encoding={"name": "v2", "separator": "/"})
    arr[...] = data
    if attrs:
        arr.attrs.update(attrs)


def _raw(root: Path, dataset: str, s0: np.ndarray, voxel: tuple[float, float, float]) -> None:
    import zarr

    group = zarr.open_group(Path(root) / BUCKET_HOST / dataset / f"{dataset}.zarr" / "recon-1/em/fibsem-uint8",
                            mode="w", zarr_format=2)
    s1 = s0[::2, ::2, ::2].copy()
    _array(group, "s0", s0, RAW_CHUNKS)
    _array(group, "s1", s1, RAW_CHUNKS)
    v1 = tuple(2 * v for v in voxel)
    group.attrs.update(_multiscales("fibsem-uint8", [("s0", voxel, (0.0, 0.0, 0.0)),
                                                     ("s1", v1, tuple(v / 2 for v in voxel))]))


def _crop(root: Path, dataset: str, crop_id: int, voxel: tuple[float, ...], translation: tuple[float, ...],
          classes: dict[str, np.ndarray], instance: set[str], downsampled: bool = False) -> None:
    """One crop group; ``downsampled`` adds an s1 level (every second voxel, centre-shifted translation)."""
    import zarr

    crop = zarr.open_group(Path(root) / BUCKET_HOST / dataset / f"{dataset}.zarr"
                           / f"recon-1/labels/groundtruth/crop{crop_id}", mode="w", zarr_format=2)
    crop.attrs.update({"cellmap": {"annotation": {
        "version": "0.1.1", "name": f"crop{crop_id}", "description": None, "created_by": [], "created_with": [],
        "start_date": None, "end_date": None, "duration_days": None, "protocol_uri": None,
        "class_names": list(classes)}}})
    for name, data in classes.items():
        kind = ("instance_segmentation", {"absent": 0}) if name in instance else ("semantic_segmentation",
                                                                                 SEMANTIC_ENCODING)
        annotation = {"class_name": name, "annotation_type": {"type": kind[0], "encoding": kind[1]}}
        group = crop.create_group(name)
        counts = {"absent": int((data == 0).sum())}
        if "unknown" in kind[1]:
            counts["unknown"] = int((data == 255).sum())
        _array(group, "s0", data, LABEL_CHUNKS,
               {"cellmap": {"annotation": {**annotation, "complement_counts": counts}}})
        levels = [("s0", voxel, translation)]
        if downsampled:
            _array(group, "s1", data[::2, ::2, ::2].copy(), LABEL_CHUNKS)
            levels.append(("s1", tuple(2 * v for v in voxel), tuple(t + v / 2 for t, v in zip(translation, voxel))))
        group.attrs.update({**_multiscales(name, levels), "cellmap": {"annotation": annotation}})


def _rows(crop_id: int, dataset: str, classes: list[str], voxel: tuple[float, ...], translation: tuple[float, ...],
          shape: tuple[int, ...]) -> list[str]:
    def fmt(values: tuple) -> str:
        return "[" + ";".join(str(v) for v in values) + "]"
    return [f"{crop_id},{dataset},{c},{fmt(voxel)},{fmt(translation)},{fmt(shape)}" for c in classes]


def write_cellmap_replica(root: Path, seed: int = 5) -> dict[str, Any]:
    """Write the replica under ``root`` (mirror layout); returns ``files`` (card URL → file) and
    per crop: ``raw``, ``classes`` (name → stored s0 array), ``voxel``, ``translation`` (s0), ``dataset``,
    ``split``, ``raw_box`` (the raw voxels it covers at ``level``), ``raw_chunks`` (raw chunk keys it
    needs) and, where the labels are finer than the raw, ``read_at`` (the voxel and class arrays of
    the label level on the raw grid)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    crops: dict[int, dict[str, Any]] = {}

    # jrc_rep-1: raw 2 nm; crop 101 at raw s0 voxels (4:10, 8:18, 12:24)
    raw1 = rng.integers(0, 256, size=(16, 32, 40), dtype=np.uint8)
    _raw(root, "jrc_rep-1", raw1, (2.0, 2.0, 2.0))
    box = (slice(4, 10), slice(8, 18), slice(12, 24))
    shape = tuple(s.stop - s.start for s in box)
    mito = np.zeros(shape, np.uint64)
    mito[1:4, 2:6, 2:7] = 7
    mito[3:6, 6:10, 8:12] = 2**40 + 3
    mito_mem = np.zeros(shape, np.uint8)
    mito_mem[1:4, 2:6, 2] = 1
    mito_mem[3:6, 6:10, 8] = 1
    mito_mem[5, :, :] = np.where(mito_mem[5] == 1, 1, 255)  # an unknown slab (the membrane there stays known)
    ecs = np.zeros(shape, np.uint8)
    classes1 = {"mito": mito, "mito_mem": mito_mem, "ecs": ecs}
    translation1 = (8.0, 16.0, 24.0)
    _crop(root, "jrc_rep-1", 101, (2.0, 2.0, 2.0), translation1, classes1, {"mito"})
    crops[101] = {"dataset": "jrc_rep-1", "split": "train", "raw": raw1[box], "classes": classes1,
                  "voxel": (2.0, 2.0, 2.0), "translation": translation1, "raw_box": box, "level": "s0"}

    # jrc_rep-1 crop 104: labels drawn at 1 nm (finer than any raw level), s1 at 2 nm on raw s0 voxels (2:6, 4:10, 5:11)
    fine = (rng.random((8, 12, 12)) < 0.3).astype(np.uint8)
    translation4 = (3.5, 7.5, 9.5)
    _crop(root, "jrc_rep-1", 104, (1.0, 1.0, 1.0), translation4, {"nucpl": fine}, set(), downsampled=True)
    box4 = (slice(2, 6), slice(4, 10), slice(5, 11))
    crops[104] = {"dataset": "jrc_rep-1", "split": "train", "raw": raw1[box4], "classes": {"nucpl": fine},
                  "voxel": (1.0, 1.0, 1.0), "translation": translation4, "raw_box": box4, "level": "s0",
                  "read_at": {"voxel": (2.0, 2.0, 2.0), "classes": {"nucpl": fine[::2, ::2, ::2]}}}

    # jrc_rep-1 test crop 103 at raw s1 (4 nm, translation 1 nm): voxels (2:5, 1:5, 3:8)
    raw1_s1 = raw1[::2, ::2, ::2]
    box103 = (slice(2, 5), slice(1, 5), slice(3, 8))
    crops[103] = {"dataset": "jrc_rep-1", "split": "test", "raw": raw1_s1[box103], "classes": {},
                  "voxel": (4.0, 4.0, 4.0), "translation": (9.0, 5.0, 13.0), "raw_box": box103, "level": "s1"}

    # jrc_rep-2: raw 1.74×2×2 nm; crop 102 at raw s0 voxels (2:10, 2:10, 3:11)
    voxel2 = (1.74, 2.0, 2.0)
    raw2 = rng.integers(0, 256, size=(12, 16, 16), dtype=np.uint8)
    _raw(root, "jrc_rep-2", raw2, voxel2)
    box2 = (slice(2, 10), slice(2, 10), slice(3, 11))
    shape2 = (8, 8, 8)
    er_mem = np.zeros(shape2, np.uint8)
    er_mem[2:6, 2, 2:6] = 1
    er_lum = np.zeros(shape2, np.uint8)
    er_lum[2:6, 3:5, 2:6] = 1
    er = np.zeros(shape2, np.uint8)
    er[2:6, 2:5, 2:6] = 1
    er[0, 0, :] = 1  # group-only voxels (its parts say absent there)
    classes2 = {"er_mem": er_mem, "er_lum": er_lum, "er": er}
    translation2 = (3.48, 4.0, 6.0)
    _crop(root, "jrc_rep-2", 102, voxel2, translation2, classes2, set())
    crops[102] = {"dataset": "jrc_rep-2", "split": "train", "raw": raw2[box2], "classes": classes2,
                  "voxel": voxel2, "translation": translation2, "raw_box": box2, "level": "s0"}

    for crop in crops.values():
        b = crop["raw_box"]
        crop["raw_chunks"] = sorted(
            "/".join(map(str, (z, y, x)))
            for z in range(b[0].start // RAW_CHUNKS[0], (b[0].stop - 1) // RAW_CHUNKS[0] + 1)
            for y in range(b[1].start // RAW_CHUNKS[1], (b[1].stop - 1) // RAW_CHUNKS[1] + 1)
            for x in range(b[2].start // RAW_CHUNKS[2], (b[2].stop - 1) // RAW_CHUNKS[2] + 1))

    train = [HEADER]
    for crop_id in (101, 102, 104):
        c = crops[crop_id]
        shape = next(iter(c["classes"].values())).shape
        train += _rows(crop_id, c["dataset"], list(c["classes"]), c["voxel"], c["translation"], shape)
    test = [HEADER, *_rows(103, "jrc_rep-1", ["mito", "nuc"], (4.0, 4.0, 4.0), (9.0, 5.0, 13.0), (3, 4, 5))]
    files = source_files(root)
    for url, text in ((TRAIN_URL, train), (TEST_URL, test)):
        files[url].parent.mkdir(parents=True, exist_ok=True)
        files[url].write_text("\n".join(text) + "\n")
    return {"files": files, "crops": crops}


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: four crops of a few voxels a side (one size; crops are small by nature)."""
    return write_cellmap_replica(root)


PREPARE_OPTIONS: dict[str, Any] = {"crop": ["101", "102", "103", "104"]}
"""What ``prepare`` needs to read this replica: its four crops (the recipe requires a crop or dataset choice)."""
