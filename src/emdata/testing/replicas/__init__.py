"""Replica writers: small files in each dataset's exact published layout."""

from emdata.testing.replicas.snemi3d import write_snemi3d_replica

__all__ = ["write_snemi3d_replica"]
