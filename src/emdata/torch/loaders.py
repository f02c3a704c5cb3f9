"""Loaders that draw a new epoch on every pass: the ``(epoch, index)`` sampler, a thread-pool
loader for volumes held in memory, and :func:`make_loader`, which builds either one.

Datasets here take ``(epoch, index)`` keys (:class:`~emdata.torch.dataset.PatchDataset`,
:class:`~emdata.torch.mixing.MixedPatchDataset`), so samples depend neither on the number of
workers nor on the start method nor on how DDP ranks split an epoch: :class:`EpochSampler`
hands each rank its share of the keys, and every loader turns batches into tensors with
:func:`~emdata.torch.collate.collate_patches`.

Example:
    >>> import numpy as np
    >>> samples = {(0, i): {"x": np.array([i])} for i in range(6)}  # any sized dataset taking (epoch, i) keys
    >>> loader = make_loader(samples, batch_size=2, worker_type="thread", num_workers=2)
    >>> [batch["x"].ravel().tolist() for batch in loader], len(loader)
    ([[0, 1], [2, 3], [4, 5]], 3)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from emdata.torch.collate import collate_patches
from emdata.torch.dataset import PatchDataset
from emdata.torch.mixing import MixedPatchDataset

try:  # a DistributedSampler is left alone by Lightning: it never splits our rank shares again
    from torch.utils.data import DistributedSampler as _SamplerBase
except ImportError:  # numpy-only use of PatchDataset
    _SamplerBase = object  # type: ignore[assignment,misc]


class EpochSampler(_SamplerBase):  # type: ignore[misc,valid-type]
    """Yields ``(epoch, i)``: this rank's share (``i = rank, rank + world_size, …``) of the epoch.

    Each new iteration draws the next epoch (0, 1, 2, …), so a plain ``for epoch …: for batch
    in loader`` loop sees new patches every epoch. ``set_epoch(e)`` (Lightning calls it before
    every epoch) fixes the epoch of the next iteration; counting resumes from there. The
    sampler is iterated in the main process only, so worker processes and DDP ranks (which
    iterate equally often) agree. ``advance=False`` draws the same epoch every time
    (validation: the same patches each epoch); ``set_epoch`` then changes nothing.

    Example:
        >>> sampler = EpochSampler(4, rank=1, world_size=2)
        >>> list(sampler), list(sampler)
        ([(0, 1), (0, 3)], [(1, 1), (1, 3)])
        >>> sampler.set_epoch(7); list(sampler)
        [(7, 1), (7, 3)]
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, epoch: int = 0, advance: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if n < 1:
            raise ValueError(f"an epoch needs at least one sample, got n={n}")
        self.n, self.rank, self.world_size, self.epoch = n, rank, world_size, epoch
        self.num_replicas, self.shuffle, self.drop_last, self.seed = world_size, False, False, 0  # DistributedSampler's
        self.advance = advance
        self._next = epoch

    def set_epoch(self, epoch: int) -> None:
        if self.advance:
            self.epoch = self._next = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch = self._next
        if self.advance:
            self._next = epoch + 1
        return ((epoch, i) for i in range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class ThreadedLoader:
    """Batches built by a pool of threads, in order, with a bounded prefetch window.

    For volumes held in memory, threads beat worker processes: numpy copies release the GIL
    and no patch has to cross a process boundary. Same samples as any DataLoader setup.
    """

    def __init__(self, dataset: Any, batch_size: int, sampler: EpochSampler, threads: int = 2,
                 prefetch: int = 4, collate: Any = None) -> None:
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.threads, self.prefetch = threads, prefetch
        self.collate = collate or collate_patches

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def _batch(self, keys: list[tuple[int, int]]) -> dict[str, Any]:
        return self.collate([self.dataset[k] for k in keys])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        keys = list(self.sampler)
        chunks = [keys[i: i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        with ThreadPoolExecutor(self.threads) as pool:
            pending: deque[Any] = deque()
            for chunk in chunks:
                pending.append(pool.submit(self._batch, chunk))
                if len(pending) >= self.threads * self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def make_loader(dataset: PatchDataset | MixedPatchDataset, batch_size: int = 1, num_workers: int = 0,
                multiprocessing_context: str | None = None, rank: int | None = None,
                world_size: int | None = None, worker_type: str = "process", advance_epochs: bool = True,
                **kwargs: Any) -> Any:
    """A loader drawing this rank's samples of each epoch (rank/world from torch.distributed
    when initialised). ``worker_type="process"``: a torch DataLoader whose workers persist
    across epochs (``multiprocessing_context`` ``"fork"``, ``"spawn"`` or ``"forkserver"``);
    ``"thread"``: a :class:`ThreadedLoader` with ``num_workers`` threads (best for volumes
    held in memory). Every new pass over the loader is the next epoch (see
    :class:`EpochSampler`; ``advance_epochs=False`` repeats epoch 0, e.g. for validation).

    Example:
        >>> loader = make_loader(range(4), batch_size=2)  # any sized dataset taking (epoch, i) keys
        >>> len(loader), [key for key in loader.sampler]
        (2, [(0, 0), (0, 1), (0, 2), (0, 3)])
    """
    import torch
    from torch.utils.data import DataLoader

    if rank is None or world_size is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if ready else 0
        world_size = dist.get_world_size() if ready else 1
    sampler = EpochSampler(len(dataset), rank, world_size, advance=advance_epochs)
    if worker_type == "thread":
        return ThreadedLoader(dataset, batch_size, sampler, threads=max(num_workers, 1),
                              collate=kwargs.get("collate_fn"))
    if worker_type != "process":
        raise ValueError(f"worker_type must be 'process' or 'thread', got {worker_type!r}")
    if num_workers:
        kwargs.setdefault("persistent_workers", True)
        kwargs.setdefault("prefetch_factor", 4)
    kwargs.setdefault("collate_fn", collate_patches)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,  # type: ignore[arg-type]
                      multiprocessing_context=multiprocessing_context if num_workers else None, **kwargs)
