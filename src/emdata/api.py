"""The public Python API (re-exported by ``emdata``).

Example (offline, on a replica of SNEMI3D served from loopback):
    >>> import tempfile
    >>> import emdata
    >>> from emdata.testing import serve_replicas
    >>> [d["id"] for d in emdata.list_datasets(species="fly")]
    ['cremi', 'fib25', 'hemibrain', 'isbi2012']
    >>> emdata.info("snemi3d")["prepare"]
    {'available': True, 'options': []}
    >>> with serve_replicas(["snemi3d"], tempfile.mkdtemp(), small=True):
    ...     train, test = emdata.prepare("snemi3d")
    ...     [v.name for v in emdata.volumes("snemi3d", split="train")]
    ['train']
    >>> emdata.open_volume(train.path).voxel_size
    (30.0, 6.0, 6.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emdata.catalog import get_card, list_cards
from emdata.config import prepared_dir

if TYPE_CHECKING:
    from emdata.store.volume import Volume, open_volume


def __getattr__(name: str) -> Any:  # the store (zarr, numpy) loads on first use: `emdata info` stays fast
    if name in ("Volume", "open_volume"):
        from emdata.store import volume

        return getattr(volume, name)
    raise AttributeError(f"module 'emdata.api' has no attribute {name!r}")


def list_datasets(species: str | None = None, microscopy: str | None = None) -> list[dict[str, Any]]:
    """Summaries (id, title, species, microscopy, voxel_size_nm, …) of matching datasets."""
    return [card.summary() for card in list_cards(species=species, microscopy=microscopy)]


def info(dataset_id: str) -> dict[str, Any]:
    """Everything the catalog knows about one dataset (the card as JSON), plus whether
    ``prepare`` supports it and with which options (``prepare.options``: their names;
    ``prepare_options``: their declarations, with type, help, choices and default).

    Example:
        >>> [(o["name"], o["type"], o["choices"], o["default"]) for o in info("platelet-em")["prepare_options"]]
        [('release', 'str', ['json', 'rgba', 'rgb'], 'json')]
    """
    from emdata.datasets import NoRecipeError, declared_options
    from emdata.datasets.contract import option_names

    doc = get_card(dataset_id).to_json()
    try:
        declared = declared_options(dataset_id)  # read from the recipe's source: no recipe code runs
    except NoRecipeError:
        declared = None
    doc["prepare"] = {"available": declared is not None, "options": option_names(declared or ())}
    doc["prepare_options"] = [option.to_json() for option in declared or ()]
    return doc


def prepare(dataset_id: str, volumes: list[str] | None = None, force: bool = False, **options: Any) -> list[Volume]:
    """Fetch and convert a dataset into canonical volumes; returns them.

    Re-running returns the finished volumes without rework; ``force=True`` rebuilds.
    Options a recipe does not take are refused with the list of those it does. Every recipe
    takes ``scheduler``: where large volumes are built region by region (``auto``,
    ``in-process``, ``local`` for a dask ``LocalCluster``, or a scheduler address such as
    ``tcp://host:8786``; see :data:`emdata.config.Settings`).
    """
    from emdata.datasets import recipe_for
    from emdata.datasets.contract import check_options

    recipe = recipe_for(dataset_id)
    scheduler = options.get("scheduler")
    if "scheduler" in options and all(o.name != "scheduler" for o in recipe.OPTIONS):
        # every recipe's large volumes are built region by region: `scheduler` says where (a setting)
        from emdata import config

        options = {k: v for k, v in options.items() if k != "scheduler"}
        with config.using(scheduler=scheduler):
            return recipe.prepare(volumes=volumes, force=force, **check_options(dataset_id, recipe.OPTIONS, options))
    return recipe.prepare(volumes=volumes, force=force, **check_options(dataset_id, recipe.OPTIONS, options))


def _not_a_file(source: Any) -> str | None:
    """Why a catalog source is not one downloadable file (None when it is)."""
    if "{" in source.url:
        return "a per-slice URL pattern; recipes read the slices they need"
    if source.url.startswith(("precomputed://", "gs://", "s3://")) or source.format == "precomputed":
        return "a precomputed layer; recipes read cutouts of it"
    if source.format in ("web", "git") or "drive.google.com/drive/folders" in source.url:
        return f"a {source.format or 'web'} location, not a file"
    return None


def _readable_alternates(dataset_id: str) -> frozenset[str]:
    """The alternate sources the dataset's recipe can read in place of a failed primary."""
    from emdata.datasets import NoRecipeError, recipe_for

    try:
        return frozenset(getattr(recipe_for(dataset_id), "READS_ALTERNATES", frozenset()))
    except NoRecipeError:
        return frozenset()


def fetch(dataset_id: str, subset: str | None = None, sources: list[str] | None = None,
          all_sources: bool = False) -> dict[str, Any]:
    """Download the source files ``prepare`` needs (of one subset, or the named ``sources``) into the cache.

    Sources the card marks as alternates are skipped unless named or ``all_sources=True``; when
    every URL of a primary fails and the recipe reads an alternate of it, that alternate is
    fetched instead (its entry says ``"instead_of"``). Returns ``{"dataset", "files", "skipped"}``
    with per-file path, size, sha256, md5, the URL it came from and whether it was cached.

    Example:
        >>> [s["name"] for s in fetch("h01")["skipped"]]
        ['4nm_raw', 'c3']
    """
    from emdata.config import downloads_dir
    from emdata.sources.download import fetch as fetch_file
    from emdata.sources.errors import DownloadError

    card = get_card(dataset_id)
    if subset is not None and subset not in {s.id for s in card.subsets}:
        raise ValueError(f"{dataset_id} has no subset {subset!r}; subsets: {[s.id for s in card.subsets] or 'none'}")
    if sources:
        unknown = sorted(set(sources) - {s.name for s in card.sources})
        if unknown:
            raise ValueError(f"{dataset_id} has no source(s) {unknown}; sources: {[s.name for s in card.sources]}")

    def get(source: Any) -> dict[str, Any]:
        result = fetch_file(source.url, downloads_dir(dataset_id) / source.name, checksum=source.checksum,
                            size=source.size_bytes, mirrors=source.mirrors)
        return {"name": source.name, "url": source.url, "path": str(result.path), "bytes": result.size,
                "sha256": result.sha256, "md5": result.md5, "fetched_from": result.fetched_from,
                "from_cache": result.from_cache, "checksum": source.checksum, "failed_sources": list(result.failures)}

    files, skipped = [], []
    readable = _readable_alternates(dataset_id) if not (sources or all_sources) else frozenset()
    for source in card.sources:
        if (subset and source.subset not in (None, subset)) or (sources and source.name not in sources):
            continue
        if any(f["name"] == source.name for f in files):  # already fetched in place of a failed primary
            continue
        if source.is_alternate and not (sources or all_sources):
            what = f"an alternate of {source.alternate_of}" if source.alternate_of else "not read by prepare"
            skipped.append({"name": source.name, "url": source.url,
                            "reason": f"{what}; `emdata fetch {dataset_id} --all` fetches it"})
            continue
        reason = _not_a_file(source)
        if reason:
            skipped.append({"name": source.name, "url": source.url, "reason": reason})
            continue
        fallbacks = [s for s in card.sources if s.alternate_of == source.name and s.name in readable]
        try:
            files.append(get(source))
        except DownloadError as exc:
            if not fallbacks:
                raise
            failure = str(exc).splitlines()[0]
            for alternate in fallbacks:
                try:
                    entry = get(alternate)
                except DownloadError as again:
                    raise DownloadError(f"{dataset_id}: {source.name} failed ({failure}) and its alternate "
                                        f"{alternate.name} failed too ({str(again).splitlines()[0]})") from again
                entry.update(instead_of=source.name, because=failure)
                files.append(entry)
    return {"dataset": dataset_id, "files": files, "skipped": skipped}


def volumes(dataset_id: str, split: str | None = None) -> list[Volume]:
    """The prepared volumes of a dataset (optionally one split): every complete volume on disk.

    Example:
        >>> import tempfile
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", EMDATA_HOME=tempfile.mkdtemp()):  # nothing prepared there
        ...     volumes("snemi3d")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: snemi3d is not prepared under ...; run `emdata prepare snemi3d`
    """
    from emdata.store.manifest import complete_volumes
    from emdata.store.volume import open_volume

    get_card(dataset_id)
    root = prepared_dir(dataset_id)
    found = [open_volume(path) for path in complete_volumes(root)]
    if not found:
        raise FileNotFoundError(f"{dataset_id} is not prepared under {root}; run `emdata prepare {dataset_id}`")
    return [v for v in found if split is None or v.split == split]


def predict(model: Any, volume: Any, name: str = "prediction", **options: Any) -> Volume:
    """Run a PyTorch ``model`` over a prepared volume tile by tile and store the result in it as
    prediction layer ``name`` (resumable, published atomically); returns the volume. Options
    (``tile``, ``halo``, ``overlap``, ``voxel_size``, ``output``, ``batch_size``, ``device``, …):
    :func:`emdata.inference.predict`, which also has a runnable example."""
    from emdata.inference import predict as run

    return run(model, volume, name, **options)


def evaluate(volume: Any, prediction: Any, **options: Any) -> dict[str, Any]:
    """Score ``prediction`` (a layer of the volume, a TIFF, ``file.h5:key``, a zarr array or a numpy
    array) against the volume's ground truth with the dataset's challenge metrics; returns one
    JSON-ready document. Options (``gt_layer``, ``metrics``, …): :func:`emdata.evaluation.evaluate`,
    which also has a runnable example."""
    from emdata.evaluation import evaluate as run

    return run(volume, prediction, **options)


__all__ = ["Volume", "evaluate", "fetch", "info", "list_datasets", "open_volume", "predict", "prepare", "volumes"]
