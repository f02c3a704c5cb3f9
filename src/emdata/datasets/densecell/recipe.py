"""DenseCell (platelet_data_1219, Guay et al. 2021): ``platelet_data_1219.zip`` → volumes
``train``, ``eval`` (split ``val``) and ``test``, each with the image and a 7-class
``semantic`` layer (0 background … 6 dense granule core), plus the training error weights.

Layout (leapmanlab ``dense-cell/README.md`` and leapmanlab/examples ``download.py``): the zip
unpacks to ``platelet_data/`` with ``{train,eval,test}-images.tif``,
``{train,eval,test}-labels.tif`` and ``train-error-weights.tif``. The archive is extracted into
the download folder and every member listed in the published md5 table is checked (see *Member
checksums*). TIFF pages are read as stored, (page, row, column) = (z, y, x). Images must be
greyscale integer stacks, labels single-channel integer stacks of the image's shape with values
0–6 (anything else is an error naming the file and the values); labels are stored bit-identical,
in their dtype.

**Error weights.** ``train-error-weights.tif`` is a per-voxel training weight map, not a label.
The store keeps only integer label layers, so:

- integer weights → a layer ``error-weights`` of the ``train`` volume, stored bit-identical
  (kind ``semantic`` with no classes and ``annotates = []``: it labels nothing);
- float weights that are all whole numbers → the same layer, cast losslessly to the smallest
  integer type that holds them (the cast is checked to round-trip exactly, and recorded);
- any other float weights → a separate volume ``train-error-weights`` (split ``train``,
  ``role: "weights"``) whose image is the weight map in its own float dtype, voxel-aligned
  with ``train``. It is built and returned together with ``train``.

``train``'s metadata ``error_weights`` says which happened.

**Member checksums.** When the zip is the published one (its md5 equals the card's
``253310093ee2c00304fbabdb0c7e3a4a``), every member must match the published per-file md5
table (leapmanlab/examples), else preparation stops. When it is not (its checksum was
overridden through ``EMDATA_CHECKSUMS`` — a mirror that repackages the data, or a test
replica), the published table does not apply; a member is then checked strictly against a
sha256 listed in the same ``EMDATA_CHECKSUMS`` file under the key ``<zip URL>#<member path>``
(e.g. ``https://www.dropbox.com/s/68yclbraqq1diza/platelet_data_1219.zip#platelet_data/train-images.tif``),
and otherwise compared with the published md5 and, if different, logged and recorded as
unverified (``member_checks`` in the metadata) instead of failing.

**Voxel size.** Neither the release page nor the loaders state it (the card leaves it out on
purpose), and the store needs one: volumes get the placeholder (1, 1, 1) nm = "one voxel", with
``voxel_size_placeholder: true`` and a note. It is not a physical size; the related platelet-em
release is about (40, 10, 10) nm but nothing says this archive shares that sampling.

Example (on a small local replica; without ``offline_replica`` the call reads the published files):
    >>> import emdata
    >>> from emdata.testing.offline import offline_replica
    >>> with offline_replica("densecell"):
    ...     train = emdata.prepare("densecell")[0]
    ...     train.name, train.meta["error_weights"]["stored_as"]
    ('train', 'volume train-error-weights')
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from emdata import config
from emdata.catalog import Card, get_card
from emdata.config import downloads_dir
from emdata.datasets._common import choose_volumes, fetch_source, layer, provenance, publish, reusable, volume_path
from emdata.datasets.contract import Option
from emdata.formats.lazy import Mapped, TiffStack, as_source, maximum, minimum, reduce_slabs, unique_values
from emdata.sources.archive import extract
from emdata.sources.download import FetchResult
from emdata.store.volume import Volume
from emdata.store.writer import LabelLayerData

DATASET = "densecell"
RECIPE_VERSION = 1
OPTIONS: tuple[Option, ...] = ()
SOURCE = "platelet_data_1219.zip"
TOP = "platelet_data"
FILES = {"train": ("train-images.tif", "train-labels.tif"), "eval": ("eval-images.tif", "eval-labels.tif"),
         "test": ("test-images.tif", "test-labels.tif")}
WEIGHTS_FILE = "train-error-weights.tif"
WEIGHTS_VOLUME = "train-error-weights"
WEIGHTS_LAYER = "error-weights"
# Per-file md5s of the published archive (leapmanlab/examples, example1/src/download.py).
MEMBER_MD5 = {
    "train-images.tif": "940ffa25038e9e9ca0ae86bc7e75553c",
    "train-labels.tif": "dc72be0033f8ce409cac0202928873ba",
    "train-error-weights.tif": "dd30e90f77b2141dd01ab7b76e238163",
    "eval-images.tif": "0fd6642cd7cf0a1e758d7d48b3ac5b57",
    "eval-labels.tif": "abec7b896c2b57ebfc6bccac77cdcd2f",
    "test-images.tif": "d3f296cbedb7c3240e6be0e9e7217f3a",
    "test-labels.tif": "dd21ca5031d74b6f8be9f954e8fe7eac",
}
CLASSES = range(7)
PLACEHOLDER_VOXEL_NM = (1.0, 1.0, 1.0)
PLACEHOLDER_NOTE = ("voxel size unknown: no source states it for platelet_data_1219; (1, 1, 1) nm is a placeholder "
                    "meaning 'one voxel', not a physical size")
log = logging.getLogger(__name__)


class DenseCellFormatError(ValueError):
    """A file in platelet_data_1219.zip does not have the structure DenseCell publishes."""


class MemberChecksumError(DenseCellFormatError):
    """An extracted member does not match its published (or overridden) checksum."""


def published_md5(card: Card) -> str | None:
    """The md5 the card publishes for the zip (None if it publishes another kind of checksum)."""
    source = card.source(SOURCE)
    return source.hash_value if source.hash_algorithm == "md5" else None


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def check_members(card: Card, fetched: FetchResult, folder: Path, needed: list[str]) -> dict[str, dict[str, Any]]:
    """Check every extracted member of the md5 table (see the module docstring); returns per-file results."""
    source = card.source(SOURCE)
    is_published = published_md5(card) == fetched.md5
    overrides = config.checksum_overrides()
    results: dict[str, dict[str, Any]] = {}
    for name, expected_md5 in MEMBER_MD5.items():
        member = f"{TOP}/{name}"
        path = folder / TOP / name
        if not path.is_file():
            if name in needed:
                raise DenseCellFormatError(f"{fetched.path.name}: no member {member}; the archive must unpack to "
                                           f"{TOP}/ with {', '.join(MEMBER_MD5)}")
            results[name] = {"status": "missing (not needed for the volumes prepared)"}
            continue
        md5, sha = _digests(path)
        entry: dict[str, Any] = {"md5": md5, "sha256": sha}
        pinned = overrides.get(f"{source.url}#{member}")
        if is_published:
            if md5 != expected_md5:
                raise MemberChecksumError(f"{fetched.path.name}:{member}: md5 {md5} differs from the published "
                                          f"{expected_md5} although the archive itself matches the published md5; "
                                          "delete the download folder and prepare again")
            entry["status"] = "verified: published md5"
        elif pinned:
            if sha != pinned:
                raise MemberChecksumError(f"{fetched.path.name}:{member}: sha256 {sha} differs from {pinned} listed "
                                          f"for '{source.url}#{member}' in EMDATA_CHECKSUMS")
            entry["status"] = "verified: sha256 from EMDATA_CHECKSUMS"
        elif md5 == expected_md5:
            entry["status"] = "verified: published md5 (archive repackaged)"
        else:
            entry["status"] = (f"unverified: md5 differs from the published {expected_md5}; accepted because the "
                               "archive is not the published one (its checksum was overridden)")
            log.warning("%s:%s: md5 %s is not the published %s; the archive is not the published one, so the "
                        "member is used unverified (list '%s#%s' in EMDATA_CHECKSUMS to check it)",
                        fetched.path.name, member, md5, expected_md5, source.url, member)
        results[name] = entry
    return results


def _stack(folder: Path, name: str) -> tuple[TiffStack, str]:
    """The stack as a source read page by page (image and labels: written out of core)."""
    where = f"{SOURCE}:{TOP}/{name}"
    stack = TiffStack(folder / TOP / name, name=where)
    if len(stack.shape) != 3:
        raise DenseCellFormatError(f"{where}: expected a single-channel z-stack, got shape {stack.shape} "
                                   f"({stack.photometric})")
    return stack, where


def _read_raw(folder: Path, name: str) -> TiffStack:
    data, where = _stack(folder, name)
    if not np.issubdtype(data.dtype, np.integer):
        raise DenseCellFormatError(f"{where}: expected a greyscale integer image stack, got dtype {data.dtype}")
    return data


def _read_labels(folder: Path, name: str, shape: tuple[int, ...]) -> TiffStack:
    data, where = _stack(folder, name)
    if not np.issubdtype(data.dtype, np.integer):
        raise DenseCellFormatError(f"{where}: expected integer class indices 0..6, got dtype {data.dtype}")
    if data.shape != shape:
        raise DenseCellFormatError(f"{where}: label shape {data.shape} differs from the image shape {shape}")
    values = unique_values(data)
    unknown = [int(v) for v in values if int(v) not in CLASSES]
    if unknown:
        raise DenseCellFormatError(f"{where}: value(s) {unknown[:10]} are not classes 0..6")
    return data


def _smallest_int(lo: float, hi: float) -> np.dtype | None:
    for dt in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return None


def _all_slabs(source: Any, test: Any) -> bool:
    return all(reduce_slabs(source, lambda slab: bool(test(slab))))


def _cast_is_exact(dtype: np.dtype, slab: np.ndarray) -> bool:
    return bool(np.array_equal(slab.astype(dtype).astype(slab.dtype), slab))


def weights_storage(weights: Any, where: str) -> tuple[str, Any, dict[str, Any]]:
    """How to store the weight map: ``("layer", integer data, info)`` or ``("volume", data, info)``.

    ``weights`` is a numpy array (the result is then an array) or an array source
    (:mod:`emdata.formats.lazy`; the result is then a source read box by box: the checks run
    over z-slabs, so the map is never held whole).

    Example:
        >>> weights_storage(np.array([[[0.0, 2.0]]], np.float32), "w.tif")[0:2]
        ('layer', array([[[0, 2]]], dtype=uint8))
        >>> weights_storage(np.array([[[0.5, 2.0]]], np.float32), "w.tif")[0]
        'volume'
    """
    whole = isinstance(weights, np.ndarray)
    source = as_source(weights)
    info: dict[str, Any] = {"file": where, "source_dtype": str(source.dtype)}

    def cast(dtype: np.dtype) -> Any:
        return weights.astype(dtype) if whole else Mapped(source, functools.partial(np.asarray, dtype=dtype), dtype)

    if source.dtype == bool:
        weights, source = cast(np.dtype(np.uint8)), Mapped(source, functools.partial(np.asarray, dtype=np.uint8),
                                                           np.uint8)
    if np.issubdtype(source.dtype, np.integer):
        info.update(min=int(minimum(source) or 0), max=int(maximum(source)), cast=None)
        return "layer", weights, info
    if not np.issubdtype(source.dtype, np.floating):
        raise DenseCellFormatError(f"{where}: weights of dtype {source.dtype} are neither integer nor float")
    size = math.prod(source.shape)
    finite = _all_slabs(source, lambda slab: np.isfinite(slab).all())
    if finite and size:
        lo, hi = float(minimum(source)), float(maximum(source))
        info.update(min=lo, max=hi)
        dtype = _smallest_int(lo, hi) if _all_slabs(source, lambda slab: (slab == np.round(slab)).all()) else None
        if dtype is not None and _all_slabs(source, functools.partial(_cast_is_exact, dtype)):
            info["cast"] = f"{source.dtype} -> {dtype}: every value is a whole number, the cast is exact"
            return "layer", cast(dtype), info
    info["cast"] = None
    info["why_volume"] = ("not every weight is a finite whole number, so no integer layer can hold them exactly"
                          if finite else "the weights hold NaN or infinity")
    return "volume", weights, info


def _weights_layer(data: np.ndarray, info: dict[str, Any]) -> LabelLayerData:
    return LabelLayerData(name=WEIGHTS_LAYER, data=data, kind="semantic", classes=[], annotates=[],
                          description=f"per-voxel training error weights from {info['file']} (a weight map, not a "
                                      "label: values are weights, no class is annotated)")


def _provs(fetched: FetchResult, name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    files = [f"{TOP}/{f}" for f in FILES[name]]
    prov = provenance(DATASET, RECIPE_VERSION, [fetched],
                      {"volume": name, "files": files + ([f"{TOP}/{WEIGHTS_FILE}"] if name == "train" else [])})
    if name != "train":
        return prov, None
    return prov, provenance(DATASET, RECIPE_VERSION, [fetched],
                            {"volume": WEIGHTS_VOLUME, "files": [f"{TOP}/{WEIGHTS_FILE}"], "aligned_with": "train"})


def _reuse(name: str, prov: dict[str, Any], weights_prov: dict[str, Any] | None) -> list[Volume] | None:
    existing = reusable(volume_path(DATASET, name), prov)
    if existing is None:
        return None
    if weights_prov is None or existing.meta.get("error_weights", {}).get("stored_as") != f"volume {WEIGHTS_VOLUME}":
        return [existing]
    weights = reusable(volume_path(DATASET, WEIGHTS_VOLUME), weights_prov)
    return None if weights is None else [existing, weights]


def prepare(volumes: list[str] | None = None, force: bool = False) -> list[Volume]:
    """Fetch ``platelet_data_1219.zip`` and write the selected volumes (default: train, eval, test).

    ``train`` comes with the error weights: a layer of it, or the extra volume
    ``train-error-weights`` right after it (see the module docstring).
    """
    card = get_card(DATASET)
    wanted = choose_volumes(card, volumes)
    fetched = fetch_source(card, SOURCE)
    plans = []
    for spec in card.volumes:
        if spec.name in wanted:
            prov, weights_prov = _provs(fetched, spec.name)
            plans.append((spec, prov, weights_prov, None if force else _reuse(spec.name, prov, weights_prov)))
    if all(reused is not None for *_, reused in plans):
        return [v for *_, reused in plans for v in reused or []]
    folder = extract(fetched.path, downloads_dir(DATASET) / Path(SOURCE).stem)
    needed = [f for spec, *_ in plans for f in FILES[spec.name]] + (
        [WEIGHTS_FILE] if any(spec.name == "train" for spec, *_ in plans) else [])
    member_checks = check_members(card, fetched, folder, needed)
    out: list[Volume] = []
    for spec, prov, weights_prov, reused in plans:
        if reused is not None:
            out.extend(reused)
            continue
        image_file, label_file = FILES[spec.name]
        raw = _read_raw(folder, image_file)
        labels = _read_labels(folder, label_file, raw.shape)
        layers = [layer(card, "semantic", labels)]
        notes = [PLACEHOLDER_NOTE, f"labels {TOP}/{label_file} stored as published ({labels.dtype}, values 0..6)"]
        checks = {f: member_checks[f] for f in FILES[spec.name]}
        extra: dict[str, Any] = {}
        weights_volume = None
        if spec.name == "train":
            weights, where = _stack(folder, WEIGHTS_FILE)
            if weights.shape != raw.shape:
                raise DenseCellFormatError(f"{where}: weight shape {weights.shape} differs from the image shape "
                                           f"{raw.shape}")
            how, data, info = weights_storage(weights, where)
            checks[WEIGHTS_FILE] = member_checks[WEIGHTS_FILE]
            if how == "layer":
                layers.append(_weights_layer(data, info))
                info["stored_as"] = f"layer {WEIGHTS_LAYER}"
                notes.append(f"{TOP}/{WEIGHTS_FILE} stored as the integer layer '{WEIGHTS_LAYER}' "
                             f"({info['cast'] or 'integer as published'}); it is a weight map, not a label")
            else:
                info["stored_as"] = f"volume {WEIGHTS_VOLUME}"
                notes.append(f"{TOP}/{WEIGHTS_FILE} holds {data.dtype} weights that are not all whole numbers; stored "
                             f"as the image of the separate volume '{WEIGHTS_VOLUME}' (same grid as train)")
                weights_volume = (data, info)
            extra["error_weights"] = info
        if spec.shape and raw.shape != spec.shape:
            log.warning("%s %s: image shape %s differs from the card's %s; preparing it anyway", DATASET, spec.name,
                        raw.shape, spec.shape)
        meta = {"voxel_size_placeholder": True, "voxel_size_verified": False, "voxel_size_note": PLACEHOLDER_NOTE,
                "source_files": {"image": f"{TOP}/{image_file}", "labels": f"{TOP}/{label_file}"},
                "member_checks": checks, "notes": notes, **extra}
        log.warning("%s %s: %s", DATASET, spec.name, PLACEHOLDER_NOTE)
        out.append(publish(card, spec.name, spec.split, raw, layers, prov, voxel_size_nm=PLACEHOLDER_VOXEL_NM,
                           description=spec.description, **meta))
        if weights_volume is not None:
            data, info = weights_volume
            assert weights_prov is not None
            out.append(publish(card, WEIGHTS_VOLUME, "train", data, [], weights_prov,
                               voxel_size_nm=PLACEHOLDER_VOXEL_NM, role="weights", weights_of="train",
                               description=f"per-voxel training error weights ({TOP}/{WEIGHTS_FILE}) for volume train, "
                                           "voxel-aligned with it; a weight map, not an image",
                               voxel_size_placeholder=True, voxel_size_verified=False,
                               voxel_size_note=PLACEHOLDER_NOTE, error_weights=info,
                               member_checks={WEIGHTS_FILE: member_checks[WEIGHTS_FILE]},
                               notes=[PLACEHOLDER_NOTE, "float weights kept in their dtype as this volume's image"]))
    return out
