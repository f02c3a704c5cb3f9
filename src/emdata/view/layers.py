"""The label layers a viewer shows for a volume: its ground-truth label layers and the label
predictions stored with it (``emdata predict``), each with its stored ``image-label`` block.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from emdata.store.volume import open_volume
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((2, 16, 16), "u1"), (8, 8, 8),
    ...     meta={"dataset": "demo", "volume": "v", "split": "train"},
    ...     labels=[LabelLayerData("c", np.ones((2, 16, 16), "u1"), "semantic",
    ...                            [{"value": 0, "name": "background"}, {"value": 1, "name": "cell"}])])
    >>> [(layer.name, layer.kind, layer.path, layer.prediction) for layer in label_layers(open_volume(path))]
    [('c', 'semantic', 'labels/c', False)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from emdata.store.volume import Volume


@dataclass(frozen=True)
class ViewLayer:
    """One label layer to show: ``kind`` is ``semantic`` or ``instance`` (a prediction with a class
    table counts as semantic), ``path`` its group in the store."""

    name: str
    kind: str
    path: str
    classes: tuple[dict[str, Any], ...]
    n_levels: int
    prediction: bool

    def level(self, volume: Volume, i: int) -> Any:
        """Level ``i`` of the layer (a zarr array, ``(z, y, x)``)."""
        return volume.prediction(self.name, i) if self.prediction else volume.label_level(self.name, i)

    def image_label(self, volume: Volume) -> dict[str, Any]:
        """The layer's stored OME ``image-label`` block (colours, properties); {} when there is none."""
        doc = json.loads((volume.folder / self.path / "zarr.json").read_text(encoding="utf-8"))
        return doc.get("attributes", {}).get("ome", {}).get("image-label", {})

    @property
    def title(self) -> str:
        return f"{self.name} (prediction)" if self.prediction else self.name


def label_layers(volume: Volume) -> list[ViewLayer]:
    """The volume's label layers, then its label predictions (probability predictions are not labels)."""
    out = [ViewLayer(name, info["kind"], f"labels/{name}", tuple(info.get("classes", [])),
                     len(info.get("levels") or [0]), False) for name, info in volume.meta["labels"].items()]
    for name, info in volume.predictions.items():
        if info.get("kind") != "labels":
            continue
        classes = tuple(info.get("classes") or ())
        out.append(ViewLayer(name, "semantic" if len(classes) > 1 else "instance", info["path"], classes,
                             len(info.get("levels") or [0]), True))
    return out


def find_layer(volume: Volume, name: str) -> ViewLayer:
    """The label layer or label prediction called ``name``; a KeyError lists the names there are."""
    for layer in label_layers(volume):
        if layer.name == name:
            return layer
    raise KeyError(f"{volume.path}: no label layer or label prediction {name!r}; there are "
                   f"{[layer.name for layer in label_layers(volume)]}")
