"""Small HTML building blocks of the report: escaping, the page frame with its inline style and
script (sorting, filtering, copying; no external resources, works from ``file://``).

Example:
    >>> "<title>a &amp; b · emdata</title>" in page("a & b", "<p>x</p>")
    True
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

STYLE = """
:root { color-scheme: light; --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --accent: #0550ae; --bg2: #f6f8fa; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 1rem; }
header { border-bottom: 1px solid var(--line); padding-top: .6rem; padding-bottom: .6rem; }
a { color: var(--accent); }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid #ffbf47; outline-offset: 1px; }
.skip { position: absolute; left: -10000px; }
.skip:focus { left: 1rem; top: .5rem; background: #fff; padding: .3rem; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1.5rem; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
th, td { border-bottom: 1px solid var(--line); padding: .35rem .5rem; text-align: left; vertical-align: top; }
td { overflow-wrap: anywhere; }
#catalog td { overflow-wrap: break-word; }
thead th { background: var(--bg2); }
td.url { min-width: 16rem; }
td.checksum { max-width: 15rem; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0; cursor: pointer; color: inherit; }
th[aria-sort="ascending"] button::after { content: " ▲"; }
th[aria-sort="descending"] button::after { content: " ▼"; }
.filters { display: flex; flex-wrap: wrap; gap: .8rem 1.2rem; align-items: end; margin: 1rem 0 .3rem; }
.filters label { display: flex; flex-direction: column; font-size: .9rem; color: var(--muted); }
.filters input[type=search], .filters select { font: inherit; padding: .25rem .4rem; min-width: 12rem; }
.filters .check { flex-direction: row; gap: .4rem; align-items: center; }
.yes { color: #116329; font-weight: 600; }
.no { color: var(--muted); }
.muted { color: var(--muted); }
pre { background: var(--bg2); padding: .8rem; overflow: auto; border: 1px solid var(--line); }
code { font-size: .92em; overflow-wrap: anywhere; }
.swatch { display: inline-block; width: .9em; height: .9em; border: 1px solid #888; vertical-align: middle;
          margin-right: .3em; }
figure { margin: .5rem 0 1rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
dl.card { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.card dt { font-weight: 600; }
dl.card dd { margin: 0; }
.copy { font: inherit; padding: .2rem .7rem; cursor: pointer; }
section { margin-bottom: 1.5rem; }
"""

SCRIPT = """
(function () {
  "use strict";
  function cellKey(row, index) {
    var cell = row.cells[index];
    var key = cell.getAttribute("data-sort");
    if (key === null) { key = cell.textContent.trim().toLowerCase(); }
    var number = parseFloat(key);
    return { n: isNaN(number) || String(number) !== key ? null : number, s: key };
  }
  function sortTable(table, index, th) {
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, index), y = cellKey(b, index), order;
      if (x.n !== null && y.n !== null) { order = x.n - y.n; }
      else if (x.s === "") { order = 1; } else if (y.s === "") { order = -1; }
      else { order = x.s < y.s ? -1 : x.s > y.s ? 1 : 0; }
      return ascending ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function applyFilters(table) {
    var text = (document.getElementById("q").value || "").trim().toLowerCase();
    var species = document.getElementById("species").value;
    var microscopy = document.getElementById("microscopy").value;
    var preparedOnly = document.getElementById("prepared-only").checked;
    var shown = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
      var ok = (!text || row.textContent.toLowerCase().indexOf(text) !== -1) &&
               (!species || row.getAttribute("data-species") === species) &&
               (!microscopy || row.getAttribute("data-microscopy") === microscopy) &&
               (!preparedOnly || row.getAttribute("data-prepared") === "yes");
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    var status = document.getElementById("shown");
    status.textContent = shown + " of " + table.tBodies[0].rows.length + " datasets shown";
  }
  function copyText(button) {
    var target = document.getElementById(button.getAttribute("data-copy"));
    var status = document.getElementById(button.getAttribute("aria-controls") || "copy-status");
    var text = target.textContent;
    function done(ok) {
      button.setAttribute("data-copied", ok ? "yes" : "no");
      if (status) { status.textContent = ok ? "Citation copied." : "Select the citation and press Ctrl+C."; }
    }
    function fallback() {
      var area = document.createElement("textarea");
      area.value = text; area.setAttribute("readonly", "");
      area.style.position = "absolute"; area.style.left = "-9999px";
      document.body.appendChild(area); area.select();
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      document.body.removeChild(area);
      done(ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, fallback);
    } else { fallback(); }
  }
  document.addEventListener("DOMContentLoaded", function () {
    var table = document.getElementById("catalog");
    if (table) {
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        var button = th.querySelector("button");
        if (button) { button.addEventListener("click", function () { sortTable(table, index, th); }); }
      });
      ["q", "species", "microscopy", "prepared-only"].forEach(function (id) {
        var el = document.getElementById(id);
        el.addEventListener("input", function () { applyFilters(table); });
        el.addEventListener("change", function () { applyFilters(table); });
      });
      applyFilters(table);
    }
    Array.prototype.forEach.call(document.querySelectorAll("button[data-copy]"), function (button) {
      button.addEventListener("click", function () { copyText(button); });
    });
  });
})();
"""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` (None as an empty string).

    Example:
        >>> esc('<a href="x">')
        '&lt;a href=&quot;x&quot;&gt;'
    """
    return "" if value is None else html.escape(str(value), quote=True)


def page(title: str, body: str, *, home: str = "index.html", description: str = "") -> str:
    """A complete HTML5 page: inline style and script, a skip link, header, ``<main>``, no external resource."""
    meta = f'<meta name="description" content="{esc(description)}">\n' if description else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)} · emdata</title>
{meta}<link rel="icon" href="data:,">
<style>{STYLE}</style>
<script>{SCRIPT}</script>
</head>
<body>
<a class="skip" href="#content">Skip to content</a>
<header><nav aria-label="Site"><a href="{esc(home)}">emdata catalog</a></nav></header>
<main id="content">
{body}
</main>
<footer><p class="muted">Generated by <code>emdata report</code>; every page works offline.</p></footer>
</body>
</html>
"""


def table(rows: Iterable[Iterable[Any]], head: Iterable[str], caption: str = "",
          classes: Mapping[int, str] | None = None) -> str:
    """A simple table of escaped cells (cells wrapped in :class:`Raw` are inserted as HTML);
    ``classes`` gives column ``i``'s cells a CSS class.

    Example:
        >>> table([[1, Raw("<b>x</b>")]], ["n", "v"]).split("<tbody>")[1]
        '<tr><td>1</td><td><b>x</b></td></tr></tbody></table>'
    """
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    head_html = "".join(f'<th scope="col">{esc(h)}</th>' for h in head)
    classes = classes or {}

    def td(i: int, cell: Any) -> str:
        return f'<td class="{classes[i]}">' if i in classes else "<td>"

    body = "".join("<tr>" + "".join(f"{td(i, c)}{cell_html(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table>{cap}<thead><tr>{head_html}</tr></thead><tbody>{body}</tbody></table>"


class Raw(str):
    """A string that is already HTML."""


def cell_html(value: Any) -> str:
    return value if isinstance(value, Raw) else esc(value)


def definition_list(items: Mapping[str, Any]) -> str:
    """A ``<dl>`` of key/value pairs (values escaped unless :class:`Raw`); empty values left out."""
    parts = [f"<dt>{esc(k)}</dt><dd>{cell_html(v)}</dd>" for k, v in items.items() if v not in (None, "", [], {})]
    return '<dl class="card">' + "".join(parts) + "</dl>"


def nested(value: Any, depth: int = 0) -> str:
    """Any JSON-like value as HTML: dicts as definition lists, lists of scalars joined, lists of dicts as tables.

    Example:
        >>> nested({"a": 1, "b": [1, 2.5]})
        '<dl class="card"><dt>a</dt><dd>1</dd><dt>b</dt><dd>1, 2.5</dd></dl>'
        >>> nested([{"x": 1}, {"x": 2}]).split("<tbody>")[1]
        '<tr><td>1</td></tr><tr><td>2</td></tr></tbody></table>'
    """
    if isinstance(value, Mapping):
        return definition_list({str(k): Raw(nested(v, depth + 1)) for k, v in value.items()})
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            return table([[Raw(nested(v.get(k), depth + 1)) for k in keys] for v in value], keys)
        return esc(", ".join(_scalar(v) for v in value))
    return esc(_scalar(value))


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list | tuple):
        import json

        return json.dumps(value, default=str)
    return "" if value is None else str(value)
