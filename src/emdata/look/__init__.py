"""Look at prepared volumes: numbers (:mod:`emdata.look.stats`) and pictures
(:mod:`emdata.look.preview`), behind ``emdata stats`` and ``emdata preview``.

:func:`volume_paths` turns what a user types (a dataset id, a folder of volumes or one
``*.ome.zarr``) into the volumes to look at.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.writer import write_volume
    >>> tmp = Path(tempfile.mkdtemp())
    >>> _ = write_volume(tmp / "a.ome.zarr", np.zeros((2, 8, 8), "u1"), (30, 6, 6),
    ...                  meta={"dataset": "demo", "volume": "a", "split": "train"})
    >>> [p.name for p in volume_paths(str(tmp))]
    ['a.ome.zarr']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["volume_paths"]


def volume_paths(target: str, volumes: Sequence[str] | None = None) -> list[Path]:
    """The volumes named by ``target`` (a ``*.ome.zarr`` path, a folder of them, or a dataset id:
    its prepared volumes), only those named in ``volumes`` when given.

    Errors say what was looked for and what to run instead.
    """
    from emdata.store.verify import find_volumes

    path = Path(target).expanduser()
    if not path.exists() and not path.is_symlink() and "/" not in target:
        from emdata.catalog import get_card
        from emdata.config import prepared_dir

        get_card(target)  # an unknown id fails here, with suggestions
        path = prepared_dir(target)
        if not find_volumes(path):
            raise FileNotFoundError(f"{target} is not prepared under {path}; run `emdata prepare {target}` first")
    found = find_volumes(path)
    if not found:
        raise FileNotFoundError(f"{path}: no OME-Zarr volume (zarr.json) and no *.ome.zarr inside; "
                                "give a prepared volume, a folder of them or a dataset id")
    if volumes:
        names = {p.name.removesuffix(".ome.zarr"): p for p in found}
        missing = [v for v in volumes if v.removesuffix(".ome.zarr") not in names]
        if missing:
            raise ValueError(f"{target}: no volume {', '.join(map(repr, missing))}; "
                             f"volumes: {', '.join(sorted(names))}")
        found = [names[v.removesuffix(".ome.zarr")] for v in volumes]
    return found
