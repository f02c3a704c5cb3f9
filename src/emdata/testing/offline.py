"""Run emdata against a small local replica of a dataset instead of its real files.

:func:`offline_replica` writes the dataset's replica (``write_<id>_replica`` of
:mod:`emdata.testing.replicas`) into a temporary folder, serves it on a loopback
:class:`~emdata.testing.MirrorServer`, pins the replica files' own sha256 (the cards pin the
real files') and makes those the active settings (:func:`emdata.config.using`: home, mirror,
checksums) for the block. Docstring examples of the recipes use it so that they run offline in a second or two.

Example:
    >>> import emdata
    >>> with offline_replica("isbi2012", shape=(3, 32, 32)):
    ...     (train,) = emdata.prepare("isbi2012")
    ...     train.shape
    (3, 32, 32)
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from emdata import config
from emdata.testing import replicas
from emdata.testing.server import MirrorServer


def mirror_path(root: Path, url: str) -> Path:
    """Where a loopback mirror over ``root`` keeps the file of ``url`` (``<root>/<host>/<path>``).

    Example:
        >>> mirror_path(Path("/m"), "https://zenodo.org/records/1/files/A%2B.zip?download=1").as_posix()
        '/m/zenodo.org/records/1/files/A+.zip'
    """
    parts = urlsplit(url)
    return Path(root) / parts.netloc / unquote(parts.path).lstrip("/")


def pin_replica_checksums(root: Path, datasets: Sequence[str], target: Path) -> Path:
    """Write ``{card URL: sha256}`` of every card source of ``datasets`` found under ``root`` to
    ``target`` (an ``EMDATA_CHECKSUMS`` file); returns ``target``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     _ = replicas.write_isbi2012_replica(Path(tmp), shape=(2, 16, 16))
        ...     pins = json.loads(pin_replica_checksums(Path(tmp), ["isbi2012"], Path(tmp) / "sums.json").read_text())
        >>> [len(digest) for digest in pins.values()]
        [64]
    """
    from emdata.catalog import get_card

    sums = {}
    for dataset in datasets:
        for source in get_card(dataset).sources:
            path = mirror_path(root, source.url)
            if path.is_file():
                sums[source.url] = hashlib.sha256(path.read_bytes()).hexdigest()
    target.write_text(json.dumps(sums, indent=1), encoding="utf-8")
    return target


@contextmanager
def offline_environment(root: Path, home: Path, datasets: Sequence[str]) -> Iterator[MirrorServer]:
    """Serve ``root`` and point emdata at it (home ``home``, the loopback mirror, the replica
    files of ``datasets`` pinned, network allowed) for the block, through
    :func:`emdata.config.using`: this thread only, ``os.environ`` untouched. A subprocess run
    in the block sees the same settings with ``env={**os.environ, **config.current().to_env()}``."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    sums = pin_replica_checksums(root, datasets, home / "replica-checksums.json")
    with MirrorServer(root) as server, config.using(home=home, mirror=server.url, checksums=sums, offline=False):
        yield server


@contextmanager
def offline_replica(dataset: str, **writer_options: Any) -> Iterator[Any]:
    """Write a replica of ``dataset`` (``writer_options`` go to its writer) in a temporary folder
    and run the block against it (see :func:`offline_environment`); yields what the writer
    returned (the ground truth). The folder is removed afterwards."""
    writer = getattr(replicas, f"write_{dataset.replace('-', '_')}_replica", None)
    if writer is None:
        known = sorted(n.removeprefix("write_").removesuffix("_replica").replace("_", "-") for n in replicas.__all__)
        raise ValueError(f"no replica writer for {dataset!r}; replicas exist for: {', '.join(known)}")
    with tempfile.TemporaryDirectory(prefix=f"emdata-{dataset}-") as tmp:
        root = Path(tmp) / "mirror"
        truth = writer(root, **writer_options)
        with offline_environment(root, Path(tmp) / "home", [dataset]):
            yield truth
