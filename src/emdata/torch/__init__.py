"""PyTorch access to prepared volumes: patches in nanometres, rejection-free samplers,
targets in the union label space, multi-dataset mixing (extra ``emdata[torch]``).

Example (a full one, on a written volume, is in :mod:`emdata.torch.dataset`):
    >>> from emdata.torch import CONNECTOMICS_LABEL_SPACE, LabelSpace
    >>> LabelSpace(list(CONNECTOMICS_LABEL_SPACE)).index("mitochondrion")
    3
"""

from emdata.torch.collate import to_device, widen
from emdata.torch.dataset import PatchDataset
from emdata.torch.mixing import MixedPatchDataset
from emdata.torch.planning import NoValidLocationError
from emdata.torch.samplers import Foreground, MinInstances, Uniform
from emdata.torch.targets import CONNECTOMICS_LABEL_SPACE, IGNORE, LabelSpace

_LAZY = {"EpochSampler": "emdata.torch.loaders", "ProcessLoader": "emdata.torch.loaders",
         "make_loader": "emdata.torch.loaders"}  # they import torch: loader worker processes never need it


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emdata.torch' has no attribute {name!r}")


__all__ = [
    "CONNECTOMICS_LABEL_SPACE",
    "IGNORE",
    "EpochSampler",
    "Foreground",
    "LabelSpace",
    "MinInstances",
    "MixedPatchDataset",
    "NoValidLocationError",
    "PatchDataset",
    "ProcessLoader",
    "Uniform",
    "make_loader",
    "to_device",
    "widen",
]
