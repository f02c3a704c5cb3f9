"""Progress bars for long transfers and conversions (rich), silent when quiet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from emdata import config


class Advance:
    """``advance(n)`` moves the bar by ``n``; ``advance.set_total(n)`` gives a bar its size once known.

    Example:
        >>> with transfer_progress("demo", None) as advance:
        ...     advance.set_total(10)
        ...     advance(4)
        >>> advance.done, advance.total
        (4, 10)
    """

    def __init__(self, total: int | None, start: int = 0, move: Callable[[int], None] | None = None,
                 resize: Callable[[int], None] | None = None) -> None:
        self.total, self.done = total, start
        self._move, self._resize = move, resize

    def __call__(self, n: int) -> None:
        self.done += n
        if self._move is not None:
            self._move(n)

    def set_total(self, total: int) -> None:
        self.total = total
        if self._resize is not None:
            self._resize(total)


@contextmanager
def transfer_progress(description: str, total: int | None, unit: str = "bytes",
                      start: int = 0) -> Iterator[Advance]:
    """Yield an :class:`Advance`; draws a bar on stderr unless quiet (``start``: units already done)."""
    if config.quiet():
        yield Advance(total, start)
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
        yield Advance(total, start, move=lambda n: progress.advance(task, n),
                      resize=lambda n: progress.update(task, total=n))


@contextmanager
def status(message: str) -> Iterator[None]:
    """A spinner with ``message`` on stderr for work without a known size; silent when quiet."""
    if config.quiet():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
