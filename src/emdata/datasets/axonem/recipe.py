"""AxonEM: the two Hugging Face training zips (human, mouse) → one volume per ``im_``/``seg_`` pair.

``EM30-H-train-9vol-pad-20-512-512.zip`` and ``EM30-M-train-9vol-pad-20-512-512.zip`` hold
``im_<name>.h5`` images with matching ``seg_<name>.h5`` axon instance ids, HDF5 key
``main`` (as torch-em's ``axonem.py`` reads them). Each pair becomes volume ``<subset>-train-<name>``
(split ``train``: only training volumes are published); the card's ``human-train`` /
``mouse-train`` select all pairs of a subset.

Decisions:

- Pairs are matched by name (``im_X.h5`` ↔ ``seg_X.h5`` in the same folder). An image without
  a label (the mouse zip's ``im_675-800-800_pad.h5``) is skipped with a logged warning and
  listed under ``skipped`` in the meta of the subset's volumes; a label without an image too.
- The mouse zip's ``valid_mask.h5`` is **kept as metadata, not as a layer**: neither the paper nor torch-em
  says which image it masks or what its values mean (torch-em deletes it), so attaching it
  to a volume would be a guess. Its shape, dtype and values are recorded under
  ``unpaired_files``.
- Voxel size: the card subset's (human (30, 8, 8), mouse (40, 7, 7) nm z, y, x; unverified
  on the card, ``voxel_size_verified: false``). Arrays are read as stored, (z, y, x) like
  the torch-em loader uses them; ids keep their dtype.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("axonem"):
    ...     vols = emdata.prepare("axonem", subset=["human"])
    ...     [v.name for v in vols], vols[0].voxel_size
    (['human-train-0-0-0_pad', 'human-train-200-0-0_pad'], (30.0, 8.0, 8.0))
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import (
    choose_subsets,
    fetch_source,
    layer,
    provenance,
    publish,
    reusable,
    volume_path,
)
from emdata.datasets.contract import SUBSET, Option
from emdata.formats.hdf5 import HDF5FormatError, read_dataset
from emdata.formats.lazy import HDF5Array, minimum
from emdata.sources.archive import extract, list_members
from emdata.store.volume import Volume

DATASET = "axonem"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (SUBSET,)
KEY = "main"
PAIR = re.compile(r"^(?P<dir>(?:[^/]+/)*)(?P<kind>im|seg)_(?P<name>.+)\.h5$")
log = logging.getLogger(__name__)


class AxonEMFormatError(HDF5FormatError):
    """An AxonEM zip or HDF5 file does not have the structure the release uses."""


@dataclass
class Pair:
    subset: str
    volume: str
    image: str
    label: str




def _select(card: Card, volumes: list[str] | None, subset: Any) -> tuple[list[str], set[str] | None]:
    known = [s.id for s in card.subsets]
    chosen = choose_subsets(card, subset)
    if not volumes:
        return chosen, None
    groups = {v.name: v.subset for v in card.volumes}
    needed = []
    for name in volumes:
        prefix = name.split("-", 1)[0]
        sub = groups.get(name) or (prefix if prefix in known and name.startswith(f"{prefix}-train-") else None)
        if sub is None:
            raise ValueError(f"axonem has no volume {name!r}; volumes are <subset>-train-<name> (one per im_/seg_ "
                             f"pair, e.g. human-train-<name>) or a group {sorted(groups)}")
        if sub not in chosen:
            raise ValueError(f"axonem volume {name!r} belongs to subset {sub!r}, which subset={chosen} excludes")
        needed.append(sub)
    return [s for s in chosen if s in needed], set(volumes)


def _pairs(archive: Path, subset: str) -> tuple[list[Pair], list[str], list[str]]:
    """(pairs, skipped notes, other .h5 members) of one zip."""
    members = [m for m in list_members(archive)
               if "__MACOSX" not in m.split("/") and not PurePosixPath(m).name.startswith("._")]
    found: dict[tuple[str, str], dict[str, str]] = {}
    others = []
    for m in members:
        hit = PAIR.match(m)
        if hit:
            found.setdefault((hit["dir"], hit["name"]), {})[hit["kind"]] = m
        elif m.endswith(".h5"):
            others.append(m)
    pairs, skipped = [], []
    for (_, name), kinds in sorted(found.items()):
        if "im" in kinds and "seg" in kinds:
            safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name)
            pairs.append(Pair(subset, f"{subset}-train-{safe}", kinds["im"], kinds["seg"]))
            continue
        have, lack = ("im", "seg") if "im" in kinds else ("seg", "im")
        note = f"{kinds[have]} has no matching {lack}_{name}.h5: skipped"
        log.warning("%s: %s", archive.name, note)
        skipped.append(note)
    if not pairs:
        shown = ", ".join(members[:15]) + (" …" if len(members) > 15 else "")
        raise AxonEMFormatError(f"{archive.name}: no im_<name>.h5 / seg_<name>.h5 pairs; the zip holds: {shown}")
    seen: dict[str, str] = {}
    for p in pairs:
        if p.volume in seen:
            raise AxonEMFormatError(f"{archive.name}: {seen[p.volume]} and {p.image} both map to volume {p.volume!r}")
        seen[p.volume] = p.image
    return pairs, skipped, others


def _describe(path: Path, member: str) -> dict[str, Any]:
    """Shape, dtype and a value summary of an unpaired HDF5 file (e.g. valid_mask.h5)."""
    try:
        ds = read_dataset(path, KEY)
    except HDF5FormatError as exc:
        return {"file": member, "error": str(exc)}
    data = ds.data
    info: dict[str, Any] = {"file": member, "key": KEY, "shape": list(data.shape), "dtype": str(data.dtype)}
    if data.size and np.issubdtype(data.dtype, np.number):
        values = np.unique(data) if data.size <= 1 << 26 else None
        info["min"], info["max"] = float(data.min()), float(data.max())
        if values is not None and len(values) <= 16:
            info["values"] = [v.item() for v in values]
    info["use"] = "not attached: which image it masks is not stated in any source"
    return info


def _read_image(path: Path, where: str) -> HDF5Array:
    data = HDF5Array(path, KEY)
    if len(data.shape) != 3 or not np.issubdtype(data.dtype, np.integer):
        raise AxonEMFormatError(f"{where}: expected a greyscale integer (z, y, x) volume under key {KEY!r}, got "
                                f"shape {data.shape} dtype {data.dtype}")
    return data


def _read_label(path: Path, where: str, raw_shape: tuple[int, ...]) -> HDF5Array:
    data = HDF5Array(path, KEY)
    if not np.issubdtype(data.dtype, np.integer):
        raise AxonEMFormatError(f"{where}: expected integer axon ids under key {KEY!r}, got dtype {data.dtype}")
    if data.shape != raw_shape:
        raise AxonEMFormatError(f"{where}: label shape {data.shape} differs from the image shape {raw_shape}")
    if np.issubdtype(data.dtype, np.signedinteger) and (low := minimum(data)) is not None and low < 0:
        raise AxonEMFormatError(f"{where}: label value {low} is negative; expected axon ids ≥ 0")
    return data


def prepare(volumes: list[str] | None = None, force: bool = False, subset: Any = None) -> list[Volume]:
    """Fetch the selected zips (default: human and mouse) and write one volume per image/label pair."""
    card = get_card(DATASET)
    subsets, wanted = _select(card, volumes, subset)
    groups = {v.name for v in card.volumes}
    out: list[Volume] = []
    for sub in subsets:
        source = next(s for s in card.sources if s.subset == sub)
        fetched = fetch_source(card, source.name)
        archive = fetched.path
        pairs, skipped, others = _pairs(archive, sub)
        names = {p.volume for p in pairs}
        missing = sorted(w for w in wanted or () if w not in groups and w.split("-", 1)[0] == sub and w not in names)
        if missing:
            raise ValueError(f"axonem {source.name} has no volume(s) {missing}; it holds {sorted(names)}")
        voxel = next(s.voxel_size_nm for s in card.subsets if s.id == sub)
        folder: Path | None = None
        described: list[dict[str, Any]] | None = None
        for pair in pairs:
            if wanted is not None and pair.volume not in wanted and f"{sub}-train" not in wanted:
                continue
            prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                              {"subset": sub, "image": pair.image, "label": pair.label, "key": KEY})
            existing = None if force else reusable(volume_path(DATASET, pair.volume), prov)
            if existing is not None:
                out.append(existing)
                continue
            if folder is None:
                folder = extract(archive, downloads_dir(DATASET) / Path(source.name).stem)
                described = [_describe(folder / m, m) for m in others]
            raw = _read_image(folder / pair.image, f"{archive.name}:{pair.image}")
            labels = _read_label(folder / pair.label, f"{archive.name}:{pair.label}", raw.shape)
            out.append(publish(card, pair.volume, "train", raw, [layer(card, "axons", labels)], prov,
                               voxel_size_nm=voxel, subset=sub, image_file=pair.image, label_file=pair.label,
                               skipped=skipped, unpaired_files=described or [],
                               notes=[f"voxel size {voxel} nm (z, y, x) from the card subset {sub!r} (unverified)"]))
    return out
