"""Check a canonical volume against everything the store promises; ``deep`` also re-decodes
every block and compares it with the checksums recorded at write time.

Checked always: the completion marker (readable, and the arrays and levels it promises are
there), the ``emdata`` block (dataset, volume, split, voxel size, label kinds, classes and
their mapping to the ontology), the OME ``multiscales`` that viewers read (axes, and scales
and translations equal to the recorded levels, for the image and every label layer) and
dtypes and shapes both in the ``emdata`` block and in each array's ``zarr.json``. With
``deep``: every block's content, and the provenance hashes against the download records
still in the cache. Every finding names where it is; a damaged volume is reported, never
raised.

Example:
    >>> import tempfile
    >>> import numpy as np
    >>> from emdata.store.writer import write_volume
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", np.ones((4, 32, 32), "u1"), (30, 6, 6),
    ...                     meta={"dataset": "demo", "volume": "v", "split": "train"})
    >>> report = verify_volume(path, deep=True)
    >>> report.ok, report.problems, report.blocks
    (True, [], 1)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store import ome
from emdata.store.checksum import LEGACY_ALGORITHMS, block_slices, digest, hasher
from emdata.store.publish import COMPLETE_MARKER, SCHEMA, promise_problems, resolve, version_number

REQUIRED_EMDATA = ("schema", "dataset", "volume", "split", "voxel_size_nm", "shape", "raw", "labels")
LABEL_KINDS = ("instance", "semantic")


@dataclass
class VerifyReport:
    path: str
    deep: bool
    problems: list[str] = field(default_factory=list)
    arrays: int = 0
    blocks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "deep": self.deep, "arrays": self.arrays,
                "blocks_checked": self.blocks, "problems": self.problems}


@contextlib.contextmanager
def _finding(report: VerifyReport, where: str) -> Iterator[None]:
    """A malformed structure below ``where`` becomes a finding, not a crash."""
    try:
        yield
    except Exception as exc:
        report.problems.append(f"{where}: malformed ({type(exc).__name__}: {exc})")


def _read_json(path: Path, report: VerifyReport) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        report.problems.append(f"{path}: unreadable ({exc})")
        return None
    if not isinstance(doc, dict):
        report.problems.append(f"{path}: not a JSON object")
        return None
    return doc


def _check_multiscale(where: str, attrs: dict[str, Any], levels: list[dict[str, Any]], is_label: bool,
                      report: VerifyReport, channels: bool = False) -> list[str]:
    """Check one ``ome.multiscales`` block against the recorded ``levels``; returns its level paths.

    ``channels``: the image has a leading channel axis ``c`` (scale 1, translation 0 there)."""
    o = attrs.get("ome")
    if not isinstance(o, dict) or o.get("version") != ome.OME_VERSION:
        report.problems.append(f"{where}: attributes.ome.version must be {ome.OME_VERSION!r}")
        return []
    ms = o.get("multiscales")
    if not isinstance(ms, list) or len(ms) != 1 or not isinstance(ms[0], dict):
        report.problems.append(f"{where}: expected exactly one multiscales entry")
        return []
    axes = ms[0].get("axes", [])
    lead = 1 if channels else 0
    if channels and (not axes or axes[0] != {"name": "c", "type": "channel"}):
        report.problems.append(f"{where}: the first axis must be c of type channel, got {axes[:1]}")
    if [a.get("name") for a in axes[lead:]] != list(ome.AXES) or any(
            a.get("unit") != "nanometer" or a.get("type") != "space" for a in axes[lead:]):
        report.problems.append(f"{where}: axes must be z, y, x of type space in nanometer, got {axes}")
    paths = []
    recorded = {lv.get("path"): lv for lv in levels}
    for ds in ms[0].get("datasets", []):
        ts = ds.get("coordinateTransformations", [])
        if lead and ts and ts[0].get("scale", [None])[0] == 1 and all(
                t.get("translation", [0])[0] == 0 for t in ts[1:]):
            ts = [{**t, t["type"]: t[t["type"]][1:]} for t in ts]  # the channel axis is neither scaled nor shifted
        if not ts or ts[0].get("type") != "scale" or len(ts[0].get("scale", [])) != 3 or len(ts) > 2 or (
                len(ts) == 2 and ts[1].get("type") != "translation"):
            report.problems.append(f"{where}: level {ds.get('path')!r} needs one scale (then optionally one "
                                   f"translation) of length 3, got {ts}")
        elif ds.get("path") in recorded:
            lv = recorded[ds.get("path")]
            translation = ts[1].get("translation") if len(ts) == 2 else None
            want = None if is_label else lv.get("translation")
            if ts[0]["scale"] != lv.get("scale") or (translation or None) != (
                    want if want and any(want) else None):
                report.problems.append(f"{where}: level {ds['path']!r} OME scale {ts[0]['scale']} translation "
                                       f"{translation} != recorded scale {lv.get('scale')} translation {want}")
        paths.append(ds.get("path"))
    if not paths:
        report.problems.append(f"{where}: multiscales lists no datasets")
    return paths


def _check_array(root: Path, rel: str, expected: dict[str, Any], deep: bool, report: VerifyReport,
                 axes: tuple[str, ...] = ome.AXES) -> None:
    import zarr

    meta = _read_json(root / rel / "zarr.json", report)
    if meta is None:
        return
    report.arrays += 1
    if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
        report.problems.append(f"{rel}: not a zarr v3 array")
        return
    if meta.get("dimension_names") != list(axes):
        report.problems.append(f"{rel}: dimension_names {meta.get('dimension_names')} != {list(axes)}")
    if meta.get("shape") != expected["shape"] or meta.get("data_type") != expected["dtype"]:
        report.problems.append(f"{rel}: shape/dtype {meta.get('shape')} {meta.get('data_type')} != recorded "
                               f"{expected['shape']} {expected['dtype']}")
    checksum = meta.get("attributes", {}).get("emdata", {}).get("checksum")
    if not checksum:
        report.problems.append(f"{rel}: no content checksum recorded")
        return
    if not deep:
        return
    algorithm = checksum.get("algorithm", LEGACY_ALGORITHMS[0])  # the first releases recorded BLAKE2b only
    try:
        hasher(algorithm)
    except ValueError as exc:
        report.problems.append(f"{rel}: {exc}")
        return
    arr = zarr.open_array(str(root / rel), mode="r")
    block = tuple(checksum["block_shape"])
    recorded = checksum["blocks"]
    slices = list(block_slices(arr.shape, block))
    if len(slices) != len(recorded):
        report.problems.append(f"{rel}: {len(recorded)} block checksums recorded for {len(slices)} blocks")
        return
    for sl, want in zip(slices, recorded):
        box = ", ".join(f"{s.start}:{s.stop}" for s in sl)
        report.blocks += 1
        try:
            values = np.asarray(arr[sl])
        except Exception as exc:  # any decode failure is a finding, not a crash
            report.problems.append(f"{rel}: block [{box}] cannot be decoded ({type(exc).__name__}: {exc})")
            continue
        if digest(values, algorithm) != want:
            report.problems.append(f"{rel}: block [{box}] content differs from the checksum recorded at write time")


def _check_identity(path: Path, em: dict[str, Any], report: VerifyReport) -> None:
    for key in ("dataset", "volume", "split"):
        if not isinstance(em[key], str) or not em[key]:
            report.problems.append(f"{path}: emdata.{key} must be a non-empty string, got {em[key]!r}")
    name = path.name[1:].rsplit(".v", 1)[0] if version_number(path) is not None else path.name
    if path.parent.parent.name == "prepared" and (em["dataset"], f"{em['volume']}.ome.zarr") != (
            path.parent.name, name):
        report.problems.append(f"{path}: emdata block says {em['dataset']}/{em['volume']}, the volume lies at "
                               f"{path.parent.name}/{name}")
    voxel = em["voxel_size_nm"]
    if not (isinstance(voxel, list) and len(voxel) == 3 and all(isinstance(v, int | float) and v > 0 for v in voxel)):
        report.problems.append(f"{path}: emdata.voxel_size_nm must be three positive numbers, got {voxel!r}")


def _check_layer(where: str, layer: dict[str, Any], report: VerifyReport) -> None:
    """Kind, dtype, classes and their mapping to the ontology of one label layer's ``emdata`` entry."""
    from emdata.labels.ontology import ontology

    onto = ontology()
    if layer.get("kind") not in LABEL_KINDS:
        report.problems.append(f"{where}: kind {layer.get('kind')!r} is not one of {LABEL_KINDS}")
    if not np.issubdtype(np.dtype(layer["dtype"]), np.integer):
        report.problems.append(f"{where}: label dtype {layer['dtype']} is not an integer type")
    if any(lv.get("dtype") != layer["dtype"] for lv in layer["levels"]):
        report.problems.append(f"{where}: level dtypes {[lv.get('dtype') for lv in layer['levels']]} != layer "
                               f"dtype {layer['dtype']}")
    values = [c.get("value") for c in layer.get("classes", [])]
    if len(set(values)) != len(values) or not all(isinstance(v, int) for v in values):
        report.problems.append(f"{where}: class values {values} must be distinct integers")
    mapping = layer.get("mapping", {})
    for key, target in mapping.items():
        targets = target if key == "ranges" else [target]
        for t in targets:
            try:
                cls = onto.resolve(t["name"])
            except KeyError:
                report.problems.append(f"{where}: mapping {key!r} names {t.get('name')!r}, not an ontology class")
                continue
            if cls.id != t.get("id"):
                report.problems.append(f"{where}: mapping {key!r} gives {t.get('name')!r} id {t.get('id')}, the "
                                       f"ontology says {cls.id}")
        if key not in ("nonzero", "ranges") and (not key.lstrip("-").isdigit() or int(key) not in values):
            report.problems.append(f"{where}: mapping key {key!r} is not a class value of the layer ({values})")
    if layer.get("instance_of") and mapping.get("nonzero", {}).get("name") != onto.resolve(
            layer["instance_of"]).name:
        report.problems.append(f"{where}: instance_of {layer['instance_of']!r} but mapping.nonzero is "
                               f"{mapping.get('nonzero')}")
    for cls_name in layer.get("annotates", []):
        try:
            onto.resolve(cls_name)
        except KeyError:
            report.problems.append(f"{where}: annotates {cls_name!r}, not an ontology class")
    ignore = layer.get("ignore_value")
    if ignore is not None and not isinstance(ignore, int):
        report.problems.append(f"{where}: ignore_value {ignore!r} must be an integer or null")


def _download_records(dataset: str) -> dict[str, dict[str, Any]]:
    """Completion records of the dataset's cached downloads, by URL."""
    from emdata.config import downloads_dir

    root = downloads_dir(dataset)
    found: dict[str, dict[str, Any]] = {}
    for record in sorted(root.rglob("*.complete.json")) if root.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(record.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and "url" in doc:
                found[doc["url"]] = {**doc, "record": str(record)}
    return found


def _check_provenance(path: Path, em: dict[str, Any], report: VerifyReport) -> None:
    prov = em.get("provenance")
    if prov is None:
        return
    if not isinstance(prov, dict) or not isinstance(prov.get("sources", []), list):
        report.problems.append(f"{path}: emdata.provenance must be an object with a list of sources")
        return
    records = _download_records(em["dataset"])
    for i, source in enumerate(prov.get("sources", [])):
        where = f"{path}: emdata.provenance.sources[{i}]"
        if not isinstance(source, dict) or "url" not in source:
            report.problems.append(f"{where}: needs a url")
            continue
        if source.get("streamed"):
            continue
        sha = source.get("sha256")
        if not isinstance(sha, str) or len(sha) != 64:
            report.problems.append(f"{where}: sha256 {sha!r} is not a sha256 hex digest")
            continue
        record = records.get(source["url"])
        if record is not None and record.get("sha256") != sha:
            report.problems.append(f"{where}: built from {source['url']} with sha256 {sha[:16]}…, but the cached "
                                   f"download ({record['record']}) has {str(record.get('sha256'))[:16]}…; "
                                   "re-run `emdata prepare --force` to rebuild from it")


def verify_volume(path: Path, deep: bool = False) -> VerifyReport:
    """Verify one ``*.ome.zarr`` volume; never raises for a bad volume, it reports."""
    path = Path(path)
    report = VerifyReport(str(path), deep)
    with _finding(report, str(path)):
        _verify(path, resolve(path), deep, report)
    return report


def _verify(path: Path, folder: Path, deep: bool, report: VerifyReport) -> None:
    root = _read_json(folder / "zarr.json", report)
    if root is None:
        return
    if not (folder / COMPLETE_MARKER).is_file():
        report.problems.append(f"{path}: incomplete (no {COMPLETE_MARKER}); re-run `emdata prepare` to rebuild")
    if root.get("zarr_format") != 3 or root.get("node_type") != "group":
        report.problems.append(f"{path}: root is not a zarr v3 group")
        return
    attrs = root.get("attributes", {})
    em = attrs.get("emdata")
    if not isinstance(em, dict) or any(k not in em for k in REQUIRED_EMDATA):
        report.problems.append(f"{path}: emdata block missing or lacks one of {REQUIRED_EMDATA}")
        return
    if (folder / COMPLETE_MARKER).is_file():
        report.problems += promise_problems(path)
    if em["schema"] != SCHEMA:
        report.problems.append(f"{path}: emdata schema {em['schema']!r}, this emdata reads {SCHEMA!r}")
    with _finding(report, f"{path}: emdata block"):
        _check_identity(path, em, report)
    levels: list[dict[str, Any]] = []
    with _finding(report, f"{path}: emdata.raw"):
        levels = em["raw"]["levels"]
        paths = _check_multiscale("raw", attrs, levels, False, report)
        if paths != [lv["path"] for lv in levels]:
            report.problems.append(f"raw: OME levels {paths} != recorded levels {[lv['path'] for lv in levels]}")
        if levels and levels[0]["scale"] != em["voxel_size_nm"]:
            report.problems.append(f"raw: level 0 scale {levels[0]['scale']} != voxel size {em['voxel_size_nm']}")
        if levels and levels[0]["shape"] != em["shape"]:
            report.problems.append(f"raw: level 0 shape {levels[0]['shape']} != volume shape {em['shape']}")
        if any(lv["dtype"] != em["raw"]["dtype"] for lv in levels):
            report.problems.append(f"raw: level dtypes {[lv['dtype'] for lv in levels]} != raw dtype "
                                   f"{em['raw']['dtype']}")
        for lv in levels:
            with _finding(report, f"raw level {lv.get('path')!r}"):
                _check_array(folder, lv["path"], lv, deep, report)

    if em["labels"]:
        lg = _read_json(folder / "labels" / "zarr.json", report) or {}
        lo = lg.get("attributes", {}).get("ome", {})
        listed = [*em["labels"], *(n for n, p in em.get("predictions", {}).items() if p.get("kind") == "labels")]
        if lo.get("version") != ome.OME_VERSION or sorted(lo.get("labels", [])) != sorted(listed):
            report.problems.append(f"labels: ome attrs {lo} do not list the recorded layers {listed} "
                                   f"with version {ome.OME_VERSION}")
    for name, layer in em["labels"].items():
        where = f"labels/{name}"
        with _finding(report, where):
            la = _read_json(folder / where / "zarr.json", report)
            if la is None:
                continue
            _check_layer(where, layer, report)
            lpaths = _check_multiscale(where, la.get("attributes", {}), layer["levels"], True, report)
            if len(lpaths) != len(levels):
                report.problems.append(f"{where}: {len(lpaths)} levels, the image has {len(levels)}")
            il = la.get("attributes", {}).get("ome", {}).get("image-label")
            if not isinstance(il, dict) or il.get("version") != ome.OME_VERSION:
                report.problems.append(f"{where}: missing image-label block with version {ome.OME_VERSION}")
            for lv, raw_lv in zip(layer["levels"], levels):
                if lv["shape"] != raw_lv["shape"] or lv["scale"] != raw_lv["scale"]:
                    report.problems.append(f"{where}/{lv['path']}: shape {lv['shape']} scale {lv['scale']} != "
                                           f"image level {raw_lv['shape']} {raw_lv['scale']}")
                with _finding(report, f"{where}/{lv.get('path')}"):
                    _check_array(folder, f"{where}/{lv['path']}", lv, deep, report)
    for name, pred in em.get("predictions", {}).items():
        with _finding(report, f"{path}: emdata.predictions.{name}"):
            _check_prediction(folder, name, pred, em, levels, deep, report)
    if deep:
        with _finding(report, f"{path}: emdata.provenance"):
            _check_provenance(path, em, report)


PREDICTION_PROVENANCE = ("model", "model_hash", "voxel_size_nm", "tile", "halo", "level", "volume_version")
"""What the provenance of a prediction made by ``emdata predict`` records (``add_prediction``: ``model``)."""


def _check_prediction(folder: Path, name: str, pred: dict[str, Any], em: dict[str, Any],
                      raw_levels: list[dict[str, Any]], deep: bool, report: VerifyReport) -> None:
    """One prediction layer: where it lies, its kind and dtype, provenance, OME levels and arrays."""
    where = f"predictions.{name}"
    kind, rel = pred.get("kind"), pred.get("path")
    if kind not in ("labels", "probabilities") or rel != (f"labels/{name}" if kind == "labels"
                                                           else f"predictions/{name}"):
        report.problems.append(f"{where}: kind {kind!r} at {rel!r}; expected labels at labels/{name} or "
                               f"probabilities at predictions/{name}")
        return
    if name in em["labels"]:
        report.problems.append(f"{where}: has the name of a ground-truth label layer")
    dtype = np.dtype(pred["dtype"])
    if (kind == "labels") != bool(np.issubdtype(dtype, np.integer)) or (
            kind == "probabilities" and not np.issubdtype(dtype, np.floating)):
        report.problems.append(f"{where}: dtype {dtype} does not fit kind {kind}")
    prov = pred.get("provenance")
    if not isinstance(prov, dict) or "model" not in prov:
        report.problems.append(f"{where}: provenance must name the model (emdata.predictions.{name}.provenance)")
    elif "model_hash" in prov:  # made by emdata predict: everything it records
        missing = [k for k in PREDICTION_PROVENANCE if k not in prov]
        if missing:
            report.problems.append(f"{where}: provenance lacks {missing}")
    channels = kind == "probabilities"
    attrs = (_read_json(folder / rel / "zarr.json", report) or {}).get("attributes", {})
    paths = _check_multiscale(rel, attrs, pred["levels"], kind == "labels", report, channels=channels)
    if len(paths) != len(raw_levels):
        report.problems.append(f"{rel}: {len(paths)} levels, the image has {len(raw_levels)}")
    if kind == "labels" and not isinstance(attrs.get("ome", {}).get("image-label"), dict):
        report.problems.append(f"{rel}: missing image-label block with version {ome.OME_VERSION}")
    for lv, raw_lv in zip(pred["levels"], raw_levels):
        spatial = lv["shape"][1:] if channels else lv["shape"]
        if spatial != raw_lv["shape"] or lv["scale"] != raw_lv["scale"]:
            report.problems.append(f"{rel}/{lv['path']}: shape {lv['shape']} scale {lv['scale']} != image level "
                                   f"{raw_lv['shape']} {raw_lv['scale']}")
        with _finding(report, f"{rel}/{lv.get('path')}"):
            _check_array(folder, f"{rel}/{lv['path']}", lv, deep, report,
                         axes=("c", *ome.AXES) if channels else ome.AXES)


def find_volumes(path: Path) -> list[Path]:
    """``path`` itself if it is a volume, else every ``*.ome.zarr`` directly inside it."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return [path]
    return sorted(p for p in path.glob("*.ome.zarr") if p.is_dir())
