"""The dashboard in a real browser (Debian's headless chromium), against the read API over
a real stack holding the KPIs of the shipped Aarhus day (tests/api/conftest.py).

Each test compares what the page drew (data-* attributes the page sets from what it
plotted, and the SVG paths Leaflet drew) with what the API answers for the same question.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from api.verification import save_result
from core.kafka import Publisher
from families.registry import TOPICS
from schemas.catalog import load_schema
from schemas.registry import SchemaRegistry
from tests.api.conftest import ApiServer
from tests.browser.chrome import open_dashboard, page_errors, requested_urls, wait_for
from tests.conftest import REPO

pytestmark = pytest.mark.integration

KPI_FIELDS = [f["name"] for f in load_schema("kpi_batch.avsc")["fields"]]
DOCS_IMG = REPO / "docs" / "img"


def api_json(server: ApiServer, path: str) -> Any:
    answer = server.stack.client.get(path)
    assert answer.status_code == 200, (path, answer.text)
    return answer.json()


def api_series(server: ApiServer, kpi: str, **params: str) -> list[tuple[float, float]]:
    """Every page of a series, as (epoch seconds, value) pairs."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    path: str | None = f"/v1/kpis/{kpi}/series?{query}"
    points: list[tuple[float, float]] = []
    while path:
        body = api_json(server, path)
        for point in body["points"]:
            points.append((epoch_s(point["start"]), float(point["value"])))
        cursor = body.get("next_cursor")
        path = f"/v1/kpis/{kpi}/series?{query}&cursor={cursor}" if cursor else None
    return points


def epoch_s(value: Any) -> float:
    from datetime import datetime

    if isinstance(value, int | float):
        return value / 1000 if value > 1e11 else float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def choose(driver: Any, select_id: str, value: str) -> None:
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def test_the_map_draws_one_feature_per_district_and_sensor(
    api_server: ApiServer, browser: Any
) -> None:
    open_dashboard(browser, api_server.url + "/")
    for kpi, layer in [
        ("traffic.congestion_index", "segments"),  # per segment only: plain districts
        ("air.aqi", "segments"),
        ("parking.occupancy_pct", "car_parks"),
        ("devices.uptime_pct", "sensors"),
    ]:
        districts = api_json(api_server, "/v1/map/districts")["features"]
        points = api_json(api_server, f"/v1/map/{layer}?kpi={kpi}")["features"]
        assert districts and points, (kpi, layer)
        choose(browser, "map-kpi", kpi)
        drawn = wait_for(
            browser,
            f"const m = document.getElementById('map').dataset;"
            f"return m.kpi === '{kpi}' && m.drawn;",
        )
        counts = browser.execute_script(
            "return Object.assign({}, document.getElementById('map').dataset)"
        )
        assert int(counts["districts"]) == len(districts), kpi
        assert int(counts["points"]) == len(points), kpi
        # one SVG path per feature: what Leaflet drew, not what the page meant to draw
        assert int(drawn) == len(districts) + len(points), kpi
        paths = browser.find_elements(By.CSS_SELECTOR, "#map path.cs-district")
        assert len(paths) == len(districts)
        # the table view lists every feature with the API's value (or why it has none)
        shown = browser.execute_script(
            "return [...document.querySelectorAll('#map-table tbody tr')]"
            ".map(tr => [tr.children[1].textContent, tr.children[2].textContent]);"
        )
        assert len(shown) == len(districts) + len(points)
        valued = [f for f in points if f["properties"]["value"] is not None]
        for feature, (name, text) in zip(points, shown[len(districts) :], strict=True):
            assert name == feature["properties"].get("name", feature["id"])
            if feature["properties"]["value"] is not None:
                assert float(text) == pytest.approx(
                    feature["properties"]["value"], rel=0.01, abs=0.01
                )
        if kpi == "devices.uptime_pct":
            assert len(valued) == len(points)  # uptime has a value for every sensor
    assert page_errors(browser) == []


def test_a_chart_plots_the_values_of_the_api(api_server: ApiServer, browser: Any) -> None:
    open_dashboard(browser, api_server.url + "/")
    choose(browser, "series-kpi", "traffic.vehicle_count")
    choose(browser, "series-resolution", "1h")
    plotted = json.loads(
        wait_for(
            browser,
            "const c = document.getElementById('series-chart');"
            "return c.dataset.kpi === 'traffic.vehicle_count' && c.dataset.resolution === '1h'"
            " && c.dataset.series;",
        )
    )
    city = next(s for s in plotted if s["scope"] == "city")
    expected = api_series(api_server, "traffic.vehicle_count", scope="city", resolution="1h")
    assert len(expected) >= 20  # a day of hours
    assert city["times"] == [t for t, _ in expected]
    assert city["values"] == pytest.approx([v for _, v in expected])
    districts = [s for s in plotted if s["scope"] == "district"]
    assert districts, "the first districts are ticked by default"
    for series in districts:
        want = api_series(
            api_server,
            "traffic.vehicle_count",
            scope="district",
            entity=series["entity"],
            resolution="1h",
        )
        assert series["values"] == pytest.approx([v for _, v in want]), series["entity"]
    # the table view holds the same rows
    browser.find_element(By.CSS_SELECTOR, "button[aria-controls=series-table]").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#series-table tbody tr")
    assert len(rows) == len(expected)


def publish_kpi(settings: Any, record: dict[str, Any]) -> None:
    """One KPI window as the processors publish it: on city.kpi.v1 (one record) and on
    city.kpi.batches.v1 (the sink's input), through the project's serde and publisher."""
    registry = SchemaRegistry(settings.registry_config())
    publisher = Publisher.create(settings)
    key = "|".join(str(record[f]) for f in ("kpi", "scope", "entity_id", "window_start"))
    for name, value in [
        ("city.kpi.v1", record),
        ("city.kpi.batches.v1", {field: [record[field]] for field in KPI_FIELDS}),
    ]:
        serde = registry.serde(settings.topic(name), TOPICS[name])
        publisher.send(settings.topic(name), key.encode(), serde.encode(value), 0)
    publisher.flush()


def test_a_kpi_published_during_the_test_appears_without_a_reload(
    api_server: ApiServer, browser: Any
) -> None:
    open_dashboard(browser, api_server.url + "/")
    choose(browser, "series-kpi", "traffic.vehicle_count")
    choose(browser, "series-resolution", "15m")
    wait_for(
        browser,
        "const c = document.getElementById('series-chart');"
        "return c.dataset.resolution === '15m' && c.dataset.kpi === 'traffic.vehicle_count';",
    )
    wait_for(browser, "return document.getElementById('live').dataset.state === 'open';")
    marker = uuid.uuid4().hex
    browser.execute_script(f"window.testMarker = '{marker}';")
    # the window after the day's last one, with a value no real window has
    last = max(t for t, _ in api_series(api_server, "traffic.vehicle_count", scope="city"))
    start_ms = int(last * 1000) + 15 * 60_000
    value = 424242.0
    publish_kpi(
        api_server.stack.settings,
        {
            "kpi": "traffic.vehicle_count",
            "scope": "city",
            "entity_id": api_server.stack.context.city().id,
            "window_start": start_ms,
            "window_end": start_ms + 15 * 60_000,
            "value": value,
            "samples": 7,
            "revision": 0,
            "computed_at": int(time.time() * 1000),
        },
    )
    feed = wait_for(
        browser,
        "const li = document.querySelector("
        '\'#feed li[data-kpi="traffic.vehicle_count"][data-scope="city"]\');'
        "return li && li.dataset.value;",
        timeout=90,
    )
    assert float(feed) == value
    plotted = json.loads(
        wait_for(
            browser,
            "const s = document.getElementById('series-chart').dataset.series;"
            f"return s.includes('{int(value)}') && s;",
        )
    )
    city = next(s for s in plotted if s["scope"] == "city")
    assert city["times"][-1] == start_ms / 1000 and city["values"][-1] == value
    assert browser.execute_script("return window.testMarker") == marker, "the page reloaded"
    # ...and the sink stored it: the API's series now ends with it
    deadline = time.monotonic() + 60
    stored = api_series(api_server, "traffic.vehicle_count", scope="city", resolution="15m")
    while stored[-1][0] != start_ms / 1000 and time.monotonic() < deadline:
        time.sleep(0.5)
        stored = api_series(api_server, "traffic.vehicle_count", scope="city", resolution="15m")
    assert stored[-1] == (start_ms / 1000, value)


def test_the_page_requests_nothing_outside_its_origin(api_server: ApiServer, browser: Any) -> None:
    open_dashboard(browser, api_server.url + "/")
    # every control exercised once, so lazily loaded parts are requested too
    for kpi in ("air.aqi", "devices.uptime_pct"):
        choose(browser, "map-kpi", kpi)
        wait_for(browser, f"return document.getElementById('map').dataset.kpi === '{kpi}';")
    for button in browser.find_elements(By.CSS_SELECTOR, "button.toggle"):
        button.click()
    time.sleep(1)
    requests = requested_urls(browser)
    urls = [url for url, _ in requests]
    origin = urlsplit(api_server.url)
    assert any(u.endswith("/static/vendor/leaflet/leaflet.js") for u in urls)
    assert any("/v1/stream" in u for u in urls)
    assert {urlsplit(document)[:2] for _, document in requests} == {origin[:2]}
    foreign = [u for u in urls if urlsplit(u)[:2] != origin[:2]]
    assert foreign == []
    # the CSP would have refused them anyway: no refusal, no failed load, no script error
    assert page_errors(browser) == []
    policy = api_server.stack.client.get("/").headers["content-security-policy"]
    assert policy.startswith("default-src 'self';")


def test_freshness_and_the_verification_result(api_server: ApiServer, browser: Any) -> None:
    settings = api_server.stack.settings
    save_result(settings, "traffic", matched=9_000, missing=0, extra=0, different=0)
    save_result(settings, "air", matched=8_000, missing=2, extra=0, different=1)
    open_dashboard(browser, api_server.url + "/")
    status = api_json(api_server, "/v1/status")
    rows = {
        row.get_attribute("data-domain"): [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#status tbody tr")
    }
    assert set(rows) == set(status["freshness"]) | set(status["verification"])
    newest = status["freshness"]["traffic"]["newest_window_end"].replace("+00:00", "Z")
    assert rows["traffic"][1] == newest
    assert rows["traffic"][2] == "matched (9000 windows)"
    assert rows["air"][2].startswith("3 differences (2 missing, 0 extra, 1 different")
    assert rows["parking"][2] == "not verified yet"
    cell = browser.find_element(By.CSS_SELECTOR, "#status tr[data-domain=air] td:nth-child(3)")
    assert cell.get_attribute("class") == "bad"
