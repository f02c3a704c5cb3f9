"""``--full``: the tissue region of EMPIAR-13356 as one sharded canonical volume ``full``, built in
parallel with dask, resumable, with memory bounded per task whatever the volume's size.

Region: the tissue box of torch-em's loader, x ∈ [1195, 18890), y ∈ [469, 19570), all slices, i.e.
``--bbox 0:597,469:19570,1195:18890`` — defined on the published 20000 × 20000 slices. When the
server's slices have another size (a replica, another release) those coordinates mean nothing
there, so the whole image is used instead (logged and recorded in ``region_note``); the slice
count comes from the server either way.

Why two phases. A strip TIFF yields whole rows and a PNG must be decoded whole, while a shard
of the store needs many slices of a small (y, x) window. Filling shards straight from the
sources would decode every PNG once per shard of its slice (thousands of times) and every row
once per shard along x. So:

1. **Stage** (one task per slice): the slice's raw rows are read band by band (one request per
   band, through a throw-away range cache so the 500 GB of raw never piles up on disk) and each
   mask PNG is fetched into the download cache (once, ever), decoded once, and cut band by band;
   all of it goes into a staging zarr (``.full.ome.zarr.staging/``, zstd) whose inner chunks
   ``(1, shard_y, shard_x)`` line up with the final shards and whose shards are one band of one
   slice (so each is written whole by one task, and the file count stays ~10 per slice and band).
   A record per slice makes staging resumable. Memory per task: one decoded mask slice (400 MB at full
   size) plus one raw band (:data:`RAW_BAND_BYTES`, decoded, and its compressed bytes).
2. **Build** (:func:`emdata.store.sharded.build_volume`, one task per shard): each level-0
   shard is read from staging and written whole, then every pyramid level shard by shard from
   the level below, with per-shard records; then metadata, rename, completion marker. Memory
   per task: one shard of one array. The staging folder is deleted at the end.

Both phases run on a ``distributed`` client: a ``LocalCluster`` (one thread per worker, as many
workers as cores and memory allow; :data:`LOCAL_CLUSTER` adds keyword arguments) or, with
``scheduler=ADDRESS``, an existing cluster whose workers see the driver's emdata home at the same
path (a shared file system); each task is passed the driver's :class:`~emdata.config.Settings`.
An interrupted build resumes: staged slices and written shards are kept.

Started with ``emdata.prepare("human-liver-em", full=True)`` (CLI: ``emdata prepare human-liver-em
--full``, optionally ``--scheduler ADDRESS``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emdata import config
from emdata.boxes import Box, format_bbox
from emdata.catalog import Card, get_card
from emdata.config import Settings
from emdata.datasets._common import provenance, reusable, volume_path
from emdata.datasets.human_liver_em import source as src
from emdata.formats.strip_tiff import read_rows
from emdata.sources.progress import status
from emdata.sources.ranges import RangeReader
from emdata.store.chunking import choose_chunks
from emdata.store.manifest import record_volume
from emdata.store.sharded import LabelSpec, Region, ShardedVolumeWriter, build_volume
from emdata.store.tasks import dask_client, default_workers, run_tasks
from emdata.store.volume import Volume, open_volume

LOCAL_CLUSTER: dict[str, Any] = {}
"""Extra ``LocalCluster`` keyword arguments (e.g. ``{"n_workers": 4, "memory_limit": "8GiB"}``)."""
CHUNKING = choose_chunks
"""Chunk/shard choice of the final store (the canonical one; tests force small shards)."""
RAW_BAND_BYTES = 64 << 20
"""Decoded raw bytes read per request while staging (a band of whole shard rows)."""
_STAGING_FORMAT = "emdata.human-liver-em-staging/1"
log = logging.getLogger("emdata.datasets.human_liver_em.recipe")


def tissue_region(n_slices: int, shape: tuple[int, int]) -> tuple[Box, str]:
    """The region ``--full`` builds for slices of ``shape`` (y, x), and why.

    Example:
        >>> tissue_region(597, (20000, 20000))[0]
        (slice(0, 597, None), slice(469, 19570, None), slice(1195, 18890, None))
    """
    from emdata.datasets.human_liver_em.recipe import TORCH_EM_TISSUE

    x0, x1, y0, y1, z0, z1 = TORCH_EM_TISSUE
    if tuple(shape) == src.PUBLISHED_SHAPE[1:]:
        box = (slice(z0, min(z1, n_slices)), slice(y0, y1), slice(x0, x1))
        return box, "tissue region of torch-em's loader (x 1195–18890, y 469–19570, all slices)"  # type: ignore[return-value]
    log.warning("%s: slices are %d × %d px, not the published 20000 × 20000; torch-em's tissue region does not apply "
                "to them, so --full uses the whole image (%d slices)", src.DATASET, shape[0], shape[1], n_slices)
    box = (slice(0, n_slices), slice(0, shape[0]), slice(0, shape[1]))
    return box, (f"whole image: the slices are {shape[0]} × {shape[1]} px, not the published 20000 × 20000, so "  # type: ignore[return-value]
                 "torch-em's tissue coordinates do not apply")


# -- staging -----------------------------------------------------------------------------------


def _staging_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.staging"


def _open_staging(folder: Path, spec: dict[str, Any], fresh: bool) -> None:
    """Create the staging zarr for ``spec`` or keep the one there if it has the same spec."""
    import zarr

    spec_path = folder / "staging.json"
    if not fresh and spec_path.is_file():
        try:
            if json.loads(spec_path.read_text(encoding="utf-8")) == spec:
                return
        except (OSError, ValueError):
            pass
        log.warning("%s: staging data from a different build; starting the staging over", folder)
    if folder.exists():
        trash = folder.with_name(f"{folder.name}.old-{uuid.uuid4().hex[:8]}")
        folder.replace(trash)
        shutil.rmtree(trash, ignore_errors=True)
    root = zarr.open_group(str(folder), mode="w", zarr_format=3)
    shape = tuple(b - a for a, b in spec["region"])
    for name, dtype in [("raw", spec["dtype"])] + [(c, "uint8") for c in spec["classes"]]:
        root.create_array(name, shape=shape, dtype=dtype, chunks=tuple(spec["chunks"]), shards=tuple(spec["shards"]),
                          fill_value=0, compressors=zarr.codecs.ZstdCodec(level=1))
    (folder / ".slices").mkdir()
    (folder / ".tmp").mkdir()
    tmp = spec_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec), encoding="utf-8")
    tmp.replace(spec_path)


def _staged(folder: Path) -> set[int]:
    return {int(p.stem) for p in (folder / ".slices").glob("*.json")}


def stage_slice(staging: str, settings: Settings, z: int) -> int:
    """Worker task: stage raw rows and every mask class of slice ``z`` of the region, under the
    driver's ``settings`` (home, mirror, offline, checksums) in this worker thread."""
    with config.using(settings):
        return _stage_slice(staging, z)


def _stage_slice(staging: str, z: int) -> int:
    import zarr

    folder = Path(staging)
    spec = json.loads((folder / "staging.json").read_text(encoding="utf-8"))
    card = get_card(src.DATASET)
    (z0, _), (y0, y1), (x0, x1) = spec["region"]
    height, width = spec["image_shape"]
    url = src.raw_url(card, z)
    root = zarr.open_group(str(folder), mode="r+")
    with RangeReader() as reader:  # the persistent cache: layouts only (a few hundred KB per slice)
        lay = src.layout(reader, url)
    if lay.shape != (height, width) or str(lay.dtype.newbyteorder("=")) != spec["dtype"]:
        raise src.HumanLiverFormatError(f"{url}: {lay.shape[0]} × {lay.shape[1]} px of {lay.dtype}, but slice "
                                        f"{z0:03d} is {height} × {width} px of {spec['dtype']}; all slices must match")
    band = spec["band_rows"]
    raw = root["raw"]
    for b0 in range(y0, y1, band):
        b1 = min(b0 + band, y1)
        with tempfile.TemporaryDirectory(dir=folder / ".tmp") as tmp, RangeReader(Path(tmp)) as once:
            raw[z - z0, b0 - y0:b1 - y0, :] = read_rows(lay, once.file(url), b0, b1, x0, x1)
    for cls in spec["classes"]:
        path = src.fetch_mask(card, cls, z)
        if path is None:
            raise src.missing_later(card, cls, z, z0)
        image = src.mask_image(path, (height, width))
        target = root[cls]
        for b0 in range(y0, y1, band):
            b1 = min(b0 + band, y1)
            target[z - z0, b0 - y0:b1 - y0, :] = src.to_binary(image[b0:b1, x0:x1], path)
        del image
    record = folder / ".slices" / f"{z}.json"
    tmp_record = record.with_suffix(".tmp")
    tmp_record.write_text(json.dumps({"z": z, "raw": src.tiff_facts(lay)}), encoding="utf-8")
    tmp_record.replace(record)
    return z


def fill_from_staging(staging: str, region: Region, name: str) -> np.ndarray:
    """Worker task body: one level-0 shard region of one array, read from the staging zarr."""
    import zarr

    return np.asarray(zarr.open_array(str(Path(staging) / name), mode="r")[region.slices])


# -- the build ---------------------------------------------------------------------------------


TISSUE_KEY = "tissue_bbox_torch_em_order"
LEGACY_TISSUE_KEY = "tissue_bbox_seed_order"
"""What :data:`TISSUE_KEY` was called in stores built before it was renamed; such stores are still reused."""


def _prov(card: Card, tissue_key: str = TISSUE_KEY) -> dict[str, Any]:
    from emdata.datasets.human_liver_em.recipe import RECIPE_VERSION, TORCH_EM_TISSUE

    urls = [card.source(src.RAW_SOURCE).url] + [card.source(src.mask_folder(c)).url for c in src.CLASSES]
    parameters = {"full": True, tissue_key: list(TORCH_EM_TISSUE), "classes_tried": list(src.CLASSES),
                  "mask_encoding": "0/1"}
    return provenance(src.DATASET, RECIPE_VERSION, [], parameters, urls=urls)


def build_full(card: Card, *, force: bool = False, scheduler: str | None = None, client: Any = None,
               on_region: Callable[[Region], None] | None = None) -> Volume:
    """Build (or resume, or reuse) volume ``full``; ``client`` overrides ``scheduler``/local cluster.

    ``on_region`` is called on this side after each written shard (raising in it interrupts the
    build, as tests do to check resuming).
    """
    from emdata.datasets.human_liver_em.recipe import (
        MASK_NOTE,
        PLACEHOLDER_NOTE,
        PLACEHOLDER_VOXEL_NM,
        VOLUME,
        probe_classes,
    )

    path = volume_path(src.DATASET, VOLUME)
    prov = _prov(card)
    existing = None if force else reusable(path, prov) or reusable(path, _prov(card, LEGACY_TISSUE_KEY))
    if existing is not None:
        return existing
    with RangeReader() as reader, config.thread_pool(16, "emdata-liver") as pool:
        n_slices = src.slice_count(reader, card, force=force)
        first = src.layout(reader, src.raw_url(card, 0))
        region, region_note = tissue_region(n_slices, first.shape)
        zs, ys, xs = region
        masks = probe_classes(card, reader, zs.start, zs.stop - 1, force=force, pool=pool)
    present = [c for c in src.CLASSES if masks[c]["status"] == "stored"]
    missing = [c for c in src.CLASSES if c not in present]
    notes = [MASK_NOTE, PLACEHOLDER_NOTE, *src.tiff_notes(first)]
    if missing:
        notes.append(f"mask classes not published on the server (HTTP 404): {', '.join(missing)}")
    log.warning("%s %s: %s", src.DATASET, VOLUME, PLACEHOLDER_NOTE)
    spec = next(v for v in card.volumes if v.name == VOLUME)
    labels = [LabelSpec(cls, "uint8", card.label_layer(cls).kind, src.label_classes(card, cls),
                        instance_of=card.label_layer(cls).instance_of, description=card.label_layer(cls).description)
              for cls in present]
    meta = {"dataset": src.DATASET, "volume": VOLUME, "split": spec.split, "voxel_size_verified": False,
            "provenance": prov, "voxel_size_placeholder": True, "voxel_size_source": "placeholder",
            "voxel_size_note": PLACEHOLDER_NOTE, "bbox": format_bbox(region),
            "bbox_torch_em_order": [xs.start, xs.stop, ys.start, ys.stop, zs.start, zs.stop],
            "region_note": region_note, "raw_tiff": src.tiff_facts(first), "masks": masks,
            "classes_missing": missing, "notes": notes,
            "description": f"{region_note}: --bbox {format_bbox(region)} of {src.DATASET} {VOLUME!r}, built shard "
                           "by shard"}
    shape = (zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start)
    writer = ShardedVolumeWriter(path, shape, first.dtype.newbyteorder("="), PLACEHOLDER_VOXEL_NM, labels=labels,
                                 meta=meta, chunking=CHUNKING)
    # staging: inner chunks (1, shard_y, shard_x) so a shard task reads exactly its window; one
    # staging shard per (slice, band of rows, whole width), written whole by the one task of that slice
    _, uy, ux = writer.levels[0]["unit"]
    row_bytes = first.shape[1] * first.dtype.itemsize
    band_rows = min(uy * max(1, RAW_BAND_BYTES // max(uy * row_bytes, 1)), -(-shape[1] // uy) * uy)
    staging_spec = {"format": _STAGING_FORMAT, "region": [[s.start, s.stop] for s in region],
                    "image_shape": list(first.shape), "dtype": str(first.dtype.newbyteorder("=")),
                    "classes": present, "chunks": [1, uy, ux],
                    "shards": [1, band_rows, -(-shape[2] // ux) * ux], "band_rows": band_rows}
    staging = _staging_dir(path)
    with writer.locked():
        if force:
            writer.discard()
        writer.prepare()
        _open_staging(staging, staging_spec, fresh=force)
        per_task = first.shape[0] * first.shape[1] + 3 * RAW_BAND_BYTES
        local = {"n_workers": default_workers(per_task), **LOCAL_CLUSTER}
        todo = [z for z in range(zs.start, zs.stop) if z not in _staged(staging)]
        with _client(client, scheduler, local) as active:
            if todo:
                with status(f"{src.DATASET}: staging {len(todo)} slice(s) of {shape} voxels"):
                    run_tasks(active, stage_slice, [(str(staging), config.current(), z) for z in todo], what="slice")
            with status(f"{src.DATASET}: writing {len(writer.regions(0))} shard region(s) and the pyramid"):
                build_volume(writer, functools.partial(fill_from_staging, str(staging)), client=active,
                             on_region=on_region)
        shutil.rmtree(staging, ignore_errors=True)
    vol = open_volume(path)
    record_volume(vol)
    return vol


@contextlib.contextmanager
def _client(client: Any, scheduler: str | None, local: dict[str, Any]) -> Iterator[Any]:
    """The given client, or one from :func:`dask_client` (closed on exit)."""
    if client is not None:
        yield client
        return
    with dask_client(scheduler, **local) as made:
        yield made
