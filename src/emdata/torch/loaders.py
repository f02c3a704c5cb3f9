"""Loaders that draw a new epoch on every pass: the ``(epoch, index)`` sampler, a process loader
whose workers build whole batches into reused shared memory, a thread-pool loader, and
:func:`make_loader`, which builds one of them (or a torch DataLoader).

Datasets here take ``(epoch, index)`` keys (:class:`~emdata.torch.dataset.PatchDataset`,
:class:`~emdata.torch.mixing.MixedPatchDataset`), so samples depend neither on the number of
workers nor on the start method nor on how DDP ranks split an epoch: :class:`EpochSampler`
hands each rank its share of the keys, and every loader stacks batches as
:func:`~emdata.torch.collate.collate_patches` does.

Example:
    >>> import numpy as np
    >>> samples = {(0, i): {"x": np.array([i])} for i in range(6)}  # any sized dataset taking (epoch, i) keys
    >>> loader = make_loader(samples, batch_size=2, worker_type="thread", num_workers=2)
    >>> [batch["x"].ravel().tolist() for batch in loader], len(loader)
    ([[0, 1], [2, 3], [4, 5]], 3)
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from emdata.torch.collate import collate_patches
from emdata.torch.dataset import PatchDataset
from emdata.torch.mixing import MixedPatchDataset
from emdata.torch.workers import read_batch, worker_loop

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


SHM_PREFIX = "emdata-loader"  # /dev/shm/emdata-loader-<pid>-<n>: the buffers of process <pid>'s loaders


def _sweep_stale() -> None:
    """Unlink buffers left by loaders of processes that no longer exist (killed before cleaning up)."""
    import _posixshmem

    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if not name.startswith(SHM_PREFIX + "-") or len(parts) != 4 or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                _posixshmem.shm_unlink("/" + name)
        except OSError:  # alive, someone else's
            continue


class _Slot:
    """One shared-memory output buffer of a :class:`ProcessLoader`, made and unlinked by the main
    process (``/dev/shm/emdata-loader-<pid>-<n>``)."""

    _count = itertools.count()

    def __init__(self, number: int, size: int, owner: int) -> None:
        import _posixshmem
        import mmap

        self.number, self.size, self.owner = number, size, owner
        self.name = f"{SHM_PREFIX}-{os.getpid()}-{next(self._count)}"
        fd = _posixshmem.shm_open("/" + self.name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            _posixshmem.shm_unlink("/" + self.name)
            raise
        finally:
            os.close(fd)
        self.unlinked = False

    def release(self) -> None:
        """Unlink the segment (its memory goes once no batch still views it)."""
        import _posixshmem

        with contextlib.suppress(BufferError):  # a batch still views it: the mapping lives until it goes
            self.map.close()
        if not self.unlinked:
            self.unlinked = True
            with contextlib.suppress(FileNotFoundError):
                _posixshmem.shm_unlink("/" + self.name)


class ProcessLoader:
    """Batches built by worker processes into a reused ring of shared-memory buffers.

    Each worker builds a whole batch (``batch_size`` samples, stacked) straight into a buffer the
    main process made once and hands out again when the batch that used it is released, so only
    ``(pass, batch, keys, buffer)`` and the batch's layout (a few hundred bytes) cross each worker's
    pipes: per batch no array is pickled, no shared memory is made or page-faulted and no file
    descriptor is passed (a torch DataLoader makes and sends a new shared-memory segment per tensor
    of every batch, and its main process maps and faults them in again). Batches come in order; their tensors are
    views of the buffer, which goes back to the ring when none of them (nor any view of them) is
    alive, so a training loop that keeps only the current batch uses at most
    ``num_workers * (prefetch + 1) + 1`` buffers (``prefetch`` batches queued per worker, batches
    built ahead of the one due while a slower worker finishes it, and the one held). A buffer goes
    back to the worker that last filled it, so workers rarely map one another's. Samples are
    ``dataset[(epoch, i)]`` exactly as at 0 workers, whatever the start
    method (``multiprocessing_context``: ``"fork"``, ``"spawn"``, ``"forkserver"``; default
    the platform's). Workers import numpy and the dataset only (never torch), persist across
    epochs and stop with :meth:`close` (also when the loader is garbage-collected or the program
    ends); the buffers are unlinked then. Each worker's chunk-reading threads share the cores
    with the other workers (:func:`~emdata.torch.reader.read_threads`).

    Example:
        >>> import numpy as np
        >>> samples = {(0, i): {"x": np.array([i])} for i in range(6)}  # any sized dataset taking (epoch, i) keys
        >>> loader = ProcessLoader(samples, 4, EpochSampler(6), num_workers=2)
        >>> [batch["x"].ravel().tolist() for batch in loader]
        [[0, 1, 2, 3], [4, 5]]
        >>> loader.close()
    """

    def __init__(self, dataset: Any, batch_size: int, sampler: EpochSampler, num_workers: int = 2,
                 multiprocessing_context: str | None = None, prefetch: int = 2,
                 worker_init_fn: Callable[[int], None] | None = None, timeout: float = 0.0) -> None:
        if batch_size < 1 or num_workers < 1 or prefetch < 1:
            raise ValueError(f"ProcessLoader needs batch_size >= 1, num_workers >= 1 and prefetch >= 1; got "
                             f"{batch_size}, {num_workers}, {prefetch}")
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.num_workers, self.prefetch, self.context = num_workers, prefetch, multiprocessing_context
        self.worker_init_fn, self.timeout = worker_init_fn, float(timeout)
        self._workers: list[Any] = []
        self._slots: dict[int, _Slot] = {}
        self._free: dict[int, deque[int]] = {}  # per worker: its free buffers (each worker maps only its own)
        self._lock = threading.RLock()  # a batch may be released (GC) while the lock is held
        self._numbers = itertools.count()
        self._pass = 0
        self._pipes: list[tuple[Any, Any]] = []  # per worker: (task sender, result receiver)
        self._owed: list[int] = []  # per worker: tasks sent and not yet answered, of any pass
        self._finalizer: Any = None
        self._release_callback = self._release_by_ref(weakref.ref(self))
        self._largest = 0  # bytes of the largest buffer made: new buffers get this size

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    # -- workers and buffers ----------------------------------------------------------------

    def _start(self) -> None:
        import multiprocessing

        _sweep_stale()
        ctx = multiprocessing.get_context(self.context)
        gc.freeze()  # forked workers: the collector never writes to the objects they inherit (less copy-on-write)
        try:
            self._spawn_workers(ctx)
        finally:
            gc.unfreeze()
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._pipes, self._slots)

    def _spawn_workers(self, ctx: Any) -> None:
        """One process per worker, each with its own task and result pipe (written directly: no
        feeder threads, one wake-up per message)."""
        for worker_id in range(self.num_workers):
            task_read, task_write = ctx.Pipe(duplex=False)
            result_read, result_write = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=worker_loop, name=f"emdata-loader-{worker_id}", daemon=True,
                               args=(self.dataset, task_read, result_write, worker_id, self.worker_init_fn,
                                     self.num_workers))
            proc.start()
            task_read.close()
            result_write.close()
            self._workers.append(proc)
            self._pipes.append((task_write, result_read))
            self._owed.append(0)

    def close(self) -> None:
        """Stop the workers and unlink the shared buffers (batches still held stay readable)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._workers, self._slots, self._pipes, self._owed, self._largest = [], {}, [], [], 0
        self._free = {}

    def _release(self, number: int) -> None:
        """A batch let go of buffer ``number``: back to the ring (called by the garbage collector)."""
        with self._lock:
            slot = self._slots.get(number)
            if slot is not None:
                self._free.setdefault(slot.owner, deque()).append(number)

    def _take(self, worker: int) -> _Slot | None:
        """A free buffer of ``worker`` (else of another worker), else a new one as large as the largest
        batch so far, else None (no batch seen yet: the batch comes inline and a buffer of its size is made)."""
        with self._lock:
            # its own first (already mapped there), else another worker's (mapped once more, no new memory)
            for owner in (worker, *[w for w in self._free if w != worker]):
                free = self._free.get(owner)
                while free:
                    slot = self._slots.get(free.popleft())
                    if slot is not None:
                        slot.owner = worker
                        return slot
            if not self._largest:
                return None
            made = _Slot(next(self._numbers), self._largest, worker)
            self._slots[made.number] = made
            return made

    def _grow(self, slot: int | None, size: int, worker: int) -> None:
        """A batch of ``worker`` needed ``size`` bytes: give buffer ``slot`` (or a new one) that size,
        with a margin. A buffer serves one worker only, so each is mapped and faulted in by one worker."""
        size = -(-int(size * 1.25) // 4096) * 4096
        with self._lock:
            self._largest = max(self._largest, size)
            if slot is not None and slot in self._slots:
                self._slots.pop(slot).release()
            made = _Slot(next(self._numbers), size, worker)
            self._slots[made.number] = made
            self._free.setdefault(worker, deque()).append(made.number)

    def _batch(self, layout: Any, slot: _Slot) -> dict[str, Any]:
        import numpy as np
        import torch

        base = np.frombuffer(slot.map, np.uint8)
        weakref.finalize(base, self._release_callback, slot.number)
        return read_batch(layout, base, torch.from_numpy)

    @staticmethod
    def _release_by_ref(ref: Any) -> Callable[[int], None]:
        """``release(number)`` for the loader behind weak reference ``ref`` (a batch never keeps its loader alive)."""

        def release(number: int) -> None:
            loader = ref()
            if loader is not None:
                loader._release(number)

        return release

    def _receive(self) -> list[tuple[int, tuple[int, int, int | None, str, Any]]]:
        """The ``(worker, result)`` pairs ready now (waiting for at least one)."""
        from multiprocessing.connection import wait

        got = []
        for i, (_, conn) in enumerate(self._pipes):  # what is there already: no wait, no selector
            if self._owed[i] and conn.poll():
                got.append((i, conn.recv()))
                self._owed[i] -= 1
        if got:
            return got
        readers = {conn: i for i, (_, conn) in enumerate(self._pipes) if self._owed[i]}
        waited = 0.0
        while True:
            ready = wait([*readers, *(p.sentinel for p in self._workers)], timeout=1.0)
            for conn in ready:
                if conn in readers:
                    try:
                        got.append((readers[conn], conn.recv()))
                    except EOFError:  # the worker is gone: reported below
                        continue
                    self._owed[readers[conn]] -= 1
            if got:
                return got
            waited += 1.0 if not ready else 0.0
            dead = [p for p in self._workers if p.exitcode is not None]
            if dead:
                codes = ", ".join(f"{p.name} (pid {p.pid}) exit code {p.exitcode}" for p in dead)
                self.close()
                raise RuntimeError(f"loader worker process(es) ended unexpectedly: {codes}; a negative code is the "
                                   "signal that ended it (-9: killed, often for memory: lower num_workers or "
                                   "batch_size)")
            if self.timeout and waited >= self.timeout:
                self.close()
                raise TimeoutError(f"no batch from the loader workers in {self.timeout:.0f} s (timeout=)")

    # -- iteration --------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self._workers:
            self._start()
        self._pass += 1
        run = self._pass
        keys = list(self.sampler)
        chunks = [keys[i: i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
        return self._iterate(run, chunks)

    def _iterate(self, run: int, chunks: list[list[tuple[int, int]]]) -> Iterator[dict[str, Any]]:
        window = self.num_workers * (self.prefetch + 1)  # batches sent and not yet yielded
        sent, done, ready = 0, 0, {}
        try:
            while done < len(chunks):
                if self._pass != run:
                    raise RuntimeError("a new pass over this loader started; an older iterator cannot go on")
                while True:
                    # keep every worker busy, even while the next batch in order is still being built elsewhere
                    while (sent < len(chunks) and sent - done < window and min(self._owed) < self.prefetch
                           and (self._largest or sum(self._owed) < self.num_workers)):  # no size known: one each
                        worker = self._owed.index(min(self._owed))
                        slot = self._take(worker)
                        self._pipes[worker][0].send((run, sent, chunks[sent], None if slot is None else slot.number,
                                                     None if slot is None else slot.name))
                        self._owed[worker] += 1
                        sent += 1
                    if done in ready:
                        break
                    for worker, result in self._receive():
                        self._settle(run, worker, result, ready)
                yield ready.pop(done)
                done += 1
        finally:
            ready.clear()

    def _settle(self, run: int, worker: int, result: tuple[int, int, int | None, str, Any],
                ready: dict[int, Any]) -> None:
        """File one worker result: a batch of this pass into ``ready``; an older pass's dropped, its buffer freed."""
        import torch

        got_run, batch, number, kind, payload = result
        slot = self._slots.get(number) if number is not None else None
        if kind == "error":
            if slot is not None:
                self._release(number)  # type: ignore[arg-type]
            if got_run != run:
                return
            _, failed, text = payload
            raise RuntimeError(f"loader worker {worker} failed on samples {failed}:\n{text}")
        if got_run != run:  # an older pass left it in flight
            if kind == "inline":
                self._grow(number, payload[1], worker)
            elif slot is not None:
                self._release(number)  # type: ignore[arg-type]
            return
        if kind == "inline":
            layout, size = payload
            self._grow(number, size, worker)
            ready[batch] = read_batch(layout, None, torch.from_numpy)  # type: ignore[arg-type]
        else:
            ready[batch] = self._batch(payload, slot)  # type: ignore[arg-type]


def _shutdown(workers: list[Any], pipes: list[tuple[Any, Any]], slots: dict[int, _Slot]) -> None:
    """Stop ``workers`` (asked first, then terminated) and unlink every buffer."""
    for send, _ in pipes:
        with contextlib.suppress(OSError, ValueError):
            send.send(None)
    for proc in workers:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2.0)
    for send, receive in pipes:
        send.close()
        receive.close()
    for slot in list(slots.values()):
        slot.release()
    slots.clear()


PROCESS_LOADER_OPTIONS = ("prefetch_factor", "worker_init_fn", "timeout")


def make_loader(dataset: PatchDataset | MixedPatchDataset, batch_size: int = 1, num_workers: int = 0,
                multiprocessing_context: str | None = None, rank: int | None = None,
                world_size: int | None = None, worker_type: str = "process", advance_epochs: bool = True,
                **kwargs: Any) -> Any:
    """A loader drawing this rank's samples of each epoch (rank/world from torch.distributed
    when initialised); every new pass over it is the next epoch (see :class:`EpochSampler`;
    ``advance_epochs=False`` repeats epoch 0, e.g. for validation).

    ``worker_type="process"`` (the default): with ``num_workers=0`` a torch DataLoader in the
    main process; with workers a :class:`ProcessLoader`: each worker builds whole batches into
    reused shared-memory buffers (``prefetch_factor`` batches ahead per worker, default 2;
    ``multiprocessing_context`` ``"fork"``, ``"spawn"`` or ``"forkserver"``; also takes
    ``worker_init_fn`` and ``timeout``). Passing any other DataLoader option
    (``pin_memory``, ``collate_fn``, ``persistent_workers=False``, …) or ``worker_type="torch"``
    gives a torch DataLoader whose workers persist across epochs. ``"thread"``: a
    :class:`ThreadedLoader` with ``num_workers`` threads. Batch size: 1 by default; bigger
    batches cost the workers nothing extra per sample (one task and one buffer per batch).

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
    if worker_type not in ("process", "torch"):
        raise ValueError(f"worker_type must be 'process', 'torch' or 'thread', got {worker_type!r}")
    if kwargs.get("collate_fn") is collate_patches:
        kwargs.pop("collate_fn")
    if kwargs.get("persistent_workers") is True:
        kwargs.pop("persistent_workers")
    if worker_type == "process" and num_workers and not set(kwargs) - set(PROCESS_LOADER_OPTIONS):
        return ProcessLoader(dataset, batch_size, sampler, num_workers, multiprocessing_context,
                             prefetch=kwargs.get("prefetch_factor") or 2, worker_init_fn=kwargs.get("worker_init_fn"),
                             timeout=kwargs.get("timeout", 0.0))
    if num_workers:
        kwargs.setdefault("persistent_workers", True)
        kwargs.setdefault("prefetch_factor", 4)
    kwargs.setdefault("collate_fn", collate_patches)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,  # type: ignore[arg-type]
                      multiprocessing_context=multiprocessing_context if num_workers else None, **kwargs)
