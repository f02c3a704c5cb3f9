"""The union label ontology: structure classes with stable ids, synonyms and parents.

Every label layer emdata prepares records how its native values map into this table, and
which ontology classes it annotates, so a loader can tell "background" from "not annotated".

Example:
    >>> from emdata.labels.ontology import ontology
    >>> ontology().resolve("mito").id
    3
    >>> [c.name for c in ontology().ancestors("dense_granule_core")]
    ['dense_granule']
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class OntologyClass:
    id: int
    name: str
    synonyms: tuple[str, ...] = ()
    parent: str | None = None
    role: str = "structure"  # or "ignore": not a structure, means "not annotated here"


class Ontology:
    """A versioned table of classes; look classes up by name, synonym or id."""

    def __init__(self, version: str, classes: list[OntologyClass]) -> None:
        self.version = version
        self.classes = tuple(sorted(classes, key=lambda c: c.id))
        self._by_id = {c.id: c for c in self.classes}
        self._by_key: dict[str, OntologyClass] = {}
        for c in self.classes:
            for key in (c.name, *c.synonyms):
                k = key.lower()
                if k in self._by_key and self._by_key[k] is not c:
                    raise ValueError(f"ontology: {key!r} names both {self._by_key[k].name!r} and {c.name!r}")
                self._by_key[k] = c
        if len(self._by_id) != len(self.classes):
            raise ValueError("ontology: duplicate class ids")
        for c in self.classes:
            if c.parent is not None and c.parent not in self._by_key:
                raise ValueError(f"ontology: class {c.name!r} has unknown parent {c.parent!r}")

    def resolve(self, name_or_id: str | int) -> OntologyClass:
        """The class for a name, synonym (case-insensitive) or id."""
        if isinstance(name_or_id, int):
            if name_or_id in self._by_id:
                return self._by_id[name_or_id]
        elif name_or_id.lower() in self._by_key:
            return self._by_key[name_or_id.lower()]
        raise KeyError(f"{name_or_id!r} is not a class of the emdata ontology {self.version}; "
                       f"known names: {', '.join(c.name for c in self.classes)}")

    def ancestors(self, name: str) -> list[OntologyClass]:
        """Parents of a class, nearest first."""
        out: list[OntologyClass] = []
        c = self.resolve(name)
        while c.parent is not None:
            c = self.resolve(c.parent)
            out.append(c)
        return out


@cache
def ontology() -> Ontology:
    """The ontology shipped with this emdata version."""
    doc = tomllib.loads(resources.files("emdata.labels").joinpath("ontology.toml").read_text("utf-8"))
    classes = [OntologyClass(id=c["id"], name=c["name"], synonyms=tuple(c.get("synonyms", ())),
                             parent=c.get("parent"), role=c.get("role", "structure")) for c in doc["class"]]
    return Ontology(doc["version"], classes)
