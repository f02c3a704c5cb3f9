"""From samples to batches: numpy arrays stacked, then handed to torch without a copy; and the
widening of the compact labels and targets to what a loss wants, on the device.

Samples are dicts of numpy arrays, numbers and nested dicts (``meta``); :func:`collate_patches`
stacks each key across a batch (torch is imported only here, so numpy-only use of a dataset
never needs it). :func:`with_channel` gives a patch its leading channel axis with real strides.

Samples leave the workers small (``PatchDataset(compact=True)``, the default): ``semantic`` is
uint8 with 255 for the ignore value, ``labels/<name>`` and ``instances`` are ids in the smallest
dtype that holds the patch's values (uint64 ids past 32 bits: int64 with their bits kept), and
voxels warped in from outside the volume are 0 in ``valid`` rather than marked in the ids.
:func:`widen` (on numpy samples or torch batches, best after the transfer: :func:`to_device`)
gives int64 ``semantic``, ``labels/*`` and ``instances`` with the ignore value where it belongs,
exactly the arrays of ``compact=False``. Masks and multi-hot targets (``classes``,
``foreground``, ``boundaries``, ``affinities``, ``valid``) are uint8 either way.

Example:
    >>> import numpy as np
    >>> batch = collate_patches([{"raw": with_channel(np.zeros((2, 3, 3), "u1")), "meta": {"level": 0}}] * 4)
    >>> tuple(batch["raw"].shape), batch["raw"].dtype, batch["meta"]["level"].tolist()
    ((4, 1, 2, 3, 3), torch.uint8, [0, 0, 0, 0])
"""

from __future__ import annotations

from typing import Any

import numpy as np


def with_channel(data: np.ndarray) -> np.ndarray:
    """Add a leading channel axis with real strides (numpy's newaxis stride 0 sends torch.stack
    down a slow path)."""
    return data.reshape(1, *data.shape)


def collate_patches(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: arrays stacked by numpy, then wrapped by torch without a copy (torch.stack
    on fresh buffers costs several times more); uint8 and uint16 raw keep their dtype."""
    import torch

    out: dict[str, Any] = {}
    for key, value in samples[0].items():
        items = [s[key] for s in samples]
        if isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(np.stack(items))
        elif isinstance(value, dict):
            out[key] = collate_patches(items)
        elif isinstance(value, bool | int | float | np.number | np.bool_):
            out[key] = torch.as_tensor(np.array(items))
        else:
            out[key] = items
    return out


WIDENED = ("semantic", "instances")  # and every "labels/<name>"


def widen(batch: dict[str, Any], ignore_value: int = -100) -> dict[str, Any]:
    """``semantic``, ``instances`` and ``labels/*`` of a compact sample or batch (numpy or torch, on
    any device) as int64: the wire's 255 in a uint8 ``semantic`` becomes ``ignore_value``, and ids
    and ``semantic`` are ``ignore_value`` where ``valid`` is 0. Other keys pass unchanged; already
    widened arrays come back as they are. Use the dataset's ``space.ignore_value`` (the default is
    torch's ignore index, -100, the datasets' default).

    Example:
        >>> sample = {"semantic": np.array([[0, 1, 255]], np.uint8), "instances": np.array([[0, 7, 7]], np.uint16),
        ...           "valid": np.array([[[1, 1, 0]]], np.uint8)}
        >>> out = widen(sample)
        >>> out["semantic"].tolist(), out["instances"].tolist(), out["instances"].dtype
        ([[0, 1, -100]], [[0, 7, -100]], dtype('int64'))
    """
    out = dict(batch)
    valid = batch.get("valid")
    for key, value in batch.items():
        if key not in WIDENED and not key.startswith("labels/"):
            continue
        wire = key == "semantic" and str(value.dtype).endswith("uint8")
        if isinstance(value, np.ndarray):
            wide = value.astype(np.int64, copy=False) if value.dtype != np.uint64 else value.view(np.int64)
            if wire:
                wide = np.where(value == 255, ignore_value, wide)
            if valid is not None and not valid.all():
                wide = np.where(valid.reshape(value.shape) == 0, ignore_value, wide)
        else:  # a torch tensor
            import torch

            wide = value.view(torch.int64) if value.dtype == torch.uint64 else value.to(torch.int64)
            if wire:
                wide.masked_fill_(value == 255, ignore_value)  # a fresh tensor: filled in place
            if valid is not None:
                wide = wide.masked_fill(valid.reshape(value.shape) == 0, ignore_value)
        out[key] = wide
    return out


def to_device(batch: dict[str, Any], device: Any, ignore_value: int = -100,
              non_blocking: bool = False) -> dict[str, Any]:
    """Every tensor of ``batch`` (nested dicts too) moved to ``device``, then :func:`widen`: the
    compact batch travels, the int64 targets are made where the loss runs.

    Example:
        >>> import torch
        >>> batch = collate_patches([{"semantic": np.array([1, 255], np.uint8)}] * 2)
        >>> to_device(batch, "cpu")["semantic"].tolist()
        [[1, -100], [1, -100]]
    """
    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        is_tensor = hasattr(value, "to") and hasattr(value, "dtype")
        return value.to(device, non_blocking=non_blocking) if is_tensor else value

    return widen(move(batch), ignore_value)
