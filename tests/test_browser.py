"""The report and the neuroglancer viewer in a real browser: Debian's headless Chromium (``make test``
installs it) loads the pages, screenshots are written (to ``$EMDATA_SCREENSHOTS``, default
``build/screenshots``), and any console error fails the test."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import emdata
from emdata.catalog import get_card, list_cards
from emdata.report import build_report
from emdata.testing.browser import Browser, headless_chromium

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("EMDATA_SCREENSHOTS") or ROOT / "build" / "screenshots")


@pytest.fixture(scope="module")
def browser() -> Browser:
    with headless_chromium() as started:
        yield started


@pytest.fixture(scope="module")
def prepared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emdata.testing import serve_replicas

    home = tmp_path_factory.mktemp("browser")
    with serve_replicas(["cremi", "lucchi-pp"], home, small=True) as served:
        emdata.prepare("cremi", **{**served.options["cremi"], "volumes": ["A"]})
        emdata.prepare("lucchi-pp", **served.options["lucchi-pp"])
    return home


def _visible_ids(browser: Browser) -> list[str]:
    return browser.driver.execute_script(
        "return Array.from(document.querySelectorAll('#catalog tbody tr'))"
        ".filter(function (r) { return !r.hidden; }).map(function (r) { return r.dataset.id; });")


def _set(browser: Browser, element_id: str, value: str | bool) -> None:
    """Set a filter control as a user would (typing, choosing, ticking)."""
    from selenium.webdriver.support.ui import Select

    element = browser.driver.find_element("id", element_id)
    if isinstance(value, bool):
        if element.is_selected() != value:
            element.click()
    elif element.tag_name == "select":
        Select(element).select_by_value(value)
    else:
        element.clear()
        if value:
            element.send_keys(value)


def test_a_console_error_is_caught(browser: Browser, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><title>x</title><link rel="icon" href="data:,">'
                    '<script>console.error("emdata-broken-page")</script>', encoding="utf-8")
    browser.driver.get(page.as_uri())
    assert any("emdata-broken-page" in message for message in browser.console_errors())
    browser.log.clear()


def test_report_table_filters_sorts_and_dataset_pages(browser: Browser, prepared_home: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    site = build_report(tmp_path / "site", datasets=["lucchi-pp", "cremi", "snemi3d"])
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser.driver
    driver.get((site / "index.html").as_uri())
    cards = list_cards()
    assert len(cards) >= 21
    assert _visible_ids(browser) == [c.id for c in cards]
    browser.screenshot(SHOTS / "report-index.png", full_page=True)

    _set(browser, "q", "lucchi")
    assert _visible_ids(browser) == ["lucchi-pp"]
    assert driver.find_element("id", "shown").text == f"1 of {len(cards)} datasets shown"
    _set(browser, "q", "")
    _set(browser, "species", "fly")
    assert _visible_ids(browser) == [c.id for c in cards if c.species == "fly"] != []
    _set(browser, "species", "")
    _set(browser, "prepared-only", True)
    assert _visible_ids(browser) == ["cremi", "lucchi-pp"]
    browser.screenshot(SHOTS / "report-prepared-only.png")
    _set(browser, "prepared-only", False)

    voxel = driver.find_element("xpath", "//th[button[starts-with(., 'Voxel size')]]")
    voxel.find_element("tag name", "button").click()
    assert voxel.get_attribute("aria-sort") == "ascending"
    keys = driver.execute_script(
        "return Array.from(document.querySelectorAll('#catalog tbody tr td:nth-child(4)'))"
        ".map(function (c) { return c.dataset.sort; });")
    numbers = [float(k) for k in keys if k]
    assert numbers == sorted(numbers) and keys[len(numbers):] == [""] * (len(keys) - len(numbers))
    voxel.find_element("tag name", "button").click()
    assert voxel.get_attribute("aria-sort") == "descending"

    driver.find_element("link text", "lucchi-pp").click()
    assert driver.current_url.endswith("/datasets/lucchi-pp.html")
    images = driver.execute_script(
        "return Array.from(document.querySelectorAll('img.preview'))"
        ".map(function (i) { return [i.complete, i.naturalWidth, i.alt]; });")
    assert len(images) == len(emdata.volumes("lucchi-pp")) == 2
    assert all(complete and width > 0 and alt for complete, width, alt in images), images
    stats = [e.text for e in driver.find_elements("css selector", "pre.stats")]
    assert [text.split(" ", 1)[0] for text in stats] == [f"lucchi-pp/{v.name}" for v in emdata.volumes("lucchi-pp")]
    assert driver.find_element("id", "citation").text.strip() == get_card("lucchi-pp").citation.strip()
    driver.find_element("css selector", "button[data-copy='citation']").click()
    status = driver.find_element("id", "copy-status")
    WebDriverWait(driver, 5).until(lambda _: status.text)  # the clipboard answers asynchronously
    assert status.text == "Citation copied."
    browser.screenshot(SHOTS / "report-lucchi-pp.png", full_page=True)
    driver.execute_script("document.querySelector('img.preview').scrollIntoView()")
    browser.screenshot(SHOTS / "report-lucchi-pp-preview.png")

    driver.get((site / "datasets" / "snemi3d.html").as_uri())
    assert "Not prepared" in driver.find_element("id", "prepared-h").find_element("xpath", "..").text
    assert browser.console_errors() == []


NG_LAYERS = """
if (typeof viewer === 'undefined') { return null; }
return viewer.layerManager.managedLayers.map(function (m) {
  var layer = m.layer;
  var sources = !layer ? ['missing'] : layer.dataSources.map(function (ds) {
    var s = ds.loadState;
    return s === undefined ? 'loading' : (s.error !== undefined ? 'error: ' + s.error.message : 'ok'); });
  var names = null;
  if (layer && layer.displayState && layer.displayState.segmentationGroupState) {
    var map = layer.displayState.segmentationGroupState.value.segmentPropertyMap.value;
    names = map && map.labels ? Array.from(map.labels.values) : null;
  }
  return [m.name, sources, names];
});
"""


def test_neuroglancer_viewer_loads_every_layer(browser: Browser, prepared_home: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from emdata.view import ViewSession

    monkeypatch.setenv("EMDATA_HOME", str(prepared_home))
    cremi, lucchi = emdata.volumes("cremi")[0], emdata.volumes("lucchi-pp", split="train")[0]
    for vol, shot in ((cremi, "neuroglancer-cremi.png"), (lucchi, "neuroglancer-lucchi-pp.png")):
        with ViewSession([vol]) as session:
            browser.driver.get(session.url)
            deadline, layers = time.monotonic() + 30, None
            while time.monotonic() < deadline:
                layers = browser.driver.execute_script(NG_LAYERS)
                if layers and len(layers) == len(session.state["layers"]) and \
                        all("loading" not in sources for _, sources, _ in layers):
                    break
                time.sleep(0.2)
            assert layers is not None, "neuroglancer did not start"
            assert [name for name, _, _ in layers] == [layer["name"] for layer in session.state["layers"]]
            for name, sources, names in layers:
                assert sources == ["ok"] * len(sources), (name, sources)
                if name != vol.name:  # a label layer: its class names arrived as segment properties
                    layer = name.split("/", 1)[1]
                    assert names == [c["name"] for c in sorted(vol.classes(layer), key=lambda c: c["value"])]
            dims = browser.driver.execute_script(
                "return viewer.coordinateSpace.value.scales.map(function (s) { return s * 1e9; });")
            assert dims == pytest.approx([vol.voxel_size[2], vol.voxel_size[1], vol.voxel_size[0]])
            while time.monotonic() < deadline and not browser.driver.execute_script("return viewer.isReady();"):
                time.sleep(0.2)
            assert browser.driver.execute_script("return viewer.isReady();"), "chunks did not arrive or draw"
            browser.screenshot(SHOTS / shot)
            assert browser.console_errors() == []
            browser.driver.get("about:blank")  # leave before the viewer's server stops
