"""Neuroglancer states for prepared volumes, and a loopback session that serves the store (and, with
the ``view`` extra, neuroglancer's own viewer, whose built client ships in the ``neuroglancer`` wheel)
so the state opens offline.

A state has the raw image (contrast from the stored intensity percentiles) and one segmentation
layer per label layer: the OME-Zarr 0.5 arrays as ``zarr3://`` sources, the classes' names as
neuroglancer segment properties (a ``precomputed://`` segment-property source served next to the
data), the ``image-label`` colours as ``segmentColors`` (grey ones replaced as in the preview
sheets), and the voxel size in nm as the dimensions (neuroglancer's state format:
https://neuroglancer-docs.web.app/json/api/index.html).

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.volume import open_volume
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> labels = np.zeros((4, 32, 32), "u1"); labels[:, 8:16, 8:16] = 1
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((4, 32, 32), "u1"), (30, 6, 6),
    ...     meta={"dataset": "demo", "volume": "v", "split": "train"},
    ...     labels=[LabelLayerData("mito", labels, "semantic", [{"value": 0, "name": "background"},
    ...                                                          {"value": 1, "name": "mitochondria"}])])
    >>> state = neuroglancer_state([open_volume(path)], "http://127.0.0.1:8000")
    >>> state["dimensions"]
    {'x': [6e-09, 'm'], 'y': [6e-09, 'm'], 'z': [3e-08, 'm']}
    >>> [(layer["type"], layer["name"]) for layer in state["layers"]]
    [('image', 'v'), ('segmentation', 'v/mito')]
    >>> state["layers"][1]["source"][0]
    'zarr3://http://127.0.0.1:8000/data/demo/v/labels/mito/'
"""

from __future__ import annotations

import importlib.util
import json
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store.volume import Volume
from emdata.view.layers import ViewLayer, find_layer, label_layers
from emdata.view.server import StaticServer

DATA_PREFIX = "/data/"
PROPERTIES_PREFIX = "/segment-properties/"
MAX_LISTED_SEGMENTS = 1000
"""An instance layer shows at most this many ids (those of its coarsest level) when the state opens."""
MAX_SCANNED_VOXELS = 1 << 26
"""An instance layer whose coarsest level is larger opens with no segment selected (not scanned)."""


def data_path(volume: Volume) -> str:
    """The URL path a session serves ``volume``'s store under: ``/data/<dataset>/<volume>/``."""
    return f"{DATA_PREFIX}{urllib.parse.quote(volume.dataset)}/{urllib.parse.quote(volume.name)}/"


def _properties_path(volume: Volume, layer: str) -> str:
    return f"{PROPERTIES_PREFIX}{urllib.parse.quote(volume.dataset)}/{urllib.parse.quote(volume.name)}/" \
           f"{urllib.parse.quote(layer)}"


def _hex(rgba: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgba[:3])


def segment_properties(volume: Volume, layer: str) -> dict[str, Any]:
    """The neuroglancer segment-property ``info`` of a label layer: each class value's name (``label``)
    and its ontology term (``description``), from the stored ``image-label`` properties.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from emdata.store.volume import open_volume
        >>> from emdata.store.writer import LabelLayerData, write_volume
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((2, 16, 16), "u1"), (8, 8, 8),
        ...     meta={"dataset": "demo", "volume": "v", "split": "train"},
        ...     labels=[LabelLayerData("c", np.ones((2, 16, 16), "u1"), "semantic",
        ...                                 [{"value": 0, "name": "background"}, {"value": 1, "name": "cell"}])])
        >>> segment_properties(open_volume(path), "c")["inline"]["properties"][0]
        {'id': 'label', 'type': 'label', 'values': ['background', 'cell']}
    """
    props = sorted(find_layer(volume, layer).image_label(volume).get("properties", []),
                   key=lambda p: int(p["label-value"]))
    return {
        "@type": "neuroglancer_segment_properties",
        "inline": {
            "ids": [str(int(p["label-value"])) for p in props],
            "properties": [
                {"id": "label", "type": "label", "values": [str(p.get("name", "")) for p in props]},
                {"id": "description", "type": "description",
                 "values": [str(p.get("ontology") or p.get("name", "")) for p in props]},
            ],
        },
    }


def _segment_colors(volume: Volume, layer: ViewLayer) -> dict[str, str]:
    """``{value: "#rrggbb"}`` of the classes a layer lists, as the preview sheets draw them
    (:func:`emdata.look.preview.label_colors`: the ``image-label`` colour, else a distinct one where it
    is missing or grey, which would vanish on EM)."""
    from emdata.look.preview import label_colors

    listed = {int(c["label-value"]): [int(v) for v in c["rgba"]] for c in layer.image_label(volume).get("colors", [])}
    values = sorted({*listed, *(int(c["value"]) for c in layer.classes)} - {0})
    return {str(v): _hex(rgba) for v, rgba in zip(values, label_colors(listed, values).tolist())}


def _visible_segments(volume: Volume, layer: ViewLayer) -> list[str]:
    """Class values (semantic) or the ids of the coarsest level (instance, at most MAX_LISTED_SEGMENTS), 0 left out."""
    if layer.kind == "semantic":
        values = [int(c["value"]) for c in layer.classes]
    else:
        coarse = layer.level(volume, layer.n_levels - 1)
        if coarse.size > MAX_SCANNED_VOXELS:  # too big to scan for a first view: the user picks segments
            return []
        values = [int(v) for v in np.unique(coarse[...])[:MAX_LISTED_SEGMENTS + 1]]
    return [str(v) for v in values if v != 0][:MAX_LISTED_SEGMENTS]


def neuroglancer_state(volumes: Sequence[Volume], base_url: str, layout: str = "4panel") -> dict[str, Any]:
    """A neuroglancer state showing ``volumes`` served under ``base_url`` (see :class:`ViewSession`):
    per volume one image layer and one segmentation layer per label layer and label prediction
    (``emdata predict``; named ``<volume>/<name> (prediction)``); dimensions are the first
    volume's voxel size in nm (x, y, z), the position its centre."""
    if not volumes:
        raise ValueError("neuroglancer_state needs at least one volume (emdata.volumes(ID) lists the prepared ones)")
    base = base_url.rstrip("/")
    z, y, x = volumes[0].voxel_size
    layers: list[dict[str, Any]] = []
    for vol in volumes:
        root = base + data_path(vol)
        intensity = vol.meta["raw"].get("intensity") or {}
        pct = intensity.get("percentiles") or {}
        lo, hi = pct.get("0.5", intensity.get("min")), pct.get("99.5", intensity.get("max"))
        image: dict[str, Any] = {"type": "image", "name": vol.name, "source": "zarr3://" + root,
                                 "shader": "#uicontrol invlerp normalized\nvoid main() {\n"
                                           "  emitGrayscale(normalized());\n}\n"}
        if lo is not None and hi is not None and hi > lo:
            image["shaderControls"] = {"normalized": {"range": [lo, hi]}}
        layers.append(image)
        for label in label_layers(vol):
            colors = _segment_colors(vol, label)
            layer: dict[str, Any] = {
                "type": "segmentation", "name": f"{vol.name}/{label.title}",
                "source": [f"zarr3://{root}{urllib.parse.quote(label.path)}/",
                           f"precomputed://{base}{_properties_path(vol, label.name)}"],
                "segments": _visible_segments(vol, label),
                "selectedAlpha": 0.5 if label.kind == "semantic" else 0.35,
                "hideSegmentZero": True,
            }
            if colors:
                layer["segmentColors"] = colors
            layers.append(layer)
    shape = volumes[0].shape
    across = max(shape[1], shape[2])  # fit the largest cross-section into a panel of ~300 pixels
    return {
        "dimensions": {"x": [x / 1e9, "m"], "y": [y / 1e9, "m"], "z": [z / 1e9, "m"]},
        "position": [shape[2] / 2, shape[1] / 2, shape[0] / 2],
        "crossSectionScale": max(across / 300, 0.05),
        "projectionScale": max(across, shape[0] * z / x) * 2,
        "layers": layers,
        "selectedLayer": {"layer": layers[0]["name"], "visible": False},
        "layout": layout,
    }


def state_url(state: dict[str, Any], client_url: str) -> str:
    """The neuroglancer URL (``<client>/#!<state>``) that opens ``state``.

    Example:
        >>> state_url({"layout": "xy"}, "http://127.0.0.1:8000/")
        'http://127.0.0.1:8000/#!%7B%22layout%22%3A%22xy%22%7D'
    """
    return client_url.rstrip("/") + "/#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")


PUBLIC_CLIENT = "https://neuroglancer-demo.appspot.com"
"""Neuroglancer's public client: what the printed URL opens when the ``view`` extra is not installed
(it reads the data from the loopback server, which allows cross-origin reads)."""


def has_neuroglancer() -> bool:
    """Whether the ``neuroglancer`` package (the ``view`` extra, which bundles the built client) is installed."""
    return importlib.util.find_spec("neuroglancer") is not None


@dataclass
class ViewSession:
    """Serve ``volumes`` (their stores and segment properties) on ``127.0.0.1`` and, when the ``view``
    extra is installed and ``bundled`` is true, start neuroglancer's own loopback viewer (its client
    ships in the ``neuroglancer`` wheel: no internet needed) showing :func:`neuroglancer_state`.
    ``url`` opens it; without the extra it opens the state in the public client. A context manager;
    neuroglancer's viewer server is one per process, so run one bundled session at a time.

    Example:
        >>> import tempfile, urllib.request
        >>> import numpy as np
        >>> from emdata.store.volume import open_volume
        >>> from emdata.store.writer import write_volume
        >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((2, 16, 16), "u1"), (8, 8, 8),
        ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
        >>> with ViewSession([open_volume(path)], bundled=False) as session:
        ...     with urllib.request.urlopen(session.server.url + "/data/demo/v/zarr.json") as reply:
        ...         json.loads(reply.read())["attributes"]["ome"]["version"]
        ...     session.url.startswith(PUBLIC_CLIENT + "/#!")
        '0.5'
        True
    """

    volumes: Sequence[Volume]
    port: int = 0
    bundled: bool = field(default_factory=has_neuroglancer)
    layout: str = "4panel"
    server: StaticServer = field(init=False)
    state: dict[str, Any] = field(init=False, default_factory=dict)
    _viewer: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        folders: dict[str, Path] = {data_path(v): v.folder for v in self.volumes}
        docs = {_properties_path(v, name) + "/info": json.dumps(segment_properties(v, name)).encode()
                for v in self.volumes for name in (layer.name for layer in label_layers(v))}
        self.server = StaticServer(folders, documents=docs, port=self.port)

    @property
    def url(self) -> str:
        """The page that shows the state: neuroglancer's loopback viewer, or the public client."""
        if self._viewer is not None:
            return self._viewer.get_viewer_url()
        return state_url(self.state, PUBLIC_CLIENT)

    def start(self) -> ViewSession:
        self.server.start()
        self.state = neuroglancer_state(self.volumes, self.server.url, layout=self.layout)
        if self.bundled:
            if not has_neuroglancer():
                self.server.stop()
                raise ModuleNotFoundError("the neuroglancer viewer needs the view extra: "
                                          "pip install 'emdata[view]' (or pass bundled=False for the public client)")
            import neuroglancer

            neuroglancer.set_server_bind_address("127.0.0.1")
            self._viewer = neuroglancer.Viewer()
            self._viewer.set_state(neuroglancer.ViewerState(self.state))
        return self

    def stop(self) -> None:
        if self._viewer is not None:
            import neuroglancer

            neuroglancer.stop()
            self._viewer = None
        self.server.stop()

    def __enter__(self) -> ViewSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
