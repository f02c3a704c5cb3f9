"""Offline test kit: a loopback mirror server and replica writers for every dataset.

Example:
    >>> import tempfile, urllib.request
    >>> from pathlib import Path
    >>> from emdata.testing import MirrorServer, write_snemi3d_replica
    >>> with tempfile.TemporaryDirectory() as root:
    ...     truth = write_snemi3d_replica(Path(root), shape=(2, 16, 16))
    ...     with MirrorServer(Path(root)) as server:
    ...         url = f"{server.url}/rhoana.rc.fas.harvard.edu/dataset/snemi.zip"
    ...         urllib.request.urlopen(url).read()[:2]
    b'PK'
"""

from emdata.testing.precomputed import write_precomputed_layer
from emdata.testing.replicas import *  # noqa: F403  (every write_<dataset>_replica)
from emdata.testing.replicas import __all__ as _replicas
from emdata.testing.server import LoggedRequest, MirrorServer

__all__ = ["LoggedRequest", "MirrorServer", "write_precomputed_layer", *_replicas]
