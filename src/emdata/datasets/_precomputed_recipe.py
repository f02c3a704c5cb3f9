"""The shared recipe of the precomputed datasets: one ``--bbox`` cut-out of an EM layer and its
label layers → one canonical volume.

A dataset's ``recipe.py`` declares a :class:`BboxRecipe` (card sources of the EM layer and of
each label layer, optional segmentation versions) and calls :meth:`BboxRecipe.prepare`.

The rules, the same for every dataset:

* The bbox (``z0:z1,y0:y1,x0:x1``) is in absolute voxels of the **EM layer's mip 0**
  (``voxel_offset`` included, as in Neuroglancer); it is required (these layers are terabytes
  to petabytes), and open ends are filled from the EM layer's bounds. The output is at the EM's
  mip-0 resolution, and the voxel size stored is the one the EM ``info`` file states; a
  difference from the card is logged and recorded in the volume's ``notes``.
* Layers share one physical frame: voxel ``i`` at resolution ``r`` spans ``[i·r, (i+1)·r)`` nm.
  A label layer is read at the mip whose voxel size equals the EM's (e.g. mip 1 of a 4×4×40 nm
  segmentation for 8×8×40 nm EM, the box converted accordingly); where none does, at its finest
  mip whose voxel size is an integer multiple ``f`` of the EM's, and upsampled by nearest
  neighbour (coarse voxel ``k`` becomes fine voxels ``k·f … k·f+f-1``) before cropping to the
  bbox. A label layer that can align neither way is an error (labels are never resampled to a
  coarser grid).
* Native dtypes are kept (uint64 ids are never narrowed). A chunk missing on the server is a
  :class:`MissingChunksError` naming the layer, never zeros.
* One volume per (bbox, version), named ``emdata.boxes.bbox_name(box)`` (``_v<version>``
  appended where the dataset has segmentation versions). Provenance: the layer URLs (streamed)
  and the parameters bbox, version, mip; a rerun with a closed bbox reuses the finished volume
  without a single request.

A bbox estimated above :func:`emdata.boxes.max_box_bytes` (EM plus label bytes; 16 GB, or
``EMDATA_MAX_BOX_GB``) is refused before any chunk is read; one above
:data:`STREAM_ABOVE_BYTES` is written region by region through
:class:`emdata.store.sharded.ShardedVolumeWriter`, so memory stays one region whatever the box.

Why one module of this size: it is the single recipe the six precomputed datasets declare, and its
steps (box checks, info reading, size estimate, in-memory or streamed write) share one plan object.

Example (reads over the network)::

    RECIPE = BboxRecipe("h01", "full", "4nm_raw", labels=(LabelRead("c3", "c3"),))
    RECIPE.prepare(bbox="100:116,20000:20512,30000:30512")  # [Volume(h01/z100-116_y20000-20512_x30000-30512, ...)]
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from emdata.boxes import (
    Box,
    bbox_name,
    check_box_size,
    example_bbox,
    format_bbox,
    inside,
    is_closed,
    parse_bbox_option,
    resolve_bbox,
)
from emdata.catalog import Card, get_card
from emdata.datasets._common import layer, provenance, publish, reusable, volume_path
from emdata.sources.errors import DownloadError
from emdata.sources.precomputed import (
    BoxOutOfBoundsError,
    Cutout,
    LayerInfo,
    MissingChunksError,
    layer_info,
    read_cutout,
)
from emdata.sources.progress import status
from emdata.store.chunking import choose_chunks
from emdata.store.manifest import record_volume
from emdata.store.sharded import LabelSpec, Region, ShardedVolumeWriter, build_volume
from emdata.store.volume import Volume, open_volume
from emdata.store.writer import LabelLayerData

IMAGE_MIP = 0
"""The EM mip the bbox refers to and the output is read at."""
EXAMPLE_SIZE = (16, 256, 256)
"""(z, y, x) size of the example bbox suggested when none is given."""
STREAM_ABOVE_BYTES = 2 * 10**9
"""A bbox estimated above this many bytes (EM and labels) is written region by region, never held whole."""
CHUNKING = choose_chunks
"""Chunk/shard choice of streamed volumes (the canonical one; tests force small shards)."""
_REL_TOL = 1e-6


class AlignmentError(ValueError):
    """A label layer has no mip on the EM's voxel grid (equal, or an integer multiple of it)."""


@dataclass(frozen=True)
class LabelRead:
    """One label layer to read: ``layer`` is the card's ``[[labels]]`` name (also the stored
    layer name), ``source`` the card's ``[[sources]]`` name of its precomputed layer.

    Example:
        >>> LabelRead("mito", "mito_20190717.27250582", ignore_value=4).layer
        'mito'
    """

    layer: str
    source: str
    ignore_value: int | None = None


@dataclass(frozen=True)
class _LabelPlan:
    """Where to read one label layer for the bbox: ``box`` at ``mip``, upsampled by ``factor``,
    then cut to ``crop``."""

    read: LabelRead
    url: str
    info: LayerInfo
    mip: int
    box: Box
    factor: tuple[int, int, int]
    crop: Box


def _fmt(box: Box) -> str:
    return ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip("zyx", box))


def _nm(voxel: tuple[float, ...]) -> str:
    return "×".join(f"{v:g}" for v in voxel)


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(math.isclose(x, y, rel_tol=_REL_TOL) for x, y in zip(a, b))


def align_label_mip(image_voxel_nm: tuple[float, float, float], box: Box, info: LayerInfo, url: str,
                    where: str) -> tuple[int, Box, tuple[int, int, int], Box]:
    """Choose the label mip for an EM ``box`` (absolute EM mip-0 voxels of ``image_voxel_nm``).

    Returns ``(mip, box at that mip, upsampling factor (z, y, x), crop of the upsampled array)``;
    prefers a mip with the EM's voxel size (factor 1), else the finest integer multiple.

    Example:
        >>> from emdata.sources.precomputed import Scale
        >>> mito = Scale("16_16_16", (16.0, 16.0, 16.0), (slice(0, 50), slice(0, 50), slice(0, 50)), (8, 8, 8),
        ...              "compressed_segmentation", sharded=False)
        >>> mito_info = LayerInfo("https://example.org/mito", np.dtype("uint64"), "segmentation", 1, (mito,))
        >>> align_label_mip((8.0, 8.0, 8.0), (slice(3, 9), slice(0, 4), slice(1, 5)), mito_info, "mito", "demo")
        (0, (slice(1, 5, None), slice(0, 2, None), slice(0, 3, None)), (2, 2, 2), \
(slice(1, 7, None), slice(0, 4, None), slice(1, 5, None)))
    """
    candidates = []
    for mip, scale in enumerate(info.scales):
        ratio = [lab / img for lab, img in zip(scale.voxel_size_nm, image_voxel_nm)]
        factor = tuple(max(1, round(r)) for r in ratio)
        if all(math.isclose(r, f, rel_tol=_REL_TOL) for r, f in zip(ratio, factor)):
            candidates.append((math.prod(factor), mip, factor))
    if not candidates:
        ladder = ", ".join(f"mip {i}: {_nm(v)}" for i, v in enumerate(info.voxel_sizes_nm))
        raise AlignmentError(
            f"{where}: the label layer {url} has no mip on the EM grid of {_nm(image_voxel_nm)} nm (z×y×x): its "
            f"mips are {ladder} nm, and a label mip must equal the EM voxel or be an integer multiple of it "
            "(labels are upsampled by nearest, never resampled to a coarser grid); report this layer's info file")
    _, mip, factor = min(candidates)
    scale = info.scales[mip]
    at_mip = tuple(slice(s.start // f, -(-s.stop // f)) for s, f in zip(box, factor))
    if any(not (b.start <= s.start < s.stop <= b.stop) for s, b in zip(at_mip, scale.bounds)):
        raise BoxOutOfBoundsError(
            f"{where}: the bbox {_fmt(box)} (EM mip-0 voxels) is {_fmt(at_mip)} at mip {mip} "
            f"({_nm(scale.voxel_size_nm)} nm) of the label layer {url}, which is not inside that layer's bounds "
            f"{_fmt(scale.bounds)}; choose a bbox inside both the EM and the labels")
    crop = tuple(slice(s.start - m.start * f, s.stop - m.start * f) for s, m, f in zip(box, at_mip, factor))
    return mip, at_mip, factor, crop  # type: ignore[return-value]


def upsample_nearest(data: np.ndarray, factor: tuple[int, int, int], crop: Box) -> np.ndarray:
    """Repeat each voxel ``factor`` times per axis (dtype kept), then cut ``crop``.

    Example:
        >>> upsample_nearest(np.array([[[1, 2]]], np.uint64), (1, 2, 2), (slice(0, 1), slice(0, 2), slice(1, 3)))
        array([[[1, 2],
                [1, 2]]], dtype=uint64)
    """
    for axis, f in enumerate(factor):
        if f > 1:
            data = np.repeat(data, f, axis=axis)
    return np.ascontiguousarray(data[crop])


def _fill_region(recipe: BboxRecipe, card: Card, image_url: str, box: Box, voxel: tuple[float, float, float],
                 plans: list[_LabelPlan], reported: dict[str, set[int]], region: Region, array: str) -> np.ndarray:
    """The voxels of ``array`` (``raw`` or a label layer) in ``region`` of the bbox volume, read from the layers.

    ``reported`` holds, per label layer, the unknown class values already warned about.
    """
    sub = tuple(slice(s.start + a, s.start + b) for s, a, b in zip(box, region.start, region.stop))
    if array == "raw":
        return recipe._read(image_url, "EM", sub, IMAGE_MIP).data  # type: ignore[arg-type]
    plan = next(p for p in plans if p.read.layer == array)
    data = recipe._label_box(plan, voxel, sub)  # type: ignore[arg-type]
    recipe._check_label_values(card, plan, data, reported.setdefault(array, set()))
    return data


@dataclass(frozen=True)
class BboxRecipe:
    """A precomputed dataset's recipe, declared by card names.

    ``volume`` is the card's ``[[volumes]]`` entry the cut-outs come from (its split is used);
    ``image`` the card source of the EM layer; ``labels`` the label layers read for every
    bbox, ``versions`` (version → label layers) the version-dependent ones, with
    ``default_version``; ``notes`` are recorded in every volume.

    Example:
        >>> RECIPE = BboxRecipe("kasthuri", "full", "image_color_corrected",
        ...                     labels=(LabelRead("ground_truth", "ground_truth"),))
        >>> RECIPE.log.name
        'emdata.datasets.kasthuri.recipe'
    """

    dataset: str
    volume: str
    image: str
    labels: tuple[LabelRead, ...] = ()
    versions: Mapping[str, tuple[LabelRead, ...]] | None = None
    default_version: str | None = None
    notes: tuple[str, ...] = ()
    recipe_version: int = 1

    @property
    def log(self) -> logging.Logger:
        """The logger of the dataset's recipe module."""
        return logging.getLogger(f"emdata.datasets.{self.dataset.replace('-', '_')}.recipe")

    # -- checks that need no network --------------------------------------------------------------

    def _check_volumes(self, volumes: list[str] | None) -> None:
        if volumes is None:
            return
        unknown = [v for v in volumes if v != self.volume]
        if unknown:
            raise ValueError(f"{self.dataset}: no volume(s) {unknown} from this recipe: it prepares --bbox cut-outs of "
                             f"the precomputed volume {self.volume!r} only; choose from {[self.volume]} or leave "
                             "--volume out")

    def _version(self, version: str | None) -> str | None:
        if not self.versions:
            if version is not None:
                raise ValueError(f"{self.dataset}: has no segmentation versions; leave out version (got {version!r})")
            return None
        chosen = self.default_version if version is None else str(version).strip().removeprefix("v")
        if chosen not in self.versions:
            raise ValueError(f"{self.dataset}: unknown segmentation version {version!r}; choose one of "
                             f"{', '.join(self.versions)} (default {self.default_version})")
        return chosen

    def _label_reads(self, version: str | None) -> tuple[LabelRead, ...]:
        return self.labels + (self.versions[version] if self.versions and version else ())

    def _prov(self, card: Card, box: Box, version: str | None) -> tuple[str, dict[str, Any]]:
        name = bbox_name(box) + (f"_v{version}" if version else "")
        parameters: dict[str, Any] = {"bbox": format_bbox(box), "mip": IMAGE_MIP}
        if version:
            parameters["version"] = version
        urls = [card.source(self.image).url] + [card.source(r.source).url for r in self._label_reads(version)]
        return name, provenance(self.dataset, self.recipe_version, [], parameters, urls=urls)

    # -- the recipe -------------------------------------------------------------------------------

    def prepare(self, volumes: list[str] | None = None, force: bool = False, bbox: str | None = None,
                version: str | None = None) -> list[Volume]:
        """Prepare the cut-out ``bbox`` (EM mip-0 voxels, ``z0:z1,y0:y1,x0:x1``) as one volume.

        Example (reads over the network)::

            RECIPE.prepare(bbox="0:16,1000:1256,2000:2256")  # [Volume(<dataset>/z0-16_y1000-1256_x2000-2256, ...)]
        """
        card = get_card(self.dataset)
        self._check_volumes(volumes)
        version = self._version(version)
        image_url = card.source(self.image).url
        if bbox is None:
            self._require_bbox(image_url)
        box = parse_bbox_option(self.dataset, bbox)
        if is_closed(box):  # decided without a request: a finished volume is reused offline
            name, prov = self._prov(card, box, version)
            existing = None if force else reusable(volume_path(self.dataset, name), prov)
            if existing is not None:
                return [existing]

        image = layer_info(image_url)
        self._check_image(image, image_url)
        scale = image.scales[IMAGE_MIP]
        box = self._resolve(box, scale.bounds, image_url, bbox)
        name, prov = self._prov(card, box, version)
        existing = None if force else reusable(volume_path(self.dataset, name), prov)
        if existing is not None:
            return [existing]

        voxel = scale.voxel_size_nm
        notes = list(self.notes) + self._compare_voxel(card, voxel, image_url)
        plans = [self._plan(card, read, voxel, box, notes) for read in self._label_reads(version)]
        need = check_box_size(self.dataset, box, image.dtype.itemsize + sum(p.info.dtype.itemsize for p in plans),
                              what="the bbox (EM and label layers at mip 0)")
        for plan in plans:
            if plan.factor != (1, 1, 1):
                notes.append(f"{plan.read.layer}: read at mip {plan.mip} ({_nm(plan.info.voxel_sizes_nm[plan.mip])} "
                             f"nm) and upsampled by nearest ×{plan.factor} (z, y, x) to the EM's {_nm(voxel)} nm: "
                             f"coarse voxel k covers fine voxels k·f … k·f+f-1 (corner-aligned grids)")
        spec = next(v for v in card.volumes if v.name == self.volume)
        label_meta = {plan.read.layer: {
            "url": plan.url, "mip": plan.mip, "box": format_bbox(plan.box),
            "voxel_size_nm": list(plan.info.voxel_sizes_nm[plan.mip]), "upsampled": list(plan.factor),
            "dtype": str(plan.info.dtype), "encoding": plan.info.scales[plan.mip].encoding} for plan in plans}
        precomputed = {"image": {"url": image_url, "mip": IMAGE_MIP, "box": format_bbox(box),
                                 "voxel_size_nm": list(voxel), "dtype": str(image.dtype),
                                 "encoding": scale.encoding},
                       "labels": label_meta}
        extra: dict[str, Any] = {"bbox": format_bbox(box), "precomputed": precomputed, "notes": notes,
                                 "voxel_size_card_nm": list(card.voxel_size_nm) if card.voxel_size_nm else None,
                                 "description": f"cut-out {format_bbox(box)} (EM mip-0 voxels) of {self.dataset} "
                                                f"{spec.name!r}"}
        if version:
            extra["version"] = version
        if need > STREAM_ABOVE_BYTES:
            return [self._stream(card, name, spec.split, prov, image_url, image.dtype, box, voxel, plans, extra,
                                 force=force)]
        raw = self._read(image_url, "EM", box, IMAGE_MIP).data
        layers = [self._label_layer(card, plan, self._label_box(plan, voxel, box)) for plan in plans]
        for lay in layers:
            if lay.data.shape != raw.shape:
                raise ValueError(f"{self.dataset}: label layer {lay.name!r} gave shape {lay.data.shape} for the bbox, "
                                 f"the EM gave {raw.shape}; the layers do not share a grid")
        return [publish(card, name, spec.split, raw, layers, prov, voxel_size_nm=voxel, **extra)]

    def _label_box(self, plan: _LabelPlan, voxel: tuple[float, float, float], box: Box) -> np.ndarray:
        """The labels of ``plan`` for the EM ``box``, on the EM grid (read at the plan's mip, upsampled)."""
        mip, at_mip, factor, crop = align_label_mip(voxel, box, plan.info, plan.url, self.dataset)
        data = self._read(plan.url, f"label layer {plan.read.layer!r}", at_mip, mip).data
        return upsample_nearest(data, factor, crop) if factor != (1, 1, 1) else data

    def _label_layer(self, card: Card, plan: _LabelPlan, data: np.ndarray) -> LabelLayerData:
        self._check_label_values(card, plan, data)
        overrides = {} if plan.read.ignore_value is None else {"ignore_value": plan.read.ignore_value}
        return layer(card, plan.read.layer, data, **overrides)

    def _stream(self, card: Card, name: str, split: str, prov: dict[str, Any], image_url: str, dtype: np.dtype,
                box: Box, voxel: tuple[float, float, float], plans: list[_LabelPlan], extra: dict[str, Any], *,
                force: bool) -> Volume:
        """Write a large bbox region by region (:mod:`emdata.store.sharded`): memory stays one region.

        An interrupted run resumes at the first region not yet written.
        """
        labels = []
        for plan in plans:
            described = self._label_layer(card, plan, np.zeros((0, 0, 0), plan.info.dtype))
            fields = {k: getattr(described, k) for k in LabelSpec.__dataclass_fields__ if k != "dtype"}
            labels.append(LabelSpec(dtype=str(plan.info.dtype), **fields))
        meta = {"dataset": card.id, "volume": name, "split": split,
                "voxel_size_verified": card.voxel_size.verified, "provenance": prov, **extra}
        shape = tuple(s.stop - s.start for s in box)
        writer = ShardedVolumeWriter(volume_path(card.id, name), shape, dtype, voxel, labels=labels, meta=meta,
                                     chunking=CHUNKING)
        fill = functools.partial(_fill_region, self, card, image_url, box, voxel, plans, {})
        with writer.locked():
            if force:
                writer.discard()
            with status(f"{self.dataset}: writing {name} ({'×'.join(map(str, shape))} voxels) in "
                        f"{len(writer.regions(0))} region(s)"):
                path = build_volume(writer, fill)
        vol = open_volume(path)
        record_volume(vol)
        return vol

    def _require_bbox(self, image_url: str) -> NoReturn:
        required = f"{self.dataset}: a bbox is required (the layers are read as cut-outs, never whole)"
        try:
            scale = layer_info(image_url).scales[IMAGE_MIP]
        except (DownloadError, ImportError) as exc:  # still say what is missing, and why the bounds are not given
            raise ValueError(f"{required}: pass --bbox z0:z1,y0:y1,x0:x1 in voxels at mip 0 of the EM layer "
                             f"{image_url} (its bounds could not be read: {exc})") from exc
        example = example_bbox(scale.bounds, EXAMPLE_SIZE)
        raise ValueError(
            f"{required}: the EM layer {image_url} spans {_fmt(scale.bounds)} (voxels at mip 0, "
            f"{_nm(scale.voxel_size_nm)} nm z×y×x); pass a box inside it, e.g. "
            f"`emdata prepare {self.dataset} --bbox {example}` or emdata.prepare({self.dataset!r}, bbox={example!r})")

    def _check_image(self, info: LayerInfo, url: str) -> None:
        if info.num_channels != 1 or not np.issubdtype(info.dtype, np.integer):
            raise ValueError(f"{self.dataset}: the EM layer {url} has {info.num_channels} channel(s) of "
                             f"{info.dtype}; expected one greyscale integer channel (check the layer path)")
        if info.layer_type != "image":
            self.log.warning("%s: the EM layer %s has type %r, expected 'image'; reading it anyway",
                             self.dataset, url, info.layer_type)

    def _resolve(self, box: Box, bounds: Box, url: str, text: str) -> Box:
        out = resolve_bbox(box, bounds)
        if not inside(out, bounds):
            raise BoxOutOfBoundsError(
                f"{self.dataset}: bbox {text!r} ({_fmt(out)}) is not inside the EM layer {url}, whose bounds at mip 0 "
                f"are {_fmt(bounds)} (absolute voxels, voxel_offset included); choose a box inside them, e.g. "
                f"--bbox {example_bbox(bounds, EXAMPLE_SIZE)}")
        return out  # type: ignore[return-value]

    def _compare_voxel(self, card: Card, voxel: tuple[float, float, float], url: str) -> list[str]:
        if card.voxel_size_nm is None or _same(voxel, card.voxel_size_nm):
            return []
        also = [alt.get("source", "") for alt in card.voxel_size.alternatives
                if _same(voxel, tuple(float(v) for v in alt.get("nm", ())))]
        message = (f"the EM info ({url}) gives {_nm(voxel)} nm (z×y×x) at mip 0, the card records "
                   f"{_nm(card.voxel_size_nm)} nm ({card.voxel_size.source})"
                   + (f" and lists {_nm(voxel)} as an alternative ({also[0]})" if also else "")
                   + "; the value read is stored")
        self.log.warning("%s: %s", self.dataset, message)
        return [message]

    def _plan(self, card: Card, read: LabelRead, voxel: tuple[float, float, float], box: Box,
              notes: list[str]) -> _LabelPlan:
        url = card.source(read.source).url
        info = layer_info(url)
        if info.num_channels != 1 or not np.issubdtype(info.dtype, np.integer):
            raise ValueError(f"{self.dataset}: label layer {url} has {info.num_channels} channel(s) of {info.dtype}; "
                             "expected one integer channel of ids or classes (check the layer path)")
        expected = card.label_layer(read.layer).dtype
        if expected and np.dtype(expected) != info.dtype:
            notes.append(f"{read.layer}: the layer {url} is {info.dtype}, the card says {expected}; kept as stored")
            self.log.warning("%s: %s", self.dataset, notes[-1])
        mip, at_mip, factor, crop = align_label_mip(voxel, box, info, url, self.dataset)
        return _LabelPlan(read, url, info, mip, at_mip, factor, crop)

    def _check_label_values(self, card: Card, plan: _LabelPlan, data: np.ndarray,
                            reported: set[int] | None = None) -> None:
        """Warn about semantic values the card does not name (each value once, given ``reported``)."""
        spec = card.label_layer(plan.read.layer)
        if spec.kind != "semantic":
            return
        known = {c.value for c in spec.classes} | {0}
        unknown = sorted(set(np.unique(data).tolist()) - known - (reported or set()))
        if reported is not None:
            reported.update(unknown)
        if unknown:
            self.log.warning("%s: label layer %s holds value(s) %s that the card's classes %s do not name; "
                             "stored as read", self.dataset, plan.url, unknown[:10], sorted(known))

    def _read(self, url: str, what: str, box: Box, mip: int) -> Cutout:
        try:
            return read_cutout(url, box, mip)
        except MissingChunksError as exc:
            raise MissingChunksError(
                f"{self.dataset}: the bbox needs {len(exc.missing)} chunk(s) of the {what} {url} at mip {mip} that "
                f"the server does not have (first: {_fmt(exc.missing[0])}); they are not read as zeros. Published "
                "layers leave out chunks where there is no data: choose a bbox inside the imaged/segmented region; "
                "to see the hole, emdata.sources.precomputed.read_cutout(url, box, mip, allow_missing=True) "
                "lists the missing chunks", url, mip, exc.missing) from exc
