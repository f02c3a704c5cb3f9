"""PyTorch access to prepared volumes: patches in nanometres, rejection-free samplers,
targets in the union label space, multi-dataset mixing (extra ``emdata[torch]``).

Example:
    >>> from emdata.torch import PatchDataset, Foreground, make_loader  # doctest: +SKIP
    >>> ds = PatchDataset(emdata.volumes("snemi3d", "train"), (16, 128, 128),
    ...                   sampler=Foreground("neurons"), targets=["semantic", "affinities"])  # doctest: +SKIP
    >>> for batch in make_loader(ds, batch_size=8, num_workers=2): ...  # doctest: +SKIP
"""

from emdata.torch.dataset import (
                                  EpochSampler,
                                  Foreground,
                                  MinInstances,
                                  MixedPatchDataset,
                                  NoValidLocationError,
                                  PatchDataset,
                                  Uniform,
                                  make_loader,
)
from emdata.torch.targets import IGNORE, SEED_004_SPACE, LabelSpace

__all__ = ["IGNORE", "SEED_004_SPACE", "EpochSampler", "Foreground", "LabelSpace", "MinInstances",
           "MixedPatchDataset", "NoValidLocationError", "PatchDataset", "Uniform", "make_loader"]
