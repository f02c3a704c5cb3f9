"""Several patch datasets as one: each sample drawn from a part with fixed probabilities.

:class:`MixedPatchDataset` draws part ``k`` with probability ``weights[k]`` (whatever the
parts' sizes), then that part's sample for the same ``(epoch, index)`` key, so mixing is as
reproducible as a single dataset. Parts must give batches that stack; their label spaces are
unified into one, so a target index means the same class whichever part a sample came from.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from emdata.store.writer import LabelLayerData, write_volume
    >>> def volume(name, cls):
    ...     ids = np.zeros((2, 16, 16), "u4"); ids[:, 4:12, 4:12] = 1
    ...     return write_volume(Path(tempfile.mkdtemp()) / f"{name}.ome.zarr", np.zeros((2, 16, 16), "u1"),
    ...                         (30, 6, 6), labels=[LabelLayerData("ids", ids, "instance", instance_of=cls)],
    ...                         meta={"dataset": name, "volume": "v", "split": "train"})
    >>> cells = PatchDataset([volume("cells", "neuron")], (2, 8, 8), targets=["semantic"])
    >>> mito = PatchDataset([volume("mito", "mitochondrion")], (2, 8, 8), targets=["semantic"])
    >>> mixed = MixedPatchDataset({"cells": (cells, 1.0), "mito": (mito, 3.0)}, samples_per_epoch=8)
    >>> mixed.class_names, mixed.p.tolist()
    ({0: 'background', 1: 'neuron', 2: 'mitochondria'}, [0.25, 0.75])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from emdata.labels.ontology import ontology
from emdata.torch.dataset import PatchDataset
from emdata.torch.samplers import check_weights

log = logging.getLogger(__name__)


class MixedPatchDataset:
    """Draws from several datasets with true probabilities ``weights`` (independent of their sizes).

    The parts must give batches that stack: the same patch shape, targets, label layers and
    raw dtype (float raw for volumes of different bit depth). Their label spaces are unified:
    parts built without an explicit ``label_space`` switch to the union of the classes all
    parts annotate (or to the explicit space some parts share); explicit spaces that differ
    are refused. :attr:`class_names` maps target indices to classes. Usage:
    ``MixedPatchDataset({"snemi3d": (snemi, 1.0), "mitoem2": (mito, 2.0)}, samples_per_epoch=4000)``.
    """

    def __init__(self, datasets: Mapping[str, tuple[PatchDataset, float]], samples_per_epoch: int = 1000,
                 seed: int = 0) -> None:
        if not datasets:
            raise ValueError("MixedPatchDataset needs at least one dataset")
        if int(samples_per_epoch) < 1:
            raise ValueError(f"samples_per_epoch must be at least 1, got {samples_per_epoch}")
        self.names = list(datasets)
        self.datasets = [datasets[n][0] for n in self.names]
        weights = [datasets[n][1] for n in self.names]
        self.p = check_weights(f"mixing weights {dict(zip(self.names, weights))}", weights)
        self.p = self.p / self.p.sum()
        self._check_stackable()
        self._unify_label_spaces()
        self.samples_per_epoch = int(samples_per_epoch)
        self.seed = seed

    def _check_stackable(self) -> None:
        for what, get in (("patch shape", lambda d: (d.patch_shape, d.is_2d)), ("targets", lambda d: d.targets),
                          ("label layers", lambda d: d.label_layers), ("raw dtype", lambda d: d.output_raw_dtype)):
            values = {n: get(d) for n, d in zip(self.names, self.datasets)}
            if len({repr(v) for v in values.values()}) > 1:
                hint = " (pass raw_dtype='float32' with normalize='percentile' or 'dtype' to every part)" \
                    if what == "raw dtype" else ""
                raise ValueError(f"cannot mix datasets whose {what} differ, batches would not stack: "
                                 f"{', '.join(f'{n!r}: {v}' for n, v in values.items())}{hint}")

    def _unify_label_spaces(self) -> None:
        settings = {n: (sorted(d.space.ignore_classes), d.space.ignore_mode, d.space.ignore_value)
                    for n, d in zip(self.names, self.datasets)}
        if len({repr(v) for v in settings.values()}) > 1:
            raise ValueError("cannot mix datasets with different ignore_classes/ignore_mode/ignore_value: "
                             + ", ".join(f"{n!r}: {v}" for n, v in settings.items()))
        explicit = {n: d.classes for n, d in zip(self.names, self.datasets) if d.explicit_space}
        if len({tuple(c) for c in explicit.values()}) > 1:
            spaces = ", ".join(f"{n!r} has {c}" for n, c in explicit.items())
            raise ValueError(f"the parts' label spaces differ: {spaces}"
                             "; give every part the same label_space, or none for the union of what they annotate")
        if explicit:
            classes = next(iter(explicit.values()))
        else:
            union = {c for d in self.datasets for c in d.classes if c != "background"}
            classes = ["background", *sorted(union, key=lambda name: ontology().resolve(name).id)]
        for name, ds in zip(self.names, self.datasets):
            if ds.classes != classes:
                log.info("%s: label space %s widened to %s for mixing", name, ds.classes, classes)
                ds.set_label_space(classes)

    @property
    def class_names(self) -> dict[int, str]:
        """Target index → class name, shared by every part."""
        return self.datasets[0].class_names

    def __repr__(self) -> str:
        parts = ", ".join(f"{n!r}: p={p:.3g}" for n, p in zip(self.names, self.p))
        return (f"MixedPatchDataset({parts}; classes {self.class_names}; samples_per_epoch={self.samples_per_epoch}, "
                f"seed={self.seed})")

    def __len__(self) -> int:
        return self.samples_per_epoch

    def sample(self, epoch: int, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, epoch, index])
        k = int(rng.choice(len(self.datasets), p=self.p))
        out = self.datasets[k].sample(epoch, index, rng)
        out["meta"]["source"] = self.names[k]
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``(epoch, index)`` (or ``index`` of epoch 0) as numpy arrays; the loader's
        :func:`collate_patches` turns batches into torch tensors."""
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        return self.sample(int(epoch), int(index))
