"""A PNG sheet of a prepared volume: ``emdata preview``.

For each label layer (or once, for a volume without labels) the sheet shows the three
orthogonal slices through one point: ``xy`` (rows y, columns x) at the point's z, ``zy`` (rows
y, columns z) at its x, and ``xz`` (rows z, columns x) at its y, with a legend of class names,
a scale bar in µm and ticks marking the point on each slice's edges (nothing is drawn over the
slices: every panel pixel is a voxel's colour).

- **Point**: by default a foreground-rich one: the level-0 chunk with most foreground in the
  first shown layer's foreground index, the z section of that chunk with most foreground, and
  the foreground voxel nearest to that section's foreground centre (the volume's centre when
  there is no foreground). ``z`` (or ``z_nm``, a depth in nm from the first section's edge)
  fixes the section and picks y, x the same way within it.
- **Geometry**: every panel pixel is ``pixel_nm`` wide along both of its axes, so anisotropic
  voxels are shown at their physical aspect; a panel pixel shows the voxel its centre falls in
  (nearest neighbour, see :attr:`Panel.rows`). The level drawn is the finest whose panels fit
  ``max_panel`` pixels; small volumes are enlarged by a whole factor up to ``min_panel``.
- **Raw**: ``grey = clip(rint((v - lo) / (hi - lo) * 255), 0, 255)`` with ``lo``, ``hi`` the
  0.5 and 99.5 percentiles recorded at prepare time (``emdata.raw.intensity``).
- **Labels**: a voxel of value 0 is left grey. Any other value ``v`` gets the RGBA colour the
  layer's OME ``image-label`` block lists for it, or ``emdata.store.ome.default_color(v)`` when
  it lists none (instance ids) or lists an achromatic one (some sources colour their masks
  white or grey, invisible on grey EM). The pixel is ``rint((1 - a) * grey + a * rgb)`` per
  channel with ``a = ALPHA * alpha / 255`` (see :func:`blend`).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> mito = np.zeros((8, 40, 40), "u1"); mito[2:6, 10:20, 12:30] = 1
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.full((8, 40, 40), 90, "u1"), (30, 6, 6),
    ...                     labels=[LabelLayerData("mito", mito, "semantic",
    ...                                            [{"value": 1, "name": "mito", "ontology": "mitochondria"}])],
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> sheet = render_sheet(path)
    >>> [(p.plane, p.point) for p in sheet.panels]
    [('xy', (3, 14, 20)), ('zy', (3, 14, 20)), ('xz', (3, 14, 20))]
    >>> xy = sheet.panels[0]
    >>> left, top = xy.box[:2]
    >>> sheet.image.getpixel((left, top)), sheet.image.getpixel((left + int(np.flatnonzero(xy.cols == 20)[0]),
    ...                                                          top + int(np.flatnonzero(xy.rows == 14)[0])))
    ((128, 128, 128), (94, 121, 185))
    >>> write_preview(path, Path(tempfile.mkdtemp()) / "v.png").suffix
    '.png'
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store.fgindex import foreground_index
from emdata.store.ome import default_color

__all__ = ["ALPHA", "MAX_PANEL", "MIN_PANEL", "Panel", "PreviewSheet", "blend", "choose_point", "label_colors",
           "render_preview", "render_sheet", "stretch", "write_augmented_preview", "write_preview"]

ALPHA = 0.5
MAX_PANEL = 640  # the longest panel side, in pixels, at most (a coarser level is drawn otherwise)
MIN_PANEL = 256  # small volumes are enlarged until their longest panel side reaches this
GAP = 24  # pixels between panels (room for captions and ticks)
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MAX_LEGEND = 14
LEGEND_WIDTH = 330


@dataclass(frozen=True)
class Panel:
    """One slice drawn on the sheet, through the level-0 voxel ``point`` (z, y, x).

    ``plane`` is ``"xy"`` (rows y, columns x), ``"zy"`` (rows y, columns z) or ``"xz"`` (rows
    z, columns x); ``index`` the slice along the third axis at pyramid ``level``; ``box`` the
    (left, top, right, bottom) pixels of the panel in the sheet; ``rows[i]`` / ``cols[j]`` the
    voxel (at ``level``, along the row / column axis) that the panel's pixel row i / column j
    shows.
    """

    layer: str | None
    plane: str
    level: int
    index: int
    box: tuple[int, int, int, int]
    rows: np.ndarray = field(repr=False)
    cols: np.ndarray = field(repr=False)
    point: tuple[int, int, int] = (0, 0, 0)

    def sample(self, array: Any) -> np.ndarray:
        """The values of ``array`` (a (z, y, x) array at this panel's level) at each panel pixel."""
        plane = _slice(array, self.plane, self.index)
        return plane[np.ix_(self.rows, self.cols)]


@dataclass
class PreviewSheet:
    """A rendered sheet: the image (a ``PIL.Image``), its panels (three per row), the pyramid
    level drawn and the size of one panel pixel in nm."""

    image: Any
    panels: list[Panel]
    level: int
    pixel_nm: float


def _slice(array: Any, plane: str, index: int) -> np.ndarray:
    if plane == "xy":
        return np.asarray(array[index, :, :])
    if plane == "zy":
        return np.asarray(array[:, :, index]).T
    if plane == "xz":
        return np.asarray(array[:, index, :])
    raise ValueError(f"plane must be xy, zy or xz, got {plane!r}")


def stretch(raw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Raw values to uint8 grey: ``clip(rint((v - lo) / (hi - lo) * 255), 0, 255)`` (128 when ``hi <= lo``).

    Example:
        >>> stretch(np.array([0, 10, 20, 30]), 10, 20).tolist()
        [0, 0, 255, 255]
    """
    if hi <= lo:
        return np.full(np.shape(raw), 128, np.uint8)
    grey = np.rint((np.asarray(raw, np.float64) - lo) / (hi - lo) * 255)
    return np.clip(grey, 0, 255).astype(np.uint8)


def _image_label_colors(volume: Any, layer: str) -> dict[int, list[int]]:
    """``label-value -> rgba`` from the layer group's stored OME ``image-label`` block."""
    try:
        doc = json.loads((Path(volume.folder) / "labels" / layer / "zarr.json").read_text(encoding="utf-8"))
        colors = doc["attributes"]["ome"]["image-label"].get("colors", [])
    except (OSError, ValueError, KeyError, TypeError):  # not stored: the writer derives it from the classes
        from emdata.store.ome import image_label

        colors = image_label(volume.meta["labels"][layer].get("classes", []))["colors"]
    return {int(c["label-value"]): [int(v) for v in c["rgba"]] for c in colors}


def label_colors(listed: dict[int, list[int]], values: Sequence[int]) -> np.ndarray:
    """(n, 4) uint8 RGBA of label ``values`` given a layer's ``image-label`` colours ``listed``:
    the listed colour, else (not listed, or achromatic) ``default_color(v)``; 0 is transparent.

    Example:
        >>> label_colors({1: [255, 255, 255, 255], 2: [250, 10, 0, 255]}, [0, 1, 2]).tolist()
        [[0, 0, 0, 0], [61, 114, 242, 255], [250, 10, 0, 255]]
    """
    out = np.zeros((len(values), 4), np.uint8)
    for i, v in enumerate(int(v) for v in values):
        if v == 0:
            continue
        rgba = listed.get(v)
        if rgba is None or rgba[0] == rgba[1] == rgba[2]:
            rgba = default_color(v)
        out[i] = [*rgba, 255][:4]
    return out


def blend(grey: np.ndarray, labels: np.ndarray, listed: dict[int, list[int]]) -> np.ndarray:
    """(…, 3) uint8 RGB: ``grey`` with ``labels`` overlaid in the colours of :func:`label_colors`
    (``rint((1 - a) * grey + a * rgb)``, ``a = ALPHA * alpha / 255``; grey where the label is 0).

    Example:
        >>> blend(np.array([[100, 100]], np.uint8), np.array([[0, 2]]), {2: [250, 10, 0, 255]}).tolist()
        [[[100, 100, 100], [175, 55, 50]]]
    """
    rgb = np.repeat(np.asarray(grey, np.float64)[..., None], 3, axis=-1)
    values, inverse = np.unique(labels, return_inverse=True)
    colors = label_colors(listed, values.tolist()).astype(np.float64)
    alpha = (ALPHA * colors[:, 3] / 255)[inverse.reshape(labels.shape)][..., None]
    rgb = (1 - alpha) * rgb + alpha * colors[:, :3][inverse.reshape(labels.shape)]
    return np.rint(rgb).astype(np.uint8)


def _foreground_blocks(volume: Any, layer: str) -> tuple[Any, np.ndarray]:
    """(index, foreground voxels per level-0 chunk): non-zero values of known class."""
    from emdata.look.stats import is_ignore

    meta = volume.meta["labels"][layer]
    index = foreground_index(volume, layer)
    if meta["kind"] == "semantic":
        keep = np.array([int(v) != 0 and not is_ignore(meta, int(v)) for v in index.values], bool)
        return index, index.counts[..., keep].sum(axis=-1)
    return index, index.foreground_counts()


def choose_point(volume: Any, layers: Sequence[str] = (), z: int | None = None) -> tuple[int, int, int]:
    """The level-0 voxel (z, y, x) a row's slices go through: foreground-rich in the first of
    ``layers`` that has foreground (see the module doc); among chunks and sections within 90 % of
    the most foreground, the one nearest the centre.

    Example:
        >>> import tempfile
        >>> from emdata.store.writer import LabelLayerData, write_volume
        >>> cells = np.zeros((4, 32, 32), "u2"); cells[1, 20:24, 4:8] = 5
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.zeros((4, 32, 32), "u1"), (30, 6, 6),
        ...                     labels=[LabelLayerData("cells", cells, "instance", instance_of="cell")],
        ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> from emdata.store.volume import open_volume
        >>> choose_point(open_volume(path), ["cells"]), choose_point(open_volume(path), ["cells"], z=3)
        ((1, 21, 5), (3, 16, 16))
    """
    from emdata.look.stats import is_ignore

    shape = tuple(int(n) for n in volume.meta["shape"])
    for layer in layers:
        meta = volume.meta["labels"][layer]
        index, fg = _foreground_blocks(volume, layer)
        if z is not None:
            row = np.zeros_like(fg)
            bz = z // index.block_shape[0]
            row[bz] = fg[bz]
            fg = row
        if not fg.size or fg.max() <= 0:
            continue
        grid_centre = np.array(fg.shape) / 2 - 0.5
        block = tuple(int(b) for b in _central(np.argwhere(fg >= 0.9 * fg.max()), grid_centre))
        box = index.block_box(block)
        data = np.asarray(volume.labels[layer][box])
        values = np.unique(data)
        known = np.isin(data, [v for v in values.tolist() if v != 0 and not is_ignore(meta, int(v))])
        if z is not None:
            plane = z - box[0].start
        else:
            per_plane = known.sum(axis=(1, 2))
            rich = np.argwhere(per_plane >= 0.9 * per_plane.max())
            plane = int(_central(rich, np.array([len(per_plane) / 2 - 0.5]))[0])
        ys, xs = np.nonzero(known[plane])
        if not ys.size:
            continue
        y, x = _central(np.stack([ys, xs], axis=1), np.array([ys.mean(), xs.mean()]))
        return (box[0].start + plane, box[1].start + int(y), box[2].start + int(x))
    return (shape[0] // 2 if z is None else z, shape[1] // 2, shape[2] // 2)


def _central(candidates: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The row of ``candidates`` (n, d) nearest to ``centre`` (the first of equals)."""
    return candidates[int(np.argmin(((candidates - centre) ** 2).sum(axis=1)))]


def _axis_map(n: int, voxel: float, pixel: float) -> np.ndarray:
    """For each pixel along an axis of ``n`` voxels of ``voxel`` nm drawn at ``pixel`` nm: the voxel it shows."""
    m = max(1, round(n * voxel / pixel))
    return np.minimum(np.floor((np.arange(m) + 0.5) * pixel / voxel).astype(np.int64), n - 1)


@cache
def _font(size: int) -> tuple[Any, bool]:
    """(font, whether it has µ and ×): DejaVu Sans where the system has it, else Pillow's bundled
    font (ASCII only: text is then written with ``um`` and ``x``)."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        return ImageFont.load_default(size=size), False


def _text(draw: Any, xy: tuple[int, int], text: str, size: int = 12, fill: tuple[int, int, int] = INK) -> None:
    font, unicode = _font(size)
    if not unicode:
        text = text.replace("µm", "um").replace("×", "x").replace("…", "...")
    draw.text(xy, text, fill=fill, font=font)


def _nice_length(limit_um: float) -> float:
    """The largest 1, 2 or 5 × 10^k µm not above ``limit_um``."""
    k = math.floor(math.log10(limit_um))
    for m in (5, 2, 1):
        if m * 10 ** k <= limit_um:
            return m * 10 ** k
    return 10 ** k


def _um(length: float) -> str:
    return f"{length:g} µm"


def render_sheet(volume: Any, *, point: Sequence[int] | None = None, z: int | None = None,
                 z_nm: float | None = None, layers: Sequence[str] | None = None, max_panel: int = MAX_PANEL,
                 min_panel: int = MIN_PANEL) -> PreviewSheet:
    """Render the sheet of ``volume`` (a Volume or its path); see the module doc.

    ``layers`` defaults to every label layer, one row each, each through its own
    foreground-rich point; ``point`` (level-0 z, y, x) fixes the point of every row, ``z`` or
    ``z_nm`` only its section.
    """
    from PIL import Image, ImageDraw

    from emdata.look.stats import _open

    vol = _open(volume)
    meta = vol.meta
    shape = tuple(int(n) for n in meta["shape"])
    all_layers = list(meta["labels"])
    shown = list(layers) if layers else all_layers
    unknown = [la for la in shown if la not in all_layers]
    if unknown:
        raise ValueError(f"{vol.path}: no label layer {', '.join(map(repr, unknown))}; "
                         f"layers: {', '.join(all_layers) or 'none'}")
    z = _section(vol.path, shape, meta, z, z_nm)
    if point is not None:
        point = tuple(int(p) for p in point)
        if len(point) != 3 or any(not 0 <= p < n for p, n in zip(point, shape)):
            raise ValueError(f"{vol.path}: point {point} is outside the volume's shape {shape}")
    rows_shown: list[str | None] = list(shown) if shown else [None]
    points = [point if point is not None else choose_point(vol, [layer] if layer else [], z) for layer in rows_shown]

    raw_levels = meta["raw"]["levels"]
    n_levels = min([len(raw_levels)] + [len(meta["labels"][la]["levels"]) for la in shown])
    level, pixel = _choose_level(raw_levels[:n_levels], max_panel, min_panel)
    scale = [float(v) for v in raw_levels[level]["scale"]]
    lshape = [int(n) for n in raw_levels[level]["shape"]]
    v0 = [float(v) for v in meta["voxel_size_nm"]]
    rows = {"xy": _axis_map(lshape[1], scale[1], pixel), "zy": _axis_map(lshape[1], scale[1], pixel),
            "xz": _axis_map(lshape[0], scale[0], pixel)}
    cols = {"xy": _axis_map(lshape[2], scale[2], pixel), "zy": _axis_map(lshape[0], scale[0], pixel),
            "xz": _axis_map(lshape[2], scale[2], pixel)}
    lo, hi = _contrast(meta["raw"].get("intensity") or {})
    raw = vol.level(level)

    width, height, depth = len(cols["xy"]), len(rows["xy"]), len(rows["xz"])
    cell_h = 22 + height + GAP + depth + GAP
    header_h = 44
    header = (f"{meta['dataset']} / {meta['volume']} ({meta['split']})",
              f"drawn from level {level}, 1 px = {pixel:.4g} nm; voxel {'×'.join(f'{v:g}' for v in v0)} nm (z×y×x)")
    sheet_w = max(GAP + width + GAP + max(depth, LEGEND_WIDTH) + GAP, GAP + 8 * max(map(len, header)))
    sheet = Image.new("RGB", (sheet_w, header_h + len(rows_shown) * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    _text(draw, (GAP, 6), header[0], 15)
    _text(draw, (GAP, 26), header[1])
    panels: list[Panel] = []
    for r, (layer, row_point) in enumerate(zip(rows_shown, points)):
        top = header_h + r * cell_h
        lmeta = meta["labels"][layer] if layer else None
        at = [min(int(p * v / s), n - 1) for p, v, s, n in zip(row_point, v0, scale, lshape)]
        index = {"xy": at[0], "zy": at[2], "xz": at[1]}
        title = "raw (no label layers)"
        if lmeta:
            of = f" of {lmeta['instance_of']}" if lmeta.get("instance_of") else ""
            title = f"{layer}: {lmeta['kind']} labels{of}"
        _text(draw, (GAP, top), f"{title}, through z {row_point[0]}, y {row_point[1]}, x {row_point[2]}", 15)
        y0 = top + 22
        origin = {"xy": (GAP, y0), "zy": (GAP + width + GAP, y0), "xz": (GAP, y0 + height + GAP)}
        listed = _image_label_colors(vol, layer) if layer else {}
        in_view: set[int] = set()
        for plane in ("xy", "zy", "xz"):
            left, ptop = origin[plane]
            grey = stretch(_slice(raw, plane, index[plane])[np.ix_(rows[plane], cols[plane])], lo, hi)
            if layer:
                labels = _slice(vol.label_level(layer, level), plane, index[plane])[np.ix_(rows[plane], cols[plane])]
                pixels = blend(grey, labels, listed)
                in_view.update(int(v) for v in np.unique(labels).tolist())
            else:
                pixels = np.repeat(grey[..., None], 3, axis=-1)
            sheet.paste(Image.fromarray(pixels, "RGB"), (left, ptop))
            box = (left, ptop, left + pixels.shape[1], ptop + pixels.shape[0])
            panels.append(Panel(layer, plane, level, index[plane], box, rows[plane], cols[plane], row_point))
            _decorate(draw, plane, box, rows[plane], cols[plane], at, index[plane])
        used = _scale_bar(draw, (GAP + width + GAP, y0 + height + GAP), width, pixel)
        _legend(draw, (GAP + width + GAP, y0 + height + GAP + used), lmeta, listed, in_view)
    return PreviewSheet(sheet, panels, level, pixel)


def _section(where: Any, shape: tuple[int, ...], meta: dict[str, Any], z: int | None, z_nm: float | None) -> int | None:
    """The section asked for by index ``z`` or depth ``z_nm`` (None when neither), checked against the volume."""
    if z is not None and z_nm is not None:
        raise ValueError("give z (a section index) or z_nm (a depth in nm), not both")
    if z_nm is not None:
        depth = shape[0] * float(meta["voxel_size_nm"][0])
        if not 0 <= z_nm < depth:
            raise ValueError(f"{where}: z_nm {z_nm:g} is outside the volume's depth [0, {depth:g}) nm")
        return math.floor(z_nm / float(meta["voxel_size_nm"][0]))
    if z is not None and not 0 <= z < shape[0]:
        raise ValueError(f"{where}: z {z} is outside the volume's {shape[0]} sections (0..{shape[0] - 1})")
    return z


def _contrast(intensity: dict[str, Any]) -> tuple[float, float]:
    """(lo, hi) of the grey stretch: the recorded 0.5 and 99.5 percentiles (min and max when they coincide)."""
    pct = intensity.get("percentiles", {})
    lo, hi = float(pct.get("0.5", intensity.get("min", 0))), float(pct.get("99.5", intensity.get("max", 0)))
    if hi <= lo and intensity:
        lo, hi = float(intensity["min"]), float(intensity["max"])
    return lo, hi


def _choose_level(levels: list[dict[str, Any]], max_panel: int, min_panel: int) -> tuple[int, float]:
    """(level, pixel nm): the finest level whose panels fit ``max_panel`` pixels at the finest
    voxel size of that level, enlarged by a whole factor towards ``min_panel``."""
    chosen = len(levels) - 1
    for i, lv in enumerate(levels):
        pixel = min(float(v) for v in lv["scale"])
        if max(n * float(v) / pixel for n, v in zip(lv["shape"], lv["scale"])) <= max_panel:
            chosen = i
            break
    lv = levels[chosen]
    pixel = min(float(v) for v in lv["scale"])
    longest = max(n * float(v) / pixel for n, v in zip(lv["shape"], lv["scale"]))
    enlarge = max(1, min(math.ceil(min_panel / longest), math.floor(max_panel / longest)))
    return chosen, pixel / enlarge


def _decorate(draw: Any, plane: str, box: tuple[int, int, int, int], rows: np.ndarray, cols: np.ndarray,
              at: list[int], index: int) -> None:
    """Caption (plane, slice, axis names) under the panel and ticks at the point outside its edges."""
    left, top, _, bottom = box
    row_axis, col_axis = {"xy": ("y", "x"), "zy": ("y", "z"), "xz": ("z", "x")}[plane]
    third = {"xy": "z", "zy": "x", "xz": "y"}[plane]
    axis_at = {"z": at[0], "y": at[1], "x": at[2]}
    _text(draw, (left, bottom + 3), f"{plane} at {third} {index}: {col_axis} right, {row_axis} down")
    hits_c = np.flatnonzero(cols == axis_at[col_axis])
    hits_r = np.flatnonzero(rows == axis_at[row_axis])
    if hits_c.size:
        c = left + int(hits_c.mean())
        draw.polygon([(c - 4, top - 7), (c + 4, top - 7), (c, top - 1)], fill=(220, 0, 0))
    if hits_r.size:
        r = top + int(hits_r.mean())
        draw.polygon([(left - 7, r - 4), (left - 7, r + 4), (left - 1, r)], fill=(220, 0, 0))


def _scale_bar(draw: Any, origin: tuple[int, int], panel_width: int, pixel: float) -> int:
    """A bar of a round length in µm (about a third of the ``xy`` panel's width, drawn beside
    the panels, never over them) at ``origin``; returns the height used."""
    x, y = origin
    length = _nice_length(panel_width * pixel / 1000 / 3)
    px = max(1, round(length * 1000 / pixel))
    draw.rectangle([x, y + 6, x + px - 1, y + 10], fill=INK)
    draw.line([(x, y + 2), (x, y + 14)], fill=INK)
    draw.line([(x + px - 1, y + 2), (x + px - 1, y + 14)], fill=INK)
    _text(draw, (x + px + 6, y + 1), f"{_um(length)} (scale bar, all three slices)")
    return 22


def _legend(draw: Any, origin: tuple[int, int], lmeta: dict[str, Any] | None, listed: dict[int, list[int]],
            in_view: set[int]) -> None:
    """Swatch and name per class of the layer (instance layers: how ids are coloured)."""
    x, y = origin
    if lmeta is None:
        return
    lines: list[tuple[int | None, str]] = []
    table = {int(c["value"]): c["name"] for c in lmeta.get("classes", [])}
    if lmeta["kind"] == "instance":
        ids = [v for v in in_view if v not in table and v != 0]
        lines.append((None, f"{len(ids)} instance id(s) in view, one colour per id"))
        if lmeta.get("instance_of"):
            lines.append((None, f"every id: {lmeta['instance_of']}"))
        lines += [(None, f"ids {r['min']}-{r['max']}: {r['name']}") for r in lmeta["mapping"].get("ranges", [])]
        lines += [(v, f"{v} {name}") for v, name in sorted(table.items()) if v != 0]
    else:
        values = sorted((set(table) | in_view) - {0})
        for v in values:
            name = table.get(v, "(not in the class table)")
            lines.append((v, f"{v} {name}" + ("" if v in in_view else "  (not in view)")))
    if lmeta.get("ignore_value") is not None:
        lines.append((None, f"ignore value {lmeta['ignore_value']}: class unknown"))
    more = len(lines) - MAX_LEGEND
    for value, text in lines[:MAX_LEGEND]:
        if value is not None:
            rgba = label_colors(listed, [value])[0]
            draw.rectangle([x, y + 2, x + 11, y + 13], fill=tuple(int(c) for c in rgba[:3]), outline=INK)
        _text(draw, (x + (16 if value is not None else 0), y), text)
        y += 16
    if more > 0:
        _text(draw, (x, y), f"… and {more} more")


def render_preview(volume: Any, **options: Any) -> Any:
    """The sheet's image (a ``PIL.Image``); ``options`` as for :func:`render_sheet`."""
    return render_sheet(volume, **options).image


def write_preview(volume: Any, path: str | Path, **options: Any) -> Path:
    """Write the sheet of ``volume`` as a PNG to ``path``; returns the path. ``options`` as for
    :func:`render_sheet`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    render_sheet(volume, **options).image.save(path, format="PNG")
    return path


def write_augmented_preview(volumes: Sequence[Any], path: str | Path, *, n: int = 8, columns: int = 4,
                            patch_shape: Sequence[int] | None = None, layer: str | None = None, seed: int = 0,
                            augment: Any = "em") -> Path:
    """A grid of ``n`` augmented samples (``PatchDataset(..., augment="em")`` by default) with
    their labels overlaid, written as a PNG (:func:`emdata.torch.augment.preview.preview_grid`).
    Needs the ``torch`` extra. ``patch_shape`` defaults to 16×128×128 cut to the smallest volume;
    ``layer`` to the first label layer of the first volume.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from emdata.store.writer import LabelLayerData, write_volume
        >>> cells = np.zeros((4, 48, 48), "u4"); cells[:, 10:30, 10:30] = 3
        >>> tmp = Path(tempfile.mkdtemp())
        >>> path = write_volume(tmp / "v.ome.zarr", np.full((4, 48, 48), 90, "u1"), (30, 6, 6),
        ...                     labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
        ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> Image.open(write_augmented_preview([path], tmp / "grid.png", n=4, columns=2)).size
        (96, 96)
    """
    try:
        from emdata.torch.augment.preview import preview_grid
        from emdata.torch.dataset import PatchDataset
    except ImportError as exc:
        raise ImportError(f"the augmented preview needs PyTorch ({exc}); install emdata[torch]") from None
    from emdata.look.stats import _open

    vols = [_open(v) for v in volumes]
    if patch_shape is None:
        smallest = np.min([v.meta["shape"] for v in vols], axis=0)
        patch_shape = tuple(int(min(p, n)) for p, n in zip((16, 128, 128), smallest))
    if layer is None:
        layer = next(iter(vols[0].meta["labels"]), None)
    dataset = PatchDataset(vols, patch_shape, labels=[layer] if layer else [], augment=augment, seed=seed,
                           samples_per_epoch=max(n, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return preview_grid(dataset, n, path, columns=columns)
