"""The shared recipe test: one call proves a dataset's recipe against its replica.

:func:`check_recipe` writes the replica that ``emdata/datasets/<id>/replica.py`` declares
(``write_replica``, ``PREPARE_OPTIONS``, ``placed_folders``; found by discovery, so a new dataset
registers nothing elsewhere), serves it on a loopback mirror and checks, in order:

1. **kill and resume**: a subprocess runs ``prepare`` and is killed (SIGKILL) as soon as the first
   volume's store is opened for writing; ``prepare`` run again then finishes the job, and
   ``prepare(force=True)`` from scratch writes the very same store (every array and every
   attribute; times of writing or checking aside). Run for every dataset: the small replicas
   keep it to a few seconds each.
2. **the card tells the truth**: every label layer and volume written is on the card (a volume
   by its name or one of its ``cases``, with the card's split), and every prepared card layer is
   written (but ``unwritten_layers``, which the replica cannot trigger).
3. **voxel-exact**: the arrays ``expected(truth)`` gives (``{volume: {"raw" | layer: array}}``)
   equal what was stored, value for value.
4. **valid OME-Zarr** (``ome-zarr-models``: the image and every label group) and
   ``verify_volume(deep=True)`` (``emdata verify --deep``) passes.
5. **rerun**: ``prepare`` again makes no request and rewrites no file.
6. **offline**: with ``EMDATA_OFFLINE=1`` and an empty cache ``prepare`` fails with a one-line
   error naming the missing file (a card source's URL, a file under it or its name, or the
   hand-placed folder).

Example (the whole test of a dataset):
    >>> import tempfile
    >>> result = check_recipe("isbi2012", tempfile.mkdtemp(),
    ...                       expected=lambda truth: {"train": {"raw": truth["raw"]}})
    >>> [v.name for v in result.volumes]
    ['train']
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

Expected = Callable[[Any], Mapping[str, Mapping[str, np.ndarray]]]
"""``truth -> {volume name: {"raw" or label layer name: array}}``: what the store must hold."""

_TIMESTAMP = re.compile(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^"]*"')
"""A time as the store writes it (``2026-01-31T12:00:00+0000``), quoted in JSON."""

_KILL_AT_FIRST_WRITE = """
import json, os, signal, sys
import zarr
import emdata

open_group = zarr.open_group

def killed_once_writing(*args, **kwargs):
    group = open_group(*args, **kwargs)
    if kwargs.get("mode") == "w":
        os.kill(os.getpid(), signal.SIGKILL)
    return group

zarr.open_group = killed_once_writing
emdata.prepare(sys.argv[1], **json.loads(sys.argv[2]))
"""


_PREPARE_REPORTING_THE_ERROR = """
import json, sys
import emdata

try:
    emdata.prepare(sys.argv[1], **json.loads(sys.argv[2]))
except Exception as exc:
    print(exc)
    sys.exit(3)
"""


@dataclass(frozen=True)
class RecipeCheck:
    """What :func:`check_recipe` prepared: the volumes, the replica's truth, the options used."""

    volumes: list[Any]
    truth: Any
    options: dict[str, Any]


def check_recipe(dataset: str, workdir: Path | str, *, expected: Expected,
                 unwritten_layers: frozenset[str] | set[str] = frozenset(), small: bool = True) -> RecipeCheck:
    """Run the shared recipe checks (module docstring) for ``dataset`` under ``workdir``; raises
    AssertionError naming the dataset and what differed. ``small`` picks the replica's size."""
    import emdata
    from emdata.testing.replica_sets import serve_replicas

    workdir = Path(workdir)
    with serve_replicas([dataset], workdir / "kit", small=small) as served:
        options = served.options[dataset]
        # the subprocess gets the served settings spelled out (not only this process's settings)
        _kill_then_resume(dataset, options, {"EMDATA_HOME": str(served.home), "EMDATA_MIRROR": served.url,
                                             "EMDATA_CHECKSUMS": str(served.home / "replica-checksums.json"),
                                             "EMDATA_OFFLINE": "0"})
        volumes = emdata.prepare(dataset, **options)
        assert volumes, f"{dataset}: prepare wrote no volume"
        resumed = {vol.name: _store_content(vol.path) for vol in volumes}
        _card_matches(dataset, volumes, set(unwritten_layers))
        _voxel_exact(dataset, volumes, expected(served.truth[dataset]))
        for vol in volumes:
            _valid_ome_and_verified(vol.path)

        fresh = emdata.prepare(dataset, force=True, **options)
        assert sorted(v.name for v in fresh) == sorted(resumed), f"{dataset}: a fresh prepare wrote other volumes"
        for vol in fresh:
            _same_content(f"{dataset}/{vol.name}", resumed[vol.name], _store_content(vol.path))

        before = _files(fresh)
        served.server.log.clear()
        again = emdata.prepare(dataset, **options)
        assert not served.server.log, f"{dataset}: a rerun requested {[r.path for r in served.server.log]}"
        assert [v.name for v in again] == [v.name for v in fresh], f"{dataset}: a rerun returned other volumes"
        changed = sorted({path for path, stamp in set(_files(again).items()) ^ set(before.items())})
        assert not changed, f"{dataset}: a rerun rewrote {changed}"
    _offline_error_names_files(dataset, options, workdir / "offline-home")
    return RecipeCheck(again, served.truth[dataset], options)


def _kill_then_resume(dataset: str, options: dict[str, Any], settings: dict[str, str]) -> None:
    run = subprocess.run([sys.executable, "-c", _KILL_AT_FIRST_WRITE, dataset, json.dumps(options)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **settings})
    assert run.returncode == -signal.SIGKILL, (
        f"{dataset}: the prepare to kill ended ({run.returncode}) before its first volume write: {run.stderr[-2000:]}")


def _store_content(path: Path) -> dict[str, Any]:
    """``{key: array or attributes}`` of every array and group of the store; times (of writing, of
    checking a source) read ``<time>``."""
    import warnings

    import zarr

    content: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        content[f"{prefix}/.attrs"] = json.loads(_TIMESTAMP.sub('"<time>"', json.dumps(dict(group.attrs))))
        for name, array in group.arrays():
            content[f"{prefix}/{name}"] = array[...]
            content[f"{prefix}/{name}/.attrs"] = json.loads(_TIMESTAMP.sub('"<time>"', json.dumps(dict(array.attrs))))
        for name, child in group.groups():
            walk(child, f"{prefix}/{name}")

    with warnings.catch_warnings():  # the completion marker and sampler indices are not zarr nodes
        warnings.simplefilter("ignore")
        walk(zarr.open_group(str(path), mode="r"), "")
    return content


def _same_content(what: str, resumed: dict[str, Any], fresh: dict[str, Any]) -> None:
    assert sorted(resumed) == sorted(fresh), f"{what}: resumed store has {sorted(resumed)}, a fresh one {sorted(fresh)}"
    for key, value in resumed.items():
        if isinstance(value, np.ndarray):
            same = value.dtype == fresh[key].dtype and np.array_equal(value, fresh[key])
        else:
            same = value == fresh[key]
        assert same, f"{what}: {key} differs between the resumed and a fresh prepare"


def _card_matches(dataset: str, volumes: list[Any], unwritten: set[str]) -> None:
    from emdata.catalog import get_card

    card = get_card(dataset)
    written = {name for vol in volumes for name in vol.meta["labels"]}
    on_card = {layer.stored_name for layer in card.labels if layer.prepared}
    assert written <= on_card, f"{dataset}: prepare wrote label layer(s) {sorted(written - on_card)} not on the card"
    never = {layer.stored_name for layer in card.labels if layer.prepared} - written - unwritten
    assert not never, f"{dataset}: card layer(s) {sorted(never)} never written by the replica (or list them unwritten)"
    for vol in volumes:
        entries = [spec for spec in card.volumes if spec.prepared and spec.writes(vol.name)]
        assert entries, (f"{dataset}: prepare wrote volume {vol.name!r}, which no card [[volumes]] entry names "
                         f"(names: {[spec.name for spec in card.volumes]}; add it to one entry's cases)")
        assert vol.split in {spec.split for spec in entries}, f"{dataset}: {vol.name} split {vol.split!r}"


def _voxel_exact(dataset: str, volumes: list[Any], expected: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    by_name = {vol.name: vol for vol in volumes}
    assert expected, f"{dataset}: expected() named no volume"
    for name, arrays in expected.items():
        assert name in by_name, f"{dataset}: expected volume {name!r}, prepared {sorted(by_name)}"
        vol = by_name[name]
        for key, want in arrays.items():
            stored = vol.raw if key == "raw" else vol.labels[key]
            got = np.asarray(stored[...])
            assert got.shape == np.shape(want), f"{dataset}/{name}/{key}: shape {got.shape}, expected {np.shape(want)}"
            assert np.array_equal(got, want), (f"{dataset}/{name}/{key}: "
                                               f"{int(np.count_nonzero(got != want))} voxel(s) differ from the replica")


def _valid_ome_and_verified(path: Path) -> None:
    import zarr
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image_label import ImageLabel

    from emdata.store.verify import verify_volume

    group = zarr.open_group(str(path), mode="r")
    open_ome_zarr(group)
    for name in group.attrs["emdata"]["labels"]:
        ImageLabel.from_zarr(zarr.open_group(str(path / "labels" / name), mode="r"))
    report = verify_volume(path, deep=True)
    assert report.ok, f"{path}: verify --deep: {report.problems}"


def _files(volumes: list[Any]) -> dict[str, tuple[int, int]]:
    """``{file: (size, mtime_ns)}`` of every file of the volumes' stores (their resolved folders)."""
    out = {}
    for vol in volumes:
        root = Path(vol.path).resolve()
        for path in root.rglob("*"):
            if path.is_file():
                stat = path.stat()
                out[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return out


def _offline_error_names_files(dataset: str, options: dict[str, Any], empty_home: Path) -> None:
    """``prepare`` offline over an empty cache, in a subprocess (its settings given, none changed here)."""
    from emdata.catalog import get_card

    run = subprocess.run([sys.executable, "-c", _PREPARE_REPORTING_THE_ERROR, dataset, json.dumps(options)],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "EMDATA_HOME": str(empty_home), "EMDATA_OFFLINE": "1"})
    assert run.returncode == 3, f"{dataset}: prepare offline over an empty cache ended ({run.returncode}): {run.stderr}"
    message = run.stdout.strip()
    names = [f"{empty_home}{os.sep}"]  # a hand-placed dataset names the folder under the home to put it in
    for source in get_card(dataset).sources:
        url = source.url.split("{", 1)[0].rstrip("/")  # a templated URL ({z:03d}): its fixed part
        path = unquote(urlsplit(url.removeprefix("precomputed://")).path).rstrip("/")
        names += [url, path.rsplit("/", 1)[-1]] if "{" not in source.url else [url]
    assert "\n" not in message, f"{dataset}: the offline error is not one line: {message!r}"
    assert any(name and name in message for name in names), f"{dataset}: the offline error names no file: {message!r}"
