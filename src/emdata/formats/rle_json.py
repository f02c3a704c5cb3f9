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


def decode_rle_json(doc: Mapping[str, Any], name: str = "<json>") -> RleLabels:
    """Decode one parsed run-length JSON document (see the module docstring)."""
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
    flat = np.zeros(size, dtype=dtype)
    for lo, hi, owner in zip(starts.tolist(), ends.tolist(), owners.tolist()):
        flat[lo:hi] = labels[owner]
    return RleLabels(flat.reshape(shape), tuple(sorted(labels)), dict(info), runs=len(starts))


def read_rle_json(source: Path | bytes | str, name: str | None = None) -> RleLabels:
    """Read and decode a run-length JSON label file (a path, or its bytes/text).

    ``name`` is used in errors (default: the path).
    """
    label = name or (str(source) if isinstance(source, Path) else "<json>")
    try:
        text = source.read_bytes() if isinstance(source, Path) else source
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RleJsonFormatError(f"{label}: not a readable JSON label file ({exc})") from exc
    return decode_rle_json(doc, label)
