"""The HTTP ingest service against a fake Kafka: validation, access control, backpressure,
NGSI-LD mapping and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from connectors.publishing import Rejected
from connectors.sources.http_ingest import (
    ApiKeys,
    IngestService,
    ngsi_event,
    notification_entities,
    openapi_document,
)
from connectors.sources.ingest_common import Accepted, IngestError, TrafficEvent, load_config
from core.kafka import DeliveryError
from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
NGSI = REPO / "tests/fixtures/ngsi-ld"
CONFIG = load_config(REPO / "infra/examples/ingest.toml")
NOW = 1_700_000_000.0
KEY = {"X-API-Key": "s3cret-key"}


class FakeKafka:
    def __init__(self) -> None:
        self.readings: list[Any] = []  # Reading, or DomainRecord of air and parking
        self.rejected: list[Rejected] = []
        self.queued = 0
        self.flushes = 0
        self.fail = False
        self.delay = 0.0

    def pending(self) -> int:
        return self.queued

    def accept(self, accepted: Accepted) -> None:
        self.readings.append(accepted.reading)

    def reject(self, rejected: Rejected) -> None:
        self.rejected.append(rejected)

    def send_batches(self) -> None:
        pass

    def flush(self, timeout: float) -> None:
        time.sleep(self.delay)
        if self.fail:
            raise DeliveryError("1 deliveries failed")
        self.flushes += 1

    def poll(self) -> None:
        pass


def make_service(kafka: FakeKafka, **overrides: Any) -> IngestService:
    settings = Settings(**overrides)
    keys = ApiKeys({"city-app": "s3cret-key", "orion": "other-key"})
    return IngestService(settings, CONFIG, kafka, keys, clock=lambda: NOW)


Scenario = Callable[[TestClient[Any, Any], FakeKafka], Awaitable[None]]


def run(scenario: Scenario, **overrides: Any) -> FakeKafka:
    kafka = FakeKafka()

    async def main() -> None:
        client = TestClient(TestServer(make_service(kafka, **overrides).app()))
        await client.start_server()
        try:
            await scenario(client, kafka)
        finally:
            await client.close()

    asyncio.run(main())
    return kafka


def event(minute: int = 5, **changes: Any) -> dict[str, Any]:
    return {
        "domain": "traffic",
        "segment_id": "158895",
        "event_time": f"2014-08-02T06:{minute:02}:00Z",
        "vehicle_count": 5,
        "avg_speed_kmh": 55.5,
        **changes,
    }


def entity(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((NGSI / name).read_text())
    return result


def notification(*entities: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:Notification:1",
        "type": "Notification",
        "subscriptionId": "urn:ngsi-ld:Subscription:traffic",
        "notifiedAt": "2016-12-07T11:16:00.000Z",
        "data": list(entities),
    }


# --- POST /v1/events ---------------------------------------------------------------------


def test_array_of_events_answers_per_item_and_publishes_only_valid_ones() -> None:
    bad = [
        event(vehicle_count="5"),
        event(avg_speed_kmh=float("nan")),
        event(event_time="2030-01-01T00:00:00Z"),
        event(event_time="2014-08-02T06:05:00"),
        event(extra=1),
        {"domain": "energy", "segment_id": "x"},
    ]

    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        body = json.dumps([event(), *bad, event(10)])
        resp = await client.post("/v1/events", data=body, headers={**KEY, "X-Request-ID": "r1"})
        assert resp.status == 202
        answer = await resp.json()
        assert (answer["request_id"], answer["accepted"], answer["rejected"]) == ("r1", 2, 6)
        reasons = [i.get("reason") for i in answer["items"]]
        assert reasons == [
            None,
            "invalid_event",
            "invalid_event",
            "future_timestamp",
            "invalid_timestamp",
            "invalid_event",
            "unknown_domain",
            None,
        ]
        assert answer["items"][0]["event_id"] == "traffic:158895:1406959500000"
        assert "finite" in answer["items"][2]["detail"]
        assert kafka.flushes >= 1

    kafka = run(scenario)
    assert [r.event_time_ms for r in kafka.readings] == [1406959500000, 1406959800000]
    assert kafka.readings[0].origin == "http:city-app:r1#0"
    assert [r.reason for r in kafka.rejected][:2] == ["invalid_event", "invalid_event"]
    assert json.loads(kafka.rejected[0].raw)["vehicle_count"] == "5"  # the original item
    assert (
        b"NaN" in bytes(kafka.rejected[1].raw, "utf-8")
        if isinstance(kafka.rejected[1].raw, str)
        else b"NaN" in kafka.rejected[1].raw
    )


def test_ndjson_bad_line_spoils_only_itself_and_retries_keep_their_ids() -> None:
    lines = [json.dumps(event()).encode(), b"{nope", json.dumps(event(10)).encode()]
    body = b"\n".join(lines) + b"\n"

    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        headers = {**KEY, "Content-Type": "application/x-ndjson"}
        first = await (await client.post("/v1/events", data=body, headers=headers)).json()
        again = await (await client.post("/v1/events", data=body, headers=headers)).json()
        assert [i["status"] for i in first["items"]] == ["accepted", "rejected", "accepted"]
        assert first["items"][1]["reason"] == "invalid_json"
        ids = [i.get("event_id") for i in first["items"]]
        assert ids == [i.get("event_id") for i in again["items"]]

    kafka = run(scenario)
    assert kafka.rejected[0].raw == b"{nope"


def test_unparseable_body_is_dead_lettered_whole_with_400() -> None:
    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        resp = await client.post("/v1/events", data=b"[{]", headers=KEY)
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_json"

    kafka = run(scenario)
    assert [(r.reason, r.raw) for r in kafka.rejected] == [("invalid_json", b"[{]")]
    assert kafka.readings == []


def test_report_sums_both_endpoints_as_a_source_report() -> None:
    kafka = FakeKafka()
    service = make_service(kafka)

    async def main() -> None:
        client = TestClient(TestServer(service.app()))
        await client.start_server()
        try:
            body = json.dumps([event(), event(extra=1)])
            assert (await client.post("/v1/events", data=body, headers=KEY)).status == 202
            assert (await client.post("/v1/events", data=b"[{]", headers=KEY)).status == 400
        finally:
            await client.close()

    asyncio.run(main())
    report = service.report()
    assert (report.rows_read, report.published, report.duplicates) == (3, 1, 0)
    assert report.dead_lettered == {"invalid_event": 1, "invalid_json": 1}


# --- access control, limits, backpressure -------------------------------------------------


def test_api_key_is_required_and_bearer_works() -> None:
    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        body = json.dumps([event()])
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Basic czNjcmV0"}):
            resp = await client.post("/v1/events", data=body, headers=headers)
            assert resp.status == 401
            assert "s3cret" not in await resp.text()
        ok = await client.post(
            "/v1/events", data=body, headers={"Authorization": "Bearer other-key"}
        )
        assert ok.status == 202
        assert (await client.get("/health")).status == 200  # open

    kafka = run(scenario)
    assert kafka.readings[0].origin.startswith("http:orion:")


def test_body_over_the_limit_gets_413() -> None:
    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        big = json.dumps([event()] * 200)
        assert len(big) > 4096
        resp = await client.post("/v1/events", data=big, headers=KEY)
        assert resp.status == 413

        async def chunks() -> Any:  # no Content-Length: caught while reading
            for _ in range(10):
                yield b" " * 1000

        resp = await client.post("/v1/events", data=chunks(), headers=KEY)
        assert resp.status == 413

    kafka = run(scenario, ingest_max_body_bytes=4096)
    assert kafka.readings == [] and kafka.rejected == []


def test_rate_limit_per_key_gets_429_with_retry_after() -> None:
    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        body = json.dumps([event()])
        statuses = [
            (await client.post("/v1/events", data=body, headers=KEY)).status for _ in range(3)
        ]
        assert statuses == [202, 202, 429]
        limited = await client.post("/v1/events", data=body, headers=KEY)
        assert int(limited.headers["Retry-After"]) >= 1
        other = await client.post("/v1/events", data=body, headers={"X-API-Key": "other-key"})
        assert other.status == 202  # another client's budget

    run(scenario, ingest_rate_limit_rps=0.1, ingest_rate_burst=2)


def test_slow_kafka_gets_503_with_retry_after_and_not_ready() -> None:
    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        kafka.queued = 11
        resp = await client.post("/v1/events", data=json.dumps([event()]), headers=KEY)
        assert resp.status == 503 and resp.headers["Retry-After"] == "3"
        assert (await client.get("/ready")).status == 503
        kafka.queued = 0
        assert (await client.get("/ready")).status == 200
        kafka.delay = 1.5  # flush slower than the request timeout
        resp = await client.post("/v1/events", data=json.dumps([event()]), headers=KEY)
        assert resp.status == 503 and resp.headers["Retry-After"] == "3"
        kafka.delay, kafka.fail = 0.0, True
        resp = await client.post("/v1/events", data=json.dumps([event(7)]), headers=KEY)
        assert resp.status == 503
        assert (await client.get("/ready")).status == 503
        stats = await (await client.get("/stats")).json()
        assert stats["events"]["accepted"] == 0  # nothing counted that was not durable

    run(
        scenario,
        ingest_max_pending=10,
        ingest_retry_after_s=3,
        ingest_request_timeout_s=1.0,
    )


def test_api_keys_come_from_settings_or_a_file_and_are_never_shown(tmp_path: Path) -> None:
    keys = ApiKeys.from_settings(Settings(ingest_api_keys='{"a": "k1"}'))  # type: ignore[arg-type]
    assert keys.client("k1") == "a" and keys.client("k2") is None and keys.client(None) is None
    path = tmp_path / "keys.json"
    path.write_text('{"b": "k2"}')
    assert ApiKeys.from_settings(Settings(ingest_api_keys_file=path)).client("k2") == "b"
    with pytest.raises(ValueError, match="no API keys"):
        ApiKeys.from_settings(Settings())
    with pytest.raises(ValueError) as err:
        ApiKeys.from_settings(Settings(ingest_api_keys="hunter2"))  # type: ignore[arg-type]
    assert "hunter2" not in str(err.value)
    assert "k1" not in repr(Settings(ingest_api_keys='{"a": "k1"}'))  # type: ignore[arg-type]


# --- NGSI-LD ----------------------------------------------------------------------------------


def test_smart_data_models_examples_map_in_both_forms() -> None:
    for name in ("TrafficFlowObserved-normalized.jsonld", "TrafficFlowObserved-keyvalues.jsonld"):
        got = ngsi_event(CONFIG.ngsi_ld, entity(name))
        assert got == {
            "domain": "traffic",
            "segment_id": "190744",
            "event_time": "2016-12-07T11:15:00+00:00",
            "vehicle_count": 197,
            "avg_speed_kmh": 52.6,
        }, name


def test_ngsi_sensor_from_relationship_pattern_expanded_names_and_units() -> None:
    e = entity("TrafficFlowObserved-normalized.jsonld")
    e["id"] = "urn:ngsi-ld:TrafficFlowObserved:unmapped-1"
    e["type"] = "https://smartdatamodels.org/dataModel.Transportation/TrafficFlowObserved"
    e["refRoadSegment"] = {
        "type": "Relationship",
        "object": "urn:ngsi-ld:RoadSegment:aarhus:158895",
    }
    e["averageVehicleSpeed"] = {"type": "Property", "value": 10.0, "unitCode": "MTS"}
    del e["dateObservedTo"]
    got = ngsi_event(CONFIG.ngsi_ld, e)
    assert got["segment_id"] == "158895"
    assert got["avg_speed_kmh"] == pytest.approx(36.0)
    assert got["event_time"] == "2016-12-07T11:15:00+00:00"  # dateObserved interval's end


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "WeatherObserved"}, "unknown_entity"),
        ({"id": "urn:ngsi-ld:TrafficFlowObserved:nowhere"}, "unknown_entity"),
        (
            {"averageVehicleSpeed": {"type": "Property", "value": 5, "unitCode": "CEL"}},
            "wrong_unit",
        ),
        ({"dateObservedTo": None, "dateObserved": None}, "invalid_timestamp"),
        ({"dateObservedTo": {"type": "Property", "value": "soon"}}, "invalid_timestamp"),
    ],
)
def test_ngsi_entities_that_cannot_map(change: dict[str, Any], reason: str) -> None:
    e = entity("TrafficFlowObserved-normalized.jsonld")
    for key, value in change.items():
        if value is None:
            del e[key]
        else:
            e[key] = value
    with pytest.raises(IngestError) as err:
        ngsi_event(CONFIG.ngsi_ld, e)
    assert err.value.reason == reason


def test_notify_endpoint_answers_per_entity() -> None:
    traffic = entity("TrafficFlowObserved-keyvalues.jsonld")
    bad_count = {**traffic, "intensity": 19.5}
    body = notification(
        entity("TrafficFlowObserved-normalized.jsonld"),
        entity("AirQualityObserved-keyvalues.jsonld"),
        entity("ParkingSpot-normalized.jsonld"),
        bad_count,
    )

    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        headers = {**KEY, "Content-Type": "application/ld+json"}
        resp = await client.post("/ngsi-ld/v1/notify", data=json.dumps(body), headers=headers)
        assert resp.status == 202
        answer = await resp.json()
        assert [i.get("reason") for i in answer["items"]] == [
            None,
            "invalid_event",  # the published example has no O3 and no PM10
            None,  # a free ParkingSpot: a one-space car park, empty
            "invalid_event",
        ]
        bad = await client.post("/ngsi-ld/v1/notify", data=b'{"type": "x"}', headers=headers)
        assert bad.status == 400
        stats = await (await client.get("/stats")).json()
        assert stats["ngsi-ld"]["accepted"] == 2
        assert stats["ngsi-ld"]["rejected_by_reason"] == {"invalid_event": 3}

    kafka = run(scenario)
    assert kafka.readings[0].segment_id == "190744"
    spot = kafka.readings[1].record
    assert (spot["car_park_id"], spot["vehicle_count"], spot["total_spaces"]) == (
        "santander:daoiz_velarde_1_5:3",
        0,
        1,
    )
    payload = kafka.rejected[0].raw
    assert isinstance(payload, bytes) and b"AirQualityObserved" in payload


def test_notification_shapes() -> None:
    assert notification_entities({"data": [1]}) == [1]
    assert notification_entities([2]) == [2]
    with pytest.raises(IngestError):
        notification_entities({"data": "x"})


# --- OpenAPI ---------------------------------------------------------------------------------


def test_openapi_document_is_valid_served_and_matches_the_routes() -> None:
    doc = openapi_document()
    validate(doc)  # type: ignore[arg-type]
    assert doc["components"]["schemas"]["TrafficEvent"] == TrafficEvent.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    app = make_service(FakeKafka()).app()
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    for path, ops in doc["paths"].items():
        for op in ops.values():
            if path.startswith(("/v1", "/ngsi-ld")):
                assert {"202", "400", "401", "413", "429", "503"} <= set(op["responses"])

    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and await resp.json() == json.loads(json.dumps(doc))

    run(scenario)


def test_service_is_an_aiohttp_application() -> None:
    assert isinstance(make_service(FakeKafka()).app(), web.Application)
