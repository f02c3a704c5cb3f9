"""platelet-em (bio3d-vision, LCIMB/NIBIB): two SBF-SEM volumes of human platelets → volumes
``volume-50`` and ``volume-24``, each with the uint16 image and three label layers:
``semantic`` (7 classes), ``instance-cell`` and ``instance-organelle``.

**Releases** (bio3d-vision.github.io ``platelet-description.md`` and bio3d-vision/bio3d_vision
``download.py``), chosen with ``release=`` (CLI ``--release``):

- ``"json"`` (default) — release C2, ``images_and_labels_json.zip``, "images and JSON labels" on
  the current page. Labels are bio3d-vision run-length JSON (:mod:`emdata.formats.rle_json`),
  i.e. the authors' integer arrays themselves: semantic values 0–6 and instance ids exactly as
  the authors numbered them. It is the default because it is on the current page, has a
  published md5, and needs no colour decoding: no class 4/6 colour dispute, no instance ids
  invented from colours (the RGBA files are made from integer labels with a 256-entry colour
  table, so two objects can share a colour there).
- ``"rgba"`` — release C1, ``images_and_labels_rgba.zip`` ("images and TIF labels", no
  checksum published). RGBA label TIFs; semantic colours per FastEstimator's table, except
  that which of (127,0,0,255) and (255,229,0,255) is class 4 and which is class 6 is decided
  from the data (below).
- ``"rgb"`` — release A, ``images-and-labels.zip`` (the original page, bio3d-vision.github.io commit 488a7e1). RGB label
  TIFs decoded with the authors' exact colour table (the card's class colours).

Release B (``images_and_labels.zip``, the interim JSON archive no longer on the page) is not
prepared: it is superseded by C2 in the same format. It stays on the card so ``emdata fetch``
can still download it for comparisons (its 50-instance-cell has max id 34).

Archive layout: ``platelet-em/images/{50,24}-images.tif``,
``platelet-em/labels-semantic/{50,24}-semantic.{tif,json}``,
``platelet-em/labels-instance/{50,24}-instance-{cell,organelle}.{tif,json}``.

**Decoding.** Colour labels use an exact colour table; any other colour is an error naming the
colour, the file and the slice (the authors' converter raises too). Black is background:
(0,0,0) in RGB, (0,0,0,0) or opaque (0,0,0,255) in RGBA. Instance colours become ids in order
of first appearance in a C-order scan of the file as stored (the authors' converter rule, so
the same file always gives the same ids), black → 0, stored as uint16 (the card's dtype). JSON
labels keep the ``.info`` dtype and the authors' ids.

**Data checks** (recorded under ``checks`` in the volume metadata, decisions in ``notes``):

- *Dense granule core inside body* (class 4/6 of release C1). For each candidate colour the
  share of its in-plane border (4-neighbour pixels just outside its voxels) that is class 5
  (dense granule body) is measured. A dense core lies inside a body, so its share is high;
  a canalicular vessel borders cytoplasm. A share ≥ 0.5 is "core-like", ≤ 0.2 "not core-like".
  The core-like colour becomes class 6 and the other class 4; when only one colour occurs,
  its own verdict decides. If the shares do not separate the two (both core-like, neither,
  or one in between) preparation stops with an error giving the numbers: the recipe never
  assigns 4/6 without evidence. The same measure is recorded for the rgb and json releases,
  where classes are known; a class 6 that is not core-like there is logged as a warning.
- *Instance z-order* (release A's cell instances are reported z-reversed). For each instance
  layer the share of its voxels that lie on its semantic class (class ≥ 1 for cells, ≥ 2 for
  organelles) is measured for the volume as stored and z-reversed, together with the IoU of
  the two masks. If the reversed volume fits clearly better (share at least 0.1 higher and at
  least 0.75, with the IoU agreeing) the layer is flipped along z with a warning and a note;
  if neither orientation is clearly better it is kept as stored with a warning. The check runs
  for every release and both instance layers (ids are numbered before any flip).

**Axes.** The page says a [Z, X, Y] volume is stored as Z pages of [X, Y]; the authors' own
notebook reads 50-images.tif as (50, 800, 800), i.e. numpy's (page, row, column). emdata reads
TIFF pages as stored, rows → y and columns → x, and does **not** transpose: the page's "X, Y"
name the axes of the authors' numpy array (row index first), the same arrays the JSON labels
encode (``.info`` shape = that array's shape), and transposing would only mirror every slice
about its diagonal. Raw and all labels are read the same way, so they stay aligned; a JSON
``.info`` shape that matches the image only with y and x swapped is an error. With 800×800
slices the choice cannot be checked from the shapes; in-plane voxels are 10×10 nm either way.

Why one module of this size: the three published releases (RGB, RGBA, run-length JSON) share one
class table and the checks that decide the open questions from the data; split, each part would
be read without the others it depends on.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("platelet-em"):
    ...     vol50, vol24 = emdata.prepare("platelet-em")
    ...     vol50.meta["release"], list(vol50.labels)
    ('json', ['semantic', 'instance-cell', 'instance-organelle'])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card, get_card
from emdata.datasets._common import choose_volumes, fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import Option
from emdata.formats.lazy import FlippedZ, TiffStack, as_source, slab_boxes
from emdata.formats.rle_json import RleArray, read_rle_runs
from emdata.labels.remap import LabelEncodingError, colours_to_index
from emdata.sources.archive import extract_member, read_member
from emdata.store.volume import Volume

DATASET = "platelet-em"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = (
    Option("release", str, "Which published release to read: json (run-length JSON labels), rgba or rgb (colour TIFs).",
           choices=("json", "rgba", "rgb"), default="json"),
)
TOP = "platelet-em"
DEFAULT_RELEASE = "json"
STEMS = {"volume-50": "50", "volume-24": "24"}
LABEL_LAYERS = ("semantic", "instance-cell", "instance-organelle")

# Release C1 (RGBA) semantic colours per FastEstimator's platelet loader, without the disputed pair.
RGBA_SEMANTIC: dict[tuple[int, ...], int] = {
    (0, 0, 0, 0): 0, (0, 0, 0, 255): 0, (0, 40, 255, 255): 1, (0, 212, 255, 255): 2, (124, 255, 121, 255): 3,
    (255, 70, 0, 255): 5,
}
# The two colours whose classes (4 canalicular vessel, 6 dense granule core) are disputed.
JET_DARK_RED = (127, 0, 0, 255)  # jet(6/6): class 6 in jet order, class 4 in FastEstimator's table
JET_YELLOW = (255, 229, 0, 255)  # jet(4/6): class 4 in jet order (the page's "4 Yellow"), 6 for FastEstimator
DISPUTED = (JET_DARK_RED, JET_YELLOW)
_PROVISIONAL = (7, 8)  # codes for the disputed colours until the data decides

CORE_LIKE = 0.5  # border share in class 5 at or above which a region lies inside dense granule bodies
NOT_CORE = 0.2  # at or below which it does not
Z_MARGIN = 0.1  # how much better the other z-order must fit to count as "clearly"
Z_MIN_FIT = 0.75  # and how well it must fit at least
log = logging.getLogger(__name__)


class PlateletEMFormatError(ValueError):
    """A platelet-em archive member does not have the structure or encoding the release publishes."""


@dataclass(frozen=True)
class Release:
    """One published archive: option value, the page's release letter, card source, encoding."""

    key: str
    letter: str
    source: str
    encoding: str
    description: str


RELEASES = {
    "json": Release("json", "C2", "images_and_labels_json.zip", "json",
                    "current page, 'images and JSON labels': run-length JSON labels"),
    "rgba": Release("rgba", "C1", "images_and_labels_rgba.zip", "rgba",
                    "current page, 'images and TIF labels': RGBA colour-coded label TIFs"),
    "rgb": Release("rgb", "A", "images-and-labels.zip", "rgb",
                   "original page (2019): RGB colour-coded label TIFs"),
}


def members(stem: str, encoding: str) -> dict[str, str]:
    """Archive member of the image and of each label layer for volume ``stem`` ("50" or "24")."""
    ext = "json" if encoding == "json" else "tif"
    return {"raw": f"{TOP}/images/{stem}-images.tif",
            "semantic": f"{TOP}/labels-semantic/{stem}-semantic.{ext}",
            "instance-cell": f"{TOP}/labels-instance/{stem}-instance-cell.{ext}",
            "instance-organelle": f"{TOP}/labels-instance/{stem}-instance-organelle.{ext}"}


# -- reading ----------------------------------------------------------------------------------

def _stack(archive: Path, member: str) -> tuple[TiffStack, str]:
    """A TIFF member copied out of the archive (bounded memory) and read page by page."""
    where = f"{archive.name}:{member}"
    return TiffStack(extract_member(archive, member), name=where), where


def _read_raw(archive: Path, member: str) -> TiffStack:
    data, where = _stack(archive, member)
    if len(data.shape) != 3 or not np.issubdtype(data.dtype, np.integer):
        raise PlateletEMFormatError(f"{where}: expected a greyscale integer z-stack (uint16 pages), got shape "
                                    f"{data.shape} dtype {data.dtype} ({data.photometric})")
    if data.dtype != np.uint16:
        log.warning("%s: image dtype %s, the page says uint16; kept as stored", where, data.dtype)
    return data


def _check_shape(shape: tuple[int, ...], raw_shape: tuple[int, ...], where: str) -> None:
    if shape == raw_shape:
        return
    swapped = (raw_shape[0], raw_shape[2], raw_shape[1])
    hint = (" (the image's y and x swapped: the label file was written in another axis order than the image)"
            if shape == swapped else "")
    raise PlateletEMFormatError(f"{where}: label shape {shape} differs from the image shape {raw_shape}{hint}")


def _read_colours(archive: Path, member: str, encoding: str, raw_shape: tuple[int, ...]) -> TiffStack:
    data, where = _stack(archive, member)
    channels = 3 if encoding == "rgb" else 4
    if len(data.shape) != 4 or data.shape[-1] != channels or data.dtype != np.uint8:
        raise PlateletEMFormatError(
            f"{where}: expected {encoding.upper()} colour-coded label pages (z, y, x, {channels}) of uint8 for "
            f"release '{encoding}', got shape {data.shape} dtype {data.dtype} ({data.photometric})")
    _check_shape(tuple(data.shape[:3]), raw_shape, where)
    return data


def _read_json(archive: Path, member: str, raw_shape: tuple[int, ...]) -> tuple[RleArray, dict[str, Any]]:
    where = f"{archive.name}:{member}"
    runs = read_rle_runs(read_member(archive, member), name=where)
    _check_shape(runs.shape, raw_shape, where)
    return RleArray(runs), {"dtype": str(runs.dtype), "labels": len(runs.labels), "runs": len(runs.starts)}


class ColourIndex:
    """Colour-coded label pages → indices through an exact colour ``table`` (``colours_to_index``),
    box by box; an unknown colour is an error naming ``where``, the slice in the file and the colour
    (with ``hint`` added).

    Example:
        >>> from emdata.formats.lazy import InMemory
        >>> pages = InMemory(np.array([[[[0, 0, 0], [9, 9, 9]]]], np.uint8))
        >>> ColourIndex(pages, {(0, 0, 0): 0, (9, 9, 9): 5}, "t.tif", "u1").read(
        ...     (slice(0, 1), slice(0, 1), slice(0, 2))).tolist()
        [[[0, 5]]]
    """

    def __init__(self, colours: Any, table: dict[tuple[int, ...], int], where: str, dtype: Any, hint: str = "") -> None:
        self.colours, self.table, self.where, self.hint = colours, dict(table), where, hint
        self.shape, self.dtype = tuple(colours.shape[:3]), np.dtype(dtype)

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        block = self.colours.read(box)
        try:
            index = colours_to_index(block, self.table, where=self.where, slice_axis=0,
                                     first_slice=box[0].indices(self.shape[0])[0])
        except LabelEncodingError as exc:
            if not self.hint:
                raise
            raise LabelEncodingError(f"{exc}. {self.hint}") from exc
        return index.astype(self.dtype)


def _colour_codes(block: np.ndarray, encoding: str) -> np.ndarray:
    """One integer per pixel for 8-bit RGB(A) colours (r << 24 | g << 16 | b << 8 | a, or r << 16 | g << 8 | b);
    opaque black RGBA is made transparent black (both are background)."""
    codes = np.zeros(block.shape[:-1], np.uint32)
    for c in range(block.shape[-1]):
        codes <<= np.uint32(8)
        codes |= block[..., c]
    if encoding == "rgba":
        codes[codes == np.uint32(255)] = 0  # (0, 0, 0, 255) → (0, 0, 0, 0)
    return codes


class ColourIds:
    """Instance colours → ids through a table of colour codes (``codes`` sorted, ``ids`` alike), box by box;
    background (code 0) → 0.

    Example:
        >>> from emdata.formats.lazy import InMemory
        >>> pages = InMemory(np.array([[[[0, 0, 0], [1, 2, 3]]]], np.uint8))
        >>> ColourIds(pages, "rgb", np.array([0x010203], np.uint32), np.array([4]), "u2").read(
        ...     (slice(0, 1), slice(0, 1), slice(0, 2))).tolist()
        [[[0, 4]]]
    """

    def __init__(self, colours: Any, encoding: str, codes: np.ndarray, ids: np.ndarray, dtype: Any) -> None:
        self.colours, self.encoding = colours, encoding
        self.codes = np.concatenate([np.zeros(1, np.uint32), codes.astype(np.uint32)])
        self.ids = np.concatenate([np.zeros(1, np.uint64), ids.astype(np.uint64)])
        order = np.argsort(self.codes, kind="stable")
        self.codes, self.ids = self.codes[order], self.ids[order]
        self.shape, self.dtype = tuple(colours.shape[:3]), np.dtype(dtype)

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        codes = _colour_codes(self.colours.read(box), self.encoding)
        at = np.searchsorted(self.codes, codes)
        at = np.minimum(at, len(self.codes) - 1)
        if not np.array_equal(self.codes[at], codes):
            raise PlateletEMFormatError(f"{self.colours.name}: a colour appeared that the numbering pass did not "
                                        "see; the file changed while it was read — prepare again")
        return self.ids[at].astype(self.dtype)


def _number_colours(colours: TiffStack, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """Colour codes and their ids by first appearance in a C-order scan of the whole file, slab by slab
    (a colour's first appearance is in the first slab holding it); background → 0, not numbered."""
    seen: set[int] = set()
    codes: list[int] = []
    for box in slab_boxes(colours.shape[:3], 32):  # colour pixel, its code and np.unique's work
        found, first = np.unique(_colour_codes(colours.read(box), encoding).ravel(), return_index=True)
        for code in found[np.argsort(first, kind="stable")].tolist():
            if code != 0 and code not in seen:
                seen.add(code)
                codes.append(code)
    return np.array(codes, np.uint32), np.arange(1, len(codes) + 1, dtype=np.uint64)


def _rgb_table(card: Card) -> dict[tuple[int, ...], int]:
    """Release A's exact RGB → class table: the card's class colours (the authors' converter)."""
    return {tuple(c.color): c.value for c in card.label_layer("semantic").classes if c.color is not None}


def _card_dtype(card: Card, name: str, top: int) -> np.dtype:
    spec = card.label_layer(name).dtype
    dtype = np.dtype(spec or "uint16")
    return dtype if top <= np.iinfo(dtype).max else np.dtype(np.uint32 if top < 2**32 else np.uint64)


# -- data checks --------------------------------------------------------------------------------

def border_share(mask: np.ndarray, body: np.ndarray) -> float | None:
    """Share of the in-plane 4-neighbour border of ``mask`` that lies in ``body`` (None if no border).

    Example:
        >>> body = np.zeros((1, 5, 5), bool); body[0, 1:4, 1:4] = True
        >>> core = np.zeros_like(body); core[0, 2, 2] = True; body[core] = False
        >>> border_share(core, body)
        1.0
    """
    total, in_body = _border_counts(mask, body)
    return None if total == 0 else in_body / total


def _verdict(share: float | None, voxels: int) -> str:
    if voxels == 0:
        return "absent"
    if share is None:
        return "unclear"
    return "core-like" if share >= CORE_LIKE else "not core-like" if share <= NOT_CORE else "unclear"


def _border_counts(mask: np.ndarray, body: np.ndarray) -> tuple[int, int]:
    """(border voxels, border voxels in ``body``) of :func:`border_share` (in-plane: slabs add up)."""
    grown = np.zeros_like(mask)
    grown[:, 1:, :] |= mask[:, :-1, :]
    grown[:, :-1, :] |= mask[:, 1:, :]
    grown[:, :, 1:] |= mask[:, :, :-1]
    grown[:, :, :-1] |= mask[:, :, 1:]
    border = grown & ~mask
    return int(np.count_nonzero(border)), int(np.count_nonzero(border & body))


def _measures(semantic: Any, values: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    """For each of ``values``: its voxels, the share of its in-plane border in class 5, the verdict
    (read in z-slabs; ``semantic``: an array or a source)."""
    source = as_source(semantic)
    sums = {v: [0, 0, 0] for v in values}
    for box in slab_boxes(source.shape, 32):  # colours, their codes, np.unique's inverse, masks
        slab = source.read(box)
        body = slab == 5
        for v in values:
            mask = slab == v
            voxels = int(np.count_nonzero(mask))
            if voxels:
                total, inside = _border_counts(mask, body)
                sums[v][0] += voxels
                sums[v][1] += total
                sums[v][2] += inside
    out = {}
    for v, (voxels, total, inside) in sums.items():
        share = None if not voxels or total == 0 else inside / total
        out[v] = {"voxels": voxels, "border_share_in_class_5": None if share is None else round(share, 4),
                  "verdict": _verdict(share, voxels)}
    return out


def decide_dense_core(semantic: Any, where: str) -> tuple[dict[int, int], dict[str, Any]]:
    """Which provisional code (7 = (127,0,0,255), 8 = (255,229,0,255)) is class 6; raises if unclear.

    Returns ``({7: class, 8: class}, finding)``.
    """
    measured = _measures(semantic, _PROVISIONAL)
    found = {colour: measured[code] for colour, code in zip(DISPUTED, _PROVISIONAL)}
    verdicts = [found[c]["verdict"] for c in DISPUTED]
    finding: dict[str, Any] = {"check": "dense granule core (6) must lie inside dense granule body (5)",
                               "colours": {str(c): found[c] for c in DISPUTED},
                               "thresholds": {"core_like": CORE_LIKE, "not_core_like": NOT_CORE}}
    core = None
    if verdicts == ["absent", "absent"]:
        finding["decision"] = "neither colour occurs in this file: nothing to decide"
        return {7: 4, 8: 6}, finding
    if "core-like" in verdicts and verdicts.count("core-like") == 1:
        other = verdicts[1 - verdicts.index("core-like")]
        if other in ("not core-like", "absent"):
            core = DISPUTED[verdicts.index("core-like")]
    elif "not core-like" in verdicts and "absent" in verdicts:
        core = DISPUTED[verdicts.index("absent")]  # the colour present is not a core, so it is class 4
    if core is None:
        shares = ", ".join(f"{c}: {found[c]['verdict']} (share {found[c]['border_share_in_class_5']}, "
                           f"{found[c]['voxels']} voxels)" for c in DISPUTED)
        raise PlateletEMFormatError(
            f"{where}: cannot tell which of the colours {JET_DARK_RED} and {JET_YELLOW} is class 6 (dense granule "
            f"core) and which is class 4 (canalicular vessel): the core must lie inside class 5 (share of its border "
            f"in class 5 >= {CORE_LIKE}) and the vessel must not (<= {NOT_CORE}); found {shares}. emdata will not "
            "guess; prepare release 'json' (release='json' / --release json), whose labels are integers")
    table = {7: 6, 8: 4} if core == JET_DARK_RED else {7: 4, 8: 6}
    vessel = JET_YELLOW if core == JET_DARK_RED else JET_DARK_RED
    agrees = ("matplotlib jet order and the page's '4 = Yellow'" if core == JET_DARK_RED
              else "FastEstimator's decoder table")
    finding["decision"] = f"{core} = 6 (dense granule core), {vessel} = 4 (canalicular vessel); agrees with {agrees}"
    return table, finding


def check_known_core(semantic: Any, where: str) -> dict[str, Any]:
    """The same measure for releases whose classes are known (rgb, json): a finding, warning if off."""
    measured = _measures(semantic, (6, 4))
    core, vessel = measured[6], measured[4]
    finding = {"check": "dense granule core (6) must lie inside dense granule body (5)",
               "class_6": core, "class_4": vessel,
               "thresholds": {"core_like": CORE_LIKE, "not_core_like": NOT_CORE}}
    odd = core["verdict"] in ("not core-like", "unclear") or vessel["verdict"] == "core-like"
    finding["consistent"] = not odd
    if odd:
        log.warning("%s: class 6 is %s and class 4 is %s (share of border in class 5: %s vs %s); the published "
                    "classes are kept", where, core["verdict"], vessel["verdict"], core["border_share_in_class_5"],
                    vessel["border_share_in_class_5"])
    return finding


def _fit(both: int, inst: int, union: int) -> tuple[float, float]:
    """(share of instance voxels on the semantic mask, IoU of the two masks) from voxel counts."""
    return both / max(inst, 1), both / max(union, 1)


def _pair(inst: np.ndarray, sem: np.ndarray) -> tuple[int, int, int]:
    return (int(np.count_nonzero(inst & sem)), int(np.count_nonzero(inst)), int(np.count_nonzero(inst | sem)))


def decide_z_order(instances: Any, semantic: Any, lowest_class: int, where: str,
                   what: str) -> tuple[bool, dict[str, Any]]:
    """Whether the instance layer is z-reversed against its semantic class (``semantic >= lowest_class``);
    ``(flip, finding)``. Both are read a slice at a time (arrays or sources).

    Example:
        >>> sem = np.zeros((4, 2, 2), "u1"); sem[:2] = 1
        >>> inst = np.zeros((4, 2, 2), "u2"); inst[2:] = 7
        >>> decide_z_order(inst, sem, 1, "demo", "cell")[0]
        True
    """
    instances, semantic = as_source(instances), as_source(semantic)
    n = instances.shape[0]
    finding: dict[str, Any] = {"check": f"{what} instances must lie on their semantic class, slice by slice"}
    rest = tuple(slice(0, k) for k in instances.shape[1:3])

    def inst_at(z: int) -> np.ndarray:
        return instances.read((slice(z, z + 1), *rest))[0] != 0

    stored, flipped = [0, 0, 0], [0, 0, 0]
    per_slice = []
    any_inst = any_sem = False
    for z in range(n):
        sem = semantic.read((slice(z, z + 1), *rest))[0] >= lowest_class
        here, there = inst_at(z), inst_at(n - 1 - z)
        any_inst, any_sem = any_inst or bool(here.any()), any_sem or bool(sem.any())
        a, b = _pair(here, sem), _pair(there, sem)
        stored = [x + y for x, y in zip(stored, a)]
        flipped = [x + y for x, y in zip(flipped, b)]
        if here.any() or there.any():
            per_slice.append((_fit(*a)[0], _fit(*b)[0]))
    if n < 2 or not any_inst or not any_sem:
        finding["decision"] = "not measurable (fewer than 2 slices, or an empty layer); kept as stored"
        return False, finding
    share_s, iou_s = _fit(*stored)
    share_r, iou_r = _fit(*flipped)
    finding.update({"as_stored": {"share_on_class": round(share_s, 4), "iou": round(iou_s, 4)},
                    "z_reversed": {"share_on_class": round(share_r, 4), "iou": round(iou_r, 4)},
                    "slices_better_reversed": sum(r > s for s, r in per_slice),
                    "slices_better_as_stored": sum(s > r for s, r in per_slice),
                    "rule": f"flip only if the reversed share is >= {Z_MARGIN} higher and >= {Z_MIN_FIT}, with the "
                            "IoU agreeing"})
    numbers = (f"share of {what} voxels on their class {share_s:.3f} as stored vs {share_r:.3f} z-reversed, "
               f"IoU {iou_s:.3f} vs {iou_r:.3f}")
    if share_r - share_s >= Z_MARGIN and share_r >= Z_MIN_FIT and iou_r > iou_s:
        finding["decision"] = f"z-reversed: flipped along z ({numbers})"
        log.warning("%s: the %s instance volume is z-reversed relative to the semantic labels (%s); flipping it "
                    "along z", where, what, numbers)
        return True, finding
    if share_s - share_r >= Z_MARGIN and share_s >= Z_MIN_FIT and iou_s > iou_r:
        finding["decision"] = f"as stored ({numbers})"
        return False, finding
    finding["decision"] = f"ambiguous: kept as stored ({numbers})"
    log.warning("%s: cannot tell whether the %s instance volume is z-reversed (%s); keeping it as stored",
                where, what, numbers)
    return False, finding


# -- one volume -------------------------------------------------------------------------------

RGBA_HINT = ("(Release C1 colours come from 255 x jet(label / max label of the file); a file whose max label is not "
             "6 has other colours: use release 'json'.)")


def _semantic(card: Card, archive: Path, member: str, release: Release,
              raw_shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    where = f"{archive.name}:{member}"
    if release.encoding == "json":
        data, info = _read_json(archive, member, raw_shape)
        runs = data.runs
        covered = int((runs.ends - runs.starts).sum())
        present = sorted({int(v) for v in np.unique(runs.values)} | ({0} if covered < math.prod(runs.shape) else set()))
        unknown = [v for v in present if not 0 <= v <= 6]
        if unknown:
            raise LabelEncodingError(f"{where}: value(s) {unknown[:10]} are not semantic classes 0..6")
        return data, {"source": info, "dense_core": check_known_core(data, where)}
    colours = _read_colours(archive, member, release.encoding, raw_shape)
    dtype = _card_dtype(card, "semantic", 6)
    if release.encoding == "rgb":
        data = ColourIndex(colours, _rgb_table(card), where, dtype)
        return data, {"dense_core": check_known_core(data, where)}  # its pass checks every colour
    table = {**RGBA_SEMANTIC, JET_DARK_RED: _PROVISIONAL[0], JET_YELLOW: _PROVISIONAL[1]}
    provisional = ColourIndex(colours, table, where, np.uint8, hint=RGBA_HINT)
    decision, finding = decide_dense_core(provisional, where)
    final = {colour: decision.get(code, code) for colour, code in table.items()}
    return ColourIndex(colours, final, where, dtype, hint=RGBA_HINT), {"dense_core": finding}


def _instances(card: Card, archive: Path, member: str, name: str, release: Release,
               raw_shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
    if release.encoding == "json":
        data, info = _read_json(archive, member, raw_shape)
        return data, {"source": info, "ids": "the JSON keys, as published"}
    colours = _read_colours(archive, member, release.encoding, raw_shape)
    codes, ids = _number_colours(colours, release.encoding)
    top = len(codes)
    info: dict[str, Any] = {"ids": "colours numbered by first appearance in a C-order scan of the file as stored "
                                   "(black = 0)", "instances": top}
    if release.encoding == "rgba":
        info["caveat"] = ("RGBA colours come from a 256-entry colour table over label / max label: objects whose ids "
                          "share a table entry share a colour and so an id here; release 'json' keeps exact ids")
    return ColourIds(colours, release.encoding, codes, ids, _card_dtype(card, name, top)), info


def _prepare_volume(card: Card, archive: Path, spec_name: str, split: str, description: str, release: Release,
                    paths: dict[str, str], prov: dict[str, Any]) -> Volume:
    where = f"{archive.name}:{TOP} {spec_name}"
    raw = _read_raw(archive, paths["raw"])
    shape = tuple(raw.shape)
    spec_shape = next(s.shape for s in card.volumes if s.name == spec_name)
    if spec_shape and shape != spec_shape:
        log.warning("%s %s: image shape %s differs from the published %s (a replica or a different release); "
                    "preparing it anyway", DATASET, spec_name, shape, spec_shape)
    semantic, sem_info = _semantic(card, archive, paths["semantic"], release, shape)
    cells, cell_info = _instances(card, archive, paths["instance-cell"], "instance-cell", release, shape)
    organelles, org_info = _instances(card, archive, paths["instance-organelle"], "instance-organelle", release, shape)
    notes = [f"release {release.letter} ({release.key}: {release.description}), archive {archive.name}",
             "TIFF pages read as stored, (page, row, column) = (z, y, x); not transposed (the page's [Z, X, Y] names "
             "the authors' numpy axes); raw and labels read alike"]
    z_checks = {}
    for name, lowest, what in (("instance-cell", 1, "cell"), ("instance-organelle", 2, "organelle")):
        data = cells if name == "instance-cell" else organelles
        flip, finding = decide_z_order(data, semantic, lowest, f"{archive.name}:{paths[name]}", what)
        z_checks[name] = finding
        if flip:
            notes.append(f"{paths[name]} is z-reversed relative to the semantic labels; flipped along z "
                         f"(ids were numbered before the flip)")
            if name == "instance-cell":
                cells = FlippedZ(cells)
            else:
                organelles = FlippedZ(organelles)
        elif finding["decision"].startswith("ambiguous"):
            notes.append(f"{paths[name]}: z-order could not be confirmed from the data; kept as stored")
    core = sem_info["dense_core"]
    if release.encoding == "rgba":
        notes.append(f"class 4/6 colours decided from the data: {core['decision']}")
    elif not core["consistent"]:
        notes.append("the published class 6 (dense granule core) does not lie inside class 5 as expected; "
                     "classes kept as published")
    layers = [layer(card, "semantic", semantic), layer(card, "instance-cell", cells),
              layer(card, "instance-organelle", organelles)]
    checks = {"dense_core_in_body": core, "z_order": z_checks}
    sources = {"semantic": sem_info.get("source"), "instance-cell": cell_info, "instance-organelle": org_info}
    log.debug("%s: checks %s", where, checks)
    return publish(card, spec_name, split, raw, layers, prov, description=description, release=release.key,
                   release_letter=release.letter, release_archive=release.source, label_encoding=release.encoding,
                   source_files=paths, label_sources=sources, checks=checks,
                   axes="(z, y, x) = TIFF (page, row, column)", notes=notes)


def _choose_release(release: str | None) -> Release:
    key = DEFAULT_RELEASE if release is None else str(release).strip().lower()
    if key not in RELEASES:
        raise ValueError(f"{DATASET} has no release {release!r}; choose from {list(RELEASES)} (default "
                         f"{DEFAULT_RELEASE!r}: {RELEASES[DEFAULT_RELEASE].description})")
    return RELEASES[key]


def prepare(volumes: list[str] | None = None, force: bool = False, release: str | None = None) -> list[Volume]:
    """Fetch the chosen release (default ``"json"``) and write the selected volumes (default: both)."""
    card = get_card(DATASET)
    chosen = _choose_release(release)
    wanted = choose_volumes(card, volumes)
    fetched = fetch_source(card, chosen.source)
    archive = fetched.path
    out = []
    for spec in card.volumes:
        if spec.name not in wanted:
            continue
        paths = members(STEMS[spec.name], chosen.encoding)
        prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                          {"volume": spec.name, "release": chosen.key, "members": list(paths.values()),
                           "checks": {"core_like": CORE_LIKE, "not_core_like": NOT_CORE, "z_margin": Z_MARGIN,
                                      "z_min_fit": Z_MIN_FIT}})
        existing = None if force else reusable(volume_path(DATASET, spec.name), prov)
        if existing is not None:
            out.append(existing)
            continue
        out.append(_prepare_volume(card, archive, spec.name, spec.split, spec.description, chosen, paths, prov))
    return out
