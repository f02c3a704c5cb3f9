"""Replicas of any preparable dataset, served on loopback so the real ``prepare`` runs offline.

:func:`serve_replicas` writes small synthetic files in each dataset's published layout under
``<home>/mirror``, pins their sha256 in ``<home>/replica-checksums.json`` (the catalog pins the
real files'), serves the mirror on ``127.0.0.1`` and makes them the active settings (home,
mirror, checksums; :func:`emdata.config.using`) inside the block. Datasets whose files are placed by hand
(``nucmm``, ``tem-neutrostruct``) are copied into their download folder, as a user would.
:func:`prepared_replicas` also runs ``prepare`` on each.

Example:
    >>> import tempfile
    >>> import emdata
    >>> with serve_replicas(["snemi3d"], tempfile.mkdtemp(), small=True) as served:
    ...     [v.name for v in emdata.prepare("snemi3d", **served.options["snemi3d"])]
    ['train', 'test']
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from emdata.testing import replicas
from emdata.testing.offline import offline_environment
from emdata.testing.server import MirrorServer

Writer = Callable[[Path, bool], Any]
"""``(mirror root, small) -> what was written``; ``small`` asks for the tiniest replica."""


@dataclass(frozen=True)
class ReplicaSet:
    """How to write one dataset's replica and prepare it.

    ``options`` are the ``prepare`` arguments the replica needs (a bbox inside its extent, the
    subsets written). ``placed`` (hand-placed datasets only) maps what the writer returned to
    ``{written folder: sub-folder of the dataset's download folder}`` to copy it into; None
    means the dataset is downloaded from the mirror.
    """

    write: Writer
    options: dict[str, Any] | Callable[[Any], dict[str, Any]] = field(default_factory=dict)
    placed: Callable[[Any], dict[Path, str]] | None = None

    def options_for(self, truth: Any) -> dict[str, Any]:
        """The ``prepare`` arguments for the replica the writer returned ``truth`` for (derived from
        it where the replica declares ``prepare_options(truth)``, e.g. a bbox spelling out its EM).

        Example:
            >>> import tempfile
            >>> h01 = discover_replica_sets()["h01"]
            >>> h01.options_for(h01.write(Path(tempfile.mkdtemp()), True))
            {'bbox': '5:17,128:192,64:144'}
        """
        return dict(self.options(truth) if callable(self.options) else self.options)


PATCH = (16, 128, 128)
"""The patch shape (z, y, x) the non-small replicas fit, where a writer takes a size."""


def discover_replica_sets() -> dict[str, ReplicaSet]:
    """``{dataset id: ReplicaSet}`` from each ``emdata/datasets/<id>/replica.py`` that declares
    ``write_replica(root, small)`` (and optionally ``PREPARE_OPTIONS``, or ``prepare_options(truth)``
    where they follow from what was written, and ``placed_folders(truth)``).

    Example:
        >>> discover_replica_sets()["cremi"].options
        {'volumes': ['A', 'B']}
    """
    from emdata.catalog import dataset_ids

    folders = {dataset.replace("-", "_"): dataset for dataset in dataset_ids()}
    sets = {}
    for folder, module_name in replicas.replica_modules().items():
        module = importlib.import_module(module_name)
        if folder in folders and hasattr(module, "write_replica"):
            options = getattr(module, "prepare_options", None) or dict(getattr(module, "PREPARE_OPTIONS", {}))
            sets[folders[folder]] = ReplicaSet(module.write_replica, options, getattr(module, "placed_folders", None))
    return dict(sorted(sets.items()))


@cache
def replica_sets() -> dict[str, ReplicaSet]:
    """:func:`discover_replica_sets`, once per process (importing every replica module takes ~0.2 s,
    so it is not done at import time). Also importable as ``REPLICA_SETS``."""
    return discover_replica_sets()


def __getattr__(name: str) -> Any:
    if name == "REPLICA_SETS":
        return replica_sets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ServedReplicas:
    """What :func:`serve_replicas` yields: where things are and how to prepare each dataset."""

    home: Path
    server: MirrorServer
    truth: dict[str, Any]
    options: dict[str, dict[str, Any]]

    @property
    def url(self) -> str:
        return self.server.url


def check_datasets(datasets: Sequence[str]) -> None:
    """Refuse ids without a replica, naming those that have one."""
    known = replica_sets()
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise ValueError(f"no replica for {', '.join(unknown)}; replicas exist for: {', '.join(sorted(known))}")


@contextmanager
def serve_replicas(datasets: Sequence[str], home: Path | str, *, small: bool = False) -> Iterator[ServedReplicas]:
    """Write and serve replicas of ``datasets`` under ``home``; inside the block ``emdata.prepare``
    (with ``served.options[dataset]``) reads them through the real download code.

    ``small=True`` writes the tiniest replicas (quick tests); otherwise replicas whose writer
    takes a size fit a 16×128×128 patch. Inside the block (this thread only) the network is
    allowed and the settings point at the replicas; the previous settings hold afterwards.
    """
    from emdata.config import downloads_dir

    check_datasets(datasets)
    home = Path(home).resolve()
    root = home / "mirror"
    root.mkdir(parents=True, exist_ok=True)
    truth = {d: replica_sets()[d].write(root, small) for d in datasets}
    with offline_environment(root, home, datasets) as server:
        for dataset in datasets:
            place = replica_sets()[dataset].placed
            for folder, name in (place(truth[dataset]) if place else {}).items():
                shutil.copytree(folder, downloads_dir(dataset) / name, dirs_exist_ok=True)
        yield ServedReplicas(home, server, truth, {d: replica_sets()[d].options_for(truth[d]) for d in datasets})


@contextmanager
def prepared_replicas(home: Path | str, datasets: Sequence[str], *,
                      small: bool = False) -> Iterator[dict[str, list[Any]]]:
    """:func:`serve_replicas`, then ``prepare`` each; yields ``{dataset: [Volume, ...]}``."""
    import emdata

    with serve_replicas(datasets, home, small=small) as served:
        yield {d: emdata.prepare(d, **served.options[d]) for d in datasets}
