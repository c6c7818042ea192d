"""Several cities in one API (#15): Aarhus and Boston in one sink (tests/api/cities_stack.py),
served by the app ``citystream serve --city cities/aarhus --city cities/boston`` builds
(``citystream.serve_cli.build_app``, audited), and ``citystream demo --serve``'s app
(``citystream.demo.dashboard_app``) on the demo's namespaces in the same sink.

For every route: ``city=aarhus`` and ``city=boston`` answer with that city's own data
(every value of the two cities differs), an unknown city is a 404 naming the parameter,
and no ``city`` means the first city configured (docs/api.md); ``/v1/stream`` without a
city sends every city's events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from confluent_kafka import Producer
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.context import ApiContext
from citystream.cli import city_namespace
from citystream.demo import boston_namespace, dashboard_app, demo_namespace
from citystream.serve_cli import build_app
from core.audit_append import ensure_audit_topics
from core.settings import Settings
from schemas.registry import SchemaRegistry
from tests.api.cities_stack import (
    FIRST,
    PACKS,
    WINDOWS,
    TwoCities,
    alert_of,
    districts_of,
    isolated_base,
    segments_of,
    two_cities,
    value,
    window,
)
from tests.api.uvicorn_thread import served as serving
from trust.audit.checkpoint import checkpoint_now
from trust.audit.log import read_log

pytestmark = pytest.mark.integration

CITIES = ("aarhus", "boston")
SERIES = "/v1/kpis/traffic.vehicle_count/series"
NGSI_TYPE = {"type": "KeyPerformanceIndicator"}


@dataclass
class Served:
    two: TwoCities
    demo: Settings  # the demo run's Aarhus namespace (Boston's: boston_namespace(demo))
    app: FastAPI
    client: TestClient

    @property
    def context(self) -> ApiContext:
        context: ApiContext = self.app.state.context
        return context


@pytest.fixture(scope="module")
def served(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = isolated_base(stack, tmp_path_factory.mktemp("two-cities"))
    # the demo's namespaces in the same directory (a run whose tables are named, as when
    # the demo runs on a ClickHouse server), with the same windows
    run = base.model_copy(update={"clickhouse_url": base.resolved_clickhouse_url})
    demo = demo_namespace(run, "demo.")
    with two_cities(stack, base, [("aarhus", demo), ("boston", boston_namespace(demo))]) as two:
        ensure_audit_topics(demo)
        app = build_app(two.settings, list(two.cities.values()), audited=True)
        try:
            with TestClient(app, raise_server_exceptions=False) as client:
                yield Served(two, demo, app, client)
        finally:
            app.state.context.audit.close()


def get(served: Served, path: str, **params: Any) -> Any:
    answer = served.client.get(path, params=params)
    assert answer.status_code == 200, (path, params, answer.text)
    return answer.json()


def urn(city: str, kpi: str, scope: str, entity: str) -> str:
    return f"urn:ngsi-ld:KeyPerformanceIndicator:{city}:{kpi}:{scope}:{quote(entity, safe='')}"


def instant(text: str) -> datetime:
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- what the stack holds --------------------------------------------------------------------


def test_the_two_cities_are_served_from_one_sink_in_their_own_namespaces(served: Served) -> None:
    cities = served.context.cities
    assert list(cities) == ["aarhus", "boston"]  # in the order of --city
    assert {c.database for c in cities.values()} == {"citystream_aarhus", "citystream_boston"}
    for city in CITIES:
        assert cities[city].topic_prefix == f"{served.two.settings.topic_prefix}{city}."
    assert set(served.two.sink.databases.values()) == {  # one sink: both (and the demo's)
        "citystream_aarhus", "citystream_boston", "citystream_demo", "citystream_demo_boston"
    }  # fmt: skip
    config = get(served, "/static/config.json")
    assert config["cities"] == [
        {"id": "aarhus", "name": "Aarhus"},
        {"id": "boston", "name": "Boston"},
    ]


# --- each route, per city ----------------------------------------------------------------------


@pytest.mark.parametrize("city", CITIES)
def test_a_series_is_the_city_s_own(served: Served, city: str) -> None:
    body = get(served, SERIES, city=city)
    assert body["city"] == city and body["entity"] == city
    assert [p["value"] for p in body["points"]] == [value(city, i) for i in range(WINDOWS)]
    assert instant(body["points"][0]["start"]) == FIRST[city]


def test_the_catalogue_takes_a_city(served: Served) -> None:
    for city in CITIES:
        assert get(served, "/v1/kpis", city=city)["city"] == city


@pytest.mark.parametrize("city", CITIES)
def test_a_map_draws_the_city_s_own_places_and_values(served: Served, city: str) -> None:
    namespace = served.two.cities[city]
    districts = get(served, "/v1/map/districts", kpi="air.aqi", city=city)
    assert districts["city"] == city
    assert [f["id"] for f in districts["features"]] == districts_of(namespace)
    latest = (WINDOWS - 1) / 10
    assert [f["properties"]["value"] for f in districts["features"]] == pytest.approx(
        [value(city, j + latest) for j in range(len(districts["features"]))]
    )
    segments = get(served, "/v1/map/segments", city=city)
    assert [f["id"] for f in segments["features"]] == segments_of(namespace)
    valued = [f["properties"]["value"] for f in segments["features"][:3]]
    assert valued == ([pytest.approx(j + latest) for j in range(3)] if city == "aarhus" else [])


@pytest.mark.parametrize("city", CITIES)
def test_equity_sets_the_city_s_own_districts_beside_its_median(served: Served, city: str) -> None:
    body = get(served, "/v1/equity", kpi="air.aqi", city=city)
    districts = districts_of(served.two.cities[city])
    assert body["city"] == city
    assert sorted(d["district"] for d in body["districts"]) == sorted(districts)
    mean = sum(i / 10 for i in range(WINDOWS)) / WINDOWS
    got = {d["district"]: d["value"] for d in body["districts"]}
    assert got == pytest.approx({d: value(city, j + mean) for j, d in enumerate(districts)})


@pytest.mark.parametrize("city", CITIES)
def test_alerts_are_the_city_s_own(served: Served, city: str) -> None:
    body = get(served, "/v1/alerts", city=city)
    assert body["city"] == city
    assert [a["alert_id"] for a in body["active"]] == [alert_of(city)["alert_id"]]


@pytest.mark.parametrize("city", CITIES)
def test_status_shows_the_city_s_own_freshness(served: Served, city: str) -> None:
    body = get(served, "/v1/status", city=city)
    newest = window(city, WINDOWS - 1) + timedelta(minutes=15)
    assert body["city"] == city
    assert {d: instant(f["newest_window_end"]) for d, f in body["freshness"].items()} == {
        "air": newest,
        "traffic": newest,
    }


@pytest.mark.parametrize("city", CITIES)
def test_ngsi_ld_entities_are_the_city_s_own(served: Served, city: str) -> None:
    entities = get(served, "/ngsi-ld/v1/entities", **NGSI_TYPE, city=city, limit=1000)
    ids = {e["id"] for e in entities}
    assert urn(city, "traffic.vehicle_count", "city", city) in ids
    assert all(i.startswith(f"urn:ngsi-ld:KeyPerformanceIndicator:{city}:") for i in ids)
    # one entity and its windows: the id names the city
    series = urn(city, "traffic.vehicle_count", "city", city)
    entity = get(served, f"/ngsi-ld/v1/entities/{series}")
    assert entity["kpiValue"]["value"] == value(city, WINDOWS - 1)
    temporal = get(served, f"/ngsi-ld/v1/temporal/entities/{series}")
    assert [i["value"] for i in temporal["kpiValue"]] == [value(city, i) for i in range(WINDOWS)]


@pytest.mark.parametrize("city", CITIES)
def test_the_dcat_catalogue_is_the_city_s(served: Served, city: str) -> None:
    text = served.client.get("/catalog", params={"city": city, "format": "turtle"}).text
    name, other = ("Aarhus", "Boston") if city == "aarhus" else ("Boston", "Aarhus")
    assert f"City of {name}" in text and f"City of {other}" not in text


def test_things_are_the_city_s_own(served: Served) -> None:
    thing = f"traffic:{segments_of(served.two.cities['aarhus'])[0]}"
    assert get(served, f"/v1/things/{thing}", city="aarhus")["id"].startswith("urn:")
    answer = served.client.get(f"/v1/things/{thing}", params={"city": "boston"})
    assert answer.status_code == 404 and answer.json()["parameter"] == "thing"


def test_the_audit_log_is_one_for_every_city(served: Served) -> None:
    checkpoint_now(served.two.settings)
    bodies = [get(served, "/v1/audit/checkpoint", city=city) for city in CITIES]
    assert bodies[0] == bodies[1] and bodies[0]["checkpoint"]["tree_size"] > 0
    # every access was recorded with the city it read
    records = [r.record for r in read_log(served.two.settings) if r.record]
    series = [r for r in records if r["endpoint"] == "/v1/kpis/{kpi}/series"]
    assert {"aarhus", "boston"} <= {orjson.loads(r["parameters"])["city"] for r in series}


# --- unknown and absent cities ---------------------------------------------------------------

EVERY_ROUTE = [
    "/v1/kpis",
    SERIES,
    "/v1/map/districts",
    "/v1/equity?kpi=air.aqi",
    "/v1/alerts",
    "/v1/status",
    "/v1/stream",
    "/v1/things/traffic:1",
    "/v1/audit/checkpoint",
    "/v1/audit/proof?leaf=0",
    "/catalog",
    "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator",
]


@pytest.mark.parametrize("path", EVERY_ROUTE)
def test_an_unknown_city_is_a_404_naming_the_parameter(served: Served, path: str) -> None:
    joiner = "&" if "?" in path else "?"
    answer = served.client.get(f"{path}{joiner}city=gotham")
    assert answer.status_code == 404, answer.text
    kind = "application/json" if path.startswith("/ngsi-ld") else "application/problem+json"
    assert answer.headers["content-type"].startswith(kind)  # NGSI-LD: its ProblemDetails
    body = answer.json()
    assert body["status"] == 404 and body["parameter"] == "city" and "gotham" in body["detail"]


@pytest.mark.parametrize(
    "path",
    [SERIES, "/v1/map/districts?kpi=air.aqi", "/v1/equity?kpi=air.aqi", "/v1/alerts",
     "/v1/status", "/ngsi-ld/v1/entities?type=KeyPerformanceIndicator&limit=1000"],
)  # fmt: skip
def test_no_city_is_the_first_configured(served: Served, path: str) -> None:
    joiner = "&" if "?" in path else "?"
    first = served.client.get(path)
    assert first.status_code == 200, first.text
    assert first.json() == served.client.get(f"{path}{joiner}city=aarhus").json()
    assert first.json() != served.client.get(f"{path}{joiner}city=boston").json()


def test_serve_refuses_two_cities_in_one_namespace() -> None:
    # an explicit prefix is kept for every city (city_namespace): both would read one topic
    shared = Settings(topic_prefix="shared.")
    cities = [city_namespace(shared, PACKS[city]) for city in CITIES]
    with pytest.raises(ValueError, match=r"two cities share the topic prefix 'shared\.'"):
        build_app(shared, cities, audited=False)  # citystream serve: exit 2 with this


# --- the live stream -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(served: Served) -> Iterator[str]:
    """The module's app under a real uvicorn (SSE needs one); lifespan off: the TestClient
    started the live feed."""
    with serving(served.app, "two-cities-api", lifespan=False) as url:
        yield url


def read_kpi_events(url: str, city: str | None, want: int, found: list[dict[str, Any]]) -> None:
    """Collect ``want`` KPI events of ``city`` (every city's when None) into ``found``."""
    params = {"types": "kpi", **({"city": city} if city else {})}
    with httpx.stream("GET", url, params=params, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                found.append(orjson.loads(line[len("data: ") :]))
                if len(found) >= want:
                    return


def test_the_stream_sends_each_city_its_own_windows_and_all_without_a_city(
    served: Served, server: str
) -> None:
    # Published one at a time (Boston, Aarhus, Boston), each once the city-less client has
    # it: a city's client that were sent the other city's window would receive it among
    # the ones it waits for (Aarhus's first, Boston's second).
    order = ["boston", "aarhus", "boston"]
    wants = {"aarhus": 1, "boston": 2, None: len(order)}
    found: dict[str | None, list[dict[str, Any]]] = {city: [] for city in wants}
    readers = []
    for city, want in wants.items():
        args = (f"{server}/v1/stream", city, want, found[city])
        reader = threading.Thread(target=read_kpi_events, args=args, daemon=True)
        reader.start()
        readers.append(reader)
    live = served.context.live
    wait_until(lambda: live is not None and live.subscribers >= len(wants), "SSE clients")
    producer = Producer(served.two.settings.kafka_config())
    registry = SchemaRegistry(served.two.settings.registry_config())
    for n, city in enumerate(order, start=1):
        topic = served.two.cities[city].topic("city.kpi.v1")
        start = window(city, WINDOWS + n)
        record = {"kpi": "traffic.vehicle_count", "scope": "city", "entity_id": city,
                  "window_start": start, "window_end": start + timedelta(minutes=15),
                  "value": value(city, 90 + n), "samples": 10, "revision": 0,
                  "computed_at": start}  # fmt: skip
        producer.produce(topic, registry.serde(topic, "city.kpi.v1").encode(record))
        assert producer.flush(30) == 0
        wait_until(lambda n=n: len(found[None]) >= n, f"event {n} on the city-less stream")
    for reader in readers:
        reader.join(timeout=60)
    sent = [(city, city, value(city, 90 + n)) for n, city in enumerate(order, start=1)]
    got = {c: [(e["city"], e["entity_id"], e["value"]) for e in found[c]] for c in wants}
    assert got == {"aarhus": [sent[1]], "boston": [sent[0], sent[2]], None: sent}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- citystream demo --serve -------------------------------------------------------------------


def test_demo_serve_serves_both_cities_of_the_run_audited(served: Served) -> None:
    demo = served.demo
    app = dashboard_app(demo)  # what `citystream demo --serve` serves
    context: ApiContext = app.state.context
    client = TestClient(app)  # no lifespan: the live feed is not started
    try:
        assert [c["id"] for c in client.get("/static/config.json").json()["cities"]] == [
            "aarhus",
            "boston",
        ]
        assert context.cities["aarhus"].topic_prefix == demo.topic_prefix
        assert context.cities["boston"].topic_prefix == f"{demo.topic_prefix}boston."
        assert context.live is not None and len(context.live.kpi_topics) == 2
        for city in CITIES:
            body = client.get(SERIES, params={"city": city}).json()
            assert [p["value"] for p in body["points"]] == [value(city, i) for i in range(WINDOWS)]
        records = [r.record for r in read_log(demo) if r.record]
        cities = [orjson.loads(r["parameters"]).get("city") for r in records]
        assert cities == ["aarhus", "boston"]  # audited to the run's own log
    finally:
        context.audit.close()  # type: ignore[union-attr]
