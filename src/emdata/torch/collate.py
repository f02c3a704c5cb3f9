"""From samples to batches: numpy arrays stacked, then handed to torch without a copy.

Samples are dicts of numpy arrays, numbers and nested dicts (``meta``); :func:`collate_patches`
stacks each key across a batch (torch is imported only here, so numpy-only use of a dataset
never needs it). :func:`with_channel` gives a patch its leading channel axis with real strides.

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
