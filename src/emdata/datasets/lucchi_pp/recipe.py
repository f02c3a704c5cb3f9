"""Lucchi++: ``lucchi_pp.zip`` (Casser et al. re-annotation of the EPFL hippocampus stacks) →
volumes ``train`` and ``test`` with a binary ``mitochondria`` layer.

Layout (as torch-em's lucchi.py reads it): ``Lucchi++/{Train_In,Train_Out,Test_In,Test_Out}/``; raw
slices ``mask%04d.png``, label slices ``%d.png``. Slices are ordered and paired by the number in
their names (``10.png`` comes after ``9.png``), never by the text order of the names.

Labels are either RGBA, (255,255,255,255) = mitochondrion, or greyscale, 255 = mitochondrion;
both become 1. Background is 0 in greyscale and black, opaque (0,0,0,255) or fully transparent
(0,0,0,0), in RGBA. Any other value is an error naming the file, the slice and the value:
torch-em silently maps other RGBA colours to 0, emdata refuses them so a changed encoding is seen.

Splits follow the folder names (``Train_*`` → ``train``, ``Test_*`` → ``test``). torch-em writes
them the other way round (``Test_*`` → ``lucchi_train.h5``); each volume records that in its
metadata (``torch_em_split``) so numbers can be compared with papers that used torch-em.

The card's Hugging Face copy ``Lucchi++.zip`` (pytorch_connectomics) is a fetch-only alternate: its
layout is not published consistently, so when ``lucchi_pp.zip`` cannot be fetched the error says so
instead of guessing.

Example:
    >>> FOLDERS["train"]
    ('Train_In', 'Train_Out', 'test')
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import numpy as np

from emdata.catalog import get_card
from emdata.datasets._alternates import fetch_primary
from emdata.datasets._common import choose_volumes, layer, provenance, publish, reusable, volume_path
from emdata.datasets._slices import check_contiguous, folder_members, grey_slice_stack, indexed, read_png, stack_key
from emdata.datasets.contract import Option
from emdata.formats.lazy import SliceStack
from emdata.labels.remap import colours_to_index, map_values
from emdata.store.volume import Volume

DATASET = "lucchi-pp"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = ()
SOURCE = "lucchi_pp.zip"
TOP = "Lucchi++"
# volume → (raw folder, label folder, the split torch-em files this folder under)
FOLDERS = {"train": ("Train_In", "Train_Out", "test"), "test": ("Test_In", "Test_Out", "train")}
RAW_NAME = re.compile(r"^mask(\d+)\.png$", re.IGNORECASE)
LABEL_NAME = re.compile(r"^(\d+)\.png$", re.IGNORECASE)
GREY_TABLE = {0: 0, 255: 1}
RGBA_TABLE = {(255, 255, 255, 255): 1, (0, 0, 0, 255): 0, (0, 0, 0, 0): 0}
log = logging.getLogger(__name__)


class LucchiPPFormatError(ValueError):
    """A file in lucchi_pp.zip does not have the layout or encoding Lucchi++ publishes."""


# -- helpers shared with the Kasthuri++ recipe (same author, same archive layout) -------------

def _decode_label(img: np.ndarray, where: str) -> tuple[np.ndarray, str]:
    """One label slice → (uint8 0/1, encoding name)."""
    if img.ndim == 2 and img.dtype == bool:  # 1-bit PNG: white (True) = 255
        return img.astype(np.uint8), "greyscale"
    if img.ndim == 2 and np.issubdtype(img.dtype, np.integer):
        return map_values(img, GREY_TABLE, where=where, dtype=np.dtype(np.uint8)), "greyscale"
    if img.ndim == 3 and img.shape[-1] == 4:
        return colours_to_index(img, RGBA_TABLE, where=where, slice_axis=None).astype(np.uint8), "rgba"
    raise LucchiPPFormatError(f"{where}: expected a greyscale or an RGBA label image, got shape {img.shape} "
                              f"dtype {img.dtype}")


def _label_slice(archive: str, members: tuple[str, ...], numbers: tuple[int, ...], plane: tuple[int, ...],
                 z: int) -> np.ndarray:
    """Label slice ``z`` decoded to uint8 0/1 (what the labels source reads per box)."""
    return _checked_label(Path(archive), members[z], numbers[z], plane)[0]


def _checked_label(archive: Path, member: str, number: int, plane: tuple[int, ...]) -> tuple[np.ndarray, str]:
    where = f"{archive.name}:{member} (slice {number})"
    img = read_png(archive, member, LucchiPPFormatError)
    if img.shape[:2] != plane:
        raise LucchiPPFormatError(f"{where}: label size {img.shape[:2]} differs from the raw slice size {plane}")
    return _decode_label(img, where)


def _read_volume(archive: Path, raw_members: list[str], label_members: list[str],
                 numbers: list[int]) -> tuple[SliceStack, SliceStack, list[str]]:
    """Raw and labels as slice stacks read box by box; the labels are checked (and their encodings
    found) in one pass over the slices now, one slice at a time."""
    raw = grey_slice_stack(archive, raw_members, LucchiPPFormatError)
    plane = tuple(raw.shape[1:])
    encodings = {_checked_label(archive, member, number, plane)[1] for member, number in zip(label_members, numbers)}
    read = functools.partial(_label_slice, str(archive), tuple(label_members), tuple(numbers), plane)
    labels = SliceStack(read, len(label_members), plane, np.uint8, key=stack_key(archive, label_members, "labels"))
    return raw, labels, sorted(encodings)


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch ``lucchi_pp.zip`` and write the selected volumes (default: train and test)."""
    card = get_card(DATASET)
    wanted = choose_volumes(card, volumes)
    fetched = fetch_primary(card, SOURCE)
    archive = fetched.path
    folders = folder_members(archive, TOP, tuple(f for v in FOLDERS.values() for f in v[:2]), LucchiPPFormatError)
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        raw_folder, label_folder, torch_em_split = FOLDERS[spec.name]
        raw_idx = indexed(archive, folders[raw_folder], RAW_NAME, f"{TOP}/{raw_folder}/mask<number>.png",
                          LucchiPPFormatError)
        label_idx = indexed(archive, folders[label_folder], LABEL_NAME, f"{TOP}/{label_folder}/<number>.png",
                            LucchiPPFormatError)
        if set(raw_idx) != set(label_idx):
            only_raw, only_label = sorted(set(raw_idx) - set(label_idx)), sorted(set(label_idx) - set(raw_idx))
            raise LucchiPPFormatError(
                f"{archive.name}: {TOP}/{raw_folder} and {TOP}/{label_folder} hold different slices: numbers "
                f"{only_raw[:10]} have no label, {only_label[:10]} have no raw slice; each mask<n>.png needs <n>.png")
        numbers = sorted(raw_idx)
        check_contiguous(archive, f"{TOP}/{raw_folder}", numbers, LucchiPPFormatError)
        prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                          {"volume": spec.name, "folders": [f"{TOP}/{raw_folder}", f"{TOP}/{label_folder}"],
                           "slices": [numbers[0], numbers[-1]]})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        raw, labels, encodings = _read_volume(archive, [raw_idx[n] for n in numbers],
                                              [label_idx[n] for n in numbers], numbers)
        if spec.shape and raw.shape != spec.shape:
            log.warning("%s %s: raw shape %s differs from the published %s (a replica or a different release); "
                        "preparing it anyway", DATASET, spec.name, raw.shape, spec.shape)
        notes = [
            f"split from the folder names ({raw_folder}/{label_folder} = {spec.split}); torch-em swaps them and "
            f"files this stack as its '{torch_em_split}' split",
            f"label PNGs decoded as {' and '.join(encodings)}: white (255 / (255,255,255,255)) = mitochondria -> 1, "
            "black or transparent black -> 0; any other value is refused",
            f"slices paired and ordered by the number in the name: mask<n>.png with <n>.png, n = {numbers[0]}.."
            f"{numbers[-1]}",
        ]
        out.append(publish(card, spec.name, spec.split, raw, [layer(card, "mitochondria", labels)], prov,
                           description=spec.description, torch_em_split=torch_em_split,
                           source_folders={"raw": f"{TOP}/{raw_folder}", "labels": f"{TOP}/{label_folder}"},
                           source_slices=[numbers[0], numbers[-1]], label_encoding=encodings, notes=notes))
    return out
