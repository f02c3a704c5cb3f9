"""NucMM: HDF5 volumes placed by hand from the Google Drive folder → one volume per image/label pair.

The card's only source is a Google Drive *folder* (the one pytorch_connectomics links), which is not
one downloadable file: it has no checksum, and fetching it needs a Drive client and a
person's Google session. So this recipe never touches the network. It reads the folder as
the Drive download lays it out, placed under the dataset's download folder
(``<EMDATA_HOME>/downloads/nucmm/``)::

    Zebrafish (NucMM-Z)/Image/{train,val}/*.h5    Zebrafish (NucMM-Z)/Label/{train,val}/*.h5
    Mouse (NucMM-M)/Image/{train,val}/*.h5        Mouse (NucMM-M)/Label/{train,val}/*.h5

(the short folder names ``NucMM-Z/`` and ``NucMM-M/`` that pytc uses are accepted too),
each file with dataset key ``main``. When files are missing the error names the exact folder
to create and what goes in it. Each pair becomes volume ``<subset>-<split>-<name>``
(``img_000.h5`` + ``seg_000.h5`` → ``zebrafish-train-000``); the card's ``<subset>-<split>``
names select a whole split.

Decisions:

- **Pairing.** ``img_X``/``im_X``/``image_X`` ↔ ``seg_X``/``label_X``/``lab_X`` (else the
  same file name) in ``Image/<split>`` and ``Label/<split>``. If no file pairs by name but
  both folders hold the same number of files, they are paired in sorted order — torch-em's
  convention for this dataset — and ``pairing: "sorted order"`` is recorded. Unpaired files
  are skipped with a warning and listed under ``skipped``.
- **Voxel size.** No published source states it (the card has none, ``verified = false``), and
  the store needs one. The recipe uses a size the file itself states (``element_size_um``
  or ``voxel_size_nm`` attribute on ``main``), and otherwise the documented placeholder
  **(1, 1, 1) nm = "one voxel"**, with ``voxel_size_placeholder: true``,
  ``voxel_size_verified: false`` and a note in the meta. It never guesses a physical size;
  do not sample these volumes in nm or mix them with other datasets by physical size.
- Provenance: each file's sha256 (hashed on every run), so a replaced file rebuilds its volume.

Once the folder is in place, ``emdata.prepare("nucmm", subset=["zebrafish"])`` prepares the zebrafish
volumes (CLI: ``emdata prepare nucmm --subset zebrafish``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import choose_subsets, layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import SUBSET, Option
from emdata.formats.hdf5 import HDF5FormatError
from emdata.formats.lazy import HDF5Array, minimum
from emdata.sources.download import FetchResult, hash_file
from emdata.store.volume import Volume

DATASET = "nucmm"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (SUBSET,)
KEY = "main"
SPLITS = ("train", "val")
FOLDERS = {"zebrafish": ("Zebrafish (NucMM-Z)", "NucMM-Z"), "mouse": ("Mouse (NucMM-M)", "NucMM-M")}
PLACEHOLDER_VOXEL_NM = (1.0, 1.0, 1.0)
PLACEHOLDER_NOTE = ("voxel size unknown: no source states it and the file carries none; (1, 1, 1) nm is a "
                    "placeholder meaning 'one voxel', not a physical size")
IMAGE_PREFIX = re.compile(r"^(?:img|im|image)_", re.I)
LABEL_PREFIX = re.compile(r"^(?:seg|label|lab)_", re.I)
log = logging.getLogger(__name__)


class NucMMFilesMissingError(FileNotFoundError):
    """The hand-placed NucMM files are not where the recipe reads them."""


class NucMMFormatError(HDF5FormatError):
    """A NucMM HDF5 file does not hold what the release holds."""


@dataclass
class Pair:
    subset: str
    split: str
    volume: str
    image: Path
    label: Path
    notes: list[str] = field(default_factory=list)




def _select(card: Card, volumes: list[str] | None, subset: Any) -> tuple[dict[str, set[str]], set[str] | None]:
    """({subset: splits to read}, requested names or None)."""
    known = [s.id for s in card.subsets]
    chosen = choose_subsets(card, subset)
    if not volumes:
        return {s: set(SPLITS) for s in chosen}, None
    need: dict[str, set[str]] = {}
    for name in volumes:
        parts = name.split("-", 2)
        if len(parts) < 2 or parts[0] not in known or parts[1] not in SPLITS:
            raise ValueError(f"nucmm has no volume {name!r}; volumes are <subset>-<split>-<name> (one per image/label "
                             f"pair, e.g. zebrafish-train-000) or a group {[v.name for v in card.volumes]}")
        if parts[0] not in chosen:
            raise ValueError(f"nucmm volume {name!r} belongs to subset {parts[0]!r}, which subset={chosen} excludes")
        need.setdefault(parts[0], set()).add(parts[1])
    return {s: need[s] for s in chosen if s in need}, set(volumes)


def _placement_help(root: Path, url: str, missing: list[str]) -> str:
    return (f"nucmm cannot be downloaded by emdata: its source is a Google Drive folder ({url}), not a file. "
            f"Download it by hand and place {'; '.join(missing)} under {root} — each as <folder>/Image/<split>/*.h5 "
            f"and <folder>/Label/<split>/*.h5 for split train and val, HDF5 key 'main' — then run "
            f"`emdata prepare nucmm` again")


def _folder(root: Path, subset: str) -> Path | None:
    return next((root / n for n in FOLDERS[subset] if (root / n).is_dir()), None)


def _key(name: str, prefix: re.Pattern[str]) -> str:
    return prefix.sub("", Path(name).stem)


def _pairs(folder: Path, subset: str, split: str) -> tuple[list[Pair], list[str]]:
    images = sorted((folder / "Image" / split).glob("*.h5"))
    labels = sorted((folder / "Label" / split).glob("*.h5"))
    by_image = {_key(p.name, IMAGE_PREFIX): p for p in images}
    by_label = {_key(p.name, LABEL_PREFIX): p for p in labels}
    common = sorted(set(by_image) & set(by_label))
    notes: list[str] = []
    if not common and images and len(images) == len(labels):
        note = (f"{folder.name}/Image/{split} and Label/{split} share no file names; paired in sorted order "
                "(torch-em's convention)")
        log.warning(note)
        notes.append(note)
        matched = [(_key(i.name, IMAGE_PREFIX), i, lab) for i, lab in zip(images, labels)]
    else:
        matched = [(k, by_image[k], by_label[k]) for k in common]
    used = {p for _, i, lab in matched for p in (i, lab)}
    skipped = [f"{p.parent.parent.name}/{split}/{p.name} has no partner: skipped" for p in images + labels
               if p not in used]
    for s in skipped:
        log.warning("nucmm %s: %s", folder.name, s)
    pairs = []
    for key, image, label in matched:
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", key)
        pairs.append(Pair(subset, split, f"{subset}-{split}-{safe}", image, label, list(notes)))
    return pairs, skipped


def _local(path: Path, url: str) -> FetchResult:
    sha, md5 = hash_file(path)
    return FetchResult(path=path, url=url, fetched_from=f"placed by hand: {path}", size=path.stat().st_size,
                       sha256=sha, md5=md5, from_cache=True)


def _voxel_size(attrs: dict[str, Any], where: str) -> tuple[tuple[float, float, float], dict[str, Any]]:
    for key, factor in (("voxel_size_nm", 1.0), ("element_size_um", 1000.0)):
        if key in attrs:
            value = np.asarray(attrs[key], dtype=float).ravel()
            if value.size == 3 and np.all(value > 0):
                z, y, x = (round(float(v) * factor, 6) for v in value)
                return (z, y, x), {"voxel_size_source": f"HDF5 attribute {key!r} on {KEY!r}",
                                   "voxel_size_placeholder": False}
            log.warning("%s: attribute %s=%r is not three positive numbers; ignored", where, key, attrs[key])
    return PLACEHOLDER_VOXEL_NM, {"voxel_size_source": "placeholder", "voxel_size_placeholder": True,
                                  "voxel_size_note": PLACEHOLDER_NOTE}


def _read(pair: Pair, root: Path) -> tuple[HDF5Array, HDF5Array, dict[str, Any]]:
    """The image and label datasets as sources (read box by box when written), checked."""
    where_img = str(pair.image.relative_to(root))
    where_lbl = str(pair.label.relative_to(root))
    raw = HDF5Array(pair.image, KEY)
    if len(raw.shape) != 3 or not np.issubdtype(raw.dtype, np.integer):
        raise NucMMFormatError(f"{where_img}: expected a greyscale integer (z, y, x) volume under key {KEY!r}, got "
                               f"shape {raw.shape} dtype {raw.dtype}")
    seg = HDF5Array(pair.label, KEY)
    if not np.issubdtype(seg.dtype, np.integer):
        raise NucMMFormatError(f"{where_lbl}: expected integer nucleus ids under key {KEY!r}, got dtype {seg.dtype}")
    if seg.shape != raw.shape:
        raise NucMMFormatError(f"{where_lbl}: label shape {seg.shape} differs from the image shape {raw.shape} of "
                               f"{where_img}")
    if np.issubdtype(seg.dtype, np.signedinteger) and (low := minimum(seg)) is not None and low < 0:
        raise NucMMFormatError(f"{where_lbl}: label value {low} is negative; expected nucleus ids ≥ 0")
    voxel, meta = _voxel_size(raw.attrs, where_img)
    return raw, seg, {"voxel": voxel, **meta}


def prepare(volumes: list[str] | None = None, force: bool = False, subset: Any = None) -> list[Volume]:
    """Write one volume per hand-placed image/label pair of the selected subsets and splits."""
    card = get_card(DATASET)
    plan, wanted = _select(card, volumes, subset)
    source = card.sources[0]
    root = downloads_dir(DATASET)
    missing = []
    folders: dict[str, Path] = {}
    for sub, splits in plan.items():
        folder = _folder(root, sub)
        if folder is None:
            missing.append(f"the folder '{FOLDERS[sub][0]}/'")
            continue
        folders[sub] = folder
        for split in sorted(splits):
            for kind in ("Image", "Label"):
                if not any((folder / kind / split).glob("*.h5")):
                    missing.append(f"the *.h5 files of '{folder.name}/{kind}/{split}/'")
    if missing:
        raise NucMMFilesMissingError(_placement_help(root, source.url, missing))
    out: list[Volume] = []
    for sub, splits in plan.items():
        for split in (s for s in SPLITS if s in splits):
            pairs, skipped = _pairs(folders[sub], sub, split)
            names = {p.volume for p in pairs}
            explicit = sorted(w for w in wanted or () if w.startswith(f"{sub}-{split}-") and w not in names)
            if explicit:
                raise ValueError(f"nucmm has no volume(s) {explicit} in {folders[sub] / 'Image' / split}; it holds "
                                 f"{sorted(names)}")
            for pair in pairs:
                if wanted is not None and pair.volume not in wanted and f"{sub}-{split}" not in wanted:
                    continue
                files = [_local(pair.image, source.url), _local(pair.label, source.url)]
                prov = provenance(DATASET, RECIPE_VERSION, files,
                                  {"subset": sub, "split": split, "key": KEY,
                                   "image": str(pair.image.relative_to(root)),
                                   "label": str(pair.label.relative_to(root))})
                existing = None if force else reusable(volume_path(DATASET, pair.volume), prov)
                if existing is not None:
                    out.append(existing)
                    continue
                raw, seg, info = _read(pair, root)
                voxel = info.pop("voxel")
                notes = pair.notes + ([PLACEHOLDER_NOTE] if info["voxel_size_placeholder"] else [])
                if info["voxel_size_placeholder"]:
                    log.warning("nucmm %s: %s", pair.volume, PLACEHOLDER_NOTE)
                out.append(publish(card, pair.volume, split, raw, [layer(card, "nuclei", seg)], prov,
                                   voxel_size_nm=voxel, voxel_size_verified=False, subset=sub,
                                   image_file=str(pair.image.relative_to(root)),
                                   label_file=str(pair.label.relative_to(root)),
                                   pairing="sorted order" if pair.notes else "by name", skipped=skipped,
                                   notes=notes, **info))
    return out
