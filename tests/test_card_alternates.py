"""The card field ``alternate``: what it may name, and that every card marks its unused sources."""

from __future__ import annotations

import copy

import pytest

from emdata.catalog import get_card, list_cards
from emdata.catalog.card import CardError, parse_card


def _snemi_doc() -> dict:
    return copy.deepcopy(get_card("snemi3d").raw)


def test_alternate_must_name_a_primary_source_of_the_card() -> None:
    doc = _snemi_doc()
    doc["sources"][1]["alternate"] = "snemi.tar"
    with pytest.raises(CardError, match=r"sources\[1\].alternate: 'snemi.tar' is not a primary source"):
        parse_card(doc)
    doc["sources"][1]["alternate"] = "snemi_test.h5"  # itself an alternate
    with pytest.raises(CardError, match=r"'snemi_test.h5' is not a primary source"):
        parse_card(doc)


def test_alternate_is_a_name_or_true() -> None:
    doc = _snemi_doc()
    doc["sources"][1]["alternate"] = 1
    with pytest.raises(CardError, match=r"alternate: expected str or bool, got 1"):
        parse_card(doc)
    doc["sources"][1]["alternate"] = True
    doc["sources"][1].pop("note")
    with pytest.raises(CardError, match=r"needs a note"):
        parse_card(doc)


def test_cards_mark_what_recipes_do_not_read() -> None:
    marked = {(c.id, s.name): s.alternate for c in list_cards() for s in c.sources if s.is_alternate}
    assert marked[("snemi3d", "snemi_train.h5")] == "snemi.zip" and marked[("lucchi-pp", "Lucchi++.zip")] == (
        "lucchi_pp.zip")
    assert marked[("lucchi-pp", "training_groundtruth.tif")] is True
    assert marked[("cremi", "sample_ABC_padded_defects.h5")] is True
    assert all(s.alternate is False for s in get_card("cremi").sources if "defects" not in s.name)
