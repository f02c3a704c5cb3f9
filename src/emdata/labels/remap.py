"""Native label encodings → canonical label arrays: value tables, colour codes, offset codes,
connected components. Pure numpy/scipy; every error names the value and where it was seen.

Example:
    >>> import numpy as np
    >>> map_values(np.array([[0, 255]], np.uint8), {0: 0, 255: 1}, where="mask.png")
    array([[0, 1]], dtype=uint8)
    >>> rgb = np.array([[[0, 0, 0], [1, 1, 224]]], np.uint8)
    >>> colours_to_index(rgb, {(0, 0, 0): 0, (1, 1, 224): 1}, where="50-semantic.tif")
    array([[0, 1]], dtype=uint8)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class LabelEncodingError(ValueError):
    """A label value or colour is not part of the encoding the recipe expects."""


def _smallest_uint(max_value: int) -> np.dtype:
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise OverflowError(max_value)


def map_values(data: np.ndarray, table: Mapping[int, int], where: str, dtype: np.dtype | None = None) -> np.ndarray:
    """Replace every value by ``table[value]``; a value missing from the table is an error."""
    values, inverse = np.unique(data, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in table]
    if unknown:
        raise LabelEncodingError(f"{where}: value(s) {unknown[:10]} are not in the expected encoding "
                                 f"{sorted(table)[:20]}")
    out_dtype = dtype or _smallest_uint(max(max(table.values(), default=0), 0))
    lut = np.array([table[int(v)] for v in values], dtype=out_dtype)
    return lut[inverse].reshape(data.shape)


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    """One integer per pixel for uint8 colours of up to 8 channels (1D unique is much faster
    than row-wise unique); other inputs come back as rows for ``np.unique(axis=0)``."""
    channels = rgb.shape[-1]
    if rgb.dtype != np.uint8 or channels > 8:
        return rgb.reshape(-1, channels)
    key = np.zeros(rgb.shape[:-1], dtype=np.uint32 if channels <= 4 else np.uint64)
    for c in range(channels):
        key <<= 8
        key |= rgb[..., c]
    return key.reshape(-1)


def _unique_colours(rgb: np.ndarray, **kwargs: bool) -> tuple[np.ndarray, ...]:
    """``np.unique`` over the pixels' colours: (colours (k, C), *extras) as ``np.unique`` returns them."""
    keys = _colour_keys(rgb)
    if keys.ndim == 2:
        return np.unique(keys, axis=0, **kwargs)
    out = np.unique(keys, **kwargs)
    shifts = np.arange(rgb.shape[-1] - 1, -1, -1, dtype=keys.dtype) * keys.dtype.type(8)
    colours = ((out[0][:, None] >> shifts) & keys.dtype.type(0xFF)).astype(np.uint8)
    return (colours, *out[1:])


def colours_to_index(rgb: np.ndarray, table: Mapping[tuple[int, ...], int], where: str,
                     slice_axis: int | None = 0, first_slice: int = 0) -> np.ndarray:
    """Colour-coded labels (..., C) → indices via an exact colour table.

    An unknown colour is an error naming the colour, ``where`` and (for stacks) the slice;
    ``first_slice`` is the index of ``rgb``'s first slice in its file (when ``rgb`` is a part of it).
    """
    channels = rgb.shape[-1]
    keys = {tuple(int(c) for c in k)[:channels]: v for k, v in table.items()}
    colours, inverse = _unique_colours(rgb, return_inverse=True)
    lut = np.empty(len(colours), dtype=_smallest_uint(max(keys.values(), default=0)))
    for i, colour in enumerate(colours):
        key = tuple(int(c) for c in colour)
        if key not in keys:
            first = np.flatnonzero(inverse.reshape(-1) == i)[0]
            position = tuple(int(p) + (first_slice if a == slice_axis else 0)
                             for a, p in enumerate(np.unravel_index(first, rgb.shape[:-1])))
            at = f" slice {position[slice_axis]}" if slice_axis is not None and rgb.ndim == 4 else ""
            axes = "(z, y, x)" if rgb.ndim == 4 else "(y, x)"
            raise LabelEncodingError(f"{where}{at}: colour {key} at {axes}={tuple(map(int, position))} is not "
                                     f"in the colour table {sorted(keys)}")
        lut[i] = keys[key]
    return lut[inverse.reshape(-1)].reshape(rgb.shape[:-1])


def colours_to_instances(rgb: np.ndarray, background: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """Instance colours → ids by order of first appearance in C order; ``background`` → 0.

    Deterministic for a given file (same file, same ids).
    """
    channels = rgb.shape[-1]
    colours, first, inverse = _unique_colours(rgb, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    ids = np.zeros(len(colours), dtype=np.uint64)
    next_id = 1
    for idx in order:
        if tuple(int(c) for c in colours[idx]) == tuple(background[:channels]):
            continue
        ids[idx] = next_id
        next_id += 1
    return ids[inverse.reshape(-1)].reshape(rgb.shape[:-1]).astype(_smallest_uint(next_id - 1))


def connected_components(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """3D connected components of a boolean mask (face connectivity by default), ids from 1."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, count = ndimage.label(mask, structure=structure)
    return labels.astype(_smallest_uint(count))


def offset_encode(layers: Mapping[int, np.ndarray], where: str) -> np.ndarray:
    """Combine instance layers into one uint64 volume with offsets (as in the CREMI loader of tmquan/neurons).

    ``layers`` maps an offset (0, 1_000_000, 2_000_000, …) to an instance array (0 =
    none); later layers win where they overlap. Ids must fit below the next offset.
    """
    offsets = sorted(layers)
    shape = next(iter(layers.values())).shape
    out = np.zeros(shape, dtype=np.uint64)
    for i, off in enumerate(offsets):
        ids = layers[off]
        limit = offsets[i + 1] - off if i + 1 < len(offsets) else None
        top = int(ids.max(initial=0))
        if limit is not None and top >= limit:
            raise LabelEncodingError(f"{where}: id {top} does not fit the offset code (ids at offset {off} must be "
                                     f"< {limit}); use the separate layers instead")
        nz = ids != 0
        out[nz] = ids[nz].astype(np.uint64) + np.uint64(off)
    return out
