"""Human liver EM (EMPIAR-13356): a ``--bbox`` box of the 597 × 20000 × 20000 SBF-SEM volume,
or with ``--full`` the whole tissue region, with every published binary mask class.

**Boxes.** ``bbox="z0:z1,y0:y1,x0:x1"`` in voxels (half-open, as everywhere in emdata). torch-em's
loader (``human_liver_em.py``, constantinpape/torch-em commit a85b1434) writes a box as
``(x_min, x_max, y_min, y_max, z_min, z_max)`` and cuts
``[z_min:z_max, y_min:y_max, x_min:x_max]``, so the same box is
``--bbox z_min:z_max,y_min:y_max,x_min:x_max`` (see :func:`bbox_from_torch_em`); its
tissue region ``(1195, 18890, 469, 19570, 0, 597)`` is ``--bbox 0:597,469:19570,1195:18890``.
Open ends are filled from the server (slice count, slice size). A box becomes volume
``z<z0>-<z1>_y<y0>-<y1>_x<x0>-<x1>``; a rerun of a closed box reuses it without a request.

**Raw.** One LZW strip TIFF per slice, read with :class:`~emdata.sources.ranges.RangeReader`:
the layout of a slice (TIFF tags parsed and checked: compression, predictor, rows per strip,
pixel type — never assumed) costs one GET once and is cached; the strips of the box's rows then
cost one GET per slice (coalesced), and bytes already read are not read again.
Slices are read concurrently. The tags found are recorded under ``raw_tiff``; where they differ
from what torch-em assumes (LZW, predictor 2, one row per strip) a note is added.

**Masks.** For each of the nine classes torch-em's docstring names (``humanliver_<class>_mask``), each PNG
slice is fetched whole into the download cache once, ever, then decoded and cropped (PNG must
be decoded whole: peak memory one decoded slice, 400 MB at full size). Values 0/255 are stored
as 0/1 (the class table says so). er, mito and nucleus are confirmed folders: their absence is
an error. The six others are tried: a folder that answers 404 on the box's first slice (and its
last) is reported in ``masks``/``classes_missing`` and logged, not fatal (the finding is
cached; ``force=True`` asks again); a class present for some slices but not others is an error.

**Voxel size.** Not documented (card: nm omitted, ``verified = false``). The store needs one, so
the documented placeholder **(1, 1, 1) nm = "one voxel"** is stored with
``voxel_size_placeholder: true``, ``voxel_size_verified: false`` and a note — never a guess
presented as a physical size (as the nucmm recipe does).

**Full.** ``full=True`` builds volume ``full``: the tissue region into a sharded store in
parallel with dask — see :mod:`emdata.datasets.human_liver_em.full` (``scheduler=ADDRESS`` uses
an existing cluster, else a local one).

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("human-liver-em"):
    ...     vol, = emdata.prepare("human-liver-em", bbox="1:5,20:200,30:300")
    ...     vol.shape, vol.labels["mito"].dtype, vol.meta["voxel_size_placeholder"]
    ((4, 180, 270), dtype('uint8'), True)
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from emdata import boxes, config
from emdata.boxes import Box, bbox_name, format_bbox, inside, is_closed, parse_bbox_option, resolve_bbox
from emdata.catalog import Card, get_card
from emdata.datasets._common import layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import BBOX, Option
from emdata.datasets.human_liver_em import source as src
from emdata.formats.strip_tiff import StripTiffLayout
from emdata.sources.ranges import RangeReader
from emdata.store.volume import Volume

DATASET = src.DATASET
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (
    BBOX,
    Option("full", bool, "Build the whole tissue region as volume full, in parallel with dask (instead of --bbox)."),
    Option("scheduler", str, "Dask scheduler address for --full (default: a local cluster).", metavar="ADDRESS"),
)
VOLUME = "full"
TORCH_EM_TISSUE = (1195, 18890, 469, 19570, 0, 597)
"""The tissue region torch-em's loader uses, in its order (x_min, x_max, y_min, y_max, z_min, z_max)."""
PLACEHOLDER_VOXEL_NM = (1.0, 1.0, 1.0)
PLACEHOLDER_NOTE = ("voxel size unknown: EMPIAR-13356 does not document it (torch-em's ~50–100 nm/px xy is an "
                    "estimate, z unknown); (1, 1, 1) nm is a placeholder meaning 'one voxel', not a physical size")
MASK_NOTE = "masks published as 0/255 PNGs are stored as 0/1 (1 = the class)"
BOX_THREADS = 32
"""Slices and mask files read at once (requests overlap their latency)."""
DECODE_SLOTS = max(1, min(4, os.cpu_count() or 1))
"""Mask PNGs decoded at once: each holds one whole decoded slice in memory."""
log = logging.getLogger(__name__)


def bbox_from_torch_em(x_min: int, x_max: int, y_min: int, y_max: int, z_min: int, z_max: int) -> str:
    """The ``--bbox`` text of a torch-em box ``(x_min, x_max, y_min, y_max, z_min, z_max)``.

    Example:
        >>> bbox_from_torch_em(*TORCH_EM_TISSUE)
        '0:597,469:19570,1195:18890'
    """
    return f"{z_min}:{z_max},{y_min}:{y_max},{x_min}:{x_max}"


def example_bbox(size: tuple[int, int, int] = (16, 512, 512)) -> str:
    """A box of ``size`` voxels in the middle of the tissue region (for messages).

    Example:
        >>> example_bbox()
        '290:306,9763:10275,9786:10298'
    """
    x0, x1, y0, y1, z0, z1 = TORCH_EM_TISSUE
    return boxes.example_bbox((slice(z0, z1), slice(y0, y1), slice(x0, x1)), size)


def _check_options(volumes: list[str] | None, bbox: Any, full: Any, scheduler: Any) -> None:
    if volumes is not None and any(v != VOLUME for v in volumes):
        raise ValueError(f"{DATASET}: no volume(s) {[v for v in volumes if v != VOLUME]}; it prepares --bbox boxes "
                         f"or --full of the volume {VOLUME!r}; choose from {[VOLUME]} or leave --volume out")
    if full and bbox is not None:
        raise ValueError(f"{DATASET}: give either bbox={bbox!r} (one box) or full=True (the whole tissue region), "
                         "not both")
    if scheduler is not None and not full:
        raise ValueError(f"{DATASET}: scheduler={scheduler!r} applies to --full builds only; add --full or leave "
                         "--scheduler out")
    if not full and bbox is None:
        raise ValueError(f"{DATASET}: a bbox is required (slices are 20000 × 20000 px; the volume is ~500 GB): pass "
                         f"--bbox z0:z1,y0:y1,x0:x1 in voxels inside (597, 20000, 20000), e.g. `emdata prepare "
                         f"{DATASET} --bbox {example_bbox()}` (tissue spans "
                         f"{bbox_from_torch_em(*TORCH_EM_TISSUE)}), or "
                         "--full for the whole tissue region")
    if bbox is not None and not isinstance(bbox, str):
        raise ValueError(f"{DATASET}: bbox must be a string 'z0:z1,y0:y1,x0:x1', got {bbox!r}")


def _prov(card: Card, box: Box) -> tuple[str, dict[str, Any]]:
    urls = [card.source(src.RAW_SOURCE).url] + [card.source(src.mask_folder(c)).url for c in src.CLASSES]
    parameters = {"bbox": format_bbox(box), "classes_tried": list(src.CLASSES), "mask_encoding": "0/1"}
    return bbox_name(box), provenance(DATASET, RECIPE_VERSION, [], parameters, urls=urls)


def _resolve(reader: RangeReader, card: Card, box: Box, text: str, force: bool) -> tuple[Box, StripTiffLayout]:
    depth = src.slice_count(reader, card, force=force) if box[0].stop is None else box[0].stop
    first = src.layout(reader, src.raw_url(card, box[0].start or 0))
    height, width = first.shape
    out = resolve_bbox(box, (depth, height, width))
    if not inside(out[1:], (height, width)):  # type: ignore[arg-type]
        raise ValueError(f"{DATASET}: bbox {text!r} (z {out[0].start}:{out[0].stop}, y {out[1].start}:{out[1].stop}, "
                         f"x {out[2].start}:{out[2].stop}) is outside the slices of {height} × {width} px (y × x) "
                         f"({first.name}); choose a box inside them, e.g. --bbox {example_bbox()}")
    if (height, width) != src.PUBLISHED_SHAPE[1:]:
        log.warning("%s: slices are %d × %d px, not the published 20000 × 20000 (a replica or a different release)",
                    DATASET, height, width)
    return out, first  # type: ignore[return-value]


def probe_classes(card: Card, reader: RangeReader, z0: int, z_last: int, *, force: bool,
                  pool: ThreadPoolExecutor) -> dict[str, dict[str, Any]]:
    """Which mask classes exist, by fetching slice ``z0`` of each (cached once, ever).

    Returns ``{class: {"status": "stored"} | {"status": "not published", ...}}`` in the
    class order of torch-em's docstring. Errors per :func:`source.not_published`.
    """
    out: dict[str, dict[str, Any]] = {}
    tried = []
    for cls in src.CLASSES:
        if force:
            src.forget_absent(cls)
        known = src.absent_class(cls)
        if known is not None and cls not in src.CONFIRMED:
            out[cls] = {"status": "not published", **known}
        else:
            tried.append(cls)

    def probe(cls: str) -> dict[str, Any]:
        if src.fetch_mask(card, cls, z0) is not None:
            return {"status": "stored"}
        src.not_published(card, cls, z0, z_last, reader)
        urls = [src.mask_url(card, cls, z) for z in dict.fromkeys((z0, z_last))]
        log.warning("%s: no mask folder %s on the server (HTTP 404 for %s); the class is left out of this volume",
                    DATASET, src.mask_folder(cls), urls[0])
        return {"status": "not published", **src.record_absent(cls, urls)}

    out.update(zip(tried, pool.map(probe, tried)))
    return {cls: out[cls] for cls in src.CLASSES}


class _BoxReader:
    """Reads one box: all slices' raw rows and mask crops, concurrently, into arrays."""

    def __init__(self, card: Card, reader: RangeReader, box: Box, first: StripTiffLayout) -> None:
        self.card, self.reader, self.box, self.first = card, reader, box, first
        self.shape = tuple(s.stop - s.start for s in box)
        self.raw = np.empty(self.shape, first.dtype.newbyteorder("="))
        self.masks: dict[str, np.ndarray] = {}
        self.jobs: list[Future[None]] = []
        self._decode = threading.Semaphore(DECODE_SLOTS)

    def raw_slice(self, z: int) -> None:
        zs, ys, xs = self.box
        lay = src.layout(self.reader, src.raw_url(self.card, z))
        src.check_same(lay, self.first)
        self.raw[z - zs.start] = src.read_raw(self.reader, lay, ys.start, ys.stop, xs.start, xs.stop)

    def mask_slice(self, cls: str, z: int) -> None:
        zs, ys, xs = self.box
        path = src.fetch_mask(self.card, cls, z)
        if path is None:
            raise src.missing_later(self.card, cls, z, zs.start)
        with self._decode:
            self.masks[cls][z - zs.start] = src.mask_crop(path, self.first.shape, ys.start, ys.stop, xs.start,
                                                          xs.stop)

    def start_raw(self, pool: ThreadPoolExecutor) -> None:
        zs = self.box[0]
        self.jobs += [pool.submit(self.raw_slice, z) for z in range(zs.start, zs.stop)]

    def start_masks(self, pool: ThreadPoolExecutor, classes: list[str]) -> None:
        zs = self.box[0]
        self.masks.update({cls: np.empty(self.shape, np.uint8) for cls in classes})
        self.jobs += [pool.submit(self.mask_slice, cls, z) for z in range(zs.start, zs.stop) for cls in classes]

    def wait(self, cancel: bool = False) -> None:
        """Wait for every job (``cancel``: drop those not started); the first failure cancels
        what has not started and is raised."""
        if cancel:
            for f in self.jobs:
                f.cancel()
        done, pending = wait(self.jobs, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if not f.cancelled() and f.exception() is not None]
        if failed:
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()  # type: ignore[misc]


def _prepare_box(card: Card, box: Box, text: str, force: bool) -> Volume:
    with RangeReader() as reader, config.thread_pool(BOX_THREADS, "emdata-liver") as pool:
        box, first = _resolve(reader, card, box, text, force)
        name, prov = _prov(card, box)
        existing = None if force else reusable(volume_path(DATASET, name), prov)
        if existing is not None:
            return existing
        zs = box[0]
        job = _BoxReader(card, reader, box, first)
        job.start_raw(pool)  # raw reads start while the mask folders are probed
        try:
            with config.thread_pool(len(src.CLASSES), "emdata-liver-probe") as probes:
                masks = probe_classes(card, reader, zs.start, zs.stop - 1, force=force, pool=probes)
        except BaseException:
            job.wait(cancel=True)
            raise
        present = [c for c in src.CLASSES if masks[c]["status"] == "stored"]
        job.start_masks(pool, present)
        job.wait()
    notes = [MASK_NOTE, PLACEHOLDER_NOTE, *src.tiff_notes(first)]
    missing = [c for c in src.CLASSES if c not in present]
    if missing:
        notes.append(f"mask classes not published on the server (HTTP 404): {', '.join(missing)}")
    log.warning("%s %s: %s", DATASET, name, PLACEHOLDER_NOTE)
    layers = [layer(card, cls, job.masks[cls], classes=src.label_classes(card, cls)) for cls in present]
    spec = next(v for v in card.volumes if v.name == VOLUME)
    x0, x1, y0, y1 = box[2].start, box[2].stop, box[1].start, box[1].stop
    return publish(card, name, spec.split, job.raw, layers, prov, voxel_size_nm=PLACEHOLDER_VOXEL_NM,
                   voxel_size_verified=False, voxel_size_placeholder=True, voxel_size_source="placeholder",
                   voxel_size_note=PLACEHOLDER_NOTE, bbox=format_bbox(box),
                   bbox_torch_em_order=[x0, x1, y0, y1, zs.start, zs.stop], raw_tiff=src.tiff_facts(first),
                   masks=masks, classes_missing=missing, notes=notes,
                   description=f"box {format_bbox(box)} (z, y, x voxels) of {DATASET} {VOLUME!r}")


def prepare(volumes: list[str] | None = None, force: bool = False, bbox: str | None = None,
            full: bool | None = None, scheduler: str | None = None) -> list[Volume]:
    """Prepare one box (``bbox``) or the whole tissue region (``full=True``)."""
    card = get_card(DATASET)
    _check_options(volumes, bbox, full, scheduler)
    if full:
        from emdata.datasets.human_liver_em.full import build_full

        return [build_full(card, force=force, scheduler=scheduler)]
    assert bbox is not None
    box = parse_bbox_option(DATASET, bbox)
    if is_closed(box) and not force:  # decided without a request: a finished box is reused offline
        name, prov = _prov(card, box)
        existing = reusable(volume_path(DATASET, name), prov)
        if existing is not None:
            return [existing]
    return [_prepare_box(card, box, bbox, force)]
