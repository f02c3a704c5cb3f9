"""What every recipe does the same way: fetch a card source, record provenance, reuse a
finished volume, publish a new one and list it in the dataset manifest.

Example:
    >>> fetched = fetch_source(card, "snemi.zip")  # doctest: +SKIP
    >>> prov = provenance("snemi3d", 1, [fetched], {"volume": "train"})  # doctest: +SKIP
    >>> volume = reusable(path, prov) or publish(card, "train", "train", raw, layers, prov)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from emdata.catalog import Card
from emdata.config import downloads_dir, prepared_dir
from emdata.sources.download import FetchResult, fetch
from emdata.sources.progress import status
from emdata.store.manifest import record_volume
from emdata.store.volume import Volume, open_volume
from emdata.store.writer import LabelLayerData, is_complete, write_volume


def fetch_source(card: Card, name: str) -> FetchResult:
    """Download (or reuse) the card's source ``name`` into the dataset's download folder."""
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


def reusable(path: Path, prov: dict[str, Any]) -> Volume | None:
    """The finished volume at ``path`` if it was built from the same sources, recipe and parameters."""
    if not is_complete(path):
        return None
    volume = open_volume(path)
    old = volume.meta.get("provenance", {})
    same = all(old.get(k) == prov[k] for k in ("recipe", "recipe_version", "parameters")) and [
        s.get("sha256", s["url"]) for s in old.get("sources", [])] == [s.get("sha256", s["url"])
                                                                      for s in prov["sources"]]
    return volume if same else None


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
    with status(f"writing {card.id}/{volume} ({shape} voxels, {len(layers)} label layer(s))"):
        write_volume(path, raw, voxel, labels=layers, meta=block)
    vol = open_volume(path)
    record_volume(vol)
    return vol


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
