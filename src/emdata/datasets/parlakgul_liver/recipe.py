"""Parlakgul liver (EMPIAR-10791): one ``--bbox`` cut-out of one FIB-SEM sample → one volume
``<sample>-<bbox_name>`` with the raw voxels and one binary label layer per organelle class.

The published layout (EMPIAR-10791, as torch-em's ``parlakgul_liver.py`` reads it): per sample
(6461 lean, 6464 obese 1, 9430 obese 2, 1857 obese Climp63; 8 nm isotropic) the raw volume is
one TIFF per z slice (``Gunes_*_8x8x8nm_3MHz.{z:04d}.tif``) and each class is one ZIP of
per-slice TIFFs (``<sample> <Condition> <Class>.zip``). The volumes are huge (3629–8501 slices
of 8000–12000 px per side), so the recipe always reads a box:

* ``sample`` (one id or a list; CLI ``--sample``, repeatable) is required: there is no default,
  because every sample means a download of all its class ZIPs. ``volumes`` may name the card's
  volumes (``"6461"``, …) instead; both at once must agree. One bbox may serve several samples;
  it must lie inside each, and open ends are filled per sample.
* ``bbox`` (``z0:z1,y0:y1,x0:x1`` in voxels) is required; without it the error gives each
  sample's published shape and an example box. Closed ends are checked against the published
  shape before anything is downloaded; the final check uses the real shape: z = the number of
  TIFF members of the class ZIPs (all must agree), y/x = the raw slices' TIFF header.
* Raw: only the box's slices are read, and of each only its rows. A slice that is a strip TIFF
  the strip reader supports (``emdata.formats.strip_tiff``: tags checked, uncompressed or LZW,
  any RowsPerStrip) is read through HTTP range requests (``RangeReader``: the header, the IFD
  and the strips of rows ``y0:y1``); any other TIFF (tiled, deflate, …) is downloaded whole
  with ``fetch`` and read with tifffile. The dtype is read from the file and kept (the source
  dtype is not published; torch-em's uint8 is not assumed); all slices must share shape and dtype.
* Labels: each class ZIP is fetched whole once (cached in the downloads folder; it is never
  extracted) and the box's slices are read member by member. Slice index = position of the
  ``.tif``/``.tiff`` member in the name-sorted list, with digit runs compared by value (natural
  order; identical to plain name order for zero-padded names — when the two differ the volume's
  notes say so). Each mask must be binary, {0, 1} or {0, 255}, one encoding per class; it is
  stored as 0/1 (uint8). Anything else is an error naming the ZIP member, slice and value. One
  layer per class (card names ``er``, ``er_sheets``, ``er_tubules``, ``mito``,
  ``lipid_droplet``, ``nuclear_membrane``, ``plasma_membrane``), so overlapping classes (ER and
  ER sheets/tubules) never collide. Sample 1857 has no Plasma Membrane ZIP: that layer is left
  out and a note says so.
* A rerun with a closed bbox returns the finished volume without a single request (the same
  recipe version, parameters and source URLs); ``force=True`` rebuilds.

Why one module of this size: samples, per-class mask archives and ranged slice reads form one
box-cutting procedure whose steps share the same resolved box and slice list.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("parlakgul-liver"):
    ...     emdata.prepare("parlakgul-liver", sample="6461", bbox="1:5,13:45,7:70")
    [Volume(parlakgul-liver/6461-z1-5_y13-45_x7-70, split=all, ...)]
"""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np

from emdata import config
from emdata.boxes import (
    Box,
    bbox_name,
    example_bbox,
    format_bbox,
    inside,
    is_closed,
    parse_bbox_option,
    resolve_bbox,
)
from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import as_list, layer, provenance, publish, reusable, volume_path
from emdata.datasets._slices import is_junk
from emdata.datasets.contract import BBOX, Option
from emdata.formats.strip_tiff import StripTiffLayout, read_rows
from emdata.formats.tiff import TiffFormatError, read_stack
from emdata.sources.archive import MAX_MEMBER_BYTES, ArchiveError, list_members
from emdata.sources.download import FetchResult, fetch
from emdata.sources.progress import transfer_progress
from emdata.sources.ranges import RangeReader
from emdata.store.volume import Volume

DATASET = "parlakgul-liver"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (
    Option("sample", str, "The sample to cut from (required; `emdata info ID` lists them).",
           repeatable=True, metavar="SAMPLE"),
    BBOX,
)
CLASSES: dict[str, str] = {
    "er": "ER",
    "er_sheets": "ER Sheets",
    "er_tubules": "ER Tubules",
    "mito": "Mitochondria",
    "lipid_droplet": "Lipid Droplet",
    "nuclear_membrane": "Nuclear membrane",
    "plasma_membrane": "Plasma Membrane",
}
"""Card label layer → the class as written in the ZIP names (``6461 Lean Nuclear membrane.zip``)."""
MISSING: dict[str, tuple[str, ...]] = {"1857": ("plasma_membrane",)}
"""Classes a sample has no ZIP for (EMPIAR-10791 publishes no plasma-membrane ZIP for 1857)."""
EXAMPLE_SIZE = (16, 256, 256)
READ_WORKERS = 8
log = logging.getLogger(__name__)


class ParlakgulFormatError(TiffFormatError):
    """A raw slice or a segmentation ZIP does not have the structure EMPIAR-10791 publishes."""


# -- options ------------------------------------------------------------------------------------


def _published_shapes(card: Card) -> dict[str, tuple[int, int, int]]:
    """``{sample: (z, y, x)}`` from the card's volumes (one per sample)."""
    out: dict[str, tuple[int, int, int]] = {}
    for spec in card.volumes:
        if spec.shape and len(spec.shape) == 3:
            out[spec.subset or spec.name] = (int(spec.shape[0]), int(spec.shape[1]), int(spec.shape[2]))
    return out


def _describe(card: Card, samples: Sequence[str]) -> str:
    shapes = _published_shapes(card)
    titles = {s.id: s.title for s in card.subsets}
    return ", ".join(f"{titles.get(s, s)}: {'×'.join(map(str, shapes[s]))} voxels (z, y, x)" for s in samples)


def _choose_samples(card: Card, sample: str | list[str] | None, volumes: list[str] | None) -> list[str]:
    known = [s.id for s in card.subsets]
    chosen = [str(s) for s in as_list(str(sample) if isinstance(sample, int) else sample)]
    named = [str(v) for v in volumes or []]
    if chosen and named and sorted(set(chosen)) != sorted(set(named)):
        raise ValueError(f"{DATASET}: --sample {chosen} and --volume {named} disagree; the card's volumes are the "
                         f"samples {known}: give one of the two")
    chosen = list(dict.fromkeys(chosen or named))
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"{DATASET} has no sample(s) {unknown}; choose from {known} ({_describe(card, known)})")
    if not chosen:
        raise ValueError(f"{DATASET}: choose a sample with --sample (repeatable): {_describe(card, known)}. Each is "
                         f"read as a --bbox cut-out, e.g. `emdata prepare {DATASET} --sample {known[0]} --bbox "
                         f"{example_bbox(_published_shapes(card)[known[0]], EXAMPLE_SIZE)}`")
    return chosen


def _parse(card: Card, samples: list[str], bbox: str | None) -> Box:
    if bbox is None:
        shapes = _published_shapes(card)
        z, y, x = (min(shapes[s][i] for s in samples) for i in range(3))
        example = example_bbox((z, y, x), EXAMPLE_SIZE)
        flags = " ".join(f"--sample {s}" for s in samples)
        chosen = samples[0] if len(samples) == 1 else samples
        raise ValueError(
            f"{DATASET}: a bbox is required (the samples are read as cut-outs, never whole): "
            f"{_describe(card, samples)} (published shape, 8 nm voxels). Pass --bbox z0:z1,y0:y1,x0:x1 inside "
            f"{'it' if len(samples) == 1 else 'each'}, e.g. `emdata prepare {DATASET} {flags} --bbox {example}` or "
            f"emdata.prepare({DATASET!r}, sample={chosen!r}, bbox={example!r})")
    return parse_bbox_option(DATASET, bbox)


def _resolve(box: Box, shape: tuple[int, int, int], where: str) -> Box:
    """Open ends filled from ``shape``; a box outside it is an error with an example inside."""
    out = resolve_bbox(box, shape)
    if not inside(out, shape):
        raise ValueError(f"{DATASET}: bbox {format_bbox(box)} lies outside {where} of shape {tuple(shape)} (z, y, x); "
                         f"choose a box inside it, e.g. --bbox {example_bbox(shape, EXAMPLE_SIZE)}")
    return out


# -- sources ------------------------------------------------------------------------------------


def _layers(sample: str) -> list[str]:
    return [name for name in CLASSES if name not in MISSING.get(sample, ())]


def _zip_url(card: Card, sample: str, name: str) -> str:
    """The card's ZIP pattern with ``{class}`` URL-encoded (spaces as ``%20``, as the card writes them)."""
    return card.source(f"{sample}-segmentation").url.replace("{class}", quote(CLASSES[name]))


def _raw_pattern(card: Card, sample: str) -> str:
    return card.source(f"{sample}-raw").url


def _raw_url(card: Card, sample: str, z: int) -> str:
    pattern = _raw_pattern(card, sample)
    if "{z:04d}" not in pattern:
        raise ValueError(f"{DATASET}: card source {sample}-raw {pattern!r} has no '{{z:04d}}' slice placeholder")
    return pattern.replace("{z:04d}", f"{z:04d}")


def _file_name(url: str) -> str:
    """The decoded last path component (``6461 Lean ER.zip``): the name in the downloads folder."""
    return unquote(PurePosixPath(urlsplit(url).path).name)


def _zip_file(card: Card, sample: str, name: str) -> Path:
    return downloads_dir(DATASET) / sample / _file_name(_zip_url(card, sample, name))


def _fetch_zip(card: Card, sample: str, name: str) -> FetchResult:
    source = card.source(f"{sample}-segmentation")
    mirrors = tuple(m.replace("{class}", quote(CLASSES[name])) for m in source.mirrors)
    dest = _zip_file(card, sample, name)
    return fetch(_zip_url(card, sample, name), dest, checksum=source.checksum, mirrors=mirrors,
                 description=dest.name)


def _prov(card: Card, sample: str, box: Box, fetched: list[FetchResult] | None = None) -> dict[str, Any]:
    """Provenance; without ``fetched`` the ZIPs are listed by URL only (the offline reuse check)."""
    parameters = {"sample": sample, "bbox": format_bbox(box), "layers": _layers(sample)}
    if fetched is not None:
        return provenance(DATASET, RECIPE_VERSION, fetched, parameters, urls=[_raw_pattern(card, sample)])
    urls = [_zip_url(card, sample, n) for n in _layers(sample)] + [_raw_pattern(card, sample)]
    return provenance(DATASET, RECIPE_VERSION, [], parameters, urls=urls)


# -- segmentation ZIPs --------------------------------------------------------------------------


def _natural(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key over the whole member path: digit runs by value, other text as is (case-sensitive)."""
    parts = tuple((1, int(p)) if p.isdigit() else (0, p) for p in re.split(r"(\d+)", name) if p)
    return (*parts, (0, name))  # the name breaks ties ('s1.tif' vs 's01.tif')


def zip_slices(archive: Path) -> tuple[list[str], bool]:
    """The ``.tif``/``.tiff`` members of ``archive`` in slice order, and whether that order
    differs from plain name order (unpadded numbers).

    Example:
        >>> import tempfile, zipfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     archive = Path(tmp) / "6461 Lean ER.zip"
        ...     with zipfile.ZipFile(archive, "w") as zf:
        ...         for name in ("ER_10.tif", "ER_9.tif", "ER_0.tif", "__MACOSX/._ER_0.tif"):
        ...             zf.writestr(f"6461 Lean ER/{name}", b"")
        ...     zip_slices(archive)
        (['6461 Lean ER/ER_0.tif', '6461 Lean ER/ER_9.tif', '6461 Lean ER/ER_10.tif'], True)
    """
    members = [m for m in list_members(archive) if not is_junk(m)
               and PurePosixPath(m).suffix.lower() in (".tif", ".tiff")]
    if not members:
        shown = list_members(archive)[:20]
        raise ParlakgulFormatError(f"{archive}: no .tif/.tiff members; the archive holds {shown}. Expected one TIFF "
                                   "per z slice (delete the file and fetch again if it is not the published ZIP)")
    ordered = sorted(members, key=_natural)
    return ordered, ordered != sorted(members)


def _binary_values(img: np.ndarray, where: str) -> int | None:
    """Check one mask slice is {0, 1} or {0, 255}; returns its foreground value (None: all zero)."""
    if img.dtype == bool:
        return 1 if img.any() else None
    if not np.issubdtype(img.dtype, np.integer):
        raise ParlakgulFormatError(f"{where}: mask dtype {img.dtype}; expected an integer binary mask "
                                   "({0, 1} or {0, 255})")
    if img.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(img.ravel(), minlength=256)).tolist()
    else:
        odd = (img != 0) & (img != 1) & (img != 255)
        present = [v for v in (0, 1, 255) if (img == v).any()]
        if odd.any():
            present += np.unique(img[odd])[:5].tolist()
    bad = [v for v in present if v not in (0, 1, 255)]
    if bad:
        raise ParlakgulFormatError(f"{where}: value(s) {bad[:5]} in a binary mask; expected {{0, 1}} or {{0, 255}}")
    foreground = [v for v in present if v]
    if len(foreground) > 1:
        raise ParlakgulFormatError(f"{where}: holds both 1 and 255; expected one foreground value ({{0, 1}} or "
                                   "{0, 255})")
    return foreground[0] if foreground else None


@dataclass
class _MaskSlice:
    data: np.ndarray
    foreground: int | None


def _read_mask(archive: Path, member: str, z: int, box: Box, shape: tuple[int, int]) -> _MaskSlice:
    where = f"{archive.name}:{member} (slice {z})"
    try:
        with zipfile.ZipFile(archive) as zf:
            info = zf.getinfo(member)
            if info.file_size > MAX_MEMBER_BYTES:
                raise ArchiveError(f"{where}: member claims {info.file_size} bytes, over the {MAX_MEMBER_BYTES} byte "
                                   "limit for in-memory reads")
            data = zf.read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise ArchiveError(f"{where}: cannot be read ({type(exc).__name__}: {exc}); delete {archive} and fetch "
                           "again") from exc
    stack = read_stack(data, name=where)
    if stack.data.ndim != 3 or stack.data.shape[0] != 1:
        raise ParlakgulFormatError(f"{where}: expected one single-channel page, got shape {stack.data.shape} "
                                   f"({stack.photometric})")
    img = stack.data[0]
    if img.shape != shape:
        raise ParlakgulFormatError(f"{where}: mask shape {img.shape} (y, x) differs from the raw slices' {shape}")
    foreground = _binary_values(img, where)
    return _MaskSlice((img[box[1], box[2]] != 0).astype(np.uint8), foreground)


def _read_class(archive: Path, members: list[str], box: Box, shape: tuple[int, int], name: str,
                pool: ThreadPoolExecutor) -> tuple[np.ndarray, str]:
    """The 0/1 mask of ``box`` and the source encoding (``"0/1"`` or ``"0/255"``)."""
    zs = range(box[0].start, box[0].stop)
    slices = list(pool.map(lambda z: _read_mask(archive, members[z], z, box, shape), zs))
    encoding: tuple[int, str] | None = None
    for z, item in zip(zs, slices):
        if item.foreground is None:
            continue
        where = f"{archive.name}:{members[z]} (slice {z})"
        if encoding is None:
            encoding = (item.foreground, where)
        elif encoding[0] != item.foreground:
            raise ParlakgulFormatError(f"{where}: foreground value {item.foreground}, but {encoding[1]} uses "
                                       f"{encoding[0]}; expected one encoding per class ({name})")
    return np.stack([s.data for s in slices]), "0/255" if encoding and encoding[0] == 255 else "0/1"


# -- raw slices ---------------------------------------------------------------------------------


@dataclass
class _RawSlices:
    """The raw TIFF slices of one sample: strip TIFFs are read by rows through range requests,
    any other TIFF is downloaded whole (once, into the downloads folder) and cropped."""

    card: Card
    sample: str
    reader: RangeReader
    where: dict[int, StripTiffLayout | Path] = field(default_factory=dict)
    methods: set[str] = field(default_factory=set)

    def _layout(self, z: int) -> StripTiffLayout | TiffFormatError:
        url = _raw_url(self.card, self.sample, z)
        remote = self.reader.file(url)
        try:
            doc = remote.metadata(StripTiffLayout.CACHE_KEY,
                                  lambda: StripTiffLayout.from_source(remote, remote.size(), name=url).to_json())
        except TiffFormatError as exc:
            return exc
        return StripTiffLayout.from_json(doc)

    def _download(self, z: int, why: TiffFormatError) -> Path:
        url = _raw_url(self.card, self.sample, z)
        source = self.card.source(f"{self.sample}-raw")
        dest = downloads_dir(DATASET) / f"{self.sample}-raw" / _file_name(url)
        log.info("%s: not readable by rows (%s); downloading the whole slice", url, why)
        return fetch(url, dest, checksum=source.checksum, description=dest.name).path

    def locate(self, zs: range, pool: ThreadPoolExecutor) -> None:
        """Parse the header of every slice in ``zs`` (concurrently); download the others whole
        (one after the other, so that only one progress bar is live)."""
        layouts = dict(zip(zs, pool.map(self._layout, zs)))
        for z, found in layouts.items():
            self.where[z] = found if isinstance(found, StripTiffLayout) else self._download(z, found)

    def _decode(self, z: int) -> np.ndarray:
        url, path = _raw_url(self.card, self.sample, z), self.where[z]
        assert isinstance(path, Path), f"slice {z} is read by rows, not decoded whole"
        try:
            stack = read_stack(path, name=url)
        except TiffFormatError as exc:
            raise ParlakgulFormatError(f"{url}: tifffile cannot read it either ({exc}); delete {path} and fetch "
                                       "again if it is damaged") from exc
        if stack.data.ndim != 3 or stack.data.shape[0] != 1 or not np.issubdtype(stack.data.dtype, np.integer):
            raise ParlakgulFormatError(f"{url}: expected one greyscale integer page, got shape {stack.data.shape} "
                                       f"dtype {stack.data.dtype} ({stack.photometric})")
        return stack.data[0]

    def describe(self, z: int) -> tuple[tuple[int, int], np.dtype]:
        """(y, x) shape and native dtype of slice ``z``."""
        found = self.where[z]
        if isinstance(found, StripTiffLayout):
            return found.shape, found.dtype.newbyteorder("=")
        img = self._decode(z)
        return (int(img.shape[0]), int(img.shape[1])), img.dtype

    def _check(self, z: int, box: Box, got: tuple[tuple[int, ...], np.dtype],
               want: tuple[tuple[int, int], np.dtype]) -> None:
        if (tuple(got[0]), got[1]) != want:
            first = _raw_url(self.card, self.sample, box[0].start)
            raise ParlakgulFormatError(f"{_raw_url(self.card, self.sample, z)}: slice of shape {tuple(got[0])} dtype "
                                       f"{got[1]} differs from {first} ({want[0]} {want[1]}); all raw slices of a "
                                       "sample must match")

    def read(self, z: int, box: Box, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        """Rows ``box[1]``, columns ``box[2]`` of slice ``z``, after checking its shape and dtype."""
        found = self.where[z]
        if isinstance(found, StripTiffLayout):
            self._check(z, box, (found.shape, found.dtype.newbyteorder("=")), (shape, dtype))
            self.methods.add("strip-ranges")
            remote = self.reader.file(_raw_url(self.card, self.sample, z))
            return read_rows(found, remote, box[1].start, box[1].stop, box[2].start, box[2].stop)
        img = self._decode(z)
        self._check(z, box, (img.shape, img.dtype), (shape, dtype))
        self.methods.add("whole-file")
        return np.ascontiguousarray(img[box[1], box[2]])


# -- the recipe ---------------------------------------------------------------------------------


def prepare(volumes: list[str] | None = None, force: bool = False, sample: str | list[str] | None = None,
            bbox: str | None = None) -> list[Volume]:
    """Prepare the cut-out ``bbox`` of each chosen sample as volume ``<sample>-<bbox_name>``."""
    card = get_card(DATASET)
    samples = _choose_samples(card, sample, volumes)
    box = _parse(card, samples, bbox)
    shapes = _published_shapes(card)
    for s in samples:  # fail before any download when a closed end lies outside a published shape
        _resolve(box, shapes[s], f"sample {s} (published shape)")
    return [_prepare_sample(card, s, box, force) for s in samples]


def _prepare_sample(card: Card, sample: str, box: Box, force: bool) -> Volume:
    if is_closed(box) and not force:  # decided without a request: the ZIPs' hashes are not needed
        existing = reusable(volume_path(DATASET, f"{sample}-{bbox_name(box)}"), _prov(card, sample, box),
                            sources_by="url")
        if existing is not None:
            return existing
    names = _layers(sample)
    fetched = [_fetch_zip(card, sample, n) for n in names]
    slices: dict[str, list[str]] = {}
    notes: list[str] = []
    for name, result in zip(names, fetched):
        slices[name], unpadded = zip_slices(result.path)
        if unpadded:
            notes.append(f"{result.path.name}: member names carry unpadded numbers; slices ordered by number "
                         "(natural order), which differs from plain name order")
    counts = {n: len(m) for n, m in slices.items()}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{_zip_file(card, sample, n).name}: {c}" for n, c in counts.items())
        raise ParlakgulFormatError(f"{DATASET} {sample}: the class ZIPs hold different numbers of TIFF slices "
                                   f"({listed}); expected one per z slice in each (delete the odd one and fetch again)")
    depth = next(iter(counts.values()))
    published = _published_shapes(card)[sample]
    z_box = _resolve(box, (depth, published[1], published[2]), f"sample {sample} ({depth} slices in its class ZIPs)")
    zs = range(z_box[0].start, z_box[0].stop)

    with RangeReader() as reader, config.thread_pool(READ_WORKERS, "parlakgul") as pool:
        raw_slices = _RawSlices(card, sample, reader)
        raw_slices.locate(zs, pool)
        plane, dtype = raw_slices.describe(zs[0])
        shape = (depth, plane[0], plane[1])
        full = _resolve(box, shape, f"sample {sample}")
        if shape != published:
            log.warning("%s %s: shape %s differs from the published %s (a replica or a different release); "
                        "preparing it anyway", DATASET, sample, shape, published)
        name = f"{sample}-{bbox_name(full)}"
        prov = _prov(card, sample, full, fetched)
        existing = None if force else reusable(volume_path(DATASET, name), prov)
        if existing is not None:
            return existing
        with transfer_progress(f"{DATASET} {sample}: raw slices", len(zs), unit="slices") as advance:
            def one(z: int) -> np.ndarray:
                out = raw_slices.read(z, full, plane, dtype)
                advance(1)
                return out
            raw = np.stack(list(pool.map(one, zs)))
        layers, label_meta = [], {}
        for lname, result in zip(names, fetched):
            data, encoding = _read_class(result.path, slices[lname], full, plane, lname, pool)
            layers.append(layer(card, lname, data))
            label_meta[lname] = {"url": result.url, "zip": result.path.name, "encoding": encoding,
                                 "slices": depth, "members": [slices[lname][z] for z in (zs[0], zs[-1])]}
            if encoding == "0/255":
                notes.append(f"{lname}: {result.path.name} stores the mask as 0/255; stored as 0/1")
    for missing in MISSING.get(sample, ()):
        notes.append(f"sample {sample} has no {CLASSES[missing]} segmentation (no "
                     f"'{_zip_file(card, sample, missing).name}' is published); layer {missing} left out")
    spec = next(v for v in card.volumes if (v.subset or v.name) == sample)
    extra: dict[str, Any] = {
        "sample": sample, "bbox": format_bbox(full), "sample_shape": list(shape),
        "raw_source": {"url_pattern": _raw_pattern(card, sample), "dtype": str(raw.dtype),
                       "reader": sorted(raw_slices.methods)},
        "label_sources": label_meta, "slice_order": "natural (member names, digit runs by value)",
        "notes": notes,
        "description": f"cut-out {format_bbox(full)} (z, y, x voxels) of sample {sample}; {spec.description}",
    }
    return publish(card, name, spec.split, raw, layers, prov, **extra)
