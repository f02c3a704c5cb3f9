"""Look at prepared volumes in the viewers the field uses: neuroglancer (a loopback server for the
store plus a state with every label layer's class names and colours) and napari (a reader plugin,
:mod:`emdata.view.napari`).

Example:
    >>> from emdata.view import state_url
    >>> state_url({"layout": "xy"}, "http://127.0.0.1:8000").split("#!")[0]
    'http://127.0.0.1:8000/'
"""

from emdata.view.neuroglancer import (
    PUBLIC_CLIENT,
    ViewSession,
    has_neuroglancer,
    neuroglancer_state,
    segment_properties,
    state_url,
)
from emdata.view.server import StaticServer

__all__ = ["PUBLIC_CLIENT", "StaticServer", "ViewSession", "has_neuroglancer", "neuroglancer_state",
           "segment_properties", "state_url"]
