"""Falling back to a card's *alternate* sources when every URL of a primary source failed.

A card marks a source ``alternate = "<primary name>"`` when it carries the primary's data in
another host or format. A recipe that can read such an alternate lists it in its ``ALTERNATES``;
:func:`fetch_with_fallback` then fetches the primary, or, when that fails, the alternates, and
says which was used so the provenance can record it.

Example:
    >>> from emdata.catalog import get_card
    >>> [s.name for s in alternates_of(get_card("snemi3d"), "snemi.zip")]
    ['snemi_train.h5', 'snemi_test.h5']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from emdata.catalog import Card
from emdata.catalog.card import Source
from emdata.datasets._common import fetch_source
from emdata.sources.download import FetchResult
from emdata.sources.errors import DownloadError

log = logging.getLogger(__name__)


def alternates_of(card: Card, primary: str) -> list[Source]:
    """The card's sources marked as alternates of ``primary``, in card order."""
    card.source(primary)  # an unknown name is an error naming the card's sources
    return [s for s in card.sources if s.alternate_of == primary]


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Fetched:
    """What a recipe got: the primary (``alternates`` empty) or the alternates that replaced it."""

    primary: FetchResult | None
    alternates: dict[str, FetchResult]
    fallback: dict[str, Any] | None  # {"used", "instead_of", "because"} when the primary failed

    def provenance_note(self) -> dict[str, Any]:
        """``{"alternate": ...}`` to add to a volume's provenance, or ``{}`` for the primary."""
        return {"alternate": self.fallback} if self.fallback else {}


def fetch_primary(card: Card, primary: str) -> FetchResult:
    """Fetch ``primary`` for a recipe that reads none of its alternates; a failure names them."""
    try:
        return fetch_source(card, primary)
    except DownloadError as exc:
        marked = sorted(s.name for s in alternates_of(card, primary))
        if not marked:
            raise
        raise type(exc)(f"{first_line(exc)}; the card's alternate(s) {', '.join(marked)} can be fetched with "
                        f"`emdata fetch {card.id} --all`, but prepare does not read them (see their note in "
                        f"`emdata info {card.id}`)") from exc


def fetch_with_fallback(card: Card, primary: str, readable: list[str]) -> Fetched:
    """Fetch ``primary``; if every URL of it fails, fetch the alternates ``readable`` instead.

    ``readable`` are the alternates the caller needs and can read (each must be marked
    ``alternate = "<primary>"`` in the card). When they fail too, the error names both failures.
    """
    marked = {s.name for s in alternates_of(card, primary)}
    stray = sorted(set(readable) - marked)
    if stray:
        raise ValueError(f"{card.id}: {stray} are not marked as alternates of {primary} in the card")
    if not readable:
        return Fetched(fetch_primary(card, primary), {}, None)
    try:
        return Fetched(fetch_source(card, primary), {}, None)
    except DownloadError as exc:
        failure = exc
    log.warning("%s: %s could not be fetched (%s); reading its alternate(s) %s instead", card.id, primary,
                first_line(failure), ", ".join(readable))
    got = {}
    for name in readable:
        try:
            got[name] = fetch_source(card, name)
        except DownloadError as exc:
            raise DownloadError(f"{card.id}: {primary} failed ({first_line(failure)}) and its alternate {name} "
                                f"failed too ({first_line(exc)})") from exc
    return Fetched(None, got, {"used": list(readable), "instead_of": primary, "because": first_line(failure)})
