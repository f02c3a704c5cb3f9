"""``emdata report``: a static HTML site of the catalog (no server needed, works offline from ``file://``).

``index.html`` holds the catalog as a sortable, filterable table (species, microscopy, voxel size,
labels, size, licence, whether prepared); ``datasets/<id>.html`` one page per dataset with its card
(sources and checksums, pitfalls, citation with a copy button) and, for the volumes prepared under
the current ``EMDATA_HOME``, their previews and statistics (from :mod:`emdata.look`).

Example:
    >>> import tempfile
    >>> site = build_report(Path(tempfile.mkdtemp()) / "site")
    >>> (site / "index.html").read_text().count('<tr data-id=') >= 21
    True
    >>> "@article" in (site / "datasets" / "snemi3d.html").read_text()
    True
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from emdata.catalog import Card, list_cards
from emdata.report.html import Raw, definition_list, esc, nested, page, table

__all__ = ["build_report", "catalog_rows"]


def _voxel_text(nm: Any, verified: bool = True) -> str:
    if not nm:
        return "unknown"
    text = "×".join(f"{float(v):g}" for v in nm)
    return text if verified else text + " (unverified)"


def _bytes_text(n: int | None) -> str:
    if not n:
        return ""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(n)


def _labels_text(card: Card) -> str:
    """The card's label layers grouped by kind: ``"semantic: a; instance: b, c"``."""
    kinds: dict[str, list[str]] = {}
    for layer in card.labels:
        kinds.setdefault(layer.kind, []).append(layer.name)
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items())


def _download_bytes(card: Card) -> int | None:
    """Sum of the sizes the card states for the files ``prepare`` downloads (None when none is stated)."""
    sizes = [s.size_bytes for s in card.sources if not s.is_alternate and s.size_bytes]
    return sum(sizes) if sizes else None


def _prepared(dataset_id: str) -> list[Any]:
    import emdata

    try:
        return emdata.volumes(dataset_id)
    except FileNotFoundError:
        return []


def catalog_rows(prepared: dict[str, list[Any]] | None = None) -> list[dict[str, Any]]:
    """One dict per catalog dataset with what the report's table shows (and sorts on).

    Example:
        >>> row = next(r for r in catalog_rows({}) if r["id"] == "snemi3d")
        >>> row["voxel_size"], row["labels"], row["prepared"]
        ('30×6×6 (unverified)', 'instance: neurons', 0)
    """
    prepared = {} if prepared is None else prepared
    rows = []
    for card in list_cards():
        extent = card.raw.get("extent", {})
        voxels = extent.get("voxels")
        nm = card.voxel_size.nm
        rows.append({
            "id": card.id, "title": card.title, "species": card.species,
            "organism": card.raw.get("organism", ""), "microscopy": card.microscopy, "tissue": card.tissue,
            "voxel_size": _voxel_text(nm, card.voxel_size.verified),
            "voxel_sort": nm[0] * nm[1] * nm[2] if nm else None,
            "labels": _labels_text(card),
            "size": " · ".join(p for p in ("×".join(map(str, voxels)) + " voxels" if voxels else "",
                                           f"{extent['size_um']} µm" if extent.get("size_um") else "") if p),
            "size_sort": float(voxels[0]) * voxels[1] * voxels[2] if voxels and len(voxels) == 3 else None,
            "download_bytes": _download_bytes(card),
            "license": card.license, "license_url": card.license_url,
            "prepared": len(prepared.get(card.id, [])),
        })
    return rows


def _index(rows: list[dict[str, Any]]) -> str:
    def options(key: str) -> str:
        values = sorted({r[key] for r in rows if r[key]}, key=str.lower)
        return "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)

    columns = ["Dataset", "Species", "Microscopy", "Voxel size (nm, z×y×x)", "Labels", "Size", "Download",
               "Licence", "Prepared"]
    head = "".join(f'<th scope="col"><button type="button">{esc(c)}</button></th>' for c in columns)
    body = []
    for r in rows:
        licence = (f'<a href="{esc(r["license_url"])}">{esc(r["license"])}</a>' if r["license_url"]
                   else esc(r["license"]))
        prepared = (f'<span class="yes">yes</span> ({r["prepared"]} volume{"s" if r["prepared"] != 1 else ""})'
                    if r["prepared"] else '<span class="no">no</span>')
        organism = f' <span class="muted">(<i>{esc(r["organism"])}</i>)</span>' if r["organism"] else ""
        voxel_key = "" if r["voxel_sort"] is None else f"{r['voxel_sort']:g}"
        size_key = "" if r["size_sort"] is None else f"{r['size_sort']:g}"
        body.append(
            f'<tr data-id="{esc(r["id"])}" data-species="{esc(r["species"])}" '
            f'data-microscopy="{esc(r["microscopy"])}" data-prepared="{"yes" if r["prepared"] else "no"}">'
            f'<td data-sort="{esc(r["id"])}"><a href="datasets/{esc(urllib.parse.quote(r["id"]))}.html">'
            f'{esc(r["id"])}</a><br><span class="muted">{esc(r["title"])}</span></td>'
            f'<td>{esc(r["species"])}{organism}</td><td>{esc(r["microscopy"])}</td>'
            f'<td data-sort="{voxel_key}">{esc(r["voxel_size"])}</td>')
        body[-1] += (
            f'<td>{esc(r["labels"])}</td>'
            f'<td data-sort="{size_key}">{esc(r["size"])}</td>'
            f'<td data-sort="{r["download_bytes"] or ""}">{esc(_bytes_text(r["download_bytes"]))}</td>'
            f'<td>{licence}</td><td data-sort="{r["prepared"]}">{prepared}</td></tr>')
    n_prepared = sum(1 for r in rows if r["prepared"])
    return f"""<h1>Volume-EM datasets</h1>
<p>{len(rows)} datasets in the emdata catalog, {n_prepared} prepared here. Select a column heading to sort;
open a dataset for its card, citation and (when prepared) previews and statistics.</p>
<form class="filters" role="search" aria-label="Filter datasets" onsubmit="return false">
<label for="q">Search<input type="search" id="q" placeholder="id, tissue, label…" autocomplete="off"></label>
<label for="species">Species<select id="species"><option value="">all</option>{options("species")}</select></label>
<label for="microscopy">Microscopy<select id="microscopy"><option value="">all</option>{options("microscopy")}
</select></label>
<label class="check" for="prepared-only"><input type="checkbox" id="prepared-only"> prepared only</label>
</form>
<p id="shown" role="status" aria-live="polite">{len(rows)} of {len(rows)} datasets shown</p>
<table id="catalog"><caption>Catalog</caption><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
"""


def _swatch(rgba: Any) -> str:
    if not rgba:
        return ""
    r, g, b = (int(v) for v in list(rgba)[:3])
    return f'<span class="swatch" style="background: rgb({r},{g},{b})" aria-hidden="true"></span>'


def _class_list(layer: Any) -> Raw:
    from emdata.look.preview import label_colors

    listed = {c.value: list(c.color) for c in layer.classes if c.color}
    colors = dict(zip([c.value for c in layer.classes],
                      label_colors(listed, [c.value for c in layer.classes]).tolist()))
    items = []
    for c in layer.classes:
        rgba = colors[c.value]  # as the preview sheets and the viewer draw it
        onto = f" → {c.ontology}" if c.ontology and c.ontology != c.name else ""
        items.append(f"{_swatch(rgba) if c.value else ''}{c.value} = {esc(c.name)}{esc(onto)}")
    ranges = [f"{r['min']}–{r['max']} → {esc(r['ontology'])}" for r in layer.value_ranges]
    return Raw("<br>".join(items + ranges))


def _volume_section(card: Card, vol: Any, out: Path, image_dir: Path) -> str:
    from emdata.look.preview import write_preview
    from emdata.look.stats import format_stats, volume_stats

    name = vol.name
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    png = image_dir / f"{slug}.png"
    write_preview(vol, png)
    stats = volume_stats(vol)
    rel = png.relative_to(out / "datasets").as_posix()
    facts = definition_list({
        "split": vol.split, "shape (z, y, x)": "×".join(map(str, vol.shape)),
        "voxel size (nm)": _voxel_text(vol.voxel_size), "label layers": ", ".join(vol.meta["labels"]) or "none",
        "path": Raw(f"<code>{esc(vol.path)}</code>"),
        "open it": Raw(f"<code>emdata view {esc(vol.path)}</code>"),
    })
    return f"""<section aria-labelledby="vol-{esc(slug)}">
<h3 id="vol-{esc(slug)}">Volume {esc(name)}</h3>
{facts}
<figure>
<img src="{esc(rel)}" alt="Preview of {esc(card.id)} volume {esc(name)}: orthogonal slices with the label overlay"
 class="preview">
<figcaption>Orthogonal slices of {esc(card.id)}/{esc(name)} with its label layers (<code>emdata preview</code>).
</figcaption>
</figure>
<h4>Statistics (<code>emdata stats</code>)</h4>
<pre class="stats">{esc(format_stats(stats))}</pre>
<details><summary>Every number (<code>emdata stats --json</code>)</summary>
{nested(stats)}
</details>
</section>"""


def _dataset(card: Card, volumes: list[Any], out: Path) -> str:
    raw = card.raw
    vs = card.voxel_size
    voxel = _voxel_text(vs.nm, vs.verified) + (f" — {vs.source}" if vs.source else "")
    extent = raw.get("extent", {})
    licence = (Raw(f'<a href="{esc(card.license_url)}">{esc(card.license)}</a>') if card.license_url
               else card.license)
    summary = definition_list({
        "kind": card.kind, "species": f"{card.species} ({raw['organism']})" if raw.get("organism") else card.species,
        "tissue": card.tissue, "microscopy": card.microscopy, "voxel size (nm, z×y×x)": voxel,
        "voxel size note": vs.note,
        "extent": " · ".join(p for p in ("×".join(map(str, extent["voxels"])) + " voxels"
                                         if extent.get("voxels") else "",
                                         f"{extent['size_um']} µm" if extent.get("size_um") else "") if p),
        "homepage": Raw(f'<a href="{esc(card.homepage)}">{esc(card.homepage)}</a>'),
        "licence": licence, "licence note": raw.get("license_note", ""),
    })
    labels = table([[layer.name, layer.kind, layer.dtype or "", _class_list(layer), layer.description]
                    for layer in card.labels], ["layer", "kind", "dtype", "classes", "description"], "Label layers")
    vols = table([[v.name, v.split, "×".join(map(str, v.shape)) if v.shape else "",
                   "yes" if v.labelled else "no", v.description] for v in card.volumes],
                 ["volume", "split", "shape (z, y, x)", "labelled", "description"], "Published volumes")
    sources = table([[s.name, Raw(f'<a href="{esc(s.url)}"><code>{esc(s.url)}</code></a>'
                                  if s.url.startswith(("http://", "https://")) else f"<code>{esc(s.url)}</code>"),
                      s.format, _bytes_text(s.size_bytes), Raw(f"<code>{esc(s.checksum)}</code>"),
                      s.checksum_source, ("alternate of " + s.alternate_of) if s.alternate_of
                      else ("not read by prepare" if s.is_alternate else "read by prepare"), s.note]
                     for s in card.sources],
                    ["file", "URL", "format", "size", "checksum", "checksum from", "role", "note"], "Sources",
                    classes={1: "url", 4: "checksum"})
    pitfalls = ("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in card.pitfalls) + "</ul>") if card.pitfalls \
        else "<p>None recorded.</p>"
    if volumes:
        image_dir = out / "datasets" / card.id
        image_dir.mkdir(parents=True, exist_ok=True)
        prepared = "\n".join(_volume_section(card, v, out, image_dir) for v in volumes)
    else:
        prepared = (f"<p>Not prepared under this <code>EMDATA_HOME</code>. "
                    f"<code>emdata prepare {esc(card.id)}</code> writes it; then <code>emdata report</code> again.</p>")
    description = f"<p>{esc(raw.get('description', ''))}</p>" if raw.get("description") else ""
    return f"""<nav aria-label="Breadcrumb"><a href="../index.html">Catalog</a> › {esc(card.id)}</nav>
<h1>{esc(card.id)}: {esc(card.title)}</h1>
{description}
<section aria-labelledby="facts"><h2 id="facts">Card</h2>{summary}</section>
<section aria-labelledby="labels-h"><h2 id="labels-h">Labels and volumes</h2>{labels}{vols}</section>
<section aria-labelledby="sources-h"><h2 id="sources-h">Sources and checksums</h2>{sources}</section>
<section aria-labelledby="pitfalls-h"><h2 id="pitfalls-h">Pitfalls</h2>{pitfalls}</section>
<section aria-labelledby="cite-h"><h2 id="cite-h">Citation</h2>
<pre id="citation" tabindex="0" aria-label="BibTeX citation">{esc(card.citation)}</pre>
<button type="button" class="copy" data-copy="citation" aria-controls="copy-status">Copy citation</button>
<span id="copy-status" role="status" aria-live="polite"></span>
<p class="muted">Also: <code>emdata cite {esc(card.id)}</code>.</p>
</section>
<section aria-labelledby="prepared-h"><h2 id="prepared-h">Prepared volumes</h2>
<p><code>emdata prepare {esc(card.id)}</code> · <code>emdata view {esc(card.id)}</code></p>
{prepared}
</section>
"""


def build_report(out: Path | str, datasets: list[str] | None = None) -> Path:
    """Write the site into ``out`` (created; earlier pages there are replaced) and return ``out``.

    ``datasets`` limits the dataset pages and previews to those ids (default: all); the table always
    lists the whole catalog. Prepared volumes are looked up under the current ``EMDATA_HOME``.
    """
    out = Path(out).expanduser()
    (out / "datasets").mkdir(parents=True, exist_ok=True)
    cards = list_cards()
    wanted = {c.id for c in cards} if datasets is None else set(datasets)
    unknown = sorted(wanted - {c.id for c in cards})
    if unknown:
        from emdata.catalog import get_card

        get_card(unknown[0])  # raises with suggestions
    prepared = {c.id: _prepared(c.id) for c in cards}
    rows = catalog_rows(prepared)
    (out / "index.html").write_text(page("Catalog", _index(rows), description="emdata dataset catalog"),
                                    encoding="utf-8")
    for card in cards:
        if card.id not in wanted:
            continue
        stale = out / "datasets" / card.id
        if stale.is_dir():
            shutil.rmtree(stale)
        body = _dataset(card, prepared[card.id], out)
        (out / "datasets" / f"{card.id}.html").write_text(
            page(card.id, body, home="../index.html", description=card.title), encoding="utf-8")
    (out / "catalog.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")
    return out
