"""MitoEM (MitoEM-H human, MitoEM-R rat): raw PNG zips + train/val label TIFF zips → volumes
``<subset>-train``, ``<subset>-val`` (mitochondria instance ids) and ``<subset>-test`` (raw only).

Layout (pytorch_connectomics' MitoEM tutorial, ``docs/source/tutorials/mito.rst``):
``EM30-{H,R}-im.zip`` holds ``im/im%04d.png`` (1000 slices),
``EM30-{H,R}-mito-train-val-v2.zip`` holds ``mito-train-v2/seg%04d.tif`` and
``mito-val-v2/seg%04d.tif``. The number in a file name is the global z of the slice; slices are
ordered by that number (``im10`` after ``im9`` whatever the zero padding), never by text.

Splits come from what the archives contain, not from fixed ranges: ``train`` = the slices in
``mito-train-v2/``, ``val`` = those in ``mito-val-v2/``, ``test`` = the raw slices with no
label (500-999 in the published data). Each must be a gap-free run of slice numbers and every
label slice needs its raw slice. Counts that differ from the card (400/100/500) are logged, not
fatal, so small replicas work. Each volume records its slice numbers (``source_slices``).

Labels are stored in the TIFFs' own integer dtype, never narrowed (torch-em casts them to
uint64; slices of different widths are widened losslessly to the widest, with a note). Volumes
larger than ``IN_MEMORY_LIMIT`` bytes are assembled in a scratch ``.npy`` memory map under the
dataset's download folder (removed afterwards), so 400 × 4096² slices do not need to fit in RAM.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("mitoem", subsets=["rat"]):
    ...     vols = emdata.prepare("mitoem", subset=["rat"], volumes=["rat-val"])
    ...     vols[0].name, vols[0].meta["source_slices"]  # the published files give [400, 499]
    ('rat-val', [4, 5])
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import SUBSET, Option
from emdata.formats.png import ImageFormatError, read_image
from emdata.formats.tiff import TiffFormatError, read_stack
from emdata.sources.archive import list_members, read_member
from emdata.sources.download import FetchResult
from emdata.store.volume import Volume

DATASET = "mitoem"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (SUBSET,)
# subset → (raw zip, label zip): card source names
SOURCES = {"human": ("EM30-H-im.zip", "EM30-H-mito-train-val-v2.zip"),
           "rat": ("EM30-R-im.zip", "EM30-R-mito-train-val-v2.zip")}
RAW_FOLDER = "im"
RAW_NAME = re.compile(r"^im(\d+)\.png$", re.IGNORECASE)
LABEL_FOLDERS = {"train": "mito-train-v2", "val": "mito-val-v2"}
LABEL_NAME = re.compile(r"^seg(\d+)\.tiff?$", re.IGNORECASE)
COUNT_KEYS = {"train": "train_slices", "val": "val_slices", "test": "test_slices"}
IN_MEMORY_LIMIT = 256 << 20  # bytes; larger stacks go to a scratch memory map (disk), written region by region
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
log = logging.getLogger(__name__)


class MitoEMFormatError(ValueError):
    """A MitoEM archive does not have the layout, names or encodings MitoEM publishes."""


@dataclass(frozen=True)
class _Layout:
    """Which member holds which global slice, per split, for one subset."""

    raw: dict[int, str]
    labels: dict[str, dict[int, str]]  # "train"/"val" → {z: member}
    slices: dict[str, list[int]]  # "train"/"val"/"test" → sorted z


def _junk(member: str) -> bool:
    path = PurePosixPath(member)
    return "__MACOSX" in path.parts or path.name.startswith(".")


def _index(archive: Path, folder: str, pattern: re.Pattern[str], expected: str) -> dict[int, str] | None:
    """``{z: member}`` for the files of every folder named ``folder`` (None if there is none)."""
    out: dict[int, str] = {}
    parents: set[str] = set()
    for member in list_members(archive):
        path = PurePosixPath(member)
        if _junk(member) or path.parent.name != folder:
            continue
        parents.add(str(path.parent))
        match = pattern.match(path.name)
        if match is None:
            raise MitoEMFormatError(f"{archive.name}:{member}: unexpected file in {folder}/; expected {expected}")
        z = int(match.group(1))
        if z in out:
            raise MitoEMFormatError(f"{archive.name}: {out[z]} and {member} both name slice {z} (zero padding "
                                    "differs?); remove one of them")
        out[z] = member
    if len(parents) > 1:
        raise MitoEMFormatError(f"{archive.name}: folder {folder}/ appears in several places {sorted(parents)}; "
                                "cannot tell which one holds the slices")
    return out if parents else None


def _folders(archive: Path) -> list[str]:
    return sorted({str(PurePosixPath(m).parent) for m in list_members(archive) if not _junk(m)})[:20]


def _runs(numbers: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 6]`` → ``'0-2, 5-6'``."""
    out: list[str] = []
    for z in sorted(numbers):
        if out and int(out[-1].split("-")[-1]) == z - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{z}"
        else:
            out.append(str(z))
    return ", ".join(out)


def _layout(card: Card, subset: str, raw_zip: Path, label_zip: Path) -> _Layout:
    raw = _index(raw_zip, RAW_FOLDER, RAW_NAME, "im<number>.png")
    if not raw:
        raise MitoEMFormatError(f"{raw_zip}: no slices in an {RAW_FOLDER}/ folder (expected im/im%04d.png); the "
                                f"archive has the folders {_folders(raw_zip)}. Delete it and fetch again")
    labels: dict[str, dict[int, str]] = {}
    for split, folder in LABEL_FOLDERS.items():
        found = _index(label_zip, folder, LABEL_NAME, "seg<number>.tif")
        if found is None:
            raise MitoEMFormatError(
                f"{label_zip}: no folder {folder}/ (expected {folder}/seg%04d.tif); the archive has the folders "
                f"{_folders(label_zip)}. Older MitoEM releases used mito_train/ and mito_val/ with PNGs, which "
                "this recipe does not read; use the -v2 label zip named in the catalog")
        labels[split] = found
    both = sorted(set(labels["train"]) & set(labels["val"]))
    if both:
        raise MitoEMFormatError(f"{label_zip.name}: slice(s) {_runs(both)} are in both {LABEL_FOLDERS['train']}/ and "
                                f"{LABEL_FOLDERS['val']}/; a slice belongs to one split")
    slices: dict[str, list[int]] = {}
    for split, members in labels.items():
        no_raw = sorted(set(members) - set(raw))
        if no_raw:
            raise MitoEMFormatError(f"{label_zip.name}: {LABEL_FOLDERS[split]}/ labels slice(s) {_runs(no_raw)}, "
                                    f"which {raw_zip.name} has no im/ slice for; the two archives do not belong "
                                    "together (fetch both again)")
        slices[split] = sorted(members)
    slices["test"] = sorted(set(raw) - set(labels["train"]) - set(labels["val"]))
    for split, zs in slices.items():
        if zs and zs[-1] - zs[0] + 1 != len(zs):
            where = raw_zip.name if split == "test" else f"{label_zip.name}:{LABEL_FOLDERS[split]}/"
            missing = sorted(set(range(zs[0], zs[-1] + 1)) - set(zs))
            raise MitoEMFormatError(f"{where}: the {split} slices ({_runs(zs)}) have a gap at {_runs(missing)}; a "
                                    f"volume must be a gap-free run of slices (the archive is incomplete?)")
    counts = next(s.counts for s in card.subsets if s.id == subset)
    if counts.get("slices") is not None and len(raw) != counts["slices"]:
        log.warning("mitoem %s: %s holds %d raw slices, the card says %d; splits follow the archive",
                    subset, raw_zip.name, len(raw), counts["slices"])
    for split, key in COUNT_KEYS.items():
        if counts.get(key) is not None and len(slices[split]) != counts[key]:
            log.warning("mitoem %s: %d %s slices (%s), the card says %d; splits follow the archive",
                        subset, len(slices[split]), split, _runs(slices[split]) or "none", counts[key])
    return _Layout(raw, labels, slices)


# -- reading slices -----------------------------------------------------------------------------

def _read_raw_slice(data: bytes, where: str) -> np.ndarray:
    if data[:8] == PNG_SIGNATURE and len(data) > 25 and data[25] == 3:
        raise MitoEMFormatError(f"{where}: palette (indexed-colour) PNG; expected a greyscale EM slice")
    try:
        img = read_image(data, where)
    except ImageFormatError as exc:
        raise MitoEMFormatError(str(exc)) from exc
    if img.ndim != 2 or not np.issubdtype(img.dtype, np.integer) or img.dtype == bool:
        raise MitoEMFormatError(f"{where}: expected a single-channel greyscale integer slice, got shape "
                                f"{img.shape} dtype {img.dtype}")
    return img


def _read_label_slice(data: bytes, where: str) -> np.ndarray:
    try:
        stack = read_stack(data, name=where)
    except TiffFormatError as exc:
        raise MitoEMFormatError(str(exc)) from exc
    img = stack.data
    if img.ndim != 3 or img.shape[0] != 1:
        raise MitoEMFormatError(f"{where}: expected one single-channel page of instance ids, got an array of shape "
                                f"{img.shape} ({stack.pages} page(s), {stack.photometric}); colour labels are not "
                                "the MitoEM encoding")
    img = img[0]
    if not np.issubdtype(img.dtype, np.integer) or img.dtype == bool:
        raise MitoEMFormatError(f"{where}: expected integer instance ids, got dtype {img.dtype}")
    if np.issubdtype(img.dtype, np.signedinteger) and img.size and int(img.min()) < 0:
        raise MitoEMFormatError(f"{where}: negative instance id {int(img.min())}; expected ids >= 0 (0 = background)")
    return img


class _Stack:
    """A (z, y, x) array filled slice by slice, in memory or in a scratch memory map."""

    def __init__(self, n: int, first: np.ndarray, scratch: Path) -> None:
        self.scratch = scratch
        self.data = self._allocate((n, *first.shape), first.dtype)

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        # Canonical native dtype: tifffile hands out uint64 as ULongLongDType ('Q'), equal to uint64
        # but refused by zarr 3.1 ("No Zarr data type found"); the values are unchanged.
        dtype = np.dtype(dtype.name)
        if int(np.prod(shape)) * dtype.itemsize <= IN_MEMORY_LIMIT:
            return np.empty(shape, dtype=dtype)
        self.scratch.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.scratch / f"{uuid.uuid4().hex}.npy", mode="w+", dtype=dtype,
                                         shape=shape)

    def widen(self, dtype: np.dtype, filled: int) -> None:
        wider = self._allocate(self.data.shape, dtype)
        wider[:filled] = self.data[:filled]
        self.data = wider


def _stack(archive: Path, members: list[str], read: Callable[[bytes, str], np.ndarray], scratch: Path,
           shape: tuple[int, int] | None = None, widen: bool = False) -> tuple[np.ndarray, list[str]]:
    """Read ``members`` in order into one array; returns (array, notes)."""
    notes: list[str] = []
    stack: _Stack | None = None
    first = ""
    for z, member in enumerate(members):
        where = f"{archive.name}:{member}"
        img = read(read_member(archive, member), where)
        if shape is not None and img.shape != shape:
            raise MitoEMFormatError(f"{where}: slice size {img.shape} differs from its raw slice's {shape}")
        if stack is None:
            stack, first = _Stack(len(members), img, scratch), where
        elif img.shape != stack.data.shape[1:]:
            raise MitoEMFormatError(f"{where}: slice size {img.shape} differs from {first}'s "
                                    f"{stack.data.shape[1:]}; every slice of a volume must have the same size")
        elif img.dtype != stack.data.dtype:
            wider = np.promote_types(stack.data.dtype, img.dtype)
            if not widen or not np.issubdtype(wider, np.integer):
                raise MitoEMFormatError(f"{where}: dtype {img.dtype} differs from {first}'s {stack.data.dtype}; "
                                        "every slice of a volume must have the same dtype")
            if wider != stack.data.dtype:
                notes.append(f"slices come as {stack.data.dtype} and {img.dtype} (first {img.dtype}: {member}); "
                             f"stored as {wider}, a lossless widening")
                stack.widen(wider, z)
        stack.data[z] = img
    assert stack is not None
    return stack.data, notes


# -- prepare ------------------------------------------------------------------------------------

def _choose(card: Card, volumes: list[str] | None, subset: str | list[str] | None) -> list[str]:
    """Volume names to prepare, in card order; unknown names raise listing the valid ones."""
    all_names = [v.name for v in card.volumes]
    subsets = [s.id for s in card.subsets]
    chosen = [subset] if isinstance(subset, str) else list(subset or [])
    unknown = sorted(set(chosen) - set(subsets))
    if unknown:
        raise ValueError(f"{DATASET} has no subset(s) {unknown}; choose from {subsets}")
    unknown = sorted(set(volumes or []) - set(all_names))
    if unknown:
        raise ValueError(f"{DATASET} has no volume(s) {unknown}; choose from {all_names}")
    by_subset = {v.name: v.subset for v in card.volumes}
    if volumes and chosen:
        outside = sorted(v for v in volumes if by_subset[v] not in chosen)
        if outside:
            raise ValueError(f"{DATASET}: volume(s) {outside} are not in subset(s) {chosen}; drop --subset or "
                             f"choose from {[n for n in all_names if by_subset[n] in chosen]}")
    return [n for n in all_names if (not volumes or n in volumes) and (not chosen or by_subset[n] in chosen)]


def prepare(volumes: list[str] | None = None, force: bool = False,
            subset: str | list[str] | None = None) -> list[Volume]:
    """Fetch the archives of the chosen subsets and write the selected volumes (default: all six)."""
    card = get_card(DATASET)
    names = _choose(card, volumes, subset)
    out = []
    for sub in dict.fromkeys(v.subset for v in card.volumes if v.name in names):
        assert sub is not None
        fetched: tuple[FetchResult, FetchResult] = (fetch_source(card, SOURCES[sub][0]),
                                                    fetch_source(card, SOURCES[sub][1]))
        raw_zip, label_zip = fetched[0].path, fetched[1].path
        plan = _layout(card, sub, raw_zip, label_zip)
        voxel = next(s.voxel_size_nm for s in card.subsets if s.id == sub)
        for spec in card.volumes:
            if spec.name not in names or spec.subset != sub:
                continue
            zs = plan.slices[spec.split]
            if not zs:
                message = f"{DATASET} {spec.name}: the archives hold no {spec.split} slices"
                if volumes:
                    raise MitoEMFormatError(f"{message}; {raw_zip.name} has slices {_runs(plan.raw)}")
                log.warning("%s; skipping it", message)
                continue
            label_folder = LABEL_FOLDERS.get(spec.split) if spec.labelled else None
            prov = provenance(DATASET, RECIPE_VERSION, list(fetched),
                              {"volume": spec.name, "subset": sub, "slices": [zs[0], zs[-1]],
                               "raw": f"{RAW_FOLDER}/im<z>.png",
                               "labels": f"{label_folder}/seg<z>.tif" if label_folder else None})
            existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
            if existing is not None:
                out.append(existing)
                continue
            out.append(_build(card, spec.name, spec.split, sub, plan, zs, label_folder, list(fetched), prov, voxel,
                              spec.description, spec.shape))
    return out


def _build(card: Card, name: str, split: str, sub: str, plan: _Layout, zs: list[int], label_folder: str | None,
           fetched: list[FetchResult], prov: dict[str, Any], voxel: tuple[float, float, float] | None, description: str,
           card_shape: tuple[int, ...] | None) -> Volume:
    raw_zip, label_zip = fetched[0].path, fetched[1].path
    scratch = downloads_dir(DATASET) / f".scratch-{uuid.uuid4().hex[:8]}"
    try:
        raw, notes = _stack(raw_zip, [plan.raw[z] for z in zs], _read_raw_slice, scratch)
        if card_shape and raw.shape != card_shape:
            log.warning("%s %s: raw shape %s differs from the published %s (a replica or a different release); "
                        "preparing it anyway", DATASET, name, raw.shape, card_shape)
        notes.insert(0, f"slices {zs[0]}-{zs[-1]} of MitoEM-{sub[0].upper()} (global z = the number in the file "
                        f"name; z 0 of this volume is slice {zs[0]})")
        layers = []
        if label_folder is not None:
            labels, label_notes = _stack(label_zip, [plan.labels[split][z] for z in zs], _read_label_slice,
                                         scratch, shape=raw.shape[1:], widen=True)
            notes += label_notes
            notes.append(f"instance ids stored in the TIFFs' dtype ({labels.dtype}); torch-em reads them as uint64")
            layers.append(layer(card, "mito", labels))
        if split == "test":
            notes.append(f"test = the raw slices without labels ({zs[0]}-{zs[-1]}); torch-em's test volume starts "
                         "one slice earlier, at the last validation slice")
        return publish(card, name, split, raw, layers, prov, voxel_size_nm=voxel, description=description,
                       subset=sub, source_slices=[zs[0], zs[-1]],
                       source_folders={"raw": RAW_FOLDER, "labels": label_folder}, notes=notes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
