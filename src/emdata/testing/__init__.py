"""Offline kit: replicas of every preparable dataset in its published layout, a loopback
mirror that serves them, and :func:`serve_replicas` that does both and points emdata at them.

Example:
    >>> import tempfile
    >>> import emdata
    >>> from emdata.testing import serve_replicas
    >>> with serve_replicas(["platelet-em"], tempfile.mkdtemp()) as served:
    ...     [v.name for v in emdata.prepare("platelet-em", **served.options["platelet-em"])]
    ['volume-50', 'volume-24']
"""

from emdata.testing.precomputed import write_precomputed_layer
from emdata.testing.replica_sets import prepared_replicas, serve_replicas
from emdata.testing.replicas import *  # noqa: F403  (every write_<dataset>_replica)
from emdata.testing.replicas import __all__ as _replicas
from emdata.testing.server import LoggedRequest, MirrorServer

__all__ = ["LoggedRequest", "MirrorServer", "prepared_replicas", "serve_replicas", "write_precomputed_layer",
           *_replicas]
