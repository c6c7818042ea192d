"""The dashboard of an API serving two cities, in Debian's headless chromium (#15): the
city selector appears, and switching it redraws the map, the chart and the equity view
with the other city's data, while the page still asks only its own origin.

The stack is tests/api/cities_stack.py's (Aarhus and Boston in one sink, a few windows
each, every value different between them), served by ``citystream serve``'s app under a
real uvicorn. Boston, as in its real data, counts no vehicles per district: the districts
ticked below the chart have no series there (404), and the chart draws the city's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from citystream.serve_cli import build_app
from core.settings import Settings
from tests.api.cities_stack import (
    WINDOWS,
    TwoCities,
    districts_of,
    isolated_base,
    two_cities,
    value,
)
from tests.api.uvicorn_thread import served
from tests.browser.chrome import open_dashboard, page_errors, requested_urls, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(
    stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, TwoCities]]:
    """Both cities served by a real uvicorn on a free port (with its lifespan: the feed)."""
    base = isolated_base(stack, tmp_path_factory.mktemp("two-cities-browser"))
    with two_cities(stack, base) as two:
        app = build_app(two.settings, list(two.cities.values()), audited=False)
        with served(app, "two-cities-dashboard") as url:
            yield url, two


def drawn(driver: Any, city: str, districts: int) -> dict[str, Any]:
    """What the page drew once the map shows ``districts`` districts and the chart
    ``city``'s series: map counts, the table's district names, plotted values, equity."""
    series = wait_for(
        driver,
        "const m = document.getElementById('map').dataset;"
        "const c = document.getElementById('series-chart').dataset;"
        f"if (m.districts !== '{districts}' || !c.series) return null;"
        "const s = JSON.parse(c.series).find(x => x.scope === 'city');"
        f"return s && s.values.length === {WINDOWS} && s.values[0] === {value(city, 0)}"
        " && c.series;",
    )
    names = driver.execute_script(
        "return [...document.querySelectorAll('#map-table tbody tr')]"
        ".filter(tr => tr.children[0].textContent === 'district')"
        ".map(tr => tr.children[1].textContent);"
    )
    equity = wait_for(
        driver,
        "const e = document.getElementById('equity-chart').dataset;"
        f"return e.count === '{districts}' && e.count;",
    )
    return {"series": json.loads(series), "names": names, "equity": int(equity)}


def test_switching_the_city_redraws_every_panel_with_that_city_s_data(
    server: tuple[str, TwoCities], browser: Any
) -> None:
    url, two = server
    aarhus, boston = (districts_of(two.cities[c]) for c in ("aarhus", "boston"))
    assert len(aarhus) != len(boston)  # the map's district count tells them apart
    open_dashboard(browser, url + "/")
    Select(browser.find_element(By.ID, "series-resolution")).select_by_value("15m")
    select = Select(browser.find_element(By.ID, "city"))
    assert browser.find_element(By.ID, "city-label").is_displayed()
    assert [(o.get_attribute("value"), o.text) for o in select.options] == [
        ("aarhus", "Aarhus"),
        ("boston", "Boston"),
    ]

    first = drawn(browser, "aarhus", len(aarhus))
    assert sorted(first["names"]) == sorted(aarhus)
    city = next(s for s in first["series"] if s["scope"] == "city")
    assert city["values"] == [value("aarhus", i) for i in range(WINDOWS)]
    assert [s["entity"] for s in first["series"] if s["scope"] == "district"] == sorted(aarhus)[:2]
    assert page_errors(browser) == []
    requested_urls(browser)  # from here on: what switching asks

    select.select_by_value("boston")
    second = drawn(browser, "boston", len(boston))
    assert sorted(second["names"]) == sorted(boston)
    city = next(s for s in second["series"] if s["scope"] == "city")
    assert city["values"] == [value("boston", i) for i in range(WINDOWS)]
    # Boston counts no vehicles per district: the ticked districts plot nothing
    assert all(s["values"] == [] for s in second["series"] if s["scope"] == "district")
    assert second["equity"] == len(boston)

    requests = requested_urls(browser)
    origin = urlsplit(url)[:2]
    assert requests and {urlsplit(u)[:2] for u, _ in requests} == {origin}
    api_calls = [urlsplit(u) for u, _ in requests if urlsplit(u).path.startswith("/v1/")]
    assert api_calls and all(parse_qs(u.query).get("city") == ["boston"] for u in api_calls)
    assert any(u.path == "/v1/stream" for u in api_calls)  # the live feed follows the city
    # the only console errors: the 404s of those district series
    missing = re.compile(r"/v1/kpis/traffic\.vehicle_count/series\?scope=district&.*404")
    assert all(missing.search(error) for error in page_errors(browser))
