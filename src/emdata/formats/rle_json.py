"""bio3d-vision run-length JSON labels (platelet-em releases B and C2) → numpy arrays.

The format (as bio3d_vision ``convert.py`` writes it): one JSON object per label
volume. Every key except ``.info`` is a non-zero label written as a string (``"1"``, ``"34"``);
its value is a run-length-encoded binary mask, a string of whitespace-separated
``start length`` pairs with **1-based** starts over the **C-order flattened** array. ``.info``
holds ``shape`` (the array shape, in the order of the array that was encoded) and ``dtype``
(a numpy dtype name such as ``"uint16"``); other ``.info`` keys are kept. Voxels no run covers
are 0.

The decoder checks what the authors' encoder guarantees and refuses anything else with an
error naming the file, the label and the value: integer label keys other than 0 that fit the
dtype, an even number of integer tokens, starts ≥ 1, lengths ≥ 1, runs inside the array, and
no voxel claimed twice (the masks of one index image are disjoint; the authors' own decoder
would silently let the later key win). The array comes back in ``.info`` order, unchanged.

Example:
    >>> doc = {".info": {"shape": [2, 3], "dtype": "uint16"}, "1": "1 2", "7": "5 2"}
    >>> decode_rle_json(doc, name="tiny.json").data
    array([[1, 1, 0],
           [0, 7, 7]], dtype=uint16)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INFO_KEY = ".info"
_INT = re.compile(r"^[+-]?\d+$")


class RleJsonFormatError(ValueError):
    """A run-length JSON label file does not follow the bio3d-vision encoding."""


@dataclass(frozen=True)
class RleLabels:
    """A decoded label volume: ``data`` in ``.info`` shape and dtype, the label keys, ``info``."""

    data: np.ndarray
    labels: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)
    runs: int = 0


def _dtype(info: Mapping[str, Any], where: str) -> np.dtype:
    raw = info.get("dtype")
    if not isinstance(raw, str) or not raw.strip():
        raise RleJsonFormatError(f"{where}: '.info' has no dtype name (got {raw!r}); expected e.g. 'uint16'")
    name = raw.strip().removeprefix("numpy.").removeprefix("np.")
    try:
        dtype = np.dtype(name)
    except TypeError as exc:
        raise RleJsonFormatError(f"{where}: '.info' dtype {raw!r} is not a numpy dtype name") from exc
    if not np.issubdtype(dtype, np.integer):
        raise RleJsonFormatError(f"{where}: '.info' dtype {raw!r} is not an integer type; label volumes are integer")
    return dtype


def _shape(info: Mapping[str, Any], where: str) -> tuple[int, ...]:
    raw = info.get("shape")
    if (not isinstance(raw, (list, tuple)) or not raw
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in raw)):
        raise RleJsonFormatError(f"{where}: '.info' shape {raw!r} is not a list of non-negative integers")
    return tuple(int(n) for n in raw)


def _runs(value: Any, label: int, size: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(0-based starts, ends) of one label's runs, each checked."""
    if not isinstance(value, str):
        raise RleJsonFormatError(f"{where}: label {label}: expected an RLE string of 'start length' pairs, got "
                                 f"{type(value).__name__}")
    tokens = value.split()
    if len(tokens) % 2:
        raise RleJsonFormatError(f"{where}: label {label}: odd number of RLE tokens ({len(tokens)}); the value must "
                                 "be 'start length' pairs")
    try:
        numbers = np.array(tokens, dtype=np.int64) if tokens else np.zeros(0, np.int64)
    except (ValueError, OverflowError) as exc:
        bad = next((t for t in tokens if not _INT.match(t)), tokens[0] if tokens else "")
        raise RleJsonFormatError(f"{where}: label {label}: RLE token {bad!r} is not an integer") from exc
    starts, lengths = numbers[0::2], numbers[1::2]
    if (starts < 1).any():
        raise RleJsonFormatError(f"{where}: label {label}: run start {int(starts[starts < 1][0])} is below 1 (starts "
                                 "are 1-based)")
    if (lengths < 1).any():
        raise RleJsonFormatError(f"{where}: label {label}: run length {int(lengths[lengths < 1][0])} is below 1")
    ends = starts - 1 + lengths
    if (ends > size).any():
        i = int(np.flatnonzero(ends > size)[0])
        raise RleJsonFormatError(f"{where}: label {label}: run 'start {int(starts[i])} length {int(lengths[i])}' ends "
                                 f"at voxel {int(ends[i])}, past the {size} voxels of the '.info' shape")
    return starts - 1, ends


@dataclass(frozen=True)
class RleRuns:
    """The checked runs of one document: 0-based ``starts`` and ``ends`` over the C-order flattened
    ``shape``, sorted and disjoint, each painted with ``values[i]`` (in ``dtype``)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    labels: tuple[int, ...]
    starts: np.ndarray
    ends: np.ndarray
    values: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def paint(self, lo: int, hi: int) -> np.ndarray:
        """Flat voxels ``[lo, hi)`` (C order), 0 where no run covers them.

        Example:
            >>> runs = rle_runs({".info": {"shape": [2, 3], "dtype": "uint8"}, "1": "1 2", "7": "5 2"})
            >>> runs.paint(1, 6).tolist()
            [1, 0, 0, 7, 7]
        """
        out = np.zeros(max(0, hi - lo), self.dtype)
        first = int(np.searchsorted(self.ends, lo, side="right"))  # ends are sorted: runs are disjoint
        last = int(np.searchsorted(self.starts, hi, side="left"))
        for start, end, value in zip(self.starts[first:last].tolist(), self.ends[first:last].tolist(),
                                     self.values[first:last].tolist()):
            out[max(start, lo) - lo:min(end, hi) - lo] = value
        return out


def rle_runs(doc: Mapping[str, Any], name: str = "<json>") -> RleRuns:
    """Check one parsed run-length JSON document and return its runs (what :func:`decode_rle_json`
    paints), without forming the array."""
    if not isinstance(doc, Mapping):
        raise RleJsonFormatError(f"{name}: expected a JSON object of label → RLE string, got {type(doc).__name__}")
    info = doc.get(INFO_KEY)
    if not isinstance(info, Mapping):
        raise RleJsonFormatError(f"{name}: no '.info' object with shape and dtype (keys: {sorted(doc)[:10]})")
    shape, dtype = _shape(info, name), _dtype(info, name)
    size = int(np.prod(shape, dtype=np.int64))
    limits = np.iinfo(dtype)
    labels: list[int] = []
    all_starts, all_ends, all_labels = [], [], []
    for key, value in doc.items():
        if key == INFO_KEY:
            continue
        if not isinstance(key, str) or not _INT.match(key.strip()):
            raise RleJsonFormatError(f"{name}: key {key!r} is not an integer label (keys are non-zero labels as "
                                     "strings, plus '.info')")
        label = int(key)
        if label == 0:
            raise RleJsonFormatError(f"{name}: key {key!r}: label 0 is background and is never encoded")
        if not limits.min <= label <= limits.max:
            raise RleJsonFormatError(f"{name}: label {label} does not fit the '.info' dtype {dtype}")
        if label in labels:
            raise RleJsonFormatError(f"{name}: label {label} appears under two keys")
        starts, ends = _runs(value, label, size, name)
        labels.append(label)
        all_starts.append(starts)
        all_ends.append(ends)
        all_labels.append(np.full(len(starts), len(labels) - 1, dtype=np.int64))  # index into labels
    starts = np.concatenate(all_starts) if all_starts else np.zeros(0, np.int64)
    ends = np.concatenate(all_ends) if all_ends else np.zeros(0, np.int64)
    owners = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends, owners = starts[order], ends[order], owners[order]
    clash = np.flatnonzero(starts[1:] < ends[:-1])
    if clash.size:
        i = int(clash[0])
        voxel = tuple(int(v) for v in np.unravel_index(int(starts[i + 1]), shape))
        raise RleJsonFormatError(f"{name}: labels {labels[owners[i]]} and {labels[owners[i + 1]]} both claim the "
                                 f"voxel at {voxel} (flat index {int(starts[i + 1])}, 0-based); label masks must "
                                 "not overlap")
    values = np.array(labels, dtype=dtype)[owners] if labels else np.zeros(0, dtype)
    return RleRuns(shape, dtype, tuple(sorted(labels)), starts, ends, values, dict(info))


def decode_rle_json(doc: Mapping[str, Any], name: str = "<json>") -> RleLabels:
    """Decode one parsed run-length JSON document (see the module docstring)."""
    runs = rle_runs(doc, name)
    flat = runs.paint(0, int(np.prod(runs.shape, dtype=np.int64)))
    return RleLabels(flat.reshape(runs.shape), runs.labels, runs.info, runs=len(runs.starts))


def read_rle_json(source: Path | bytes | str, name: str | None = None) -> RleLabels:
    """Read and decode a run-length JSON label file (a path, or its bytes/text).

    ``name`` is used in errors (default: the path).
    """
    label, doc = _load(source, name)
    return decode_rle_json(doc, label)


def read_rle_runs(source: Path | bytes | str, name: str | None = None) -> RleRuns:
    """:func:`read_rle_json`'s checks without forming the array: the runs, for :class:`RleArray`."""
    label, doc = _load(source, name)
    return rle_runs(doc, label)


def _load(source: Path | bytes | str, name: str | None) -> tuple[str, Any]:
    """(the name used in errors, the parsed JSON document) of a run-length JSON label file."""
    label = name or (str(source) if isinstance(source, Path) else "<json>")
    try:
        return label, json.loads(source.read_bytes() if isinstance(source, Path) else source)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RleJsonFormatError(f"{label}: not a readable JSON label file ({exc})") from exc


class RleArray:
    """A 3D run-length JSON label volume as an array source: a box paints, per z-plane, only the runs
    that reach its band of rows (memory: the runs, plus one band of rows).

    Example:
        >>> doc = {".info": {"shape": [2, 2, 3], "dtype": "uint16"}, "1": "1 2", "7": "10 3"}
        >>> src = RleArray(rle_runs(doc))
        >>> src.read((slice(1, 2), slice(0, 2), slice(1, 3))).tolist()
        [[[0, 0], [7, 7]]]
    """

    def __init__(self, runs: RleRuns) -> None:
        if len(runs.shape) != 3:
            raise RleJsonFormatError(f"'.info' shape {runs.shape} is not (z, y, x)")
        self.runs = runs
        self.shape, self.dtype = tuple(runs.shape), np.dtype(runs.dtype)

    def read(self, box: tuple[slice, ...]) -> np.ndarray:
        (z0, z1, _), (y0, y1, _), (x0, x1, _) = (sl.indices(n) for sl, n in zip(box, self.shape))
        z1, y1, x1 = max(z0, z1), max(y0, y1), max(x0, x1)
        _, ny, nx = self.shape
        out = np.empty((z1 - z0, y1 - y0, x1 - x0), self.dtype)
        for z in range(z0, z1):
            lo = (z * ny + y0) * nx
            out[z - z0] = self.runs.paint(lo, lo + (y1 - y0) * nx).reshape(y1 - y0, nx)[:, x0:x1]
        return out
