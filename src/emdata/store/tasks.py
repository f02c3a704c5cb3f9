"""Run many independent tasks serially or on a dask ``distributed`` cluster, stopping cleanly
at the first failure so that work already done is kept and a rerun resumes.

Used by the region-by-region volume builder (:mod:`emdata.store.sharded`) and by recipes
that stage their sources in parallel.

Example:
    >>> run_tasks(None, divmod, [(7, 2), (9, 4)])
    [(3, 1), (2, 1)]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["BuildError", "dask_client", "default_workers", "run_tasks"]


class BuildError(RuntimeError):
    """Some regions of a build failed; the finished ones are kept and a rerun resumes."""


def run_tasks(client: Any, func: Callable[..., Any], items: Sequence[tuple[Any, ...]], *,
              on_done: Callable[[Any, Any], None] | None = None, window: int | None = None,
              what: str = "task") -> list[Any]:
    """Run ``func(*item)`` for every item, serially (``client`` None), on a ``distributed`` client,
    or on a ``concurrent.futures`` executor of this process (threads: one copy of everything).

    At most ``window`` tasks are in flight (default: twice the cluster's threads). After a
    failure (or an exception from ``on_done(item, result)``, called on this side as each task
    finishes) nothing new is submitted, the tasks in flight are waited for, and a
    :class:`BuildError` names how many failed and the first error — work already done stays done.
    Serially, the first failure stops the run the same way.

    Example:
        >>> run_tasks(None, pow, [(2, 3), (3, 2)])
        [8, 9]
    """
    if isinstance(client, concurrent.futures.Executor):
        window = window or 2 * (getattr(client, "_max_workers", 1) or 1)
        return _windowed(lambda item: client.submit(func, *item), _first_done, items, on_done, window, what)
    if client is None:
        results: list[Any] = [None] * len(items)
        for i, item in enumerate(items):
            try:
                results[i] = func(*item)
                if on_done is not None:
                    on_done(item, results[i])
            except Exception as exc:
                raise BuildError(f"{what} {item!r} failed ({type(exc).__name__}: {exc}); {i} of {len(items)} done "
                                 "before it are kept: run again to resume") from exc
        return results
    from distributed import wait

    window = window or 2 * (sum(client.nthreads().values()) or 1)
    return _windowed(lambda item: client.submit(func, *item, pure=False, key=f"emdata-{what}-{uuid.uuid4().hex}"),
                     lambda running: wait(running, return_when="FIRST_COMPLETED").done, items, on_done, window, what)


def _first_done(running: Sequence[concurrent.futures.Future[Any]]) -> set[concurrent.futures.Future[Any]]:
    return concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED).done


def _windowed(submit: Callable[[tuple[Any, ...]], Any], first_done: Callable[[list[Any]], Any],
              items: Sequence[tuple[Any, ...]], on_done: Callable[[Any, Any], None] | None, window: int,
              what: str) -> list[Any]:
    """:func:`run_tasks` on an executor (a dask client or a local pool): ``submit(item)`` gives a
    future, ``first_done(futures)`` the finished ones; at most ``window`` in flight, nothing new
    after a failure."""
    results: list[Any] = [None] * len(items)
    todo = iter(enumerate(items))
    running: dict[Any, int] = {}
    errors: list[tuple[tuple[Any, ...], BaseException]] = []

    def submit_next() -> None:
        nxt = next(todo, None)
        if nxt is not None:
            running[submit(nxt[1])] = nxt[0]

    for _ in range(max(1, window)):
        submit_next()
    while running:
        for future in first_done(list(running)):
            i = running.pop(future)
            try:
                results[i] = future.result()
                if on_done is not None:
                    on_done(items[i], results[i])
            except Exception as exc:
                errors.append((items[i], exc))
            if not errors:
                submit_next()
    if errors:
        item, first = errors[0]
        raise BuildError(f"{len(errors)} of {len(items)} {what}(s) failed (first: {item!r}: "
                         f"{type(first).__name__}: {first}); finished work is kept: run again to resume") from first
    return results


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, **local: Any) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` (an address such as ``tcp://host:8786``) or to a
    new ``LocalCluster`` (``dashboard_address=":0"``, one thread per worker, its logs at ERROR;
    ``local`` overrides),
    closed on exit. Workers of an existing cluster must see the same file system paths.

    Example:
        >>> with dask_client(n_workers=1, processes=False) as client:
        ...     client.submit(sum, [1, 2]).result()
        3
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError("building in parallel needs dask.distributed: pip install 'emdata[dask]'") from exc
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except OSError as exc:
            raise ConnectionError(f"cannot reach the dask scheduler at {scheduler!r} ({exc}); start one with "
                                  "`dask scheduler` or leave --scheduler out for a local cluster") from exc
        with client:
            yield client
        return
    kwargs: dict[str, Any] = {"dashboard_address": ":0", "threads_per_worker": 1, "silence_logs": logging.ERROR}
    if "n_workers" not in local:
        kwargs["n_workers"] = max(1, min(os.cpu_count() or 1, 8))
    kwargs.update(local)
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        yield client


def default_workers(bytes_per_task: int) -> int:
    """Local workers that fit in memory at ``bytes_per_task`` each (×2 headroom), at most one per core.

    Example:
        >>> default_workers(1) >= 1
        True
    """
    try:
        import psutil

        total = int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        total = 4 << 30
    return max(1, min(os.cpu_count() or 1, math.floor(total / max(2 * bytes_per_task, 1))))
