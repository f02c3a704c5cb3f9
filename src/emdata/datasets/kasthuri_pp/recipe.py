"""Kasthuri++: ``kasthuri_pp.zip`` (mitochondria labels on Kasthuri et al. 2015 crops) →
volumes ``train`` and ``test`` with a ``mitochondria`` layer that carries an ignore region.

Layout (as torch-em's ``kasthuri.py`` reads it): ``Kasthuri++/{Train_In,Train_Out,Test_In,Test_Out}/`` PNG
stacks. No published source gives the slice file names (torch-em globs ``*.png`` and sorts the
names as text), so any ``*.png`` is accepted and ordered by the numbers in its name
(``slice9.png`` before ``slice10.png``); raw and label slices are paired by that order, and the
two folders must hold the same number of slices. Where names are zero-padded this is torch-em's
order too.

Label colours, read literally from torch-em's ``kasthuri.py``: (255,255,255) = mitochondrion → 1,
(2,2,2) = empty/ignore area → ignore, **any** other colour → 0 (not only black). Colours other
than black, white and (2,2,2) are counted, logged and listed in the volume metadata
(``other_label_colours``), so a surprise is visible without being fatal. torch-em stores the
ignore area as -1 in int8; emdata keeps an unsigned uint8 layer and stores it as 255 (a value
no class uses), recorded as the layer's ``ignore_value`` so a loader can mask it.

Splits follow the folder names (``Train_*`` → ``train``); torch-em swaps them (``Test_*`` →
``kasthuri_train.h5``), which each volume records as ``torch_em_split``.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("kasthuri-pp"):
    ...     train, test = emdata.prepare("kasthuri-pp")
    ...     train.meta["labels"]["mitochondria"]["ignore_value"]
    255
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from itertools import pairwise
from pathlib import Path

import numpy as np

from emdata.catalog import get_card
from emdata.datasets._common import choose_volumes, fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.datasets._slices import folder_members, grey_slice_stack, natural_key, read_png, stack_key
from emdata.datasets.contract import Option
from emdata.formats.lazy import SliceStack
from emdata.labels.remap import map_values
from emdata.store.volume import Volume

DATASET = "kasthuri-pp"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = ()
SOURCE = "kasthuri_pp.zip"
TOP = "Kasthuri++"
# volume → (raw folder, label folder, the split torch-em files this folder under)
FOLDERS = {"train": ("Train_In", "Train_Out", "test"), "test": ("Test_In", "Test_Out", "train")}
MITO, EMPTY = (255, 255, 255), (2, 2, 2)
IGNORE_VALUE = 255
log = logging.getLogger(__name__)


class KasthuriPPFormatError(ValueError):
    """A file in kasthuri_pp.zip does not have the layout or encoding Kasthuri++ publishes."""


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 colours → one uint32 code each (r << 16 | g << 8 | b)."""
    return (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]


def _code(colour: tuple[int, int, int]) -> int:
    return (colour[0] << 16) | (colour[1] << 8) | colour[2]


def _colour(code: int) -> tuple[int, int, int]:
    return (code >> 16) & 255, (code >> 8) & 255, code & 255


def _decode_label(img: np.ndarray, where: str, others: Counter[tuple[int, int, int]]) -> np.ndarray:
    """One RGB label slice → uint8 (0 other, 1 mitochondria, 255 ignore); counts other colours."""
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise KasthuriPPFormatError(f"{where}: expected an 8-bit RGB colour label image (y, x, 3), got shape "
                                    f"{img.shape} dtype {img.dtype}; Kasthuri++ labels are colour PNGs "
                                    f"({MITO} = mitochondrion, {EMPTY} = empty area)")
    codes = _pack(img)
    values, counts = np.unique(codes, return_counts=True)
    table = {int(v): 0 for v in values}
    table.update({_code(MITO): 1, _code(EMPTY): IGNORE_VALUE})
    for v, n in zip(values, counts):
        if int(v) not in (_code(MITO), _code(EMPTY), 0):
            others[_colour(int(v))] += int(n)
    return map_values(codes, table, where=where, dtype=np.dtype(np.uint8))


def _label_slice(archive: str, members: tuple[str, ...], raw_members: tuple[str, ...], plane: tuple[int, ...],
                 z: int, others: Counter[tuple[int, int, int]] | None = None) -> np.ndarray:
    """Label slice ``z`` decoded (the labels source reads it per box; the check pass counts ``others``)."""
    path = Path(archive)
    where = f"{path.name}:{members[z]} (slice {z}, paired with {raw_members[z].rsplit('/', 1)[-1]})"
    img = read_png(path, members[z], KasthuriPPFormatError)
    if img.shape[:2] != tuple(plane):
        raise KasthuriPPFormatError(f"{where}: label size {img.shape[:2]} differs from the raw slice size "
                                    f"{tuple(plane)}")
    return _decode_label(img, where, Counter() if others is None else others)


def _pairs(archive: Path, raw_folder: str, label_folder: str,
           folders: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Raw and label members in numeric-name order, checked to pair one to one."""
    ordered = {}
    for folder in (raw_folder, label_folder):
        members = sorted(folders[folder], key=natural_key)
        for a, b in pairwise(members):
            if natural_key(a) == natural_key(b):
                raise KasthuriPPFormatError(f"{archive.name}: {a} and {b} have the same number in their names, so "
                                            "their order is ambiguous; remove one of them")
        ordered[folder] = members
    raw, labels = ordered[raw_folder], ordered[label_folder]
    if len(raw) != len(labels):
        raise KasthuriPPFormatError(f"{archive.name}: {TOP}/{raw_folder} has {len(raw)} PNG slices but "
                                    f"{TOP}/{label_folder} has {len(labels)}; every raw slice needs one label slice")
    return raw, labels


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch ``kasthuri_pp.zip`` and write the selected volumes (default: train and test)."""
    card = get_card(DATASET)
    wanted = choose_volumes(card, volumes)
    fetched = fetch_source(card, SOURCE)
    archive = fetched.path
    folders = folder_members(archive, TOP, tuple(f for v in FOLDERS.values() for f in v[:2]),
                             KasthuriPPFormatError)
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        raw_folder, label_folder, torch_em_split = FOLDERS[spec.name]
        raw_members, label_members = _pairs(archive, raw_folder, label_folder, folders)
        prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                          {"volume": spec.name, "folders": [f"{TOP}/{raw_folder}", f"{TOP}/{label_folder}"],
                           "slices": len(raw_members), "ignore_value": IGNORE_VALUE})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        raw = grey_slice_stack(archive, raw_members, KasthuriPPFormatError)
        others: Counter[tuple[int, int, int]] = Counter()
        for z in range(len(label_members)):  # checked and counted now, one slice at a time; decoded again per box
            _label_slice(str(archive), tuple(label_members), tuple(raw_members), raw.shape[1:], z, others)
        read = functools.partial(_label_slice, str(archive), tuple(label_members), tuple(raw_members), raw.shape[1:])
        labels = SliceStack(read, len(label_members), raw.shape[1:], np.uint8,
                            key=stack_key(archive, label_members, "labels"))
        if spec.shape and raw.shape != spec.shape:
            log.warning("%s %s: raw shape %s differs from the published %s; preparing it anyway",
                        DATASET, spec.name, raw.shape, spec.shape)
        notes = [
            f"split from the folder names ({raw_folder}/{label_folder} = {spec.split}); torch-em swaps them and "
            f"files this stack as its '{torch_em_split}' split",
            f"label colours: {MITO} -> 1 (mitochondria), {EMPTY} -> {IGNORE_VALUE} (empty/ignore area; torch-em "
            "uses -1), every other colour -> 0, read literally from torch-em's kasthuri.py ('else 0')",
            "slice file names are not documented: all *.png are ordered by the numbers in their names and paired "
            f"by position ({raw_members[0].rsplit('/', 1)[-1]} .. {raw_members[-1].rsplit('/', 1)[-1]} with "
            f"{label_members[0].rsplit('/', 1)[-1]} .. {label_members[-1].rsplit('/', 1)[-1]})",
        ]
        other_colours = {str(c): n for c, n in others.most_common(20)}
        if others:
            log.warning("%s %s: %d label voxels have colours other than black, %s and %s (%s); mapped to 0 as "
                        "torch-em's kasthuri.py does", DATASET, spec.name, sum(others.values()), MITO, EMPTY,
                        ", ".join(f"{c}: {n}" for c, n in others.most_common(5)))
            notes.append(f"{sum(others.values())} label voxels had other colours, mapped to 0: {other_colours}")
        # The card lists the ignore class with value IGNORE_VALUE and ontology "unannotated"; the
        # layer annotates only the structures, so a loader treats 255 as "unknown", not as a class.
        mito_layer = layer(card, "mitochondria", labels, ignore_value=IGNORE_VALUE,
                           annotates=["background", "mitochondria"])
        out.append(publish(card, spec.name, spec.split, raw, [mito_layer], prov, description=spec.description,
                           torch_em_split=torch_em_split,
                           source_folders={"raw": f"{TOP}/{raw_folder}", "labels": f"{TOP}/{label_folder}"},
                           source_members={"raw": [raw_members[0], raw_members[-1]],
                                           "labels": [label_members[0], label_members[-1]]},
                           other_label_colours=other_colours, notes=notes))
    return out
