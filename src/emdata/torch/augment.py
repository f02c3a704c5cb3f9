"""Geometric augmentation of patches that never mixes z into xy.

:func:`flip_and_turn` flips any axis and turns by multiples of 90° in the xy plane only
(anisotropic EM keeps its z axis), with the same transform for raw and every label array,
drawn from the sample's own random generator so a sample stays a function of its key.

Example:
    >>> import numpy as np
    >>> raw = np.arange(8).reshape(2, 2, 2)
    >>> out, labels = flip_and_turn(raw, {"cells": raw.copy()}, np.random.default_rng(0), isotropic_xy=True)
    >>> sorted(out.ravel().tolist()) == list(range(8)), bool((labels["cells"] == out).all())
    (True, True)
"""

from __future__ import annotations

import numpy as np


def flip_and_turn(raw: np.ndarray, labels: dict[str, np.ndarray], rng: np.random.Generator,
                  isotropic_xy: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flips on every axis and 90° turns in the xy plane (square patches with ``isotropic_xy``),
    identical for raw and labels; returns contiguous copies."""
    flips = [axis for axis in range(3) if rng.random() < 0.5]
    turns = int(rng.integers(4)) if isotropic_xy and raw.shape[1] == raw.shape[2] else 0

    def apply(a: np.ndarray) -> np.ndarray:
        if flips:
            a = np.flip(a, axis=flips)
        if turns:
            a = np.rot90(a, turns, axes=(1, 2))
        return np.ascontiguousarray(a)

    return apply(raw), {k: apply(v) for k, v in labels.items()}
