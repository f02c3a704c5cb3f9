"""The challenge's crop manifests: one CSV row per (crop, class) with the crop's geometry.

``train_crop_manifest.csv`` and ``test_crop_manifest.csv`` (challenge repository,
``src/cellmap_segmentation_challenge/utils/``) share the header
``crop_name,dataset,class_label,voxel_size,translation,shape``; the three geometry columns are
``[z;y;x]`` lists: voxel size and translation (offset of the crop's first voxel) in nm, shape in
voxels at that voxel size. A train row lists a class annotated in that crop; a test row a class
scored there (its ground truth is not public).

Example:
    >>> text = "crop_name,dataset,class_label,voxel_size,translation,shape\\n"
    >>> text += "7,jrc_x-1,mito,[1.74;2.0;2.0],[3.48;10.0;0.0],[4;6;8]\\n"
    >>> text += "7,jrc_x-1,ecs,[1.74;2.0;2.0],[3.48;10.0;0.0],[4;6;8]\\n"
    >>> crop = parse_manifest(text, "train", "train.csv")[7]
    >>> crop.dataset, crop.classes, crop.voxel_size_nm, crop.shape
    ('jrc_x-1', ('mito', 'ecs'), (1.74, 2.0, 2.0), (4, 6, 8))
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

HEADER = ["crop_name", "dataset", "class_label", "voxel_size", "translation", "shape"]


@dataclass(frozen=True)
class Crop:
    """One crop: its dataset, split, classes (manifest order) and geometry at its finest voxel size."""

    id: int
    dataset: str
    split: str
    classes: tuple[str, ...]
    voxel_size_nm: tuple[float, float, float]
    translation_nm: tuple[float, float, float]
    shape: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"crop{self.id}"


def _triple(text: str, cast: type, where: str) -> tuple:
    parts = text.strip().strip("[]").split(";")
    if len(parts) != 3:
        raise ValueError(f"{where}: expected a [z;y;x] list, got {text!r}")
    return tuple(cast(float(p)) if cast is int else cast(p) for p in parts)


def parse_manifest(text: str, split: str, origin: str) -> dict[int, Crop]:
    """Crops of one manifest, by id. Rows of one crop with different geometry are merged as the
    challenge's own ``get_test_crops`` does: finest voxel size, smallest translation, largest shape."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if header != HEADER:
        raise ValueError(f"{origin}: header {header} is not the crop manifest header {HEADER}")
    rows: dict[int, list[tuple[str, str, tuple, tuple, tuple]]] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        where = f"{origin} line {line}"
        if len(row) != len(HEADER):
            raise ValueError(f"{where}: {len(row)} columns, expected {len(HEADER)} ({','.join(HEADER)})")
        crop_id, dataset, label, voxel, translation, shape = (c.strip() for c in row)
        rows.setdefault(int(crop_id), []).append((dataset, label, _triple(voxel, float, where),
                                                  _triple(translation, float, where), _triple(shape, int, where)))
    crops = {}
    for crop_id, entries in rows.items():
        datasets = {e[0] for e in entries}
        if len(datasets) != 1:
            raise ValueError(f"{origin}: crop {crop_id} is listed under several datasets {sorted(datasets)}")
        crops[crop_id] = Crop(
            id=crop_id, dataset=entries[0][0], split=split, classes=tuple(dict.fromkeys(e[1] for e in entries)),
            voxel_size_nm=tuple(min(e[2][a] for e in entries) for a in range(3)),  # type: ignore[arg-type]
            translation_nm=tuple(min(e[3][a] for e in entries) for a in range(3)),  # type: ignore[arg-type]
            shape=tuple(max(e[4][a] for e in entries) for a in range(3)))  # type: ignore[arg-type]
    return crops
