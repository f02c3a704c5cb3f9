"""platelet-em replica in the published layouts of releases A (RGB), C1 (RGBA) and C2 (JSON).

Each release is one zip at the card's URL (``?dl=1`` is not part of the path) holding
``platelet-em/images/{50,24}-images.tif`` (uint16 multipage TIFF, Z pages of rows × columns),
``platelet-em/labels-semantic/{50,24}-semantic.{tif,json}`` and
``platelet-em/labels-instance/{50,24}-instance-{cell,organelle}.{tif,json}``
(bio3d-vision/bio3d_vision ``download.py``, ``convert.py``). Colour TIFFs are zlib-compressed uint8 RGB (release A, the
authors' exact semantic colours) or RGBA (release C1: FastEstimator's colours, with the two
disputed colours assigned to the dense granule core and the canalicular vessel as chosen by
``rgba_core``); instance colours are arbitrary distinct colours (RGB) or 255 × jet(id / max id)
with a transparent black background (RGBA). JSON files follow bio3d_vision's encoding: keys
are the non-zero labels as strings, values "start length" pairs with 1-based starts over the
C-order flattened array, plus ``.info`` with shape and dtype.

The scene is small and non-square in y/x (so an axis swap shows): three cells with different
z ranges (so a z-reversed layer shows), organelles inside them, and dense granules whose core
(class 6) sits inside a one-pixel ring of body (class 5) while the canalicular vessel (class 4)
borders cytoplasm. ``reverse_z`` stores the named instance layers z-reversed (release A's
pitfall); ``z_symmetric`` makes every object span all slices (z-order undecidable);
``core_inside_body=False`` moves each core out of its body (the 4/6 check cannot decide).
Written with tifffile, json and zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_platelet_em_replica(Path(tempfile.mkdtemp()), release="json")
    >>> truth["volume-50"]["raw"].shape, int(truth["volume-50"]["semantic"].max())
    ((6, 30, 40), 6)
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

URLS = {
    "rgb": "https://www.dropbox.com/s/lo6i7v2mc9z2wft/images-and-labels.zip?dl=1",
    "json-b": "https://www.dropbox.com/s/ra5gt32qswbfr34/images_and_labels.zip?dl=1",
    "rgba": "https://www.dropbox.com/s/pvrfnurjq11k0l3/images_and_labels_rgba.zip?dl=1",
    "json": "https://www.dropbox.com/s/tgmwv9kegijfrao/images_and_labels_json.zip?dl=1",
}
SHAPES = {"50": (6, 30, 40), "24": (4, 30, 40)}
"""The writer's default (z, y, x) per volume: the tiniest that holds the scene."""
PATCH_SHAPES = {"50": (18, 128, 144), "24": (16, 128, 144)}
"""The kit's default: fits a 16×128×128 patch (the scene in one corner, background around it)."""
VOLUMES = {"50": "volume-50", "24": "volume-24"}
RGB_SEMANTIC = {0: (0, 0, 0), 1: (1, 1, 224), 2: (1, 171, 254), 3: (1, 254, 1), 4: (255, 224, 0),
                5: (250, 94, 0), 6: (245, 0, 203)}
RGBA_FIXED = {0: (0, 0, 0, 0), 1: (0, 40, 255, 255), 2: (0, 212, 255, 255), 3: (124, 255, 121, 255),
              5: (255, 70, 0, 255)}
DARK_RED = (127, 0, 0, 255)
YELLOW = (255, 229, 0, 255)
# the authors' (arbitrary, non-contiguous) ids as a JSON release would carry them
CELL_IDS = (3, 17, 34)
ORGANELLE_IDS = (1, 2, 5, 9, 12, 40)


def host_path(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc + parts.path


def source_files(root: Path, release: str = "json") -> dict[str, Path]:
    """``{card URL: replica file}`` for ``release`` (for an ``EMDATA_CHECKSUMS`` file)."""
    return {URLS[release]: Path(root) / host_path(URLS[release])}


def _ellipse(shape: tuple[int, int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[: shape[1], : shape[2]]
    disc = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    return np.broadcast_to(disc, shape).copy()


def _box(shape: tuple[int, int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[:, y0:y1, x0:x1] = True
    return out


Organelle = tuple[np.ndarray, dict[int, np.ndarray]]


def _scene(shape: tuple[int, int, int], z_symmetric: bool,
           core_inside_body: bool) -> tuple[np.ndarray, list[np.ndarray], list[Organelle]]:
    """(semantic, cell masks, organelles as (mask, {class: part mask})) in the true orientation."""
    nz = shape[0]
    zr = [(0, max(1, nz * 2 // 3)), (nz // 3, nz), (0, max(1, nz // 2))]
    if z_symmetric:
        zr = [(0, nz)] * 3

    def in_z(mask: np.ndarray, rng: tuple[int, int]) -> np.ndarray:
        mask = mask.copy()
        mask[: rng[0]] = False
        mask[rng[1]:] = False
        return mask

    cells = [in_z(_ellipse(shape, 8, 10, 6, 8), zr[0]), in_z(_ellipse(shape, 20, 29, 7, 9), zr[1]),
             in_z(_ellipse(shape, 22, 9, 6, 7), zr[2])]
    semantic = np.zeros(shape, np.uint8)
    for cell in cells:
        semantic[cell] = 1

    def granule(cell: int, y0: int, x0: int) -> Organelle:
        body = in_z(_box(shape, y0, y0 + 5, x0, x0 + 5), zr[cell])
        if core_inside_body:
            core = in_z(_box(shape, y0 + 1, y0 + 4, x0 + 1, x0 + 4), zr[cell])
        else:  # the core beside the body, bordered by cytoplasm
            core = in_z(_box(shape, y0 + 6, y0 + 8, x0, x0 + 2), zr[cell])
        return body | core, {5: body & ~core, 6: core}

    def single(mask: np.ndarray, cls: int) -> Organelle:
        return mask, {cls: mask}

    organelles = [
        single(in_z(_ellipse(shape, 5, 6, 1.5, 2.5), zr[0]), 2),
        granule(0, 6, 11),
        single(in_z(_box(shape, 19, 21, 23, 33), zr[1]), 4),  # canalicular vessel: long, inside cytoplasm
        single(in_z(_box(shape, 23, 26, 30, 34), zr[1]), 3),
        granule(2, 19, 5) if core_inside_body else single(in_z(_box(shape, 19, 24, 5, 10), zr[2]), 5),
        single(in_z(_box(shape, 24, 26, 11, 13), zr[2]), 2),
    ]
    for _, parts in organelles:
        for cls, part in parts.items():
            semantic[part] = cls
    return semantic, cells, organelles


def _id_volume(masks: list[np.ndarray], ids: tuple[int, ...] | list[int], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, np.uint16)
    for mask, i in zip(masks, ids):
        out[mask] = i
    return out


def _first_appearance_ids(masks: list[np.ndarray], reverse: bool) -> list[int]:
    """Ids 1..n by the first voxel (C order) of each object in the file as stored."""
    firsts = [int(np.argmax((m[::-1] if reverse else m).ravel())) for m in masks]
    order = sorted(range(len(masks)), key=lambda i: firsts[i])
    ids = [0] * len(masks)
    for rank, i in enumerate(order, start=1):
        ids[i] = rank
    return ids


def _jet(x: float) -> tuple[int, int, int, int]:
    r, g, b = (min(max(1.5 - abs(4 * x - k), 0.0), 1.0) for k in (3, 2, 1))
    return int(255 * r), int(255 * g), int(255 * b), 255


def _tif(data: np.ndarray, rgb: bool = False) -> bytes:
    import tifffile

    buf = io.BytesIO()
    if rgb:
        tifffile.imwrite(buf, data, photometric="rgb", compression="zlib")
    else:
        tifffile.imwrite(buf, data, photometric="minisblack")
    return buf.getvalue()


def rle_json(labels: np.ndarray) -> bytes:
    """bio3d_vision's dict encoding of an index array, serialised as JSON."""
    doc: dict[str, object] = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        flat = np.concatenate([[0], (labels == value).ravel().astype(np.int8), [0]])
        edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        edges[1::2] -= edges[::2]
        doc[str(int(value))] = " ".join(str(int(v)) for v in edges)
    doc[".info"] = {"shape": list(labels.shape), "dtype": str(labels.dtype)}
    return json.dumps(doc).encode()


def _colour_stack(index: np.ndarray, table: dict[int, tuple[int, ...]], channels: int) -> np.ndarray:
    out = np.zeros((*index.shape, channels), np.uint8)
    for value, colour in table.items():
        out[index == value] = colour
    return out


def write_platelet_em_replica(root: Path, release: str = "json", reverse_z: tuple[str, ...] | None = None,
                              rgba_core: tuple[int, int, int, int] = DARK_RED, core_inside_body: bool = True,
                              z_symmetric: bool = False, shapes: dict[str, tuple[int, int, int]] | None = None,
                              seed: int = 5) -> dict[str, dict[str, np.ndarray]]:
    """Write the ``release`` archive ("rgb", "rgba", "json" or "json-b") under ``root``.

    Returns per volume (``volume-50``, ``volume-24``) the ``raw`` image and the labels the recipe
    should produce: ``semantic`` (0–6), ``instance-cell`` and ``instance-organelle`` in the true
    z-order, with the authors' ids (JSON) or ids by first appearance in the stored file (colour).
    ``reverse_z`` (default: the cell instances for "rgb", none otherwise) lists instance layers
    stored z-reversed; ``rgba_core`` is the colour the RGBA semantic files give the dense core
    (the other disputed colour goes to the canalicular vessel). ``shapes`` (default :data:`SHAPES`) gives
    each volume's (z, y, x) by stem (``50``, ``24``); y ≥ 30 and x ≥ 40 hold the scene.
    """
    if release not in URLS:
        raise ValueError(f"release {release!r}: expected one of {list(URLS)}")
    if reverse_z is None:
        reverse_z = ("instance-cell",) if release == "rgb" else ()
    rng = np.random.default_rng(seed)
    json_release = release.startswith("json")
    ext = "json" if json_release else "tif"
    files: dict[str, bytes] = {}
    truth: dict[str, dict[str, np.ndarray]] = {}
    for stem, shape in (shapes or SHAPES).items():
        semantic, cells, organelles = _scene(shape, z_symmetric, core_inside_body)
        raw = (rng.integers(0, 9000, size=shape) + 7000 * semantic.astype(np.int64)).astype(np.uint16)
        raw[0, 0, 0], raw[-1, -1, -1] = 0, 65535
        org_masks = [m for m, _ in organelles]
        files[f"platelet-em/images/{stem}-images.tif"] = _tif(raw)
        layers = {"instance-cell": (cells, CELL_IDS), "instance-organelle": (org_masks, ORGANELLE_IDS)}
        expect: dict[str, np.ndarray] = {"raw": raw, "semantic": semantic.astype(np.uint16)}
        if json_release:
            files[f"platelet-em/labels-semantic/{stem}-semantic.json"] = rle_json(semantic.astype(np.uint16))
        elif release == "rgb":
            files[f"platelet-em/labels-semantic/{stem}-semantic.tif"] = _tif(
                _colour_stack(semantic, RGB_SEMANTIC, 3), rgb=True)
        else:
            vessel = YELLOW if rgba_core == DARK_RED else DARK_RED
            table = {**RGBA_FIXED, 4: vessel, 6: rgba_core}
            files[f"platelet-em/labels-semantic/{stem}-semantic.tif"] = _tif(_colour_stack(semantic, table, 4),
                                                                             rgb=True)
        for name, (masks, authors_ids) in layers.items():
            stored_reversed = name in reverse_z
            authors = _id_volume(masks, authors_ids, shape)
            stored = authors[::-1] if stored_reversed else authors
            member = f"platelet-em/labels-instance/{stem}-{name}.{ext}"
            if json_release:
                files[member] = rle_json(np.ascontiguousarray(stored))
                expect[name] = authors
                continue
            if release == "rgb":
                palette = {0: (0, 0, 0)}
                while len(palette) <= len(authors_ids):
                    colour = tuple(int(c) for c in rng.integers(1, 256, size=3))
                    if colour not in palette.values():
                        palette[authors_ids[len(palette) - 1]] = colour
                files[member] = _tif(_colour_stack(np.ascontiguousarray(stored), palette, 3), rgb=True)
            else:
                top = max(authors_ids)
                palette4 = {0: (0, 0, 0, 0), **{i: _jet(i / top) for i in authors_ids}}
                assert len(set(palette4.values())) == len(palette4), "jet colours collide; choose other ids"
                files[member] = _tif(_colour_stack(np.ascontiguousarray(stored), palette4, 4), rgb=True)
            expect[name] = _id_volume(masks, _first_appearance_ids(masks, stored_reversed), shape)
        truth[VOLUMES[stem]] = expect
    write_zip(Path(root) / host_path(URLS[release]), files)
    return truth


def write_zip(target: Path, files: dict[str, bytes]) -> None:
    """A zip with directory entries (as ``zip -r`` writes them) and the given members."""
    target.parent.mkdir(parents=True, exist_ok=True)
    folders = sorted({"/".join(n.split("/")[: i + 1]) + "/" for n in files for i in range(n.count("/"))})
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for folder in folders:
            zf.writestr(folder, b"")
        for name, data in files.items():
            zf.writestr(name, data)


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_platelet_em_replica(root, **({} if small else {"shapes": PATCH_SHAPES}))
