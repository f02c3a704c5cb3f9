"""napari reader plugin (npe2 manifest ``emdata/napari.yaml``, entry point ``napari.manifest``): drop a
prepared ``*.ome.zarr`` on napari and it opens with the raw pyramid (contrast from the stored
intensity percentiles), every label layer as a multiscale ``labels`` layer with the class names and
colours (as the preview sheets draw them), and the voxel size in nm as the layers' scale. napari
itself is the ``napari`` extra; the reader returns plain layer-data tuples and needs neither napari
nor Qt.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> mito = np.zeros((2, 16, 16), "u1"); mito[:, 4:8, 4:8] = 1
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((2, 16, 16), "u1"), (30, 6, 6),
    ...     meta={"dataset": "demo", "volume": "v", "split": "train"},
    ...     labels=[LabelLayerData("mito", mito, "semantic", [{"value": 0, "name": "background"},
    ...                                                       {"value": 1, "name": "mitochondria"}])])
    >>> layers = get_reader(str(path))(str(path))
    >>> [(kwargs["name"], kind, kwargs["scale"]) for _, kwargs, kind in layers]
    [('v', 'image', (30.0, 6.0, 6.0)), ('v/mito', 'labels', (30.0, 6.0, 6.0))]
    >>> layers[1][1]["features"]
    {'index': [0, 1], 'class': ['background', 'mitochondria']}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def _is_volume(path: Path) -> bool:
    try:
        doc = json.loads((path / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "emdata" in doc.get("attributes", {})


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """napari's reader hook: :func:`read_volume` for prepared emdata volumes, None for anything else."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_volume(Path(p)) for p in paths):
        return None
    return read_volume


def _rgba01(rgba: list[int]) -> list[float]:
    values = [int(v) / 255 for v in rgba] + [1.0] * (4 - len(rgba))
    return values[:4]


def read_volume(path: str | list[str]) -> list[LayerData]:
    """Layer data of one or more prepared volumes: per volume the raw image pyramid and one labels pyramid
    per label layer and label prediction (lazy zarr arrays), all scaled in nm, labels with their
    ``image-label`` colours and class names as ``features``."""
    from emdata.store.volume import open_volume
    from emdata.view.layers import label_layers

    layers: list[LayerData] = []
    for item in [path] if isinstance(path, str) else list(path):
        vol = open_volume(item)
        scale = tuple(float(s) for s in vol.voxel_size)
        levels = [vol.level(i) for i in range(vol.n_levels)]
        intensity = vol.meta["raw"].get("intensity") or {}
        pct = intensity.get("percentiles") or {}
        image: dict[str, Any] = {"name": vol.name, "scale": scale, "multiscale": len(levels) > 1,
                                 "metadata": {"emdata": vol.meta}}
        if "0.5" in pct and "99.5" in pct and pct["99.5"] > pct["0.5"]:
            image["contrast_limits"] = [pct["0.5"], pct["99.5"]]
        layers.append((levels if len(levels) > 1 else levels[0], image, "image"))
        for label in label_layers(vol):
            arrays = [label.level(vol, i) for i in range(label.n_levels)]
            block = label.image_label(vol)
            kwargs: dict[str, Any] = {"name": f"{vol.name}/{label.title}", "scale": scale,
                                      "multiscale": len(arrays) > 1,
                                      "opacity": 0.5 if label.kind == "semantic" else 0.4}
            props = sorted(block.get("properties", []), key=lambda p: int(p["label-value"]))
            if props:
                kwargs["features"] = {"index": [int(p["label-value"]) for p in props],
                                      "class": [str(p.get("name", "")) for p in props]}
            if label.kind == "semantic" and block.get("colors"):
                from emdata.look.preview import label_colors  # the preview sheets' colours (grey replaced)

                listed = {int(c["label-value"]): [int(v) for v in c["rgba"]] for c in block["colors"]}
                values = sorted(listed)
                colormap: dict[int | None, list[float]] = {None: [0.0, 0.0, 0.0, 0.0]}
                colormap.update({v: _rgba01(rgba) for v, rgba in zip(values, label_colors(listed, values).tolist())})
                kwargs["colormap"] = colormap
            layers.append((arrays if len(arrays) > 1 else arrays[0], kwargs, "labels"))
    return layers
