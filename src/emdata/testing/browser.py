"""Headless Chromium for tests of the pages emdata writes (``emdata report``, ``emdata view``):
Debian's ``chromium`` and ``chromium-driver`` driven by selenium, with the browser console collected
so a test can fail on any console error.

``make test`` installs both packages when they are missing. The browser never downloads anything:
the driver is ``/usr/bin/chromedriver`` (or ``$EMDATA_CHROMEDRIVER``), the browser ``/usr/bin/chromium``
(or ``$EMDATA_CHROMIUM``); WebGL (neuroglancer) runs on SwiftShader.

Example (a test using it):
    >>> def test_page(tmp_path):
    ...     with headless_chromium() as browser:
    ...         browser.driver.get("file:///tmp/page.html")
    ...         assert browser.console_errors() == []
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--allow-file-access-from-files")
IGNORED = ("/favicon.ico - Failed to load resource",)
"""Console entries that are not the page's: the browser's own request for a site icon."""


def find_chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and its driver; raises with the install command when missing.

    Example (``make test`` installs them):
        >>> [Path(p).name for p in find_chromium()]
        ['chromium', 'chromedriver']
    """
    browser = os.environ.get("EMDATA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("EMDATA_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        raise FileNotFoundError("headless browser tests need Debian's chromium and chromium-driver: "
                                "apt-get install -y chromium chromium-driver (make test installs them), or set "
                                "EMDATA_CHROMIUM and EMDATA_CHROMEDRIVER")
    return browser, driver


@dataclass
class Browser:
    """A running headless Chromium (``driver`` is the selenium WebDriver); console entries are kept."""

    driver: Any
    log: list[dict[str, Any]] = field(default_factory=list)

    def console(self) -> list[dict[str, Any]]:
        """Every console entry so far (level, message, source), gathered across pages."""
        self.log.extend(self.driver.get_log("browser"))
        return list(self.log)

    def console_errors(self) -> list[str]:
        """The console's errors (level SEVERE) so far, minus the browser's own site-icon request."""
        return [e["message"] for e in self.console()
                if e.get("level") == "SEVERE" and not any(s in e["message"] for s in IGNORED)]

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        """Save a PNG of the window (``full_page``: of the whole document) at ``path`` (parent folders created)."""
        import base64

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            size = self.driver.execute_script("return [document.documentElement.scrollWidth, "
                                              "document.documentElement.scrollHeight];")
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}})
            path.write_bytes(base64.b64decode(shot["data"]))
        elif not self.driver.save_screenshot(str(path)):
            raise RuntimeError(f"chromium could not write the screenshot {path}")
        return path


@contextmanager
def headless_chromium(width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """Start headless Chromium through chromedriver; quit it on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (*CHROMIUM_ARGS, f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    web = webdriver.Chrome(service=Service(driver), options=options)
    try:
        web.set_page_load_timeout(30)
        yield Browser(web)
    finally:
        web.quit()
