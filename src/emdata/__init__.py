"""emdata: from the name of a volume-EM dataset to PyTorch batches.

Example:
    >>> import emdata
    >>> emdata.info("snemi3d")["voxel_size_nm"]
    [30.0, 6.0, 6.0]
    >>> import importlib.metadata
    >>> emdata.__version__ == importlib.metadata.version("emdata")
    True
"""

from __future__ import annotations

from typing import Any

_API = {"list_datasets", "info", "fetch", "prepare", "volumes", "open_volume", "Volume", "predict", "evaluate"}


def __getattr__(name: str) -> Any:  # lazy: keep `import emdata` and `emdata list` fast
    if name == "__version__":  # package metadata costs ~0.15 s to import
        import importlib.metadata

        try:
            return importlib.metadata.version("emdata")
        except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    if name in _API:
        from emdata import api

        return getattr(api, name)
    if name == "config":  # settings: emdata.config.using(home=...)
        import emdata.config

        return emdata.config
    raise AttributeError(f"module 'emdata' has no attribute {name!r}")


__all__ = sorted(_API)
