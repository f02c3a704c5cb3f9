"""The catalog: every id, schema-valid cards, public citations and licences, card layers == what prepare writes."""

from __future__ import annotations

import re

import pytest

from emdata.catalog import UnknownDatasetError, dataset_ids, get_card, list_cards, suggest_ids
from emdata.catalog.card import CardError, parse_card
from emdata.labels.ontology import ontology

REQUIRED_IDS = {
    "platelet-em", "densecell", "tem-neutrostruct", "human-liver-em", "parlakgul-liver", "snemi3d", "cremi",
    "microns-minnie65", "microns-layer23", "mitoem2", "mitoem", "axonem", "h01", "j0126", "kasthuri",
    "kasthuri-pp", "isbi2012", "lucchi-pp", "fib25", "hemibrain", "nucmm",
}

# (species, microscopy, voxel size z,y,x nm or None) as the public sources cited in each card state them.
REFERENCE = {
    "snemi3d": ("mouse", "ATUM-SEM", (30, 6, 6)),
    "cremi": ("Drosophila", "ssTEM", (40, 4, 4)),
    "microns-minnie65": ("mouse", "autoTEM", (40, 8, 8)),
    "microns-layer23": ("mouse", "ssTEM", (40, 3.58, 3.58)),
    "h01": ("human", "ATUM-mSEM", (33, 4, 4)),
    "j0126": ("finch", "SBF-SEM", (20, 10, 10)),
    "kasthuri": ("mouse", "ATUM-SEM", (30, 6, 6)),
    "isbi2012": ("fly", "ssTEM", (50, 4, 4)),
    "fib25": ("Drosophila", "FIB-SEM", (8, 8, 8)),
    "hemibrain": ("Drosophila", "FIB-SEM", (8, 8, 8)),
    "mitoem": ("human + rat", "mSEM", (30, 8, 8)),
    "lucchi-pp": (None, "FIB-SEM", (5, 5, 5)),
    "platelet-em": ("human", "SBF-SEM", (40, 10, 10)),
    "parlakgul-liver": ("mouse", "FIB-SEM", (8, 8, 8)),
    "human-liver-em": ("human", "SBF-SEM", None),
    "nucmm": (None, None, None),
    "densecell": ("human", "SBF-SEM", None),
}

# The JackieZhai/awesome-em-datasets table rows, written out here independently of the cards.
AWESOME = {
    "axonem": ("mouse", "primary visual cortex", "ssTEM", "30×30×30", "7×7×40"),
    "h01": ("human", "temporal lobe", "ATUM-mSEM", "2,000×3,000×175", "4×4×30"),
    "j0126": ("finch", "area X", "SBF-SEM", "96×98×114", "9×9×20"),
    "kasthuri": ("mouse", "neocortex", "ATUM-SEM", "40×40×50", "3×3×30"),
    "microns-minnie65": ("mouse", "primary visual cortex and three higher visual areas", "autoTEM",
                         "1,300×870×820", "4×4×40"),
    "microns-layer23": ("mouse", "primary visual cortex", "ssTEM", "250×140×90", "3.58×3.58×40"),
    "isbi2012": ("fly", "ventral nerve line", "ssTEM", "2×2×1.5", "4×4×50"),
    "snemi3d": ("mouse", "cortex", "ATUM-SEM", "6×6×3", "6×6×30"),
}
AWESOME_NUMBERS = {
    "h01": ("50,000", "133,700,000"),
    "j0126": ("33 blocks", "12+50"),
    "kasthuri": ("1,700 synapses",),
    "microns-minnie65": ("200,000 cells", "524,000,000 synapses"),
    "microns-layer23": ("451 neurons (417 PyCs)", "169 non-neuronal cells"),
    "axonem": ("18,000 axons",),
}


def test_every_required_dataset_has_a_card() -> None:
    assert set(dataset_ids()) >= REQUIRED_IDS


def test_mitoem2_has_its_eight_subsets() -> None:
    subsets = {s.id for s in get_card("mitoem2").subsets}
    assert subsets == {"beta", "jurkat", "macro", "mossy", "podo", "pyra", "sperm", "stem"}
    spacing = {s.id: s.voxel_size_nm for s in get_card("mitoem2").subsets}
    assert spacing["pyra"] == (30, 8, 8) and spacing["beta"] == (16, 16, 16)


@pytest.mark.parametrize("dataset", sorted(REFERENCE))
def test_species_microscopy_voxel_match_reference(dataset: str) -> None:
    species, microscopy, voxel = REFERENCE[dataset]
    card = get_card(dataset)
    if species:
        assert card.species == species
    if microscopy:
        assert card.microscopy == microscopy
    assert card.voxel_size_nm == (tuple(float(v) for v in voxel) if voxel else None)


@pytest.mark.parametrize("dataset", sorted(AWESOME))
def test_awesome_row_carried_over_exactly(dataset: str) -> None:
    species, sample, microscopy, size, resolution = AWESOME[dataset]
    row = get_card(dataset).raw["awesome"]
    assert (row["species"], row["sample"], row["microscopy"], row["size_um"], row["resolution_nm"]) == (
        species, sample, microscopy, size, resolution)
    for fragment in AWESOME_NUMBERS.get(dataset, ()):
        assert fragment in row["numbers"]


@pytest.mark.parametrize("dataset", sorted(REQUIRED_IDS))
def test_card_is_complete(dataset: str) -> None:
    card = get_card(dataset)
    assert card.title and card.homepage.startswith("http") and card.license
    assert card.citation.startswith("@")
    assert card.sources, "every card names where its data is"
    for source in card.sources:
        assert source.checksum == "none published" or source.hash_value
    onto = ontology()
    for layer in card.labels:
        if layer.instance_of:
            onto.resolve(layer.instance_of)
        for cls in layer.classes:
            if cls.ontology:
                onto.resolve(cls.ontology)


def test_every_card_class_is_in_the_ontology() -> None:
    onto = ontology()
    for card in list_cards():
        for layer in card.labels:
            if layer.kind == "instance":
                assert layer.instance_of or layer.value_ranges, (
                    f"{card.id}/{layer.name}: instance layer without instance_of or value_ranges")
                for cls in [layer.instance_of] if layer.instance_of else [r["ontology"] for r in layer.value_ranges]:
                    onto.resolve(cls)
            for cls in layer.classes:
                assert cls.ontology, f"{card.id}/{layer.name}: class {cls.value} {cls.name!r} has no ontology class"
                onto.resolve(cls.ontology)
    assert onto.resolve("out of bounds").role == "ignore" and onto.resolve("mito").role == "structure"


def test_conflicts_record_the_value_used() -> None:
    minnie = get_card("microns-minnie65")
    assert [tuple(a["nm"]) for a in minnie.voxel_size.alternatives] == [(40, 4, 4)]
    cremi = get_card("cremi")
    assert any("test" in c["field"].lower() or "C" in " ".join(c["values"]) for c in cremi.raw["conflicts"])


def test_filters() -> None:
    mouse = {c.id for c in list_cards(species="mouse")}
    assert {"snemi3d", "kasthuri", "microns-minnie65"} <= mouse and "cremi" not in mouse
    fib = {c.id for c in list_cards(microscopy="fib-sem")}
    assert {"fib25", "hemibrain", "parlakgul-liver"} <= fib
    assert "mitoem2" in {c.id for c in list_cards(microscopy="SBF-SEM")}  # via its stem subset
    assert "j0126" in {c.id for c in list_cards(species="zebra finch")}


def test_unknown_id_suggests_close_ids() -> None:
    with pytest.raises(UnknownDatasetError, match="did you mean snemi3d"):
        get_card("snemi3df")
    assert suggest_ids("cremi3d")[0] == "cremi"
    assert suggest_ids("zzzzzz") == []


def test_schema_rejects_typos_and_bad_checksums() -> None:
    doc = dict(get_card("snemi3d").raw)
    with pytest.raises(CardError, match="unknown key"):
        parse_card({**doc, "specis": "mouse"})
    bad_source = {**doc["sources"][0], "checksum": "sha256:1234"}
    with pytest.raises(CardError, match="checksum"):
        parse_card({**doc, "sources": [bad_source]})
    with pytest.raises(CardError, match="three positive numbers"):
        parse_card({**doc, "voxel_size": {"nm": [30, 6], "verified": False, "source": "x"}})


def test_ontology_keeps_the_union_ids_0_to_4() -> None:
    onto = ontology()
    assert [(c.id, c.name) for c in onto.classes[:5]] == [
        (0, "background"), (1, "neuron"), (2, "cleft"), (3, "mitochondria"), (4, "mito_boundary")]
    assert onto.resolve("mitochondrion").id == 3
    assert [c.name for c in onto.ancestors("er_sheets")] == ["er"]


# ---------------------------------------------------------------------------------------------
# licences and citations

SPDX_DATA_LICENCES = {"CC-BY-4.0", "CC0-1.0", "CC-BY-NC-4.0", "CC-BY-SA-4.0", "MIT", "ODC-By-1.0"}


@pytest.mark.parametrize("dataset", sorted(REQUIRED_IDS))
def test_licence_is_published_or_plainly_unverified(dataset: str) -> None:
    card = get_card(dataset)
    if card.license == "unverified":
        assert card.raw.get("license_note"), f"{dataset}: say what was looked at in license_note"
        return
    assert card.license in SPDX_DATA_LICENCES, f"{dataset}: licence {card.license!r} is not an SPDX id we know"
    url = card.raw.get("license_url", "")
    assert url.startswith("https://"), f"{dataset}: licence {card.license} needs license_url, the published statement"


_BIBTEX = re.compile(r"^@(?P<type>[a-z]+)\{(?P<key>[A-Za-z0-9_:-]+),\s*(?P<body>.*)\}\s*$", re.DOTALL)
_BIBTEX_FIELD = re.compile(r"(?:^|,)\s*(?P<name>[a-z]+)\s*=\s*[{\"0-9]", re.MULTILINE)


def _bibtex_fields(entry: str) -> tuple[str, str, set[str]]:
    """(type, key, field names) of one BibTeX entry; raises AssertionError on a malformed one."""
    match = _BIBTEX.match(entry.strip())
    assert match, f"not one BibTeX entry: {entry[:60]!r}"
    depth = 0
    for char in match.group("body"):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0, "unbalanced braces"
    assert depth == 0, "unbalanced braces"
    fields = {m.group("name") for m in _BIBTEX_FIELD.finditer(match.group("body"))}
    return match.group("type"), match.group("key"), fields


@pytest.mark.parametrize("dataset", sorted(REQUIRED_IDS))
def test_citation_is_real_bibtex(dataset: str) -> None:
    card = get_card(dataset)
    kind, key, fields = _bibtex_fields(card.citation)
    assert kind in {"article", "inproceedings", "misc", "dataset", "online"}, kind
    missing = {"title", "author", "year"} - fields
    assert not missing, f"{dataset}: BibTeX {key} lacks {sorted(missing)}"
    assert not re.search(r"placeholder|todo|tbd|xxx|unknown", card.citation, re.IGNORECASE), card.citation
    assert "doi" in fields or "url" in fields or "howpublished" in fields, f"{dataset}: give a DOI or URL"


def test_bibtex_check_rejects_broken_entries() -> None:
    with pytest.raises(AssertionError):
        _bibtex_fields("@article{x, title = {a}, author = {b}")
    assert _bibtex_fields("@misc{k1, title = {T}, author = {A}, year = {2020}}")[2] == {"title", "author", "year"}


def test_schema_requires_a_licence_source_and_checks_cases_and_ranges() -> None:
    doc = dict(get_card("snemi3d").raw)
    with pytest.raises(CardError, match="license_url"):
        parse_card({**doc, "license": "CC-BY-4.0"})
    assert parse_card({**doc, "license": "CC-BY-4.0", "license_url": "https://example.org/terms"}).license_url
    bad_volume = {**doc["volumes"][0], "cases": ["train-01", 3]}
    with pytest.raises(CardError, match="cases"):
        parse_card({**doc, "volumes": [bad_volume]})
    bad_layer = {**doc["labels"][0], "value_ranges": [{"min": 5, "max": 1, "ontology": "neuron"}]}
    with pytest.raises(CardError, match="min 5 is above max 1"):
        parse_card({**doc, "labels": [bad_layer]})
