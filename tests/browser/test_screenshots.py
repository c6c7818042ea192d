"""The dashboard by keyboard alone and at phone width, and its screenshots: in a module of
its own, so the served copy of the Aarhus day holds only the day (no test's KPI).

Set CITYSTREAM_UPDATE_SCREENSHOTS=1 to write the screenshots into docs/img/ as well
(docs/dashboard.md shows them).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.api.conftest import ApiServer
from tests.browser.chrome import PHONE, open_dashboard, wait_for
from tests.conftest import REPO

pytestmark = pytest.mark.integration

DOCS_IMG = REPO / "docs" / "img"


def test_keyboard_only_and_phone_width(api_server: ApiServer, browser: Any, tmp_path: Path) -> None:
    phone_width(browser)
    open_dashboard(browser, api_server.url + "/")
    # no horizontal scrolling at phone width
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth"
    )
    # Tab reaches the map's KPI selector; the arrow key changes it and the map redraws
    focused = ""
    for _ in range(30):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        focused = browser.execute_script("return document.activeElement.id")
        if focused == "map-kpi":
            break
    assert focused == "map-kpi"
    before = browser.execute_script("return document.getElementById('map').dataset.kpi")
    ActionChains(browser).send_keys(Keys.ARROW_DOWN).perform()
    wait_for(
        browser,
        f"return document.getElementById('map').dataset.kpi !== '{before}'"
        " && document.getElementById('map').dataset.drawn;",
    )
    # Enter on the focused "Table view" button opens the table
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert (
        browser.execute_script("return document.activeElement.getAttribute('aria-controls')")
        == "map-table"
    )
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert browser.find_element(By.ID, "map-table").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#map-table tbody tr")
    assert len(rows) == int(
        browser.execute_script("return document.getElementById('map').dataset.features")
    )
    browser.find_element(By.CSS_SELECTOR, "button[aria-controls=map-table]").send_keys(Keys.ENTER)
    screenshots(browser, api_server, tmp_path)


def phone_width(browser: Any) -> None:
    """A 390 CSS px wide viewport (a phone's; a headless window cannot be that narrow)."""
    width, height = PHONE
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


def screenshots(browser: Any, server: ApiServer, tmp_path: Path) -> None:
    """The dashboard at phone width (this browser) and desktop width, as PNGs in
    tmp_path; with CITYSTREAM_UPDATE_SCREENSHOTS=1 also into docs/img/."""
    shots = {}
    browser.execute_script("window.scrollTo(0, 0)")
    shots["dashboard-phone.png"] = tmp_path / "phone.png"
    assert browser.save_screenshot(str(shots["dashboard-phone.png"]))
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    browser.set_window_size(1280, 1500)
    open_dashboard(browser, server.url + "/")
    time.sleep(0.5)  # the map's fitBounds animation
    shots["dashboard-desktop.png"] = tmp_path / "desktop.png"
    assert browser.save_screenshot(str(shots["dashboard-desktop.png"]))
    for path in shots.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    if os.environ.get("CITYSTREAM_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(exist_ok=True)
        for name, path in shots.items():
            shutil.copyfile(path, DOCS_IMG / name)
