"""Progress bars for long transfers and conversions (rich), silent when quiet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from emdata import config


@contextmanager
def transfer_progress(description: str, total: int | None, unit: str = "bytes",
                      start: int = 0) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a bar on stderr unless quiet (``start``: units already done)."""
    if config.quiet():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, completed=start)
        yield lambda n: progress.advance(task, n)


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` on stderr for work without a known size; silent when quiet."""
    if config.quiet():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
