"""The 74 CellMap annotation classes (id, name, atomic members, union-ontology class) and how a
class array encodes its voxels (:func:`class_encoding`).

Ids, names and group memberships are those of ``classes.csv`` in the challenge repository
(https://github.com/janelia-cellmap/cellmap-segmentation-challenge/blob/7f9269451031645f73c9eb03967832afcba935a1/src/cellmap_segmentation_challenge/utils/classes.csv):
a *group* class (e.g. ``mito`` = ``mito_mem`` + ``mito_lum`` + ``mito_ribo``) lists the ids
of the atomic classes it is made of; an atomic class lists none.

Example:
    >>> CLASSES["mito"].id, [BY_ID[m].name for m in CLASSES["mito"].members]
    (50, ['mito_mem', 'mito_lum', 'mito_ribo'])
    >>> CLASSES["mito_mem"].ontology
    'mito_membrane'
    >>> len(CLASSES)
    74
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CellmapClass:
    id: int
    name: str
    members: tuple[int, ...]
    ontology: str

    @property
    def is_group(self) -> bool:
        return bool(self.members)


# (name, id, atomic member ids, emdata ontology class)
_TABLE: tuple[tuple[str, int, tuple[int, ...], str], ...] = (
    ("ecs", 1, (), "extracellular_space"), ("pm", 2, (), "plasma_membrane"),
    ("mito_mem", 3, (), "mito_membrane"), ("mito_lum", 4, (), "mito_interior"),
    ("mito_ribo", 5, (), "mito_ribosome"), ("golgi_mem", 6, (), "golgi_membrane"),
    ("golgi_lum", 7, (), "golgi_lumen"), ("ves_mem", 8, (), "vesicle_membrane"),
    ("ves_lum", 9, (), "vesicle_lumen"), ("endo_mem", 10, (), "endosome_membrane"),
    ("endo_lum", 11, (), "endosome_lumen"), ("lyso_mem", 12, (), "lysosome_membrane"),
    ("lyso_lum", 13, (), "lysosome_lumen"), ("ld_mem", 14, (), "lipid_droplet_membrane"),
    ("ld_lum", 15, (), "lipid_droplet_lumen"), ("er_mem", 16, (), "er_membrane"),
    ("er_lum", 17, (), "er_lumen"), ("eres_mem", 18, (), "er_exit_site_membrane"),
    ("eres_lum", 19, (), "er_exit_site_lumen"), ("ne_mem", 20, (), "nuclear_envelope_membrane"),
    ("ne_lum", 21, (), "nuclear_envelope_lumen"), ("np_out", 22, (), "nuclear_pore_outer"),
    ("np_in", 23, (), "nuclear_pore_inner"), ("hchrom", 24, (), "heterochromatin"),
    ("nhchrom", 25, (), "nucleolar_heterochromatin"), ("echrom", 26, (), "euchromatin"),
    ("nechrom", 27, (), "nucleolar_euchromatin"), ("nucpl", 28, (), "nucleoplasm"),
    ("nucleo", 29, (), "nucleolus"), ("mt_out", 30, (), "microtubule_outer"),
    ("cent", 31, (), "centrosome"), ("cent_dapp", 32, (), "centriole_distal_appendage"),
    ("cent_sdapp", 33, (), "centriole_subdistal_appendage"), ("ribo", 34, (), "ribosome"),
    ("cyto", 35, (), "cytosol"), ("mt_in", 36, (), "microtubule_inner"),
    ("nuc", 37, (20, 21, 22, 23, 24, 25, 26, 27, 28, 29), "nucleus"), ("vim", 38, (), "vimentin"),
    ("glyco", 39, (), "glycogen"), ("golgi", 40, (6, 7), "golgi"), ("ves", 41, (8, 9), "vesicle"),
    ("endo", 42, (10, 11), "endosome"), ("lyso", 43, (12, 13), "lysosome"),
    ("ld", 44, (14, 15), "lipid_droplet"), ("rbc", 45, (), "red_blood_cell"),
    ("eres", 46, (18, 19), "er_exit_site"), ("perox_mem", 47, (), "peroxisome_membrane"),
    ("perox_lum", 48, (), "peroxisome_lumen"), ("perox", 49, (47, 48), "peroxisome"),
    ("mito", 50, (3, 4, 5), "mitochondria"), ("er", 51, (16, 17, 18, 19, 20, 21, 22, 23), "er"),
    ("ne", 52, (20, 21, 22, 23), "nuclear_membrane"), ("np", 53, (22, 23), "nuclear_pore"),
    ("chrom", 54, (24, 25, 26, 27), "chromatin"), ("mt", 55, (30, 36), "microtubule"),
    ("isg_mem", 56, (), "insulin_granule_membrane"), ("isg_lum", 57, (), "insulin_granule_lumen"),
    ("isg_ins", 58, (), "insulin_granule_insulin"), ("isg", 59, (56, 57, 58), "insulin_granule"),
    ("cell", 60, (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
                  28, 29, 30, 31, 32, 33, 34, 35, 36, 38, 39, 47, 48, 56, 57, 58, 61, 62), "cell"),
    ("actin", 61, (), "actin"), ("tbar", 62, (), "t_bar"), ("bm", 63, (), "basement_membrane"),
    ("er_mem_all", 64, (16, 18, 20), "er_membrane_all"), ("ne_mem_all", 65, (20, 22, 23), "nuclear_envelope_all"),
    ("cent_all", 66, (31, 32, 33), "centrosome_complex"), ("chloroplast_mem", 67, (), "chloroplast_membrane"),
    ("chloroplast_lum", 68, (), "chloroplast_lumen"), ("chloroplast_sg", 69, (), "chloroplast_starch_granule"),
    ("chloroplast", 70, (67, 68, 69), "chloroplast"), ("vacuole_mem", 71, (), "vacuole_membrane"),
    ("vacuole_lum", 72, (), "vacuole_lumen"), ("vacuole", 73, (71, 72), "vacuole"),
    ("plasmodesmata", 74, (), "plasmodesmata"),
)

CLASSES: dict[str, CellmapClass] = {name: CellmapClass(i, name, members, onto) for name, i, members, onto in _TABLE}
"""CellMap class name → class."""
BY_ID: dict[int, CellmapClass] = {c.id: c for c in CLASSES.values()}

UNKNOWN = 255
"""Value of the semantic layer where nothing is known (no class present, some class unknown)."""

INSTANCE_CLASSES = frozenset({"nuc", "vim", "ves", "endo", "lyso", "ld", "perox", "mito", "np", "mt", "cell"})
"""Classes whose arrays hold object ids (0, 1, 2, …) rather than 0/1 (challenge FAQ)."""


def paint_order(names: list[str]) -> list[str]:
    """``names`` from coarsest to finest: groups with more members first, atomic classes last
    (ties by id), so painting in this order lets the finest annotated class win a voxel.

    Example:
        >>> paint_order(["mito_mem", "cell", "mito", "ecs"])
        ['cell', 'mito', 'ecs', 'mito_mem']
    """
    return sorted(names, key=lambda n: (-len(CLASSES[n].members), CLASSES[n].id))


def annotation_type(attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``cellmap.annotation.annotation_type`` of group or array attributes, if any."""
    annotation = (attrs or {}).get("cellmap", {}).get("annotation", {})
    kind = annotation.get("annotation_type") if isinstance(annotation, dict) else None
    return kind if isinstance(kind, dict) and isinstance(kind.get("encoding"), dict) else None


@dataclass(frozen=True)
class Encoding:
    """How one class array encodes its voxels: ``absent``, ``unknown`` (None: no such value),
    whether non-absent values are object ids (``instance``), and where that was read (``source``)."""

    absent: int
    unknown: int | None
    instance: bool
    source: str


def class_encoding(name: str, group_attrs: dict[str, Any] | None, array_attrs: dict[str, Any] | None) -> Encoding:
    """The encoding of one class array.

    The class group's ``cellmap.annotation.annotation_type`` is used, else the array's; without
    either, absent is 0 and unknown 255 for semantic classes, and absent 0 with no unknown value for
    the classes the challenge scores as instances, whose arrays hold object ids.

    Example:
        >>> class_encoding("ecs", None, None)
        Encoding(absent=0, unknown=255, instance=False, source='default (semantic class)')
        >>> kind = {"type": "instance_segmentation", "encoding": {"absent": 0, "unknown": 9}}
        >>> class_encoding("mito", None, {"cellmap": {"annotation": {"annotation_type": kind}}})
        Encoding(absent=0, unknown=9, instance=True, source='array attributes')
    """
    for where, attrs in (("group attributes", group_attrs), ("array attributes", array_attrs)):
        kind = annotation_type(attrs)
        if kind is not None:
            encoding = {str(k): int(v) for k, v in kind["encoding"].items()}
            return Encoding(encoding.get("absent", 0), encoding.get("unknown"),
                            kind.get("type") == "instance_segmentation", where)
    if name in INSTANCE_CLASSES:
        return Encoding(0, None, True, "default (instance class)")
    return Encoding(0, UNKNOWN, False, "default (semantic class)")


def instance_layer_name(name: str) -> str:
    """The label layer holding the object ids of instance class ``name``.

    Example:
        >>> instance_layer_name("mito")
        'instances_mito'
    """
    return f"instances_{name}"
