"""What every recipe does the same way: fetch a card source, record provenance, reuse a
finished volume, publish a new one and list it in the dataset manifest.

``reusable`` and ``publish`` work as a pair under the volume's writer lock: a volume that is
not reusable is looked at again once any writer of it has finished, and ``publish`` looks
once more inside the lock, so concurrent ``prepare`` runs write a volume once (the others
return the one that was published while they were computing). A finished, intact volume is
reused without taking a lock or writing anything (a read-only data folder works); leftovers
of crashed writers of the volume are tidied on the way.

Example:
    >>> from emdata.catalog import get_card
    >>> choose_volumes(get_card("snemi3d"), None), as_list("train")
    (['train', 'test'], ['train'])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from filelock import Timeout

from emdata.catalog import Card
from emdata.config import downloads_dir, prepared_dir
from emdata.sources.download import FetchResult, fetch
from emdata.sources.progress import status
from emdata.store.manifest import is_recorded, record_volume
from emdata.store.publish import generation, litter, promise_problems, tidy, volume_lock
from emdata.store.volume import Volume, open_volume
from emdata.store.writer import LabelLayerData, is_complete, write_volume

log = logging.getLogger(__name__)
_tidied: set[str] = set()  # download folders whose leftovers this process removed
_looked_at: dict[str, str | None] = {}  # volume path -> generation seen when `reusable` said no


def fetch_source(card: Card, name: str) -> FetchResult:
    """Download (or reuse) the card's source ``name`` into the dataset's download folder."""
    from emdata.cache import tidy_downloads

    folder = str(downloads_dir(card.id))
    if folder not in _tidied:  # once per process: leftovers of interrupted downloads and extractions
        _tidied.add(folder)
        tidy_downloads(card.id)
    source = card.source(name)
    return fetch(source.url, downloads_dir(card.id) / source.name, checksum=source.checksum,
                 size=source.size_bytes, mirrors=source.mirrors)


def provenance(recipe: str, version: int, fetched: list[FetchResult], parameters: dict[str, Any],
               urls: list[str] | None = None) -> dict[str, Any]:
    """The provenance block; ``urls`` lists streamed sources that have no single file hash."""
    from emdata import __version__

    return {
        "recipe": recipe, "recipe_version": version, "emdata_version": __version__, "parameters": parameters,
        "sources": [{"url": f.url, "fetched_from": f.fetched_from, "sha256": f.sha256, "size": f.size}
                    for f in fetched] + [{"url": u, "streamed": True} for u in urls or []],
    }


def volume_path(dataset: str, volume: str) -> Path:
    return prepared_dir(dataset) / f"{volume}.ome.zarr"


def _matching(path: Path, prov: dict[str, Any], sources_by: str = "sha256") -> Volume | None:
    """The complete, intact volume at ``path`` if it was built from the same sources, recipe and parameters."""
    if not is_complete(path):
        return None
    problems = promise_problems(path)
    if problems:
        log.warning("%s; rebuilding it", problems[0])
        return None
    volume = open_volume(path)
    old = volume.meta.get("provenance", {})
    def key(source: dict[str, Any]) -> Any:
        return source.get("url") if sources_by == "url" else source.get("sha256", source["url"])

    same = all(old.get(k) == prov[k] for k in ("recipe", "recipe_version", "parameters")) and [
        key(s) for s in old.get("sources", [])] == [key(s) for s in prov["sources"]]
    return volume if same else None


def _listed(volume: Volume) -> Volume:
    """``volume``, recorded in the manifest if a crashed run left it out (skipped on a read-only folder)."""
    if not is_recorded(volume):
        try:
            record_volume(volume)
        except OSError as exc:
            log.info("%s: not recorded in the manifest (%s)", volume.path, exc)
    return volume


def _tidy_if_free(path: Path) -> None:
    """Remove the volume's leftovers if no writer holds it (never waits, never fails)."""
    try:
        lock = volume_lock(path)
        lock.acquire(timeout=0)
    except (Timeout, OSError):
        return
    try:
        tidy(path)
    except OSError as exc:
        log.info("%s: leftovers not removed (%s)", path, exc)
    finally:
        lock.release()


def reusable(path: Path, prov: dict[str, Any], *, sources_by: str = "sha256") -> Volume | None:
    """The finished volume at ``path`` if it was built from the same sources, recipe and parameters.

    Sources are compared by their file hash (streamed ones by URL); ``sources_by="url"``
    compares URLs only, for a check made before anything is fetched.

    When it is not, waits for any writer of it to finish and looks again (and tidies what
    crashed writers left); then ``publish`` of the same volume looks once more under its lock.
    """
    path = Path(path)
    if litter(path):
        _tidy_if_free(path)
    volume = _matching(path, prov, sources_by)
    if volume is None:
        with volume_lock(path):
            tidy(path)
            volume = _matching(path, prov, sources_by)
            _looked_at[str(path)] = generation(path)
    if volume is not None:
        _looked_at.pop(str(path), None)
        return _listed(volume)
    return None


def layer(card: Card, name: str, data: np.ndarray, **overrides: Any) -> LabelLayerData:
    """A label layer described by the card's ``[[labels]]`` entry ``name``."""
    spec = card.label_layer(name)
    fields: dict[str, Any] = {
        "name": name, "data": data, "kind": spec.kind, "instance_of": spec.instance_of,
        "classes": [{"value": c.value, "name": c.name, "ontology": c.ontology, "color": c.color}
                    for c in spec.classes],
        "description": spec.description,
    }
    fields.update(overrides)
    return LabelLayerData(**fields)


def publish(card: Card, volume: str, split: str, raw: np.ndarray, layers: list[LabelLayerData],
            prov: dict[str, Any], voxel_size_nm: tuple[float, float, float] | None = None,
            **meta: Any) -> Volume:
    """Write, verify-open and list one volume; ``meta`` adds keys to the ``emdata`` block."""
    voxel = voxel_size_nm or card.voxel_size_nm
    if voxel is None:
        raise ValueError(f"{card.id}: no voxel size known for volume {volume!r}; pass voxel_size_nm")
    path = volume_path(card.id, volume)
    block = {"dataset": card.id, "volume": volume, "split": split,
             "voxel_size_verified": card.voxel_size.verified, "provenance": prov, **meta}
    shape = "×".join(map(str, raw.shape))
    with volume_lock(path):
        if str(path) in _looked_at:  # not forced: another run may have published it meanwhile
            seen = _looked_at.pop(str(path))
            done = _matching(path, prov)
            if done is not None and generation(path) != seen:
                log.info("%s was published by another run meanwhile; reusing it", path)
                return _listed(done)
        with status(f"writing {card.id}/{volume} ({shape} voxels, {len(layers)} label layer(s))"):
            write(path, raw, voxel, layers, block)
        vol = open_volume(path)
    try:
        record_volume(vol)
    except OSError as exc:  # the manifest is a summary: `emdata.volumes()` lists what is on disk anyway
        log.warning("%s: published, but the manifest was not updated (%s); the next run records it", path, exc)
    return vol


IN_MEMORY_MAX_BYTES = 256 << 20
"""Volumes of at most this size (all arrays together) are written whole in memory with the default
scheduler (fastest for small volumes; array sources are read whole); anything larger, or any
volume when a scheduler is named, is written region by region."""
LOCAL_CLUSTER_ABOVE = 2 << 30
"""With the default scheduler (``auto``), volumes larger than this (all arrays together, read
from files) are built on a dask ``LocalCluster``; smaller ones in this process."""
LOCAL_CLUSTER: dict[str, Any] = {}
"""Keyword arguments for the ``LocalCluster`` (e.g. ``n_workers``; tests set it)."""


def build_plan(raw: Any, layers: list[LabelLayerData], scheduler: str | None = None) -> tuple[str, str | None]:
    """How :func:`publish` writes a volume: ``("in-memory" | "blockwise", None | "local" | ADDRESS)``.

    ``scheduler`` is the setting (``None`` = auto, ``in-process``, ``local`` or an address).
    Arrays a recipe computed in memory are never sent to a cluster (they are built in-process).

    Example:
        >>> small = np.zeros((4, 64, 64), "u1")
        >>> build_plan(small, []), build_plan(small, [], "in-process"), build_plan(small, [], "local")
        (('in-memory', None), ('blockwise', None), ('blockwise', None))
    """
    from emdata.formats.lazy import held_in_memory, nbytes

    arrays = [raw, *(la.data for la in layers)]
    total = sum(nbytes(a) for a in arrays)
    if total <= IN_MEMORY_MAX_BYTES and scheduler is None:  # sources are read whole: at most this much
        return "in-memory", None
    if scheduler == "in-process" or any(held_in_memory(a) for a in arrays):
        return "blockwise", None
    if scheduler is None:
        return ("blockwise", "local") if total > LOCAL_CLUSTER_ABOVE else ("blockwise", None)
    return "blockwise", scheduler


def write(path: Path, raw: Any, voxel: tuple[float, float, float], layers: list[LabelLayerData],
          block: dict[str, Any]) -> Path:
    """Write the volume at ``path`` as :func:`build_plan` decides for the active ``scheduler`` setting:
    whole in memory, region by region in this process, or region by region on a dask cluster."""
    from emdata.config import current
    from emdata.store.writer import write_blockwise

    mode, where = build_plan(raw, layers, current().scheduler)
    if mode == "in-memory":
        from dataclasses import replace

        from emdata.formats.lazy import read_all

        return write_volume(path, read_all(raw), voxel, labels=[replace(la, data=read_all(la.data)) for la in layers],
                            meta=block)
    if where is None:
        if current().scheduler not in (None, "in-process"):
            log.info("%s: arrays computed in memory are built in this process, not on the dask cluster", path)
        return write_blockwise(path, raw, voxel, labels=layers, meta=block)
    from emdata.store.tasks import dask_client

    with dask_client(None if where == "local" else where, **(LOCAL_CLUSTER if where == "local" else {})) as client:
        return write_blockwise(path, raw, voxel, labels=layers, meta=block, client=client)


def as_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """An option given once (``"beta"``) or several times (``["beta", "pyra"]``) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def choose_subsets(card: Card, subset: str | list[str] | None) -> list[str]:
    """The requested subsets (default: all), each checked against the card."""
    known = [s.id for s in card.subsets]
    chosen = as_list(subset)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"{card.id} has no subset(s) {unknown}; choose from {known}")
    return chosen or known


def choose_volumes(card: Card, volumes: list[str] | None) -> list[str]:
    """The requested card volumes (default: all), each checked against the card."""
    names = [spec.name for spec in card.volumes]
    wanted = list(volumes) if volumes else names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        raise ValueError(f"{card.id} has no volume(s) {unknown}; choose from {names}")
    return wanted
