"""Parlakgul liver (EMPIAR-10791) replica in the published layout (as torch-em's
``parlakgul_liver.py`` reads it),
small in z and xy.

On host ``ftp.ebi.ac.uk`` under ``/empiar/world_availability/10791/data/Parlakgul et al -
Regulation of liver subcellular architecture controls metabolic homeostasis/FIB-SEM Raw and
Segmentation Data/`` each sample has ``<sample> - <Condition> Liver/<sample> <Condition> Liver -
Raw/Gunes_<tag>_8x8x8nm_3MHz.<z:04d>.tif`` (one greyscale TIFF per z slice) and ``… -
Segmentation/<sample> <Condition> <Class>.zip`` (one ZIP per class, one TIFF per z slice
inside). 1857's top folder says ``Climp-63`` while its sub-folders and files say ``Climp63``, and
1857 has no Plasma Membrane ZIP. The URLs (``URLS``) keep spaces as ``%20``; the files are
written at the decoded paths, which is what a web server maps those URLs to.

Not published, so parameters here: the raw dtype and TIFF layout (``raw_layout``: ``"strips"``
uncompressed with 8 rows per strip, ``"lzw"`` LZW + horizontal predictor with one row per
strip, ``"tiled"`` 16×16 tiles), the mask encoding (``label_max`` 1 or 255) and the member names
inside the ZIPs (``member_names``: ``"padded"`` ``<zip stem>/<zip stem> 0007.tif`` or
``"unpadded"`` ``<zip stem>/slice_7.tif``); members are stored in shuffled order. Written with
tifffile and zipfile; shares no code with the recipe.

Example:
    >>> import tempfile
    >>> truth = write_parlakgul_liver_replica(Path(tempfile.mkdtemp()), slices=3, shape=(32, 48))
    >>> truth["6461"]["raw"].shape, sorted(truth["1857"]["labels"])[-1]
    ((3, 32, 48), 'nuclear_membrane')
"""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import numpy as np

BASE = ("https://ftp.ebi.ac.uk/empiar/world_availability/10791/data/Parlakgul%20et%20al%20-%20Regulation%20of%20"
        "liver%20subcellular%20architecture%20controls%20metabolic%20homeostasis/FIB-SEM%20Raw%20and%20"
        "Segmentation%20Data")
# sample → (top folder, sub-folder stem, raw file stem, ZIP name prefix)
SAMPLES = {
    "6461": ("6461 - Lean Liver", "6461 Lean Liver", "Gunes_WT1_8x8x8nm_3MHz", "6461 Lean"),
    "6464": ("6464 - Obese1 Liver", "6464 Obese1 Liver", "Gunes_HFD1_8x8x8nm_3MHz", "6464 Obese1"),
    "9430": ("9430 - Obese2 Liver", "9430 Obese2 Liver", "Gunes_HFD2_8x8x8nm_3MHz", "9430 Obese2"),
    "1857": ("1857 - Obese Climp-63 Liver", "1857 Obese Climp63 Liver", "Gunes_CLIMP63_8x8x8nm_3MHz",
             "1857 Obese Climp63"),
}
CLASS_FILES = {
    "er": "ER", "er_sheets": "ER Sheets", "er_tubules": "ER Tubules", "mito": "Mitochondria",
    "lipid_droplet": "Lipid Droplet", "nuclear_membrane": "Nuclear membrane", "plasma_membrane": "Plasma Membrane",
}
NO_CLASS = {"1857": ("plasma_membrane",)}


def raw_url(sample: str, z: int) -> str:
    top, sub, stem, _ = SAMPLES[sample]
    return f"{BASE}/{quote(top)}/{quote(sub + ' - Raw')}/{stem}.{z:04d}.tif"


def zip_url(sample: str, layer: str) -> str:
    top, sub, _, prefix = SAMPLES[sample]
    return f"{BASE}/{quote(top)}/{quote(sub + ' - Segmentation')}/{quote(prefix + ' ' + CLASS_FILES[layer])}.zip"


def host_path(root: Path, url: str) -> Path:
    """Where the mirror looks for ``url``: ``<root>/<host>/<decoded path>``."""
    parts = urlsplit(url)
    return Path(root) / parts.netloc / unquote(parts.path).lstrip("/")


def classes(sample: str) -> list[str]:
    """The label layers a sample publishes (1857 has no Plasma Membrane)."""
    return [c for c in CLASS_FILES if c not in NO_CLASS.get(sample, ())]


def _raw(rng: np.random.Generator, shape: tuple[int, int, int], dtype: str) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    top = np.iinfo(np.dtype(dtype)).max
    base = 0.5 + 0.2 * np.sin(x / 5.0 + z) * np.cos(y / 7.0) + rng.normal(0, 0.12, size=shape)
    return np.clip(base * top, 0, top).astype(dtype)


def _blobs(rng: np.random.Generator, shape: tuple[int, int, int], n: int, radius: tuple[float, float]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    out = np.zeros(shape, bool)
    for _ in range(n):
        c = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(*radius, size=3)
        out |= ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
    return out


def _masks(rng: np.random.Generator, shape: tuple[int, int, int], sample: str) -> dict[str, np.ndarray]:
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    sheets = np.zeros(shape, bool)
    for _ in range(3):
        a, b, c = rng.normal(size=3)
        sheets |= np.abs(a * (y - shape[1] / 2) + b * (x - shape[2] / 2) + c * z + rng.uniform(-20, 20)) < 1.2
    tubules = np.zeros(shape, bool)
    for _ in range(4):
        cy, cx = rng.uniform(0, shape[1]), rng.uniform(0, shape[2])
        dy, dx = rng.normal(0, 1.5, size=2)
        tubules |= (y - cy - dy * z) ** 2 + (x - cx - dx * z) ** 2 <= 2.5
    dist = np.sqrt((y - shape[1] * 0.6) ** 2 + (x - shape[2] * 0.4) ** 2 + (2 * z) ** 2)
    out = {
        "er": sheets | tubules,  # ER ⊃ sheets ∪ tubules: overlapping classes
        "er_sheets": sheets,
        "er_tubules": tubules,
        "mito": _blobs(rng, shape, 5, (2, 9)),
        "lipid_droplet": _blobs(rng, shape, 2, (3, 6)),
        "nuclear_membrane": np.abs(dist - min(shape[1:]) * 0.3) < 1.0,
        "plasma_membrane": np.abs(x - y * 0.3 - shape[2] * 0.8) < 1.0,
    }
    return {k: v.astype(np.uint8) for k, v in out.items() if k in classes(sample)}


def _tiff(data: np.ndarray, layout: str = "strips") -> bytes:
    import tifffile

    buf = io.BytesIO()
    if layout == "strips":
        tifffile.imwrite(buf, data, photometric="minisblack", rowsperstrip=8)
    elif layout == "lzw":
        tifffile.imwrite(buf, data, photometric="minisblack", compression="lzw", predictor=True, rowsperstrip=1)
    elif layout == "tiled":
        tifffile.imwrite(buf, data, photometric="minisblack", tile=(16, 16))
    else:
        raise ValueError(f"raw_layout {layout!r}: expected 'strips', 'lzw' or 'tiled'")
    return buf.getvalue()


def member_name(sample: str, layer: str, z: int, member_names: str = "padded") -> str:
    stem = f"{SAMPLES[sample][3]} {CLASS_FILES[layer]}"
    if member_names == "padded":
        return f"{stem}/{stem} {z:04d}.tif"
    if member_names == "unpadded":
        return f"{stem}/slice_{z}.tif"
    raise ValueError(f"member_names {member_names!r}: expected 'padded' or 'unpadded'")


def write_parlakgul_liver_replica(root: Path, samples: tuple[str, ...] = ("6461", "1857"), slices: int = 6,
                                  shape: tuple[int, int] = (64, 80), raw_dtype: str = "uint8",
                                  raw_layout: str = "strips", label_max: int = 1, member_names: str = "padded",
                                  seed: int = 10791) -> dict[str, dict]:
    """Write the raw slices and class ZIPs of ``samples``; returns per sample ``raw`` (z, y, x),
    ``labels`` ({layer: 0/1 uint8}) and ``urls`` ({"raw": [...], layer: zip URL})."""
    truth: dict[str, dict] = {}
    for sample in samples:
        rng = np.random.default_rng(seed + int(sample))
        full = (slices, *shape)
        raw = _raw(rng, full, raw_dtype)
        masks = _masks(rng, full, sample)
        urls: dict[str, object] = {"raw": [raw_url(sample, z) for z in range(slices)]}
        for z in range(slices):
            path = host_path(root, raw_url(sample, z))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_tiff(raw[z], raw_layout))
        for layer, mask in masks.items():
            url = zip_url(sample, layer)
            path = host_path(root, url)
            path.parent.mkdir(parents=True, exist_ok=True)
            order = list(range(slices))
            random.Random(f"{seed}-{sample}-{layer}").shuffle(order)
            with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for z in order:
                    zf.writestr(member_name(sample, layer, z, member_names),
                                _tiff((mask[z] * label_max).astype(np.uint8)))
            urls[layer] = url
        truth[sample] = {"raw": raw, "labels": masks, "urls": urls}
    return truth


# ---------------------------------------------------------------------------------------------
# the replica kit's entry (emdata.testing.replica_sets): sizes, prepare options, hand-placed files

def write_replica(root: Path, small: bool = False) -> Any:
    """The kit's replica under ``root``: the writer's tiniest if ``small``, else one fitting a 16×128×128 patch."""
    return write_parlakgul_liver_replica(root, samples=("6461", "1857"),
                                         **({} if small else {"slices": 16, "shape": (144, 144)}))


PREPARE_OPTIONS: dict[str, Any] = {"sample": ["6461", "1857"], "bbox": ":,:,:"}
"""What ``prepare`` needs besides the defaults to read this replica."""
