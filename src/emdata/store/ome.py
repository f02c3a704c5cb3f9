"""OME-Zarr 0.5 metadata dicts, written by hand (ome-zarr-py's writer omits the labels
group version) and validated with ome-zarr-models in tests.

Example:
    >>> multiscales("raw", [("0", (30.0, 6.0, 6.0), None)])["multiscales"][0]["axes"][0]
    {'name': 'z', 'type': 'space', 'unit': 'nanometer'}
"""

from __future__ import annotations

import colorsys
from typing import Any

OME_VERSION = "0.5"
AXES = ("z", "y", "x")


def multiscales(name: str, levels: list[tuple[str, tuple[float, ...], tuple[float, ...] | None]],
                method: str = "") -> dict[str, Any]:
    """The ``ome`` attribute of a multiscale image; ``levels`` are (path, scale, translation)."""
    datasets = []
    for path, scale, translation in levels:
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [float(s) for s in scale]}]
        if translation is not None and any(translation):
            transforms.append({"type": "translation", "translation": [float(t) for t in translation]})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    ms: dict[str, Any] = {
        "name": name,
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in AXES],
        "datasets": datasets,
    }
    if method:
        ms["type"] = method
    return {"version": OME_VERSION, "multiscales": [ms]}


def default_color(value: int) -> list[int]:
    """Deterministic distinct colour per label value; 0 is transparent."""
    if value == 0:
        return [0, 0, 0, 0]
    r, g, b = colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.75, 0.95)
    return [round(r * 255), round(g * 255), round(b * 255), 255]


def image_label(classes: list[dict[str, Any]]) -> dict[str, Any]:
    """``image-label`` block: colours and properties (class names, ontology ids) per value."""
    colors, properties = [], []
    for c in classes:
        rgba = list(c["color"]) + [255] * (4 - len(c["color"])) if c.get("color") else default_color(int(c["value"]))
        colors.append({"label-value": int(c["value"]), "rgba": rgba})
        prop = {"label-value": int(c["value"]), "name": c["name"]}
        for key in ("ontology", "ontology_id"):
            if c.get(key) is not None:
                prop[key] = c[key]
        properties.append(prop)
    return {"version": OME_VERSION, "colors": colors, "properties": properties, "source": {"image": "../../"}}
