"""Check a canonical volume: schema, completeness, shapes and dtypes; ``deep`` re-decodes
every block and compares it with the checksums recorded at write time.

Example:
    >>> report = verify_volume(Path("prepared/snemi3d/train.ome.zarr"), deep=True)  # doctest: +SKIP
    >>> report.ok, report.problems  # doctest: +SKIP
    (True, [])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store import ome
from emdata.store.checksum import block_slices, digest
from emdata.store.writer import COMPLETE_MARKER, SCHEMA

REQUIRED_EMDATA = ("schema", "dataset", "volume", "split", "voxel_size_nm", "shape", "raw", "labels")


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


def _read_json(path: Path, report: VerifyReport) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        report.problems.append(f"{path}: unreadable ({exc})")
        return None


def _check_multiscale(where: str, attrs: dict[str, Any], report: VerifyReport) -> list[str]:
    """Check one ``ome.multiscales`` block; returns its level paths."""
    o = attrs.get("ome")
    if not isinstance(o, dict) or o.get("version") != ome.OME_VERSION:
        report.problems.append(f"{where}: attributes.ome.version must be {ome.OME_VERSION!r}")
        return []
    ms = o.get("multiscales")
    if not isinstance(ms, list) or len(ms) != 1:
        report.problems.append(f"{where}: expected exactly one multiscales entry")
        return []
    axes = [a.get("name") for a in ms[0].get("axes", [])]
    if axes != list(ome.AXES) or any(a.get("unit") != "nanometer" for a in ms[0]["axes"]):
        report.problems.append(f"{where}: axes must be z, y, x in nanometer, got {ms[0].get('axes')}")
    paths = []
    for ds in ms[0].get("datasets", []):
        ts = ds.get("coordinateTransformations", [])
        if not ts or ts[0].get("type") != "scale" or len(ts[0].get("scale", [])) != 3 or len(ts) > 2 or (
                len(ts) == 2 and ts[1].get("type") != "translation"):
            report.problems.append(f"{where}: level {ds.get('path')!r} needs one scale (then optionally one "
                                   f"translation) of length 3, got {ts}")
        paths.append(ds.get("path"))
    if not paths:
        report.problems.append(f"{where}: multiscales lists no datasets")
    return paths


def _check_array(root: Path, rel: str, expected: dict[str, Any], deep: bool, report: VerifyReport) -> None:
    import zarr

    meta = _read_json(root / rel / "zarr.json", report)
    if meta is None:
        return
    report.arrays += 1
    if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
        report.problems.append(f"{rel}: not a zarr v3 array")
        return
    if meta.get("dimension_names") != list(ome.AXES):
        report.problems.append(f"{rel}: dimension_names {meta.get('dimension_names')} != {list(ome.AXES)}")
    if meta.get("shape") != expected["shape"] or meta.get("data_type") != expected["dtype"]:
        report.problems.append(f"{rel}: shape/dtype {meta.get('shape')} {meta.get('data_type')} != recorded "
                               f"{expected['shape']} {expected['dtype']}")
    checksum = meta.get("attributes", {}).get("emdata", {}).get("checksum")
    if not checksum:
        report.problems.append(f"{rel}: no content checksum recorded")
        return
    if not deep:
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
        if digest(values) != want:
            report.problems.append(f"{rel}: block [{box}] content differs from the checksum recorded at write time")


def verify_volume(path: Path, deep: bool = False) -> VerifyReport:
    """Verify one ``*.ome.zarr`` volume; never raises for a bad volume, it reports."""
    path = Path(path)
    report = VerifyReport(str(path), deep)
    root = _read_json(path / "zarr.json", report)
    if root is None:
        return report
    if not (path / COMPLETE_MARKER).is_file():
        report.problems.append(f"{path}: incomplete (no {COMPLETE_MARKER}); re-run `emdata prepare` to rebuild")
    if root.get("zarr_format") != 3 or root.get("node_type") != "group":
        report.problems.append(f"{path}: root is not a zarr v3 group")
        return report
    attrs = root.get("attributes", {})
    em = attrs.get("emdata")
    if not isinstance(em, dict) or any(k not in em for k in REQUIRED_EMDATA):
        report.problems.append(f"{path}: emdata block missing or lacks one of {REQUIRED_EMDATA}")
        return report
    if em["schema"] != SCHEMA:
        report.problems.append(f"{path}: emdata schema {em['schema']!r}, this emdata reads {SCHEMA!r}")
    paths = _check_multiscale("raw", attrs, report)
    levels = em["raw"]["levels"]
    if paths != [lv["path"] for lv in levels]:
        report.problems.append(f"raw: OME levels {paths} != recorded levels {[lv['path'] for lv in levels]}")
    if levels and levels[0]["scale"] != em["voxel_size_nm"]:
        report.problems.append(f"raw: level 0 scale {levels[0]['scale']} != voxel size {em['voxel_size_nm']}")
    if levels and levels[0]["shape"] != em["shape"]:
        report.problems.append(f"raw: level 0 shape {levels[0]['shape']} != volume shape {em['shape']}")
    for lv in levels:
        _check_array(path, lv["path"], lv, deep, report)

    if em["labels"]:
        lg = _read_json(path / "labels" / "zarr.json", report) or {}
        lo = lg.get("attributes", {}).get("ome", {})
        if lo.get("version") != ome.OME_VERSION or sorted(lo.get("labels", [])) != sorted(em["labels"]):
            report.problems.append(f"labels: ome attrs {lo} do not list the recorded layers {list(em['labels'])} "
                                   f"with version {ome.OME_VERSION}")
    for name, layer in em["labels"].items():
        where = f"labels/{name}"
        la = _read_json(path / where / "zarr.json", report)
        if la is None:
            continue
        lpaths = _check_multiscale(where, la.get("attributes", {}), report)
        if len(lpaths) != len(levels):
            report.problems.append(f"{where}: {len(lpaths)} levels, the image has {len(levels)}")
        il = la.get("attributes", {}).get("ome", {}).get("image-label")
        if not isinstance(il, dict) or il.get("version") != ome.OME_VERSION:
            report.problems.append(f"{where}: missing image-label block with version {ome.OME_VERSION}")
        if not np.issubdtype(np.dtype(layer["dtype"]), np.integer):
            report.problems.append(f"{where}: label dtype {layer['dtype']} is not an integer type")
        for lv, raw_lv in zip(layer["levels"], levels):
            if lv["shape"] != raw_lv["shape"]:
                report.problems.append(f"{where}/{lv['path']}: shape {lv['shape']} != image level {raw_lv['shape']}")
            _check_array(path, f"{where}/{lv['path']}", lv, deep, report)
    return report


def find_volumes(path: Path) -> list[Path]:
    """``path`` itself if it is a volume, else every ``*.ome.zarr`` directly inside it."""
    path = Path(path)
    if (path / "zarr.json").is_file():
        return [path]
    return sorted(p for p in path.glob("*.ome.zarr") if p.is_dir())
