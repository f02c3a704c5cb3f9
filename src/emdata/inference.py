"""Tiled inference over a prepared volume, written back into it as a prediction layer (``emdata[torch]``).

:func:`predict` runs a PyTorch model over the whole volume at the voxel size it was trained at
(one of the volume's pyramid levels), tile by tile:

* each tile of ``tile`` voxels is read with its context: the outer ``halo`` voxels of every tile
  output are discarded (they saw padding or the tile edge);
* neighbouring tiles' kept cores overlap by ``overlap`` voxels, where their outputs are blended
  with complementary linear ramps (the weights of two neighbours sum to one), so no seam shows;
* the volume is processed in *blocks* (default: a few tiles a side); every tile whose kept core
  touches a block is run for it, so each block's values equal those of one pass over the whole
  volume, and a finished block is recorded: an interrupted run resumes at the first missing
  block (same model, same options);
* outside the volume the input is mirrored.

The blended output (after ``activation``) is stored as ``probabilities`` (a float image with a
channel axis) or as ``labels`` (argmax over channels; one channel: ``> threshold``), into the
same OME-Zarr group, published atomically as a new version of the volume (see
:mod:`emdata.store.predictions`), with provenance: model name and hash (SHA-256 of its
parameters), voxel size, tile, halo, overlap, activation and normalisation. ``emdata verify
--deep`` checks the new layer like any other array.

Example:
    >>> import tempfile, torch
    >>> from emdata.store.writer import write_volume
    >>> raw = np.zeros((4, 64, 64), "u1"); raw[:, 16:48, 16:48] = 200
    >>> path = write_volume(Path(tempfile.mkdtemp()) / "v.ome.zarr", raw, (30, 6, 6),
    ...                     meta={"dataset": "demo", "volume": "v", "split": "test"})
    >>> model = torch.nn.Conv3d(1, 1, 1)  # any module mapping (B, 1, z, y, x) to (B, C, z, y, x)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(40.0), model.bias.fill_(-20.0)  # bright voxels -> foreground
    >>> vol = predict(model, path, "bright", tile=(4, 32, 32), halo=(0, 4, 4), overlap=(0, 4, 4), progress=False)
    >>> seg = np.asarray(vol.prediction("bright"))
    >>> bool((seg == (raw > 100)).all()), vol.predictions["bright"]["provenance"]["tile"]
    (True, [4, 32, 32])
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emdata.store.volume import Volume, open_volume

__all__ = ["model_hash", "predict", "tile_weights"]

ACTIVATIONS = ("auto", "sigmoid", "softmax", "none")
OUTPUTS = ("labels", "probabilities")


def model_hash(model: Any) -> str:
    """``sha256:<hex>`` of a module's parameters and buffers (names, dtypes, shapes, values).

    Example:
        >>> import torch
        >>> torch.manual_seed(0) is not None and model_hash(torch.nn.Linear(2, 2)).startswith("sha256:")
        True
    """
    import torch

    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{values.dtype}:{tuple(values.shape)}".encode())
        h.update(values.view(-1).view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return "sha256:" + h.hexdigest()


def tile_weights(tile: int, halo: int, overlap: int) -> np.ndarray:
    """Blending weights along one axis of a tile: 0 in the halo, linear ramps over ``overlap``
    voxels at both ends of the kept core, 1 between. Two neighbours placed ``tile - 2 halo -
    overlap`` apart have weights summing to 1 wherever both are kept.

    Example:
        >>> [round(float(w), 2) for w in tile_weights(8, 1, 2)]
        [0.0, 0.33, 0.67, 1.0, 1.0, 0.67, 0.33, 0.0]
    """
    core = tile - 2 * halo
    j = np.arange(core, dtype=np.float64)
    ramp = np.minimum(np.minimum(j + 1, core - j) / (overlap + 1), 1.0) if overlap else np.ones(core)
    return np.concatenate([np.zeros(halo), ramp, np.zeros(halo)]).astype(np.float32)


def _triple(what: str, values: Sequence[int] | int | None, default: tuple[int, ...]) -> tuple[int, int, int]:
    if values is None:
        out = default
    elif isinstance(values, int):
        out = (values,) * len(default)
    else:
        out = tuple(int(v) for v in values)
    if len(out) == 2:
        out = (0, *out) if what != "tile" else (1, *out)
    if len(out) != 3 or min(out) < 0:
        raise ValueError(f"{what} must be 2 or 3 non-negative sizes (z, y, x), got {values}")
    return out  # type: ignore[return-value]


def _level_for(vol: Volume, voxel_size: Sequence[float] | None) -> int:
    """The pyramid level of ``vol`` whose voxel size is ``voxel_size`` (within 1 %)."""
    if voxel_size is None:
        return 0
    want = [float(v) for v in voxel_size]
    scales = [lv["scale"] for lv in vol.meta["raw"]["levels"]]
    for i, scale in enumerate(scales):
        if all(abs(s - w) <= 0.01 * w for s, w in zip(scale, want)):
            return i
    raise ValueError(f"{vol.path}: the model was trained at {tuple(want)} nm, but the volume's levels are "
                     f"{[tuple(s) for s in scales]} nm; resample the volume or train at one of these voxel sizes")


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Positions ``index`` on an axis of length ``n``, mirrored at both faces (numpy's ``reflect``)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def _pad_read(array: Any, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """``array[start:stop]`` as float32, any part outside the array mirrored in (as ``np.pad(mode="reflect")``)."""
    index = [_mirror(np.arange(a, b), n) for a, b, n in zip(start, stop, array.shape)]
    lo = [int(i.min()) for i in index]
    values = np.asarray(array[tuple(slice(a, int(i.max()) + 1) for a, i in zip(lo, index))], dtype=np.float32)
    return values[np.ix_(*(i - a for i, a in zip(index, lo)))]


class _Tiler:
    """Tile placement on one grid: tile ``k`` starts at ``k * stride - halo``."""

    def __init__(self, shape: tuple[int, ...], tile: tuple[int, ...], halo: tuple[int, ...],
                 overlap: tuple[int, ...]) -> None:
        self.shape, self.tile, self.halo = shape, tile, halo
        self.core = tuple(t - 2 * h for t, h in zip(tile, halo))
        self.stride = tuple(c - o for c, o in zip(self.core, overlap))
        if min(self.stride) < 1:
            raise ValueError(f"tile {tile} with halo {halo} and overlap {overlap} leaves no stride: each tile must "
                             "keep more than `overlap` voxels after cutting `halo` from both sides")
        self.weights = [tile_weights(t, h, o) for t, h, o in zip(tile, halo, overlap)]

    def starts(self, start: Sequence[int], stop: Sequence[int]) -> list[tuple[int, ...]]:
        """Starts of the tiles whose kept core meets the box ``[start, stop)``."""
        ranges = []
        for b0, b1, core, stride, halo in zip(start, stop, self.core, self.stride, self.halo):
            k0 = max(0, (b0 - core) // stride + 1)
            k1 = -(-b1 // stride)
            ranges.append([k * stride - halo for k in range(k0, k1)])
        return list(itertools.product(*ranges))


def predict(model: Any, volume: Volume | str | Path, name: str = "prediction", *, tile: Sequence[int],
            halo: Sequence[int] | int | None = None, overlap: Sequence[int] | int | None = None,
            voxel_size: Sequence[float] | None = None, output: str = "labels", activation: str = "auto",
            threshold: float = 0.5, classes: Mapping[int, str] | None = None, normalize: str | None = "dtype",
            batch_size: int = 4, device: str | None = None, block: Sequence[int] | None = None,
            dtype: str = "float16", model_name: str | None = None, progress: bool = True,
            on_block: Callable[[tuple[int, int, int]], None] | None = None) -> Volume:
    """Run ``model`` over ``volume`` tile by tile and store the result as prediction layer ``name``.

    ``model`` maps a float tensor ``(B, 1, z, y, x)`` (``(B, 1, y, x)`` when ``tile`` has two
    entries: a 2D model, run slice by slice) to ``(B, C, ...)`` of the same spatial shape.
    ``voxel_size``: the nm voxel size it was trained at (default: the volume's level 0; it must be
    one of the volume's levels; the layer is stored at level 0, each predicted voxel repeated).
    ``halo`` (default ``tile // 8``) and ``overlap`` (default ``tile // 8``): voxels per side
    discarded from each tile output, and voxels over which neighbouring tiles blend.
    ``activation``: ``auto`` (sigmoid for one channel, softmax for more), ``sigmoid``,
    ``softmax`` or ``none`` (the model outputs probabilities). ``output``: ``labels`` (argmax,
    or ``> threshold`` for one channel; ``classes`` names the values, e.g. a dataset's
    ``class_names``) or ``probabilities`` (``dtype`` floats, ``(C, z, y, x)``). ``normalize``:
    raw intensities mapped to [0, 1] as :class:`~emdata.torch.PatchDataset` does (``dtype`` or
    ``percentile``; ``None`` passes raw values as floats). ``block``: voxels per resumable block
    (default: about four strides a side). ``on_block`` is called after each stored block.
    Returns the volume, reopened on the version that holds the new layer.
    """
    import torch

    from emdata.sources.progress import transfer_progress
    from emdata.store.predictions import PredictionWriter, StalePredictionError
    from emdata.store.publish import generation, resolve
    from emdata.torch.planning import intensity_range

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    path = volume.path if isinstance(volume, Volume) else Path(volume).expanduser()
    vol = open_volume(path)
    is_2d = len(tile) == 2
    tile3 = _triple("tile", tile, (1, 1, 1))
    if min(tile3) < 1:
        raise ValueError(f"tile must be positive sizes, got {tuple(tile)}")
    halo3 = _triple("halo", halo, tuple(t // 8 for t in tile3))
    overlap3 = _triple("overlap", overlap, tuple(t // 8 for t in tile3))
    level = _level_for(vol, voxel_size)
    raw = vol.level(level)
    grid = tuple(raw.shape)
    tiler = _Tiler(grid, tile3, halo3, overlap3)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    digest = model_hash(model)
    lo, hi = intensity_range(vol, normalize) if normalize else (0.0, 1.0)
    block = tuple(block) if block else tuple(min(n, max(t, 4 * s)) for n, t, s in zip(grid, tile3, tiler.stride))

    # one tile to learn the number of channels (and to fail early on a model that changes shape)
    probe = _run(model, np.zeros((1, 1, *tile3), np.float32), is_2d, device, activation)
    if probe.shape[2:] != tile3:
        raise ValueError(f"the model maps a tile of {tile3} voxels to {probe.shape[2:]}; predict needs outputs of "
                         "the input's spatial shape (pad the convolutions, or crop and pad inside the model)")
    channels = probe.shape[1]
    if output == "labels":
        out_dtype = np.uint8 if max(channels, 2) <= 256 else np.uint16
        names = dict(classes or {})
        n_values = max(channels, 2)
        class_list = [{"value": v, "name": names.get(v, "foreground" if channels == 1 and v else
                                                      f"class {v}" if v else "background")} for v in range(n_values)]
    else:
        out_dtype, class_list = np.dtype(dtype), []
    settings = {"model_hash": digest, "tile": list(tile3), "halo": list(halo3), "overlap": list(overlap3),
                "two_d": is_2d, "activation": activation, "output": output,
                "threshold": threshold if output == "labels" and channels == 1 else None,
                "normalize": normalize, "intensity_range": [lo, hi], "voxel_size_nm": list(vol.meta["raw"]["levels"]
                                                                                         [level]["scale"])}
    provenance = {"model": model_name or type(model).__name__, **settings, "channels": channels,
                  "classes": {int(k): v for k, v in (classes or {}).items()}}
    writer = PredictionWriter(path, name, output, out_dtype, channels=channels, level=level, block=block,
                              classes=class_list, provenance=provenance, spec=settings)
    if writer.source != generation(path) or resolve(path) != vol.folder:  # replaced while we were starting
        raise StalePredictionError(f"{path} was replaced while the prediction started; run it again")
    pending = writer.pending()
    total = len(writer.blocks())
    with transfer_progress(f"predict {vol.dataset}/{vol.name} → {name}", total, unit="blocks",
                           start=total - len(pending)) if progress else _silent() as advance:
        for index in pending:
            start, size = writer.block_box(index)
            probs = _predict_block(model, raw, tiler, start, size, lo, hi, batch_size, is_2d, device, activation)
            if output == "labels":
                values = (probs[0] > threshold) if channels == 1 else probs.argmax(axis=0)
                writer.write_block(index, values.astype(out_dtype))
            else:
                writer.write_block(index, probs.astype(out_dtype))
            advance(1)
            if on_block is not None:
                on_block(index)
    vol.close()  # our own pin would keep the replaced version on disk
    writer.finish()
    return open_volume(path)


class _silent:
    def __enter__(self) -> Callable[[int], None]:
        return lambda n: None

    def __exit__(self, *exc: Any) -> None:
        return None


def _run(model: Any, batch: np.ndarray, is_2d: bool, device: str, activation: str) -> np.ndarray:
    """Model output for a ``(B, 1, z, y, x)`` batch (2D models see ``(B, 1, y, x)``), activation applied."""
    import torch

    x = torch.from_numpy(batch).to(device)
    with torch.inference_mode():
        y = model(x[:, :, 0] if is_2d else x)
        if is_2d:
            y = y[:, :, None]
        if y.ndim != 5:
            raise ValueError(f"the model returned shape {tuple(y.shape)}; expected (batch, channels, "
                             f"{'y, x' if is_2d else 'z, y, x'})")
        act = activation if activation != "auto" else ("sigmoid" if y.shape[1] == 1 else "softmax")
        if act == "sigmoid":
            y = torch.sigmoid(y)
        elif act == "softmax":
            y = torch.softmax(y, dim=1)
        return y.float().cpu().numpy()


def _predict_block(model: Any, raw: Any, tiler: _Tiler, start: Sequence[int], size: Sequence[int], lo: float,
                   hi: float, batch_size: int, is_2d: bool, device: str, activation: str) -> np.ndarray:
    """Blended probabilities ``(C, *size)`` of the block at ``start``."""
    stop = [s + n for s, n in zip(start, size)]
    starts = tiler.starts(start, stop)
    region0 = [min(s[a] for s in starts) for a in range(3)]
    region1 = [max(s[a] for s in starts) + t for a, t in enumerate(tiler.tile)]
    region = (_pad_read(raw, region0, region1) - lo) / (hi - lo)
    acc: np.ndarray | None = None
    wsum = np.zeros(tuple(size), np.float32)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        batch = np.stack([region[tuple(slice(s - r, s - r + t) for s, r, t in zip(ts, region0, tiler.tile))]
                          for ts in chunk])[:, None]
        out = _run(model, np.ascontiguousarray(batch, dtype=np.float32), is_2d, device, activation)
        if acc is None:
            acc = np.zeros((out.shape[1], *size), np.float32)
        for ts, y in zip(chunk, out):
            inner = tuple(slice(max(s, b), min(s + t, e)) for s, t, b, e in zip(ts, tiler.tile, start, stop))
            if any(sl.start >= sl.stop for sl in inner):
                continue
            local = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(inner, ts))
            w = (tiler.weights[0][local[0]][:, None, None] * tiler.weights[1][local[1]][None, :, None]
                 * tiler.weights[2][local[2]][None, None, :])
            dst = tuple(slice(sl.start - b, sl.stop - b) for sl, b in zip(inner, start))
            acc[(slice(None), *dst)] += y[(slice(None), *local)] * w
            wsum[dst] += w
    assert acc is not None
    return acc / np.maximum(wsum, 1e-12)
