"""One catalog card: the facts about one dataset, validated on load.

Cards are TOML files in ``emdata/datasets/<id with _>/card.toml``. The schema is documented in
``docs/catalog.md``; :func:`parse_card` enforces it (unknown keys are errors, so a typo in a
card never silently drops a fact).

Example:
    >>> from emdata.catalog import get_card
    >>> get_card("snemi3d").voxel_size_nm
    (30.0, 6.0, 6.0)
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

CHECKSUM_PATTERN = re.compile(r"^(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32}|none published)$")
KINDS = ("connectomics", "cell-biology")
LABEL_KINDS = ("instance", "semantic")
SPLITS = ("train", "val", "test", "all")


class CardError(ValueError):
    """A catalog card breaks the schema (names the card and the field)."""


@dataclass(frozen=True)
class VoxelSize:
    """Voxel size in nm, (z, y, x); ``nm`` is None where no source states it."""

    nm: tuple[float, float, float] | None
    verified: bool
    source: str
    note: str = ""
    alternatives: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class LabelClass:
    value: int
    name: str
    ontology: str | None = None
    color: tuple[int, ...] | None = None
    description: str = ""


@dataclass(frozen=True)
class LabelLayer:
    name: str
    kind: str
    description: str = ""
    dtype: str | None = None
    instance_of: str | None = None
    classes: tuple[LabelClass, ...] = ()
    value_ranges: tuple[dict[str, Any], ...] = ()
    written_as: str | None = None
    prepared: bool = True

    @property
    def stored_name(self) -> str:
        """The layer name in prepared volumes (``written_as`` where the card's name differs)."""
        return self.written_as or self.name


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    split: str
    description: str = ""
    shape: tuple[int, ...] | None = None
    labelled: bool = True
    subset: str | None = None
    cases: tuple[str, ...] = ()
    prepared: bool = True

    def writes(self, volume_name: str) -> bool:
        """Whether ``prepare`` writing ``volume_name`` belongs to this entry: its own name, or one
        of its ``cases`` (exact names or shell-style patterns such as ``human-train-*``).

        Example:
            >>> from emdata.catalog import get_card
            >>> group = next(v for v in get_card("mitoem2").volumes if v.name == "beta-train")
            >>> group.writes("beta-train02"), group.writes("beta-test01")
            (True, False)
        """
        return volume_name == self.name or any(fnmatch.fnmatchcase(volume_name, c) for c in self.cases)


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    checksum: str
    size_bytes: int | None = None
    size_note: str = ""
    checksum_source: str = ""
    mirrors: tuple[str, ...] = ()
    format: str = ""
    subset: str | None = None
    note: str = ""
    alternate: str | bool = False

    @property
    def is_alternate(self) -> bool:
        """True for a source ``prepare`` does not need (fetched only on request, e.g. ``emdata fetch --all``)."""
        return self.alternate is not False

    @property
    def alternate_of(self) -> str | None:
        """The source whose data this one carries in another host or format, if the card names one."""
        return self.alternate if isinstance(self.alternate, str) else None

    @property
    def hash_algorithm(self) -> str | None:
        """``"sha256"``/``"md5"``, or None when no checksum is published."""
        return None if self.checksum == "none published" else self.checksum.split(":", 1)[0]

    @property
    def hash_value(self) -> str | None:
        return None if self.checksum == "none published" else self.checksum.split(":", 1)[1]


@dataclass(frozen=True)
class Subset:
    id: str
    title: str
    tissue: str = ""
    microscopy: str = ""
    voxel_size_nm: tuple[float, float, float] | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Card:
    """A dataset card. ``raw`` keeps the whole validated TOML document."""

    id: str
    title: str
    kind: str
    species: str
    tissue: str
    microscopy: str
    voxel_size: VoxelSize
    homepage: str
    license: str
    citation: str
    labels: tuple[LabelLayer, ...]
    volumes: tuple[VolumeSpec, ...]
    sources: tuple[Source, ...]
    subsets: tuple[Subset, ...]
    pitfalls: tuple[str, ...]
    raw: dict[str, Any]
    license_url: str = ""

    @property
    def voxel_size_nm(self) -> tuple[float, float, float] | None:
        return self.voxel_size.nm

    def source(self, name: str) -> Source:
        """The source named ``name`` (a file name such as ``snemi.zip``)."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"card {self.id!r} has no source {name!r}; it has {[s.name for s in self.sources]}")

    @property
    def evaluation(self) -> list[dict[str, Any]]:
        """How the dataset's challenge scores a prediction: ``[{gt_layer, metrics, options, note}]``, the
        first entry being the default (``emdata evaluate``); empty when the card says nothing."""
        return [{"gt_layer": e["gt_layer"], "metrics": list(e["metrics"]), "options": dict(e.get("options", {})),
                 "note": e.get("note", "")} for e in self.raw.get("evaluation", [])]

    def label_layer(self, name: str) -> LabelLayer:
        for layer in self.labels:
            if layer.name == name:
                return layer
        raise KeyError(f"card {self.id!r} has no label layer {name!r}; it has {[la.name for la in self.labels]}")

    def summary(self) -> dict[str, Any]:
        """The short JSON form used by ``emdata list --json``."""
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "species": self.species,
            "tissue": self.tissue,
            "microscopy": self.microscopy,
            "voxel_size_nm": list(self.voxel_size.nm) if self.voxel_size.nm else None,
            "voxel_size_verified": self.voxel_size.verified,
            "subsets": [s.id for s in self.subsets],
        }

    def to_json(self) -> dict[str, Any]:
        """The full JSON form used by ``emdata info --json``."""
        out = dict(self.raw)
        out.update(self.summary())
        out["classes"] = {
            layer.name: [{"value": c.value, "name": c.name, "ontology": c.ontology} for c in layer.classes]
            for layer in self.labels
        }
        out["sources"] = self.raw.get("sources", [])
        out["citation"] = self.citation
        out["license"] = self.license
        out["license_url"] = self.license_url
        out["subsets"] = self.raw.get("subsets", [])
        return out


# ---------------------------------------------------------------------------------------------
# validation


_TOP = {
    "id": str, "title": str, "kind": str, "species": str, "organism": str, "tissue": str,
    "microscopy": str, "description": str, "homepage": str, "license": str, "license_url": str, "license_note": str,
    "citation": str, "citation_note": str, "voxel_size": dict, "extent": dict, "counts": dict,
    "awesome": dict, "labels": list, "volumes": list, "sources": list, "subsets": list,
    "pitfalls": list, "conflicts": list, "facts_from": list, "species_aliases": list, "evaluation": list,
}
_REQUIRED_TOP = ("id", "title", "kind", "species", "tissue", "microscopy", "homepage", "license",
                 "citation", "voxel_size", "sources", "labels", "volumes", "facts_from")
_VOXEL = {"nm": list, "verified": bool, "source": str, "note": str, "alternatives": list}
_ALTERNATIVE = {"nm": list, "source": str, "note": str}
_EXTENT = {"voxels": list, "size_um": str, "note": str}
_AWESOME = {"name": str, "species": str, "sample": str, "microscopy": str, "size_um": str,
            "resolution_nm": str, "numbers": str, "link": str, "note": str, "list": str}
_LABEL = {"name": str, "kind": str, "description": str, "dtype": str, "instance_of": str,
          "classes": list, "value_ranges": list, "written_as": str,
          "prepared": bool}
_VALUE_RANGE = {"min": int, "max": int, "ontology": str}
_CLASS = {"value": int, "name": str, "ontology": str, "color": list, "description": str}
_VOLUME = {"name": str, "split": str, "description": str, "shape": list, "labelled": bool,
           "subset": str, "cases": list, "prepared": bool}
_SOURCE = {"name": str, "url": str, "checksum": str, "size_bytes": int, "size_note": str,
           "checksum_source": str, "mirrors": list, "format": str, "subset": str, "note": str,
           "alternate": (str, bool)}
_SUBSET = {"id": str, "title": str, "tissue": str, "microscopy": str, "voxel_size_nm": list,
           "counts": dict, "note": str}
_CONFLICT = {"field": str, "values": list, "used": str, "note": str}
_EVALUATION = {"gt_layer": str, "metrics": list, "options": dict, "note": str}


def _check(where: str, obj: Any, schema: dict[str, type], required: tuple[str, ...] = ()) -> None:
    if not isinstance(obj, dict):
        raise CardError(f"{where}: expected a table, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(schema))
    if unknown:
        raise CardError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(schema)}")
    for key in required:
        if key not in obj:
            raise CardError(f"{where}: missing required key {key!r}")
    for key, value in obj.items():
        expected = schema[key]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if expected is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            names = " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
            raise CardError(f"{where}.{key}: expected {names}, got {value!r}")


def _zyx(where: str, value: list) -> tuple[float, float, float]:
    if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                  for v in value):
        raise CardError(f"{where}: expected three positive numbers (z, y, x) in nm, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _check_alternates(where: str, sources: list[Source]) -> None:
    """``alternate = "<name>"`` must name a source of the card that is itself not an alternate."""
    primaries = {s.name for s in sources if not s.is_alternate}
    for i, s in enumerate(sources):
        if s.alternate is True and not s.note:
            raise CardError(f"{where}.sources[{i}].alternate: a source no recipe reads needs a note saying what it is")
        if s.alternate_of is not None and s.alternate_of not in primaries:
            raise CardError(f"{where}.sources[{i}].alternate: {s.alternate_of!r} is not a primary source of the card "
                            f"(primaries: {sorted(primaries)})")


def parse_card(doc: dict[str, Any], origin: str = "<card>") -> Card:
    """Validate a TOML document against the card schema and build a :class:`Card`."""
    where = f"card {doc.get('id', origin)!r}"
    _check(where, doc, _TOP, _REQUIRED_TOP)
    if doc["kind"] not in KINDS:
        raise CardError(f"{where}.kind: expected one of {KINDS}, got {doc['kind']!r}")

    vs = doc["voxel_size"]
    _check(f"{where}.voxel_size", vs, _VOXEL, ("verified", "source"))
    for i, alt in enumerate(vs.get("alternatives", [])):
        _check(f"{where}.voxel_size.alternatives[{i}]", alt, _ALTERNATIVE, ("nm", "source"))
        _zyx(f"{where}.voxel_size.alternatives[{i}].nm", alt["nm"])
    voxel = VoxelSize(
        nm=_zyx(f"{where}.voxel_size.nm", vs["nm"]) if "nm" in vs else None,
        verified=vs["verified"], source=vs["source"], note=vs.get("note", ""),
        alternatives=tuple(vs.get("alternatives", [])),
    )
    if "extent" in doc:
        _check(f"{where}.extent", doc["extent"], _EXTENT)
    if "awesome" in doc:
        _check(f"{where}.awesome", doc["awesome"], _AWESOME, ("name", "species", "sample", "microscopy"))
    for i, c in enumerate(doc.get("conflicts", [])):
        _check(f"{where}.conflicts[{i}]", c, _CONFLICT, ("field", "values", "used"))

    labels = []
    for i, la in enumerate(doc["labels"]):
        w = f"{where}.labels[{i}]"
        _check(w, la, _LABEL, ("name", "kind"))
        if la["kind"] not in LABEL_KINDS:
            raise CardError(f"{w}.kind: expected one of {LABEL_KINDS}, got {la['kind']!r}")
        classes = []
        for j, c in enumerate(la.get("classes", [])):
            _check(f"{w}.classes[{j}]", c, _CLASS, ("value", "name"))
            classes.append(LabelClass(value=c["value"], name=c["name"], ontology=c.get("ontology"),
                                      color=tuple(c["color"]) if "color" in c else None,
                                      description=c.get("description", "")))
        for j, r in enumerate(la.get("value_ranges", [])):
            _check(f"{w}.value_ranges[{j}]", r, _VALUE_RANGE, ("min", "max", "ontology"))
            if r["min"] > r["max"]:
                raise CardError(f"{w}.value_ranges[{j}]: min {r['min']} is above max {r['max']}")
        labels.append(LabelLayer(name=la["name"], kind=la["kind"], description=la.get("description", ""),
                                 dtype=la.get("dtype"), instance_of=la.get("instance_of"),
                                 classes=tuple(classes), value_ranges=tuple(la.get("value_ranges", [])),
                                 written_as=la.get("written_as"), prepared=la.get("prepared", True)))

    subsets = []
    for i, s in enumerate(doc.get("subsets", [])):
        w = f"{where}.subsets[{i}]"
        _check(w, s, _SUBSET, ("id", "title"))
        subsets.append(Subset(id=s["id"], title=s["title"], tissue=s.get("tissue", ""),
                              microscopy=s.get("microscopy", ""),
                              voxel_size_nm=_zyx(f"{w}.voxel_size_nm", s["voxel_size_nm"])
                              if "voxel_size_nm" in s else None,
                              counts=s.get("counts", {}), note=s.get("note", "")))
    subset_ids = {s.id for s in subsets}

    volumes = []
    for i, v in enumerate(doc["volumes"]):
        w = f"{where}.volumes[{i}]"
        _check(w, v, _VOLUME, ("name", "split"))
        if v["split"] not in SPLITS:
            raise CardError(f"{w}.split: expected one of {SPLITS}, got {v['split']!r}")
        if "subset" in v and v["subset"] not in subset_ids:
            raise CardError(f"{w}.subset: {v['subset']!r} is not one of the card's subsets {sorted(subset_ids)}")
        if not all(isinstance(c, str) and c for c in v.get("cases", [])):
            raise CardError(f"{w}.cases: expected volume names or patterns (strings), got {v['cases']!r}")
        volumes.append(VolumeSpec(name=v["name"], split=v["split"], description=v.get("description", ""),
                                  shape=tuple(v["shape"]) if "shape" in v else None,
                                  labelled=v.get("labelled", True), subset=v.get("subset"),
                                  cases=tuple(v.get("cases", [])), prepared=v.get("prepared", True)))

    sources = []
    for i, s in enumerate(doc["sources"]):
        w = f"{where}.sources[{i}]"
        _check(w, s, _SOURCE, ("name", "url", "checksum"))
        if not CHECKSUM_PATTERN.match(s["checksum"]):
            raise CardError(f"{w}.checksum: expected 'sha256:<64 hex>', 'md5:<32 hex>' or "
                            f"'none published', got {s['checksum']!r}")
        if "subset" in s and s["subset"] not in subset_ids:
            raise CardError(f"{w}.subset: {s['subset']!r} is not one of the card's subsets {sorted(subset_ids)}")
        sources.append(Source(name=s["name"], url=s["url"], checksum=s["checksum"],
                              size_bytes=s.get("size_bytes"), size_note=s.get("size_note", ""),
                              checksum_source=s.get("checksum_source", ""),
                              mirrors=tuple(s.get("mirrors", [])), format=s.get("format", ""),
                              subset=s.get("subset"), note=s.get("note", ""), alternate=s.get("alternate", False)))
    _check_alternates(where, sources)
    if doc["license"] != "unverified" and not doc.get("license_url", "").startswith("https://"):
        raise CardError(f"{where}.license_url: licence {doc['license']!r} needs the https URL of the published "
                        f"statement it comes from (dataset page, repository LICENSE), or set license = 'unverified'")
    stored = {la.written_as or la.name for la in labels}
    for i, ev in enumerate(doc.get("evaluation", [])):
        w = f"{where}.evaluation[{i}]"
        _check(w, ev, _EVALUATION, ("gt_layer", "metrics"))
        if ev["gt_layer"] not in stored:
            raise CardError(f"{w}.gt_layer: {ev['gt_layer']!r} is not a label layer prepared volumes have "
                            f"({sorted(stored)})")
        if not ev["metrics"] or not all(isinstance(m, str) and m for m in ev["metrics"]):
            raise CardError(f"{w}.metrics: expected a non-empty list of metric names, got {ev['metrics']!r}")
        unknown = sorted(set(ev.get("options", {})) - set(ev["metrics"]))
        if unknown or not all(isinstance(o, dict) for o in ev.get("options", {}).values()):
            raise CardError(f"{w}.options: expected a table of option tables keyed by the entry's metrics "
                            f"{ev['metrics']}, got {ev.get('options')!r}")
    if not doc["citation"].lstrip().startswith("@"):
        raise CardError(f"{where}.citation: expected a BibTeX entry starting with '@'")
    for i, p in enumerate(doc.get("pitfalls", [])):
        if not isinstance(p, str):
            raise CardError(f"{where}.pitfalls[{i}]: expected a string")

    return Card(
        id=doc["id"], title=doc["title"], kind=doc["kind"], species=doc["species"], tissue=doc["tissue"],
        microscopy=doc["microscopy"], voxel_size=voxel, homepage=doc["homepage"], license=doc["license"],
        citation=doc["citation"].strip() + "\n", labels=tuple(labels), volumes=tuple(volumes),
        sources=tuple(sources), subsets=tuple(subsets), pitfalls=tuple(doc.get("pitfalls", [])), raw=doc,
        license_url=doc.get("license_url", ""),
    )
