"""The catalog: one card per dataset, shipped as TOML data inside the package
(``emdata/datasets/<id with _>/card.toml``; reading them imports no recipe).

Example:
    >>> from emdata.catalog import list_cards, get_card
    >>> [c.id for c in list_cards(species="mouse")][:2]
    ['axonem', 'kasthuri']
    >>> get_card("snemi3d").microscopy
    'ATUM-SEM'
"""

from __future__ import annotations

import difflib
import tomllib
from functools import cache
from importlib import resources

from emdata.catalog.card import Card, CardError, LabelClass, LabelLayer, Source, Subset, VolumeSpec, parse_card

__all__ = [
    "Card",
    "CardError",
    "LabelClass",
    "LabelLayer",
    "Source",
    "Subset",
    "UnknownDatasetError",
    "VolumeSpec",
    "dataset_ids",
    "get_card",
    "list_cards",
    "suggest_ids",
]


class UnknownDatasetError(KeyError):
    """No card has this id; the message suggests the closest ids."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain sentence
        return str(self.args[0])


def _card_files() -> list:
    """``emdata/datasets/<id with _>/card.toml``, found as package data: no dataset module is imported."""
    root = resources.files("emdata") / "datasets"
    return sorted((d / "card.toml" for d in root.iterdir() if d.is_dir() and d.joinpath("card.toml").is_file()),
                  key=lambda f: f.parent.name)


@cache
def _all_cards() -> dict[str, Card]:
    cards: dict[str, Card] = {}
    for entry in _card_files():
        origin = f"datasets/{entry.parent.name}/card.toml"
        try:
            doc = tomllib.loads(entry.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise CardError(f"catalog card {origin}: invalid TOML: {exc}") from exc
        card = parse_card(doc, origin=origin)
        if card.id.replace("-", "_") != entry.parent.name:
            raise CardError(f"catalog card {origin}: id {card.id!r} does not match its folder "
                            f"(expected datasets/{card.id.replace('-', '_')}/card.toml)")
        cards[card.id] = card
    return dict(sorted(cards.items()))


def dataset_ids() -> list[str]:
    """Every dataset id in the catalog, sorted."""
    return sorted(_all_cards())


def suggest_ids(name: str, n: int = 3) -> list[str]:
    """The ids closest to ``name`` (for 'did you mean' messages)."""
    ids = dataset_ids()
    key = name.lower().replace("_", "-")
    prefix = [i for i in ids if key and (i.startswith(key) or key.startswith(i))]
    close = (difflib.get_close_matches(key, ids, n=n, cutoff=0.75)
             or difflib.get_close_matches(key, ids, n=n, cutoff=0.5))
    return list(dict.fromkeys(prefix + close))[:n]


def get_card(dataset_id: str) -> Card:
    """The card of ``dataset_id``; raises :class:`UnknownDatasetError` with suggestions."""
    cards = _all_cards()
    if dataset_id in cards:
        return cards[dataset_id]
    hint = suggest_ids(dataset_id)
    hint_text = f"; did you mean {', '.join(hint)}?" if hint else ""
    raise UnknownDatasetError(f"unknown dataset {dataset_id!r}{hint_text} (`emdata list` shows all ids)")


def _matches(query: str | None, *values: str) -> bool:
    if not query:
        return True
    q = query.lower()
    return any(q in v.lower() for v in values if v)


def list_cards(species: str | None = None, microscopy: str | None = None) -> list[Card]:
    """Cards filtered by species and/or microscopy (case-insensitive substring match).

    Species matches the card's species, its organism (scientific name) and its aliases;
    microscopy matches the card's and its subsets' microscopy.
    """
    out = []
    for card in _all_cards().values():
        species_names = [card.species, card.raw.get("organism", ""), *card.raw.get("species_aliases", [])]
        micro_names = [card.microscopy, *[s.microscopy for s in card.subsets]]
        if _matches(species, *species_names) and _matches(microscopy, *micro_names):
            out.append(card)
    return out
