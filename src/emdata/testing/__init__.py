"""Offline test kit: a loopback mirror server and replica writers for every dataset.

Example:
    >>> from emdata.testing import MirrorServer, write_snemi3d_replica
    >>> truth = write_snemi3d_replica(mirror_root)  # doctest: +SKIP
    >>> with MirrorServer(mirror_root) as server: ...  # doctest: +SKIP
"""

from emdata.testing.precomputed import write_precomputed_layer
from emdata.testing.replicas import *  # noqa: F403  (every write_<dataset>_replica)
from emdata.testing.replicas import __all__ as _replicas
from emdata.testing.server import LoggedRequest, MirrorServer

__all__ = ["LoggedRequest", "MirrorServer", "write_precomputed_layer", *_replicas]
