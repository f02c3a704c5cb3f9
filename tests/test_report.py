"""`emdata report`: the static site's content, links and markup (the browser test drives the same pages)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

import emdata
from emdata.catalog import list_cards
from emdata.cli import app
from emdata.report import build_report, catalog_rows


class _Page(HTMLParser):
    """Collects ids, links, resources and unclosed tags of one page."""

    VOID = frozenset({"meta", "link", "img", "br", "input", "hr", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.links: list[str] = []
        self.resources: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.labels_for: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "script", "link") and (a.get("src") or a.get("href")):
            self.resources.append(a.get("src") or a.get("href") or "")
        if tag == "img":
            self.images.append(a)
        if tag == "label" and a.get("for"):
            self.labels_for.append(a["for"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"{path.name}: unclosed {page.stack}"
    return page


def test_site_is_offline_well_formed_and_linked(tmp_path: Path) -> None:
    site = build_report(tmp_path / "site")
    pages = [site / "index.html", *sorted((site / "datasets").glob("*.html"))]
    assert len(pages) == len(list_cards()) + 1
    for path in pages:
        page = _parse(path)
        assert len(page.ids) == len(set(page.ids)), f"{path.name}: duplicate ids"
        assert all(r.startswith("data:") or not re.match(r"^[a-z]+:", r) for r in page.resources), \
            f"{path.name} loads something from outside the site: {page.resources}"
        for href in page.links:
            if not re.match(r"^[a-z]+:", href) and not href.startswith("#"):
                assert (path.parent / href).resolve().is_file(), f"{path.name}: broken link {href}"
        assert set(page.labels_for) <= set(page.ids)
        text = path.read_text(encoding="utf-8")
        assert '<html lang="en">' in text and '<main id="content">' in text
    index = _parse(site / "index.html")
    assert [h.removeprefix("datasets/").removesuffix(".html") for h in index.links
            if h.startswith("datasets/")] == [c.id for c in list_cards()]
    rows = json.loads((site / "catalog.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in rows] == [c.id for c in list_cards()] and not any(r["prepared"] for r in rows)
    assert "Not prepared under this" in (site / "datasets" / "cremi.html").read_text(encoding="utf-8")


def test_rows_follow_the_cards() -> None:
    rows = {r["id"]: r for r in catalog_rows()}
    for card in list_cards():
        row = rows[card.id]
        assert (row["species"], row["microscopy"], row["license"]) == (card.species, card.microscopy, card.license)
        for layer in card.labels:  # grouped by kind: "semantic: a, b; instance: c"
            assert re.search(rf"\b{layer.kind}: (?:[\w-]+, )*{re.escape(layer.name)}\b", row["labels"]), row["labels"]
        nm = card.voxel_size.nm
        assert row["voxel_sort"] == (nm[0] * nm[1] * nm[2] if nm else None)
        sizes = [s.size_bytes for s in card.sources if not s.is_alternate and s.size_bytes]
        assert row["download_bytes"] == (sum(sizes) if sizes else None)


def test_dataset_page_escapes_and_shows_the_card(tmp_path: Path) -> None:
    from emdata.catalog import get_card

    site = build_report(tmp_path / "s", datasets=["snemi3d"])
    assert [p.name for p in (site / "datasets").glob("*.html")] == ["snemi3d.html"]
    text = (site / "datasets" / "snemi3d.html").read_text(encoding="utf-8")
    card = get_card("snemi3d")
    for source in card.sources:
        assert source.checksum in text and source.name in text
    for pitfall in card.pitfalls:
        assert pitfall.replace("'", "&#x27;") in text
    assert "{Saturated Reconstruction of a Volume of Neocortex}" in text
    with pytest.raises(KeyError, match="unknown dataset 'snemi'"):
        build_report(tmp_path / "x", datasets=["snemi"])


def test_cli_report_with_a_prepared_volume(tmp_path: Path) -> None:
    from emdata.testing import serve_replicas

    with serve_replicas(["lucchi-pp"], tmp_path / "home", small=True) as served:
        emdata.prepare("lucchi-pp", **served.options["lucchi-pp"])
        result = CliRunner().invoke(app, ["report", "-o", str(tmp_path / "site"), "--dataset", "lucchi-pp",
                                          "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["index"] == str((tmp_path / "site" / "index.html").resolve())
    page = _parse(tmp_path / "site" / "datasets" / "lucchi-pp.html")
    assert sorted(Path(i["src"] or "").name for i in page.images) == ["test.png", "train.png"]
    assert all(i["alt"] for i in page.images)
    for image in page.images:
        assert (tmp_path / "site" / "datasets" / (image["src"] or "")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert 'data-id="lucchi-pp" data-species="unverified" data-microscopy="FIB-SEM" data-prepared="yes"' in index
