"""Score a prediction against a prepared volume's ground truth, the way the dataset's challenge does.

The prediction is a layer of the volume (written by :func:`emdata.predict` or
:func:`emdata.store.predictions.add_prediction`), a TIFF, an HDF5 dataset (``file.h5:key``), a zarr
array (``path.zarr`` or ``group.zarr:path/in/group``) or a layer of another OME-Zarr volume. It must
have the ground truth's shape ``(z, y, x)`` (a 2D image for a one-section volume), and where the file
records a voxel size (HDF5 / zarr attributes ``voxel_size_nm``, ``voxel_size`` or ``resolution`` in nm;
OME multiscales; ImageJ TIFF calibration) it must be the volume's.

Default metrics and ground-truth layer come from the dataset card's ``[[evaluation]]`` entries
(see ``docs/catalog.md``); the metrics themselves from :mod:`emdata.metrics`. The result is one
JSON-ready document: volume, ground-truth layer, prediction source, and one result per metric
(each with its ``metric``, ``version``, ``conventions`` and ``voxel_size``).

Example:
    >>> import tempfile
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> ids = np.zeros((2, 8, 8), "u4"); ids[:, :, :4] = 1; ids[:, :, 4:] = 2
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.zeros((2, 8, 8), "u1"), (30, 6, 6),
    ...                     labels=[LabelLayerData("cells", ids, "instance", instance_of="neuron")],
    ...                     meta={"dataset": "demo", "volume": "v", "split": "test"})
    >>> merged = Path(tempfile.mkdtemp()) / "merged.tif"
    >>> import tifffile; tifffile.imwrite(merged, np.ones((2, 8, 8), "u2"))
    >>> doc = evaluate(path, merged, gt_layer="cells", metrics=["arand"])
    >>> doc["results"]["arand"]["arand"], doc["prediction"]["format"]
    (0.33333333333333337, 'tiff')
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store.volume import Volume, open_volume

__all__ = ["EvaluationError", "Prediction", "evaluate", "open_prediction", "resolve_volume"]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".n5h5")
TIFF_SUFFIXES = (".tif", ".tiff")
VOXEL_ATTRS = ("voxel_size_nm", "voxel_size", "resolution")


class EvaluationError(ValueError):
    """A prediction that cannot be scored against this volume (shape, voxel size, kind, source)."""


@dataclass
class Prediction:
    """A prediction ready to score: ``values`` (array-like, ``(z, y, x)``) and where it came from."""

    values: Any
    source: str
    format: str
    voxel_size_nm: list[float] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "shape": list(self.values.shape),
                "dtype": str(np.dtype(self.values.dtype)), "voxel_size_nm": self.voxel_size_nm, **self.info}


def resolve_volume(volume: Volume | str | Path) -> Volume:
    """A volume from a ``Volume``, a ``*.ome.zarr`` path, or ``<dataset>/<volume>`` (a prepared one).

    Example:
        >>> resolve_volume("snemi3d/nothing")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: snemi3d/nothing: no such volume file, and snemi3d has no prepared volume 'nothing' (...)
    """
    if isinstance(volume, Volume):
        return volume
    path = Path(volume).expanduser()
    if not path.exists() and str(volume).count("/") == 1 and not str(volume).startswith(("/", ".")):
        from emdata.catalog import get_card
        from emdata.config import prepared_dir

        dataset, name = str(volume).split("/")
        get_card(dataset)  # an unknown id fails here, with suggestions
        candidate = prepared_dir(dataset) / f"{name}.ome.zarr"
        if not candidate.exists():
            have = sorted(p.name.removesuffix(".ome.zarr") for p in prepared_dir(dataset).glob("*.ome.zarr")) \
                if prepared_dir(dataset).is_dir() else []
            raise FileNotFoundError(f"{volume}: no such volume file, and {dataset} has no prepared volume {name!r} "
                                    f"(prepared: {have or 'none; run `emdata prepare ' + dataset + '`'})")
        path = candidate
    return open_volume(path)


def _voxel_from_attrs(attrs: Mapping[str, Any], where: str) -> list[float] | None:
    for key in VOXEL_ATTRS:
        if key in attrs:
            value = [float(v) for v in np.ravel(attrs[key])]
            if len(value) not in (2, 3) or min(value) <= 0:
                raise EvaluationError(f"{where}: attribute {key}={value} is not a voxel size in nm (z, y, x)")
            return value
    return None


def _ome_voxel(group_attrs: Mapping[str, Any], array_name: str) -> list[float] | None:
    """Scale of the multiscales dataset ``array_name`` in an OME group's attributes (spatial axes only)."""
    ome = group_attrs.get("ome", group_attrs)
    for ms in ome.get("multiscales", []) if isinstance(ome, Mapping) else []:
        axes = ms.get("axes", [])
        for ds in ms.get("datasets", []):
            if ds.get("path") == array_name:
                scale = next((t["scale"] for t in ds.get("coordinateTransformations", []) if t.get("type") == "scale"),
                             None)
                if scale is not None:
                    spatial = [s for s, a in zip(scale, axes) if a.get("type") == "space"] if axes else scale
                    return [float(s) for s in spatial]
    return None


def _tiff_voxel(tif: Any) -> list[float] | None:
    """Voxel size (nm) from an ImageJ TIFF's calibration, when it gives a length unit; else None."""
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("unit", "")).lower().replace("\\u00b5", "µ")
    per_nm = {"nm": 1.0, "nanometer": 1.0, "micron": 1000.0, "µm": 1000.0, "um": 1000.0}.get(unit)
    tags = tif.pages[0].tags
    if per_nm is None or "XResolution" not in tags or "YResolution" not in tags:
        return None
    x_num, x_den = tags["XResolution"].value
    y_num, y_den = tags["YResolution"].value
    xy = [y_den / y_num * per_nm, x_den / x_num * per_nm]
    return [float(meta["spacing"]) * per_nm, *xy] if "spacing" in meta else xy


@contextlib.contextmanager
def open_prediction(spec: Any, volume: Volume, layer: str | None = None) -> Iterator[Prediction]:
    """Open ``spec`` as a :class:`Prediction` (files stay open inside the ``with`` block).

    ``spec``: a numpy array; the name of a prediction or label layer of ``volume``; a TIFF; an
    HDF5 dataset ``file.h5:key``; a zarr array (``a.zarr`` or ``g.zarr:path``); another OME-Zarr
    volume (``layer`` picks its layer; default: its only prediction).
    """
    if isinstance(spec, np.ndarray):
        yield Prediction(spec, "<array>", "array")
        return
    text = str(spec)
    path = Path(text).expanduser()
    if layer is None and not path.exists() and (text in volume.predictions or text in volume.meta["labels"]):
        yield _volume_layer(volume, text, "layer")
        return
    file, _, key = text.rpartition(":") if ":" in text and not path.exists() else (text, "", "")
    file_path = Path(file).expanduser()
    if not file_path.exists():
        layers = sorted({*volume.predictions, *volume.meta["labels"]})
        raise FileNotFoundError(f"prediction {text!r}: no such file, and not a layer of {volume.path} (layers: "
                                f"{layers}); give a layer name, a TIFF, file.h5:key or a zarr array")
    suffix = file_path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        yield from _hdf5(file_path, key, text)
    elif suffix in TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(file_path) as tif:
            values = tif.asarray()
            voxel = _tiff_voxel(tif)
        yield Prediction(values, str(file_path), "tiff", voxel)
    elif (file_path / "zarr.json").is_file() or (file_path / ".zarray").is_file() or (file_path / ".zgroup").is_file():
        yield _zarr(file_path, key, text, layer)
    else:
        raise EvaluationError(f"prediction {text!r}: not a TIFF (.tif/.tiff), HDF5 (.h5/.hdf5 with :key) or zarr "
                              "folder; convert it to one of those or store it as a layer (emdata.store.predictions."
                              "add_prediction)")


def _hdf5(path: Path, key: str, text: str) -> Iterator[Prediction]:
    import h5py

    with h5py.File(path, "r") as f:
        if not key:
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            if len(names) != 1:
                raise EvaluationError(f"{path}: name the dataset as {path}:KEY; datasets in the file: {names}")
            key = names[0]
        if key not in f or not isinstance(f[key], h5py.Dataset):
            found: list[str] = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
            raise EvaluationError(f"{path}: no dataset {key!r}; datasets in the file: {found}")
        dset = f[key]
        voxel = _voxel_from_attrs(dset.attrs, f"{path}:{key}")
        yield Prediction(dset, f"{path}:{key}", "hdf5", voxel)


def _zarr(path: Path, key: str, text: str, layer: str | None) -> Prediction:
    import zarr

    node = zarr.open(str(path), mode="r")
    if key:
        node = node[key]
    if isinstance(node, zarr.Array):
        voxel = _voxel_from_attrs(node.attrs, text)
        if voxel is None and key and "/" in key:  # an OME level: the scale is in the parent group
            parent, _, name = key.rpartition("/")
            voxel = _ome_voxel(zarr.open_group(str(path), mode="r")[parent].attrs, name)
        elif voxel is None and not key and (path.parent / "zarr.json").is_file():
            with contextlib.suppress(Exception):
                voxel = _ome_voxel(zarr.open_group(str(path.parent), mode="r").attrs, path.name)
        return Prediction(node, text, "zarr", voxel)
    if "emdata" in node.attrs and not key:  # another prepared volume: one of its layers
        other = open_volume(path)
        if layer is None:
            if len(other.predictions) != 1:
                raise EvaluationError(f"{path}: name the layer to score with --pred-layer; prediction layers: "
                                      f"{sorted(other.predictions)}, label layers: {sorted(other.meta['labels'])}")
            layer = next(iter(other.predictions))
        return _volume_layer(other, layer, "volume-layer")
    arrays = sorted(name for name, _ in node.arrays()) if hasattr(node, "arrays") else []
    raise EvaluationError(f"{text}: a zarr group, not an array; name the array as {path}:PATH (arrays here: {arrays})")


def _volume_layer(vol: Volume, name: str, kind: str) -> Prediction:
    if name in vol.predictions:
        meta = vol.predictions[name]
        if meta["kind"] != "labels":
            raise EvaluationError(f"{vol.path}: prediction {name!r} holds {meta['kind']} (channels, z, y, x); the "
                                  "metrics score labels: predict with output='labels' or store a thresholded layer")
        return Prediction(vol.prediction(name), f"{vol.path}#{name}", kind, list(vol.voxel_size),
                          {"layer": name, "provenance": meta.get("provenance", {}), "classes": meta.get("classes", [])})
    if name in vol.meta["labels"]:
        return Prediction(vol.labels[name], f"{vol.path}#{name}", kind, list(vol.voxel_size), {"layer": name})
    raise EvaluationError(f"{vol.path}: no layer {name!r}; prediction layers: {sorted(vol.predictions)}, label "
                          f"layers: {sorted(vol.meta['labels'])}")


def _check_compatible(pred: Prediction, gt: Any, vol: Volume, gt_layer: str) -> Any:
    """The prediction's values shaped like ``gt`` (a 2D image for a one-section volume), or a clear error."""
    values = pred.values
    gt_shape, shape = tuple(gt.shape), tuple(values.shape)
    if len(shape) == 2 and gt_shape[0] == 1 and shape == gt_shape[1:]:
        values = np.asarray(values)[None]
        shape = values.shape
    if shape != gt_shape:
        hint = ""
        if sorted(shape) == sorted(gt_shape):
            hint = "; same sizes in another order: emdata arrays are (z, y, x), transpose the prediction"
        elif len(shape) == 4:
            hint = "; a 4D array looks like per-channel probabilities: store labels (argmax or threshold) instead"
        raise EvaluationError(f"prediction {pred.source} has shape {shape}, the ground truth {gt_layer!r} of "
                              f"{vol.path} has {gt_shape}{hint}")
    if not np.issubdtype(np.dtype(values.dtype), np.integer) and not np.issubdtype(np.dtype(values.dtype), np.bool_):
        raise EvaluationError(f"prediction {pred.source} is {np.dtype(values.dtype)}; the metrics score labels "
                              "(integers): threshold or argmax the probabilities first")
    if pred.voxel_size_nm is not None:
        want = list(vol.voxel_size)[-len(pred.voxel_size_nm):]
        if any(abs(a - b) > 0.01 * b for a, b in zip(pred.voxel_size_nm, want)):
            raise EvaluationError(f"prediction {pred.source} has voxel size {pred.voxel_size_nm} nm, {vol.path} has "
                                  f"{list(vol.voxel_size)} nm; resample the prediction to the volume's grid")
    return values


def _defaults(vol: Volume, gt_layer: str | None) -> tuple[str, list[str], dict[str, dict[str, Any]], str]:
    """(gt layer, metrics, options, where they came from) from the dataset's card."""
    from emdata.catalog import get_card

    try:
        entries = get_card(vol.dataset).evaluation
    except KeyError:
        entries = []
    if gt_layer is not None:
        entries = [e for e in entries if e["gt_layer"] == gt_layer]
    if not entries:
        what = f"for layer {gt_layer!r}" if gt_layer else ""
        raise EvaluationError(f"{vol.dataset} has no default evaluation {what} in its card; name the metrics "
                              "(--metric, e.g. arand, voi, dice) and the ground-truth layer (--gt-layer)")
    entry = entries[0]
    return entry["gt_layer"], entry["metrics"], entry["options"], f"card:{vol.dataset}"


def _mask(values: Any, foreground: Sequence[int] | None, ignore: int | None) -> Any:
    """The foreground mask of ``values`` (``foreground`` values; default: nonzero), ignore voxels kept as 2."""
    if foreground is None and ignore is None:
        return values
    data = np.asarray(values)
    mask = (data != 0) if foreground is None else np.isin(data, list(foreground))
    out = mask.astype(np.uint8)
    if ignore is not None:
        out[data == ignore] = 2
    return out


def evaluate(volume: Volume | str | Path, prediction: Any, *, gt_layer: str | None = None,
             pred_layer: str | None = None, metrics: Sequence[str] | None = None,
             options: Mapping[str, Mapping[str, Any]] | None = None,
             gt_foreground: Sequence[int] | None = None,
             pred_foreground: Sequence[int] | None = None) -> dict[str, Any]:
    """Score ``prediction`` against ground-truth layer ``gt_layer`` of ``volume``; returns one JSON-ready document.

    ``metrics`` default to the dataset card's evaluation entry (for ``gt_layer``, or the first
    one, which then also names the layer). ``options``: per metric, keyword options for it (on
    top of the card's). For the foreground metrics (``dice``, ``iou``) the foreground is every
    nonzero value unless ``gt_foreground`` / ``pred_foreground`` list the values that count
    (e.g. the class index a model gives mitochondria); the layer's ``ignore_value`` is skipped.
    """
    from emdata.metrics import METRICS

    vol = resolve_volume(volume)
    card_options: dict[str, dict[str, Any]] = {}
    if metrics:
        names, origin = list(dict.fromkeys(metrics)), "requested"
        if gt_layer is None:
            with contextlib.suppress(EvaluationError):
                gt_layer = _defaults(vol, None)[0]
        if gt_layer is None:
            if len(vol.meta["labels"]) != 1:
                raise EvaluationError(f"{vol.path}: name the ground-truth layer (--gt-layer); label layers: "
                                      f"{sorted(vol.meta['labels'])}")
            gt_layer = next(iter(vol.meta["labels"]))
        with contextlib.suppress(EvaluationError):
            card_options = _defaults(vol, gt_layer)[2]
    else:
        gt_layer, names, card_options, origin = _defaults(vol, gt_layer)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise EvaluationError(f"unknown metric(s) {unknown}; choose from {sorted(METRICS)}")
    if gt_layer not in vol.meta["labels"]:
        raise EvaluationError(f"{vol.path} has no ground-truth layer {gt_layer!r}; label layers: "
                              f"{sorted(vol.meta['labels'])}")
    gt = vol.labels[gt_layer]
    ignore = vol.meta["labels"][gt_layer].get("ignore_value")
    voxel = list(vol.voxel_size)
    results: dict[str, Any] = {}
    with open_prediction(prediction, vol, pred_layer) as pred:
        values = _check_compatible(pred, gt, vol, gt_layer)
        for name in names:
            metric = METRICS[name]
            kwargs = {**card_options.get(name, {}), **(options or {}).get(name, {})}
            if metric.kind == "semantic-mask":
                if ignore is not None or gt_foreground is not None:
                    kwargs.setdefault("ignore", 2 if ignore is not None else None)
                g, p = _mask(gt, gt_foreground, ignore), _mask(values, pred_foreground, None)
            elif metric.kind == "semantic-classes":
                if ignore is not None:
                    kwargs.setdefault("ignore", ignore)
                g, p = gt, values
            else:
                g, p = gt, values
            results[name] = metric(g, p, voxel_size=voxel, **kwargs)
        described = pred.describe()
    return json.loads(json.dumps({
        "volume": str(vol.path), "dataset": vol.dataset, "name": vol.name, "split": vol.split,
        "voxel_size_nm": voxel, "gt_layer": gt_layer, "prediction": described, "metrics_from": origin,
        "gt_foreground": list(gt_foreground) if gt_foreground is not None else None,
        "pred_foreground": list(pred_foreground) if pred_foreground is not None else None,
        "results": results}, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def summary_rows(doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, values, version) per result, the values as ``key=value`` of every number it gives.

    Example:
        >>> summary_rows({"results": {"arand": {"metric": "arand", "version": "v@1", "arand": 0.25}}})
        [('arand', 'arand=0.25', 'v@1')]
    """
    rows = []
    for name, res in doc["results"].items():
        parts = []
        for key, value in res.items():
            if key in ("metric", "version", "conventions", "voxel_size") or isinstance(value, dict | list):
                continue
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
        rows.append((name, ", ".join(parts), str(res.get("version", ""))))
    return rows
