"""The read API on the real Aarhus day: series, map, equity, alerts, status, stream, errors.

Every expectation is read from the same tables (or topics) the API serves, with SQL of
the test's own, so the API is compared with the data rather than with copied numbers.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from api.context import Role
from api.queries import Suppression
from api.stream import LiveFeed
from citystream.audit import audit, expected_aarhus
from citystream.replay import AarhusFiles
from citystream.verify import read_topic
from core.settings import Settings
from schemas.registry import SchemaRegistry
from tests.api.conftest import ApiServer, ApiStack

SERIES = "/v1/kpis/traffic.avg_speed_kmh/series"
DAY = {"from": "2014-08-02T00:00:00+02:00", "to": "2014-08-03T00:00:00+02:00"}


def sql(stack: ApiStack, text: str, **parameters: Any) -> list[list[Any]]:
    return stack.context.reader.read(text, parameters, database=stack.context.city().database).rows


def problem(answer: httpx.Response, status: int, parameter: str | None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert body.get("parameter") == parameter, body
    return body


# --- series ---------------------------------------------------------------------------------


def test_a_15_minute_series_is_the_stored_windows(api_stack: ApiStack) -> None:
    body = api_stack.client.get(SERIES, params=DAY).json()
    stored = sql(
        api_stack,
        "SELECT window_start, value FROM kpi_latest WHERE kpi = 'traffic.avg_speed_kmh'"
        " AND scope = 'city' AND entity_id = 'aarhus' AND window_start >= {a:DateTime64(3)}"
        " AND window_start < {b:DateTime64(3)} ORDER BY window_start",
        a="2014-08-01 22:00:00",
        b="2014-08-02 22:00:00",
    )
    assert len(body["points"]) == len(stored) == 96
    assert [p["value"] for p in body["points"]] == [row[1] for row in stored]
    assert body["points"][0]["start"].startswith("2014-08-01T22:00:00")


def test_a_daily_series_counts_the_city_local_day_as_kpi_daily_does(api_stack: ApiStack) -> None:
    params = {"resolution": "1d", "from": "2014-08-01", "to": "2014-08-04"}
    [point] = api_stack.client.get(SERIES, params=params).json()["points"]
    [[avg, windows]] = sql(
        api_stack,
        "SELECT avg_value, windows FROM kpi_daily WHERE kpi = 'traffic.avg_speed_kmh'"
        " AND scope = 'city' AND entity_id = 'aarhus' AND day = '2014-08-02'",
    )
    assert point["start"].startswith("2014-08-01T22:00:00")  # midnight in Copenhagen (CEST)
    assert point["windows"] == windows == 96
    assert point["value"] == pytest.approx(avg, rel=1e-12)


def test_hourly_aggregates_follow_agg(api_stack: ApiStack) -> None:
    quarter = api_stack.client.get(SERIES, params=DAY).json()["points"][:4]
    for agg, expected in (
        ("avg", statistics.fmean(p["value"] for p in quarter)),
        ("max", max(p["value"] for p in quarter)),
        ("min", min(p["value"] for p in quarter)),
        ("sum", sum(p["value"] for p in quarter)),
    ):
        first = api_stack.client.get(SERIES, params={**DAY, "resolution": "1h", "agg": agg})
        assert first.json()["points"][0]["value"] == pytest.approx(expected), agg


def test_pages_follow_the_cursor_to_the_whole_series(api_stack: ApiStack) -> None:
    whole = api_stack.client.get(SERIES, params=DAY).json()["points"]
    pages, params = [], {**DAY, "limit": 40}
    while True:
        answer = api_stack.client.get(SERIES, params=params)
        body = answer.json()
        pages.append(body["points"])
        if body["next_cursor"] is None:
            assert "link" not in answer.headers
            break
        assert 'rel="next"' in answer.headers["link"]
        params = {**params, "cursor": body["next_cursor"]}
    assert [len(p) for p in pages] == [40, 40, 16]
    assert [p for page in pages for p in page] == whole
    other = api_stack.client.get(SERIES, params={**params, "resolution": "1h"})
    problem(other, 400, "cursor")
    problem(api_stack.client.get(SERIES, params={**DAY, "cursor": "garbage"}), 400, "cursor")


def test_csv_carries_the_same_points(api_stack: ApiStack) -> None:
    body = api_stack.client.get(SERIES, params=DAY).json()
    answer = api_stack.client.get(SERIES, params=DAY, headers={"Accept": "text/csv"})
    assert answer.headers["content-type"].startswith("text/csv")
    lines = answer.text.splitlines()
    assert lines[0] == "start,end,value,samples,windows,suppressed"
    assert [float(line.split(",")[2]) for line in lines[1:]] == [p["value"] for p in body["points"]]


def test_etag_and_cache_control_make_a_refresh_free(api_stack: ApiStack) -> None:
    first = api_stack.client.get(SERIES, params=DAY)
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("public, max-age=")
    again = api_stack.client.get(SERIES, params=DAY, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    csv = api_stack.client.get(
        SERIES, params=DAY, headers={"If-None-Match": etag, "Accept": "text/csv"}
    )
    assert csv.status_code == 200 and csv.headers["etag"] != etag
    keyed = api_stack.client.get(SERIES, params=DAY, headers=api_stack.headers(Role.analyst))
    assert keyed.headers["cache-control"].startswith("private")


def test_bad_parameters_are_400_problems_naming_them(api_stack: ApiStack) -> None:
    get = api_stack.client.get
    problem(get(SERIES, params={"resolution": "5m"}), 400, "resolution")
    problem(get(SERIES, params={"agg": "median"}), 400, "agg")
    problem(get(SERIES, params={"from": "yesterday"}), 400, "from")
    problem(get(SERIES, params={"from": "2014-08-03", "to": "2014-08-02"}), 400, "to")
    problem(get(SERIES, params={"from": "2014-01-01", "to": "2014-12-31"}), 400, "to")
    problem(get(SERIES, params={"scope": "car_park"}), 400, "scope")
    problem(get(SERIES, params={"scope": "segment"}), 400, "entity")
    problem(get(SERIES, params={"limit": "0"}), 400, "limit")
    problem(get(SERIES, params={"limit": "100001"}), 400, "limit")
    problem(get("/v1/map/districts", params={"kpi": "traffic.congestion_index"}), 400, "kpi")
    problem(get("/v1/equity", params={"kpi": "parking.occupancy_pct", "to": "x"}), 400, "to")


def test_unknown_kpis_entities_and_cities_are_404(api_stack: ApiStack) -> None:
    get = api_stack.client.get
    problem(get("/v1/kpis/traffic.nothing/series"), 404, "kpi")
    problem(get(SERIES, params={"scope": "district", "entity": "9999"}), 404, "entity")
    problem(get(SERIES, params={"city": "atlantis"}), 404, "city")
    problem(get("/v1/equity", params={"kpi": "nothing"}), 404, "kpi")
    injected = {"scope": "district", "entity": "8000' OR '1'='1", **DAY}
    problem(get(SERIES, params=injected), 404, "entity")  # bound, never pasted into SQL


def test_small_cells_are_suppressed_for_the_public_at_k_minus_1_and_shown_at_k(
    api_stack: ApiStack,
) -> None:
    params = {**DAY, "scope": "district", "entity": "8000", "limit": 1}
    [[samples]] = sql(
        api_stack,
        "SELECT samples FROM kpi_latest WHERE kpi = 'traffic.avg_speed_kmh' AND scope ="
        " 'district' AND entity_id = '8000' AND window_start = '2014-08-01 22:00:00'",
    )
    saved = api_stack.context.suppression
    try:
        for k, hidden in ((samples, False), (samples + 1, True)):  # k and k-1 contributions
            api_stack.context.suppression = Suppression(5, {"traffic.avg_speed_kmh": k})
            [public] = api_stack.client.get(SERIES, params=params).json()["points"]
            analyst_answer = api_stack.client.get(
                SERIES, params=params, headers=api_stack.headers(Role.analyst)
            )
            [full] = analyst_answer.json()["points"]
            assert public["suppressed"] is hidden and (public["value"] is None) is hidden
            assert public["samples"] == full["samples"] == samples  # shown, never dropped
            assert full["suppressed"] is False and full["value"] is not None
    finally:
        api_stack.context.suppression = saved


def test_car_parks_report_one_sample_a_window_so_the_public_sees_them_suppressed(
    api_stack: ApiStack,
) -> None:
    public = api_stack.client.get("/v1/map/car_parks").json()["features"]
    analyst = api_stack.client.get("/v1/map/car_parks", headers=api_stack.headers(Role.auditor))
    assert len(public) == 8
    shown = [f for f in public if f["properties"]["samples"] is not None]
    assert shown and all(f["properties"]["suppressed"] for f in shown)
    assert all(f["properties"]["value"] is None for f in shown)
    full = [f for f in analyst.json()["features"] if f["properties"]["samples"] is not None]
    assert all(f["properties"]["value"] is not None for f in full)


# --- map and equity ---------------------------------------------------------------------------


def test_the_district_map_has_a_feature_per_district_with_the_latest_window(
    api_stack: ApiStack,
) -> None:
    body = api_stack.client.get("/v1/map/districts", headers=api_stack.headers(Role.analyst)).json()
    latest = sql(
        api_stack,
        "SELECT entity_id, value FROM kpi_latest WHERE kpi = 'traffic.avg_speed_kmh' AND scope"
        " = 'district' AND window_start = (SELECT max(window_start) FROM kpi WHERE kpi ="
        " 'traffic.avg_speed_kmh' AND scope = 'district')",
    )
    assert body["type"] == "FeatureCollection" and body["kpi"] == "traffic.avg_speed_kmh"
    by_id = {f["id"]: f for f in body["features"]}
    districts = {
        r[0]
        for r in sql(
            api_stack,
            "SELECT DISTINCT entity_id FROM kpi WHERE scope = 'district'"
            " AND entity_id != 'unknown'",
        )
    }
    assert set(by_id) == districts
    for entity, value in latest:
        if entity in by_id:
            assert by_id[entity]["properties"]["value"] == value
            assert by_id[entity]["geometry"]["type"] == "Point"


def test_segments_are_lines_and_sensors_points(api_stack: ApiStack) -> None:
    segments = api_stack.client.get("/v1/map/segments").json()["features"]
    sensors = api_stack.client.get("/v1/map/sensors").json()
    assert len(segments) == 449 and {f["geometry"]["type"] for f in segments} == {"LineString"}
    assert len(sensors["features"]) == 2 * 449 and sensors["kpi"] == "devices.uptime_pct"
    assert any(f["properties"]["value"] is not None for f in sensors["features"])


def test_equity_sets_each_district_beside_the_city_median(api_stack: ApiStack) -> None:
    body = api_stack.client.get(
        "/v1/equity", params={"kpi": "air.aqi", **DAY}, headers=api_stack.headers(Role.analyst)
    ).json()
    stored = sql(
        api_stack,
        "SELECT entity_id, avg(value) FROM kpi_latest WHERE kpi = 'air.aqi' AND scope ="
        " 'district' AND entity_id != 'unknown' AND window_start >= '2014-08-01 22:00:00'"
        " AND window_start < '2014-08-02 22:00:00' GROUP BY entity_id ORDER BY entity_id",
    )
    assert [d["district"] for d in body["districts"]] == [r[0] for r in stored]
    median = statistics.median(r[1] for r in stored)
    assert body["city_median"] == pytest.approx(median)
    for district, (_, value) in zip(body["districts"], stored, strict=True):
        assert district["value"] == pytest.approx(value)
        assert district["gap"] == pytest.approx(value - median)
    [[city_value]] = sql(
        api_stack,
        "SELECT avg(value) FROM kpi_latest WHERE kpi = 'air.aqi' AND scope = 'city'"
        " AND window_start >= '2014-08-01 22:00:00' AND window_start < '2014-08-02 22:00:00'",
    )
    assert body["city_value"] == pytest.approx(city_value)  # the city's own row, same read


# --- alerts, status, audit, OpenAPI ----------------------------------------------------------


def test_alerts_are_the_topic_s_raised_and_cleared_transitions(api_stack: ApiStack) -> None:
    records = read_topic(api_stack.settings, "city.alerts.v1")
    assert records, "the Aarhus day raises alerts"
    latest: dict[str, str] = {}
    for record in records:
        if latest.get(record["alert_id"]) != "cleared":
            latest[record["alert_id"]] = record["state"]
    body = api_stack.client.get("/v1/alerts", params={"limit": 10_000}).json()
    assert {a["alert_id"] for a in body["active"]} == {
        a for a, state in latest.items() if state == "raised"
    }
    assert len(body["history"]) == len({(r["alert_id"], r["state"]) for r in records})


def test_status_shows_freshness_and_the_latest_verification(api_stack: ApiStack) -> None:
    expected = expected_aarhus(api_stack.settings, AarhusFiles.shipped(), ["parking"])
    failed = audit(api_stack.settings, expected)
    assert failed == []
    body = api_stack.client.get("/v1/status").json()
    assert set(body["freshness"]) == {"traffic", "air", "parking", "devices"}
    [[newest]] = sql(api_stack, "SELECT max(window_end) FROM kpi WHERE startsWith(kpi, 'air.')")
    assert body["freshness"]["air"]["newest_window_end"] == newest
    parking = body["verification"]["parking"]
    assert parking["ok"] is True and parking["matched"] > 1000 and parking["differences"] == 0


def test_every_access_is_audited_and_a_failed_audit_fails_the_request(
    api_stack: ApiStack,
) -> None:
    api_stack.client.get(SERIES, params=DAY, headers=api_stack.headers(Role.operator))
    record = api_stack.audit.records[-1]
    assert record.key_id == "operator-key" and record.role == "operator"
    assert record.endpoint == "/v1/kpis/{kpi}/series" and record.rows == 96
    assert record.sql is not None and "{entity:String}" in record.sql
    api_stack.audit.fail = True
    try:
        problem(api_stack.client.get(SERIES, params=DAY), 503, None)
    finally:
        api_stack.audit.fail = False


def test_the_openapi_document_is_valid_openapi_3_1(api_stack: ApiStack) -> None:
    document = api_stack.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    validate(document)
    paths = set(document["paths"])
    for path in ("/v1/kpis", "/v1/kpis/{kpi}/series", "/v1/map/{layer}", "/v1/equity",
                 "/v1/alerts", "/v1/status", "/v1/stream"):  # fmt: skip
        assert path in paths


# --- server-sent events ------------------------------------------------------------------------


def read_events(
    url: str, headers: dict[str, str], want: int, found: list[tuple[str, dict[str, Any]]]
) -> None:
    """Collect ``want`` SSE events from ``url`` into ``found`` (runs in a thread)."""
    import orjson

    with httpx.stream("GET", url, headers=headers, timeout=60) as response:
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event is not None:
                found.append((event, orjson.loads(line[len("data: ") :])))
                if len(found) >= want:
                    return


def test_the_stream_sends_new_kpi_windows_and_alert_transitions(api_server: ApiServer) -> None:
    import threading

    from confluent_kafka import Producer

    stack = api_server.stack
    settings = stack.settings
    found: list[tuple[str, dict[str, Any]]] = []
    reader = threading.Thread(
        target=read_events, args=(f"{api_server.url}/v1/stream", {}, 2, found), daemon=True
    )
    reader.start()
    deadline = time.monotonic() + 30
    while stack.context.live is None or stack.context.live.subscribers < 1:
        assert time.monotonic() < deadline, "the SSE client did not connect"
        time.sleep(0.05)
    registry = SchemaRegistry(settings.registry_config())
    kpi_topic, alert_topic = settings.topic("city.kpi.v1"), settings.topic("city.alerts.v1")
    window = datetime(2014, 8, 3, 10, 0, tzinfo=UTC)
    kpi = {"kpi": "traffic.vehicle_count", "scope": "district", "entity_id": "8000",
           "window_start": window, "window_end": window.replace(minute=15), "value": 42.0,
           "samples": 3, "revision": 0, "computed_at": window}  # fmt: skip
    alert = {"alert_id": "congestion|1|x", "type": "congestion", "state": "raised",
             "scope": "segment", "entity_id": "1", "district": "8000", "since": window,
             "at": window, "message": "test", "kpi_values": {}, "window_start": window}  # fmt: skip
    producer = Producer(settings.kafka_config())
    producer.produce(kpi_topic, registry.serde(kpi_topic, "city.kpi.v1").encode(kpi))
    alert_serde = registry.serde(alert_topic, "city.alerts.v1")
    producer.produce(alert_topic, alert_serde.encode(alert), b"congestion|1")
    assert producer.flush(30) == 0
    reader.join(timeout=60)
    events = dict(found)
    assert events["kpi"]["entity_id"] == "8000" and events["kpi"]["samples"] == 3
    assert events["kpi"]["value"] is None and events["kpi"]["suppressed"] is True  # public, 3 < 5
    assert events["alert"]["alert_id"] == "congestion|1|x" and events["alert"]["city"] == "aarhus"


def test_a_slow_client_drops_its_own_events_and_blocks_nobody() -> None:
    async def scenario() -> tuple[int, int, int]:
        feed = LiveFeed(Settings(), [], queue_size=5)  # the fan-out only: never started
        slow, fast = feed.subscribe(), feed.subscribe()
        received = 0

        async def drain() -> None:
            nonlocal received
            while received < 50:
                await fast.queue.get()
                received += 1

        consumer = asyncio.create_task(drain())
        for n in range(50):
            await asyncio.to_thread(feed.publish, {"type": "kpi", "data": {"n": n}})
        await asyncio.wait_for(consumer, 10)
        return received, slow.queue.qsize(), slow.dropped

    received, held, dropped = asyncio.run(scenario())
    assert received == 50 and held == 5 and dropped == 45
