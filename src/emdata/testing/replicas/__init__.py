"""Replica writers: small files in each dataset's exact published layout, written with the
real writer libraries, sharing no code with the recipes that read them.

Each dataset keeps its writer in ``emdata/datasets/<id with _>/replica.py``; this module finds
them on disk and imports one only when its ``write_<id with _>_replica`` is asked for.

Example:
    >>> from emdata.testing import replicas
    >>> "write_snemi3d_replica" in replicas.__all__
    True
    >>> replicas.write_snemi3d_replica.__module__
    'emdata.datasets.snemi3d.replica'
"""

from __future__ import annotations

import importlib
from importlib import resources
from typing import Any


def replica_modules() -> dict[str, str]:
    """``{dataset folder name: module}`` of every ``emdata/datasets/*/replica.py`` (nothing imported).

    Example:
        >>> replica_modules()["mitoem2"]
        'emdata.datasets.mitoem2.replica'
    """
    root = resources.files("emdata") / "datasets"
    return {d.name: f"emdata.datasets.{d.name}.replica"
            for d in sorted(root.iterdir(), key=lambda d: d.name) if d.joinpath("replica.py").is_file()}


_WRITERS = {f"write_{name}_replica": module for name, module in replica_modules().items()}

__all__ = sorted(_WRITERS)


def __getattr__(name: str) -> Any:
    if name not in _WRITERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    writer = getattr(importlib.import_module(_WRITERS[name]), name)
    globals()[name] = writer
    return writer


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
