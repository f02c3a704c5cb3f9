"""The worker side of :class:`~emdata.torch.loaders.ProcessLoader`, without torch: whole batches
built by worker processes straight into reused shared-memory buffers.

A worker receives ``(pass, batch number, keys, slot)`` tasks on its own pipe, builds the samples of ``keys``
(``dataset[key]``) and writes them, stacked, into the slot: a shared-memory segment the main
process made and hands out again once the batch it held is released, so after the first batches
nothing is allocated, mapped or page-faulted per batch. Only the layout (dtypes, shapes, offsets,
and the few non-array values such as names) travels back through its result pipe. A batch that
does not fit its slot travels whole through the pipe once (numpy arrays, pickled) and the main
process gives the slot the size it needed.

This module imports numpy only, so a spawned or forkserver worker never imports torch (a second
or more of start-up and tens of MB per worker).

Example:
    >>> import numpy as np
    >>> samples = [{"raw": np.full((2, 2), i, np.uint8), "meta": {"name": "v", "level": 0}} for i in range(3)]
    >>> layout, size = batch_layout(samples)
    >>> buffer = np.zeros(size, np.uint8)
    >>> write_batch(samples, layout, buffer)
    >>> arrays = read_batch(layout, buffer)
    >>> arrays["raw"][:, 0, 0].tolist(), arrays["meta"]["name"], arrays["meta"]["level"].tolist()
    ([0, 1, 2], ['v', 'v', 'v'], [0, 0, 0])
"""

from __future__ import annotations

import math
import mmap
import os
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

ALIGN = 64  # bytes: every array of a batch starts on a cache line
Layout = dict[str, Any]
MAPPED = 64  # buffers a worker keeps mapped
WORKER: tuple[int, int] | None = None  # in a worker process: (its id, the number of workers)
PARENT_CHECK_S = 1.0  # an idle worker checks this often that the main process still lives


def _is_number(value: Any) -> bool:
    return isinstance(value, bool | int | float | np.number | np.bool_)


def batch_layout(samples: list[dict[str, Any]], offset: int = 0) -> tuple[Layout, int]:
    """Where each key of the stacked batch goes in one buffer: ``{key: ("a", dtype, shape, offset)}``
    for arrays and numbers (stacked like :func:`~emdata.torch.collate.collate_patches`: numpy's
    promotion of the samples' dtypes), ``("d", layout)`` for nested dicts, ``("o", values)`` for
    anything else (a list, one value per sample); and the bytes the buffer needs.

    Example:
        >>> layout, size = batch_layout([{"x": np.zeros(3, np.uint8)}, {"x": np.ones(3, np.uint16)}])
        >>> layout, size
        ({'x': ('a', '<u2', (2, 3), 0)}, 64)
    """
    out: Layout = {}
    for key, value in samples[0].items():
        items = [s[key] for s in samples]
        if isinstance(value, np.ndarray):
            shapes = {np.shape(i) for i in items}
            if len(shapes) != 1:
                raise ValueError(f"samples of one batch give {key!r} different shapes {sorted(shapes)}; a batch "
                                 "stacks arrays of one shape (use batch_size=1, or patches of one shape)")
            dtype = np.result_type(*[np.asarray(i).dtype for i in items])
            shape: tuple[int, ...] = (len(items), *value.shape)
        elif isinstance(value, dict):
            out[key], offset = batch_layout(items, offset)
            out[key] = ("d", out[key])
            continue
        elif _is_number(value):
            dtype, shape = np.array(items).dtype, (len(items),)
        else:
            out[key] = ("o", items)
            continue
        out[key] = ("a", dtype.str, shape, offset)
        offset += -(-math.prod(shape) * dtype.itemsize // ALIGN) * ALIGN
    return out, offset


def _view(entry: tuple, buffer: np.ndarray) -> np.ndarray:
    _, dtype, shape, offset = entry
    dtype = np.dtype(dtype)
    return buffer[offset: offset + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)


def write_batch(samples: list[dict[str, Any]], layout: Layout, buffer: np.ndarray) -> None:
    """Write ``samples`` stacked into ``buffer`` (a uint8 array at least as large as the layout
    says), each sample's array copied once into its place."""
    for key, entry in layout.items():
        if entry[0] == "d":
            write_batch([s[key] for s in samples], entry[1], buffer)
        elif entry[0] == "a":
            target = _view(entry, buffer)
            for i, sample in enumerate(samples):
                target[i] = sample[key]


def read_batch(layout: Layout, buffer: np.ndarray, wrap: Callable[[np.ndarray], Any] = lambda a: a) -> dict[str, Any]:
    """The batch ``layout`` describes, as views of ``buffer`` passed through ``wrap`` (the main
    process passes ``torch.from_numpy``)."""
    out: dict[str, Any] = {}
    for key, entry in layout.items():
        if entry[0] == "d":
            out[key] = read_batch(entry[1], buffer, wrap)
        elif entry[0] == "a":
            out[key] = wrap(_view(entry, buffer))
        elif entry[0] == "n":  # a batch that travelled whole through the queue
            out[key] = wrap(entry[1])
        else:
            out[key] = entry[1]
    return out


def inline_batch(samples: list[dict[str, Any]], layout: Layout) -> Layout:
    """The layout with every array replaced by the stacked array itself (``("n", array)``): a batch
    that travels whole through the pipe."""
    out: Layout = {}
    for key, entry in layout.items():
        items = [s[key] for s in samples]
        if entry[0] == "d":
            out[key] = ("d", inline_batch(items, entry[1]))
        elif entry[0] == "a":
            out[key] = ("n", np.stack(items).astype(entry[1], copy=False) if isinstance(items[0], np.ndarray)
                        else np.array(items))
        else:
            out[key] = entry
    return out


def attach(name: str) -> mmap.mmap:
    """Map the shared-memory segment ``name`` (made by the main process) read-write, without
    registering it with this process's resource tracker: the main process owns and unlinks it."""
    import _posixshmem

    fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    try:
        populate = getattr(mmap, "MAP_POPULATE", 0)  # fault the whole buffer in at once, not page by page
        return mmap.mmap(fd, os.fstat(fd).st_size, flags=mmap.MAP_SHARED | populate)
    finally:
        os.close(fd)


def worker_loop(dataset: Any, tasks: Any, results: Any, worker_id: int, init_fn: Callable[[int], None] | None,
                num_workers: int) -> None:
    """A worker process: build the batches of the tasks it receives on the ``tasks`` pipe until
    ``None``, sending each result on the ``results`` pipe.

    Each result is ``(pass, batch, slot, kind, payload)``: ``"slot"`` (payload: the layout, the
    batch is in the slot), ``"inline"`` (payload: ``(layout with the arrays, bytes needed)``) or
    ``"error"`` (payload: ``(worker, keys, traceback text)``).
    """
    global WORKER
    WORKER = (worker_id, num_workers)  # read_threads shares the cores among the workers by it
    maps: OrderedDict[int, tuple[str, mmap.mmap, np.ndarray]] = OrderedDict()  # the buffers used last
    if init_fn is not None:
        init_fn(worker_id)
    parent = os.getppid()
    while True:
        if not tasks.poll(PARENT_CHECK_S):
            if os.getppid() != parent:  # the main process is gone (killed): nobody will ask again
                break
            continue
        try:
            task = tasks.recv()
        except EOFError:  # the main process closed the pipe
            break
        if task is None:
            break
        run, batch, keys, slot, name = task
        try:
            samples = [dataset[k] for k in keys]
            layout, size = batch_layout(samples)
            held = maps.get(slot)
            if held is not None and held[0] != name:  # the main process gave this slot a new, larger segment
                del maps[slot]
                held = None
            if held is None and name is not None:
                segment = attach(name)
                held = maps[slot] = (name, segment, np.frombuffer(segment, np.uint8))
                while len(maps) > MAPPED:  # buffers the main process dropped are never named again
                    maps.popitem(last=False)
            elif held is not None:
                maps.move_to_end(slot)
            if held is not None and size <= held[2].size:
                write_batch(samples, layout, held[2])
                results.send((run, batch, slot, "slot", layout))
            else:
                results.send((run, batch, slot, "inline", (inline_batch(samples, layout), size)))
        except Exception:
            results.send((run, batch, slot, "error", (worker_id, keys, traceback.format_exc())))
