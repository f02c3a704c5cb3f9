"""Kasthuri++ replica in the published layout (as torch-em's ``kasthuri.py``
reads it), small in z and xy.

``kasthuri_pp.zip`` on host ``www.casser.io`` at ``/files/kasthuri_pp.zip`` holds the folder
``Kasthuri++/`` with ``Train_In``, ``Train_Out``, ``Test_In`` and ``Test_Out`` PNG stacks: raw
8-bit greyscale, labels 8-bit RGB with (255,255,255) = mitochondrion, (2,2,2) = empty/ignore
area, black elsewhere (``other_colours`` adds a few pixels of other colours, which the
recipe maps to 0 as well).

The slice file names are **not** stated by any published source. By default this writes the
Lucchi++ convention of the same author (raw ``mask%04d.png``, labels ``%d.png``) — an
assumption, not a fact; ``raw_name``/``label_name`` choose others. Written with PIL and
zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_kasthuri_pp_replica(Path(tempfile.mkdtemp()), slices=(3, 2))
    >>> sorted(set(truth["train"]["labels"].ravel().tolist()))
    [0, 1, 255]
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emdata.datasets.lucchi_pp.replica import raw_png, write_zip

URL = "http://www.casser.io/files/kasthuri_pp.zip"
HOST_PATH = "www.casser.io/files/kasthuri_pp.zip"
FOLDERS = {"train": ("Train_In", "Train_Out"), "test": ("Test_In", "Test_Out")}
MITO, EMPTY, BLACK = (255, 255, 255), (2, 2, 2), (0, 0, 0)


def source_files(root: Path) -> dict[str, Path]:
    """``{card URL: replica file}`` (for an ``EMDATA_CHECKSUMS`` file)."""
    return {URL: Path(root) / HOST_PATH}


def rgb_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _volume(rng: np.random.Generator, shape: tuple[int, int, int],
            other_colours: Sequence[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw, RGB labels, truth with 0 / 1 / 255 = ignore)."""
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    raw = np.clip(rng.normal(110, 30, size=shape) + 30 * np.sin(y / 4.0 + z), 0, 255).astype(np.uint8)
    truth = np.zeros(shape, np.uint8)
    for _ in range(5):
        c = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(2, 8, size=3)
        truth[((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1] = 1
    truth[:, :, : shape[2] // 6] = 255  # an empty strip at the crop edge
    rgb = np.zeros((*shape, 3), np.uint8)
    rgb[truth == 1] = MITO
    rgb[truth == 255] = EMPTY
    background = np.argwhere(truth == 0)
    for colour in other_colours:
        for zz, yy, xx in background[rng.choice(len(background), size=3, replace=False)]:
            rgb[zz, yy, xx] = colour  # stays 0 in the truth: "else 0"
    return raw, rgb, truth


def write_kasthuri_pp_replica(root: Path, slices: tuple[int, int] = (11, 5), shape: tuple[int, int] = (40, 56),
                              other_colours: Sequence[tuple[int, int, int]] = (), seed: int = 9,
                              raw_name: Callable[[int], str] = "mask{:04d}.png".format,
                              label_name: Callable[[int], str] = "{}.png".format,
                              shuffle: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Write ``<root>/www.casser.io/files/kasthuri_pp.zip``; returns ``raw`` and ``labels``
    (0 / 1 / 255 = ignore) per volume. ``slices`` = (train, test) slice counts."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    truth: dict[str, dict[str, np.ndarray]] = {}
    for (volume, (raw_dir, label_dir)), n in zip(FOLDERS.items(), slices):
        raw, rgb, labels = _volume(rng, (n, *shape), other_colours)
        for z in range(n):
            files[f"Kasthuri++/{raw_dir}/{raw_name(z)}"] = raw_png(raw[z])
            files[f"Kasthuri++/{label_dir}/{label_name(z)}"] = rgb_png(rgb[z])
        truth[volume] = {"raw": raw, "labels": labels}
    write_zip(Path(root) / HOST_PATH, files, random.Random(seed) if shuffle else None)
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_kasthuri_pp_replica(root, **({} if small else {"slices": (16, 16), "shape": (160, 160)}))
