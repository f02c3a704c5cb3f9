"""Small helpers every recipe uses: provenance, reuse of finished volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emdata.sources.download import FetchResult
from emdata.store.volume import Volume, open_volume
from emdata.store.writer import is_complete


def provenance(recipe: str, version: int, fetched: list[FetchResult], parameters: dict[str, Any]) -> dict[str, Any]:
    from emdata import __version__

    return {
        "recipe": recipe, "recipe_version": version, "emdata_version": __version__, "parameters": parameters,
        "sources": [{"url": f.url, "fetched_from": f.fetched_from, "sha256": f.sha256, "size": f.size}
                    for f in fetched],
    }


def reusable(path: Path, prov: dict[str, Any]) -> Volume | None:
    """The finished volume at ``path`` if it was built from the same sources, recipe and parameters."""
    if not is_complete(path):
        return None
    volume = open_volume(path)
    old = volume.meta.get("provenance", {})
    same = all(old.get(k) == prov[k] for k in ("recipe", "recipe_version", "parameters")) and [
        s["sha256"] for s in old.get("sources", [])] == [s["sha256"] for s in prov["sources"]]
    return volume if same else None
