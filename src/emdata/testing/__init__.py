"""Offline test kit: a loopback mirror server and replica writers for every dataset.

Example:
    >>> from emdata.testing import MirrorServer, write_snemi3d_replica
    >>> truth = write_snemi3d_replica(mirror_root)  # doctest: +SKIP
    >>> with MirrorServer(mirror_root) as server: ...  # doctest: +SKIP
"""

from emdata.testing.precomputed import write_precomputed_layer
from emdata.testing.replicas import write_snemi3d_replica
from emdata.testing.server import LoggedRequest, MirrorServer

__all__ = ["LoggedRequest", "MirrorServer", "write_precomputed_layer", "write_snemi3d_replica"]
