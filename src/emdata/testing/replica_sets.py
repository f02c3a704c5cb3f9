"""Several datasets' replicas, served and prepared in one step (demo, loader tests, benchmarks).

Writes each replica under ``<home>/mirror``, pins the replicas' own sha256 in an
``EMDATA_CHECKSUMS`` file (the cards pin the real files'), serves the mirror on loopback and
runs the real ``prepare`` with ``EMDATA_HOME=<home>``.

Example:
    >>> with prepared_replicas(Path("/tmp/demo"), ["snemi3d", "mitoem2", "cremi"]) as volumes:  # doctest: +SKIP
    ...     volumes["cremi"][0].labels["clefts"]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from emdata.testing import replicas
from emdata.testing.server import MirrorServer

WRITERS = {
    "snemi3d": lambda root: replicas.write_snemi3d_replica(root, shape=(24, 256, 256)),
    "mitoem2": lambda root: replicas.write_mitoem2_replica(root, subsets=("beta", "mossy"), shape=(24, 96, 112)),
    "cremi": lambda root: replicas.write_cremi_replica(root, shape=(16, 160, 160), samples=("A", "B"),
                                                       small_ids=True),
    "lucchi-pp": lambda root: replicas.write_lucchi_pp_replica(root),
}
PREPARE_OPTIONS: dict[str, dict[str, Any]] = {"cremi": {"volumes": ["A", "B"]},
                                              "mitoem2": {"subset": ["beta", "mossy"]}}


def _pin_checksums(root: Path, datasets: Sequence[str], target: Path) -> Path:
    from emdata.catalog import get_card

    sums = {}
    for dataset in datasets:
        for source in get_card(dataset).sources:
            parts = urlsplit(source.url)
            path = root / parts.netloc / unquote(parts.path).lstrip("/")
            if path.is_file():
                sums[source.url] = hashlib.sha256(path.read_bytes()).hexdigest()
    target.write_text(json.dumps(sums, indent=1), encoding="utf-8")
    return target


@contextmanager
def prepared_replicas(home: Path, datasets: Sequence[str]) -> Iterator[dict[str, list[Any]]]:
    """Prepare replicas of ``datasets`` under ``home``; yields ``{dataset: [Volume, ...]}``.

    The environment (EMDATA_HOME, EMDATA_MIRROR, EMDATA_CHECKSUMS) points at the replicas
    inside the block and is restored afterwards.
    """
    import emdata

    unknown = sorted(set(datasets) - set(WRITERS))
    if unknown:
        raise ValueError(f"no replica set for {unknown}; available: {sorted(WRITERS)}")
    home = Path(home).resolve()
    root = home / "mirror"
    root.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        WRITERS[dataset](root)
    sums = _pin_checksums(root, datasets, home / "replica-checksums.json")
    keys = ("EMDATA_HOME", "EMDATA_MIRROR", "EMDATA_CHECKSUMS", "EMDATA_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        with MirrorServer(root) as server:
            os.environ.update({"EMDATA_HOME": str(home), "EMDATA_MIRROR": server.url,
                               "EMDATA_CHECKSUMS": str(sums), "EMDATA_OFFLINE": "0"})
            volumes = {d: emdata.prepare(d, **PREPARE_OPTIONS.get(d, {})) for d in datasets}
            yield volumes
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
