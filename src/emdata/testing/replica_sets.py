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

import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    options: dict[str, Any] = field(default_factory=dict)
    placed: Callable[[Any], dict[Path, str]] | None = None


def _sized(small: bool, big: dict[str, Any]) -> dict[str, Any]:
    """Writer keywords: the writer's own (tiny) defaults when ``small``, else ``big``."""
    return {} if small else big


def _placed_nucmm(truth: dict[str, Any]) -> dict[Path, str]:
    return {folder: folder.name for folder in truth["folders"].values()}


def _placed_tem_neutrostruct(truth: dict[str, Any]) -> dict[Path, str]:
    return {Path(truth["folder"]): ""}


PATCH = (16, 128, 128)
"""The patch shape (z, y, x) the non-small replicas fit, where a writer takes a size."""

REPLICA_SETS: dict[str, ReplicaSet] = {
    "snemi3d": ReplicaSet(lambda root, small: replicas.write_snemi3d_replica(
        root, shape=(12, 128, 128) if small else (24, 256, 256))),
    "mitoem2": ReplicaSet(lambda root, small: replicas.write_mitoem2_replica(
        root, subsets=("beta", "mossy"), **_sized(small, {"shape": (16, 144, 144)})),
        options={"subset": ["beta", "mossy"]}),
    "cremi": ReplicaSet(lambda root, small: replicas.write_cremi_replica(
        root, samples=("A", "B"), small_ids=True, **_sized(small, {"shape": (16, 160, 160)})),
        options={"volumes": ["A", "B"]}),
    "lucchi-pp": ReplicaSet(lambda root, small: replicas.write_lucchi_pp_replica(
        root, **_sized(small, {"slices": (16, 16), "shape": (160, 160)}))),
    "kasthuri-pp": ReplicaSet(lambda root, small: replicas.write_kasthuri_pp_replica(
        root, **_sized(small, {"slices": (16, 16), "shape": (160, 160)}))),
    "isbi2012": ReplicaSet(lambda root, small: replicas.write_isbi2012_replica(
        root, **_sized(small, {"shape": (16, 160, 160)}))),
    "fib25": ReplicaSet(lambda root, small: replicas.write_fib25_replica(
        root, **_sized(small, {"shape": (16, 160, 160), "block": 16}))),
    "densecell": ReplicaSet(lambda root, small: replicas.write_densecell_replica(
        root, **_sized(small, {"shapes": {"train": (16, 144, 144), "eval": (16, 144, 144),
                                          "test": (16, 144, 144)}}))),
    "mitoem": ReplicaSet(lambda root, small: replicas.write_mitoem_replica(
        root, **_sized(small, {"slices": (16, 16, 16), "shape": (144, 144)})), options={"subset": ["human", "rat"]}),
    "axonem": ReplicaSet(lambda root, small: replicas.write_axonem_replica(root)),
    "platelet-em": ReplicaSet(lambda root, small: replicas.write_platelet_em_replica(root)),
    "human-liver-em": ReplicaSet(lambda root, small: replicas.write_human_liver_em_replica(
        root, **({"n_slices": 2, "shape": (32, 40)} if small else {"n_slices": 16, "shape": (144, 144)})),
        options={"bbox": ":,:,:"}),
    "parlakgul-liver": ReplicaSet(lambda root, small: replicas.write_parlakgul_liver_replica(
        root, samples=("6461", "1857"), **_sized(small, {"slices": 16, "shape": (144, 144)})),
        options={"sample": ["6461", "1857"], "bbox": ":,:,:"}),
    "nucmm": ReplicaSet(lambda root, small: replicas.write_nucmm_replica(root), placed=_placed_nucmm),
    "tem-neutrostruct": ReplicaSet(lambda root, small: replicas.write_tem_neutrostruct_replica(root),
                                   placed=_placed_tem_neutrostruct),
    # precomputed layers: fixed tiny extents; the bbox is their whole EM extent
    "microns-minnie65": ReplicaSet(lambda root, small: replicas.write_microns_minnie65_replica(root),
                                   options={"bbox": ":,:,:"}),
    "microns-layer23": ReplicaSet(lambda root, small: replicas.write_microns_layer23_replica(root),
                                  options={"bbox": ":,:,:"}),
    "h01": ReplicaSet(lambda root, small: replicas.write_h01_replica(root), options={"bbox": ":,:,:"}),
    "j0126": ReplicaSet(lambda root, small: replicas.write_j0126_replica(root), options={"bbox": ":,:,:"}),
    "hemibrain": ReplicaSet(lambda root, small: replicas.write_hemibrain_replica(root), options={"bbox": ":,:,:"}),
    "kasthuri": ReplicaSet(lambda root, small: replicas.write_kasthuri_replica(root), options={"bbox": ":,:,:"}),
}


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
    unknown = [d for d in datasets if d not in REPLICA_SETS]
    if unknown:
        raise ValueError(f"no replica for {', '.join(unknown)}; replicas exist for: {', '.join(sorted(REPLICA_SETS))}")


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
    truth = {d: REPLICA_SETS[d].write(root, small) for d in datasets}
    with offline_environment(root, home, datasets) as server:
        for dataset in datasets:
            place = REPLICA_SETS[dataset].placed
            for folder, name in (place(truth[dataset]) if place else {}).items():
                shutil.copytree(folder, downloads_dir(dataset) / name, dirs_exist_ok=True)
        yield ServedReplicas(home, server, truth, {d: dict(REPLICA_SETS[d].options) for d in datasets})


@contextmanager
def prepared_replicas(home: Path | str, datasets: Sequence[str], *,
                      small: bool = False) -> Iterator[dict[str, list[Any]]]:
    """:func:`serve_replicas`, then ``prepare`` each; yields ``{dataset: [Volume, ...]}``."""
    import emdata

    with serve_replicas(datasets, home, small=small) as served:
        yield {d: emdata.prepare(d, **served.options[d]) for d in datasets}
