"""EMPIAR-13356's published files, read the way both the box and the ``--full`` builds need:
per-slice strip TIFFs by byte ranges, PNG masks fetched once into the download cache, the
slice count and the mask folders that exist found by asking the server.

Facts used (torch-em's ``human_liver_em.py``, constantinpape/torch-em commit a85b1434, and the
EMPIAR-13356 entry): raw ``humanliver_raw_images/humanliver_raw_{z:03d}.tif``, z = 000…596,
20000 × 20000, 16-bit; masks ``humanliver_<class>_mask/humanliver_<class>_mask_{z:03d}.png``,
binary 0/255 (channel 0 if a PNG has several); only the er, mito and nucleus folders are
confirmed. The TIFF tags are read and checked (:mod:`emdata.formats.strip_tiff`), never assumed;
what was found is returned by :func:`tiff_facts`.

Example:
    >>> mask_name("er", 7)
    'humanliver_er_mask/humanliver_er_mask_007.png'
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card
from emdata.config import downloads_dir
from emdata.formats.png import read_image
from emdata.formats.strip_tiff import StripTiffLayout, read_rows
from emdata.formats.tiff import TiffFormatError
from emdata.sources.download import fetch
from emdata.sources.errors import DownloadError
from emdata.sources.ranges import RangeNotSatisfiableError, RangeReader

DATASET = "human-liver-em"
RAW_SOURCE = "humanliver_raw_images"
CLASSES = ("bile_duct", "cell_boundary", "cholangiocyte", "endothelial", "er", "hepatocyte", "mito", "nucleus",
           "sinusoid")
"""The nine classes torch-em's docstring names, in its order."""
CONFIRMED = frozenset({"er", "mito", "nucleus"})
"""Classes whose folders torch-em's code reads; a missing one is an error, the others are tried."""
PUBLISHED_SHAPE = (597, 20000, 20000)
TORCH_EM_ASSUMED_TIFF = {"compression": 5, "predictor": 2, "rows_per_strip": 1}
LAYOUT_PROBE = 384 << 10
"""Bytes read at the start of a TIFF to parse its layout: header, IFD and both 20000-entry strip
tables (8 bytes each in BigTIFF) fit when the writer puts them first, as tifffile does; so a
slice costs one GET for its layout and one for its rows."""
_STATUS = re.compile(r"HTTP (\d{3})")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger("emdata.datasets.human_liver_em.recipe")


class HumanLiverFormatError(TiffFormatError):
    """A published file does not have the structure EMPIAR-13356 publishes."""


class MissingSliceError(FileNotFoundError):
    """A raw or mask slice the volume needs is not on the server."""


def mask_folder(cls: str) -> str:
    return f"humanliver_{cls}_mask"


def mask_name(cls: str, z: int) -> str:
    """``<folder>/<file>`` of one mask slice, as published."""
    return f"{mask_folder(cls)}/{mask_folder(cls)}_{z:03d}.png"


def raw_url(card: Card, z: int) -> str:
    return card.source(RAW_SOURCE).url.format(z=z)


def mask_url(card: Card, cls: str, z: int) -> str:
    return card.source(mask_folder(cls)).url.format(z=z)


def mask_path(cls: str, z: int) -> Path:
    """Where a mask slice is cached (fetched once, reused by every box and by ``--full``)."""
    return downloads_dir(DATASET) / mask_name(cls, z)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a download error reports, if any (``... HTTP 404 NOT FOUND``)."""
    match = _STATUS.search(str(exc))
    return int(match[1]) if match else None


def _missing(exc: BaseException) -> bool:
    return http_status(exc) in (404, 410)


# -- raw slices --------------------------------------------------------------------------------


def layout(reader: RangeReader, url: str) -> StripTiffLayout:
    """The strip layout of one raw slice: parsed once (one GET of its first :data:`LAYOUT_PROBE`
    bytes, whose ``Content-Range`` also gives the size; plus a GET for tag arrays stored beyond
    them, if any), then served from the range reader's metadata cache without a request."""
    remote = reader.file(url)

    def parse() -> dict[str, Any]:
        try:
            # one GET: its Content-Range also tells the size (cached), so no HEAD is needed; a file
            # smaller than the probe (a replica) answers "past the end" and its size comes from a HEAD
            with contextlib.suppress(RangeNotSatisfiableError):
                reader.read(url, 0, LAYOUT_PROBE)
            size = remote.size()
        except DownloadError as exc:
            if _missing(exc):
                raise MissingSliceError(f"{DATASET}: raw slice {url} is not on the server (HTTP 404)") from exc
            raise
        return StripTiffLayout.from_source(remote, size, name=url, probe=LAYOUT_PROBE).to_json()

    lay = StripTiffLayout.from_json(remote.metadata(StripTiffLayout.CACHE_KEY, parse))
    if lay.dtype.kind not in "ui":
        raise HumanLiverFormatError(f"{url}: pixel type {lay.dtype}; expected 16-bit greyscale integers")
    return lay


def tiff_facts(lay: StripTiffLayout) -> dict[str, Any]:
    """What the TIFF tags say (recorded in the volume), next to what torch-em's loader assumes."""
    return {"compression": lay.compression, "predictor": lay.predictor, "rows_per_strip": lay.rows_per_strip,
            "dtype": str(lay.dtype.newbyteorder("=")), "byteorder": "little" if lay.byteorder == "<" else "big",
            "bigtiff": lay.bigtiff, "shape": list(lay.shape)}


def tiff_notes(lay: StripTiffLayout) -> list[str]:
    """Notes where the tags differ from torch-em's assumption (LZW, predictor 2, one row per strip)."""
    found = tiff_facts(lay)
    notes = [f"raw TIFF tag {k} = {found[k]}, torch-em assumes {v}; read as the tags say"
             for k, v in TORCH_EM_ASSUMED_TIFF.items() if found[k] != v]
    if lay.dtype.itemsize != 2:
        notes.append(f"raw TIFF is {found['dtype']}, the published description says 16-bit; stored as read")
    for note in notes:
        log.warning("%s: %s", lay.name, note)
    return notes


def check_same(lay: StripTiffLayout, first: StripTiffLayout) -> None:
    """Every slice must have the first slice's size and pixel type."""
    if lay.shape != first.shape or lay.dtype != first.dtype:
        raise HumanLiverFormatError(f"{lay.name}: {lay.shape[0]} × {lay.shape[1]} px of {lay.dtype}, but "
                                    f"{first.name} is {first.shape[0]} × {first.shape[1]} px of {first.dtype}; "
                                    "all slices of the volume must match")


def read_raw(reader: RangeReader, lay: StripTiffLayout, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows ``y0:y1``, columns ``x0:x1`` of one slice: the strips of those rows in one request."""
    return read_rows(lay, reader.file(lay.name), y0, y1, x0, x1)


def slice_exists(reader: RangeReader, url: str) -> bool:
    """Whether a raw slice is on the server (one HEAD, remembered by the range cache)."""
    try:
        reader.size(url)
    except DownloadError as exc:
        if _missing(exc):
            return False
        raise
    return True


def _count_record() -> Path:
    return downloads_dir(DATASET) / RAW_SOURCE / "slices.json"


def slice_count(reader: RangeReader, card: Card, *, force: bool = False) -> int:
    """Number of raw slices: the published 597 if slice 596 exists, else found by bisection
    (a replica or a different release; logged). Remembered in the download folder, so a
    resumed build sees the same count without asking; ``force`` asks again."""
    record = _count_record()
    if not force:
        try:
            return int(json.loads(record.read_text(encoding="utf-8"))["count"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    published = PUBLISHED_SHAPE[0]
    if slice_exists(reader, raw_url(card, published - 1)):
        count = published
    elif not slice_exists(reader, raw_url(card, 0)):
        raise MissingSliceError(f"{DATASET}: the first raw slice {raw_url(card, 0)} is not on the server (HTTP 404)")
    else:
        lo, hi = 0, published - 1  # lo exists, hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if slice_exists(reader, raw_url(card, mid)):
                lo = mid
            else:
                hi = mid
        count = lo + 1
        log.warning("%s: the server has raw slices 000…%03d (%d), not the published %d (a replica or a different "
                    "release); using what it has", DATASET, lo, count, published)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"count": count, "published": published,
                               "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}), encoding="utf-8")
    tmp.replace(record)
    return count


# -- masks -------------------------------------------------------------------------------------


def fetch_mask(card: Card, cls: str, z: int) -> Path | None:
    """The cached mask slice (fetched whole once, ever), or None if the server has no such file."""
    source = card.source(mask_folder(cls))
    url = source.url.format(z=z)
    try:
        return fetch(url, mask_path(cls, z), checksum=source.checksum, description=mask_name(cls, z)).path
    except DownloadError as exc:
        if _missing(exc):
            return None
        raise


def _absent_record(cls: str) -> Path:
    return downloads_dir(DATASET) / mask_folder(cls) / "absent.json"


def absent_class(cls: str) -> dict[str, Any] | None:
    """The record of an earlier probe that found no folder for ``cls`` (None: not known absent)."""
    try:
        return json.loads(_absent_record(cls).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def record_absent(cls: str, urls: list[str]) -> dict[str, Any]:
    record = {"class": cls, "folder": mask_folder(cls), "http_status": 404, "probed": urls,
              "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path = _absent_record(cls)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.replace(path)
    return record


def forget_absent(cls: str) -> None:
    _absent_record(cls).unlink(missing_ok=True)


def not_published(card: Card, cls: str, z0: int, z_last: int, reader: RangeReader) -> None:
    """After slice ``z0`` of ``cls`` answered 404: a confirmed class is an error; so is an
    unconfirmed one whose slice ``z_last`` exists (published for some slices only)."""
    first = mask_url(card, cls, z0)
    if cls in CONFIRMED:
        raise MissingSliceError(f"{DATASET}: {first} is not on the server (HTTP 404), but {mask_folder(cls)} is one "
                                f"of the confirmed mask folders (er, mito, nucleus); check the mirror or the release")
    if z_last != z0 and slice_exists(reader, mask_url(card, cls, z_last)):
        raise MissingSliceError(f"{DATASET}: {mask_folder(cls)} has slice {z_last:03d} but not slice {z0:03d} "
                                f"({first}: HTTP 404); the class is published for some slices only, which this "
                                "recipe does not guess around")


def missing_later(card: Card, cls: str, z: int, z0: int) -> MissingSliceError:
    return MissingSliceError(f"{DATASET}: {mask_folder(cls)} has slice {z0:03d} but not slice {z:03d} "
                             f"({mask_url(card, cls, z)}: HTTP 404); the class is published for some slices only")


def _decode_png(path: Path) -> np.ndarray:
    """Decode a PNG: 8-bit grey or RGB with libspng (about 2× Pillow here, and it releases the GIL,
    so threads decode in parallel), anything else with Pillow (as torch-em does)."""
    data = path.read_bytes()
    ihdr_ok = data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 28
    if ihdr_ok and data[24] == 8 and data[25] in (0, 2) and data[28] == 0:  # depth 8, grey/RGB, not interlaced
        try:
            import imagecodecs

            return np.asarray(imagecodecs.spng_decode(data))
        except Exception as exc:  # a decoder failure: let Pillow try and name the problem
            log.debug("%s: libspng could not decode it (%s); trying Pillow", path, exc)
    return read_image(data, name=str(path))


def mask_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A whole decoded mask slice (2D; channel 0 if the PNG has several, as torch-em takes).

    PNG rows cannot be skipped, so this is the peak memory of a mask read: one decoded slice
    (400 MB at 20000 × 20000).
    """
    image = _decode_png(path)
    where = f"{path.parent.name}/{path.name}"
    if image.ndim == 3:
        image = image[..., 0]
    if image.ndim != 2:
        raise HumanLiverFormatError(f"{where}: expected a 2D mask, got shape {image.shape}")
    if image.shape != shape:
        raise HumanLiverFormatError(f"{where}: mask is {image.shape[0]} × {image.shape[1]} px, the raw slices are "
                                    f"{shape[0]} × {shape[1]}; masks must cover the raw slice")
    return image


def to_binary(crop: np.ndarray, path: Path) -> np.ndarray:
    """0/255 mask values as uint8 0/1; any other value is an error naming the file."""
    if crop.dtype == bool:
        return crop.astype(np.uint8)
    bad = (crop != 0) & (crop != 255)
    if bad.any():
        values = np.unique(crop[bad])[:5].tolist()
        raise HumanLiverFormatError(f"{path.parent.name}/{path.name}: mask values {values} found; EMPIAR-13356 "
                                    "masks are binary 0/255")
    return (crop == 255).view(np.uint8)


def mask_crop(path: Path, shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Rows ``y0:y1``, columns ``x0:x1`` of a 0/255 mask slice as uint8 0/1 (decoded whole)."""
    return to_binary(mask_image(path, shape)[y0:y1, x0:x1], path)


def label_classes(card: Card, cls: str) -> list[dict[str, Any]]:
    """The card's class table of ``cls`` with the stored encoding: 255 → 1."""
    spec = card.label_layer(cls)
    return [{"value": 1 if c.value == 255 else c.value, "name": c.name, "ontology": c.ontology, "color": c.color}
            for c in spec.classes]
