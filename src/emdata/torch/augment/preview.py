"""A PNG grid of samples with label overlays, to see what augmentation does.

Each tile is the middle z section of a sample's raw (scaled to 0–255) with its labels blended
in saturated colours (one per id) wherever the label is non-zero and valid (not warped in from
outside the volume); tiles are laid out
``columns`` per row.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> from emdata.torch.dataset import PatchDataset
    >>> cells = np.zeros((4, 48, 48), "u4"); cells[:, 10:30, 10:30] = 3
    >>> tmp = Path(tempfile.mkdtemp())
    >>> path = write_volume(tmp / "v.ome.zarr", np.full((4, 48, 48), 90, "u1"), (30, 6, 6),
    ...                     labels=[LabelLayerData("cells", cells, "instance", instance_of="neuron")],
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> ds = PatchDataset([path], (2, 32, 32), labels=["cells"], augment="em")
    >>> Image.open(preview_grid(ds, 6, tmp / "grid.png", columns=3)).size
    (96, 64)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

ALPHA = 0.5


def _palette(ids: np.ndarray) -> np.ndarray:
    """A saturated colour per id (one channel high, one low): never a grey."""
    h = (ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(6)
    table = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [255, 255, 40], [255, 40, 255], [40, 255, 255]],
                     np.float32)
    return table[h.astype(np.intp)]


def overlay_labels(sample: dict[str, Any]) -> np.ndarray | None:
    """The label image a tile overlays: the first ``labels/<name>``, else ``instances``, else ``semantic``."""
    keys = [k for k in sample if k.startswith("labels/")] + [k for k in ("instances", "semantic") if k in sample]
    return np.asarray(sample[keys[0]]) if keys else None


def tile(sample: dict[str, Any]) -> np.ndarray:
    """One sample's (y, x, 3) uint8 tile."""
    raw = np.asarray(sample["raw"], dtype=np.float32)[0]
    labels = overlay_labels(sample)
    valid = np.asarray(sample["valid"], bool)[0] if "valid" in sample else None
    if raw.ndim == 3:
        mid = raw.shape[0] // 2
        raw, labels = raw[mid], (labels[mid] if labels is not None else None)
        valid = valid[mid] if valid is not None else None
    lo, hi = float(raw.min()), float(raw.max())
    grey = (raw - lo) / (hi - lo) * 255 if hi > lo else np.full(raw.shape, 128, np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if labels is not None:
        shown = labels != 0 if valid is None else (labels != 0) & valid  # uint64 ids may read negative
        rgb[shown] = (1 - ALPHA) * rgb[shown] + ALPHA * _palette(labels[shown])
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def preview_grid(dataset: Any, n: int, path: str | Path, columns: int = 4, epoch: int = 0) -> Path:
    """Write samples 0..n-1 of ``epoch`` of ``dataset`` as a PNG grid to ``path``; returns the path."""
    from PIL import Image

    tiles = [tile(dataset.sample(epoch, i)) for i in range(n)]
    ty, tx = tiles[0].shape[:2]
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.zeros((rows * ty, columns * tx, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * ty:(r + 1) * ty, c * tx:(c + 1) * tx] = t
    path = Path(path)
    Image.fromarray(grid).save(path)
    return path
