"""HTTP ingest end to end: real requests (httpx) against `citystream ingest http`, real
Kafka, processor and ClickHouse; NGSI-LD notifications built from the Smart Data Models'
published examples.

Expected KPIs are computed here from what the test sent, sharing nothing with the
processor. The helpers are shared with test_ingest_mqtt.py.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import SecretStr

from citystream.pipeline import Pipeline, launch
from citystream.query import run_query
from connectors.publishing import EventPublisher
from connectors.sources.aarhus import read_segments
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.aarhus_traffic import aggregate, read_metadata
from tests.conftest import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "data/aarhus/traffic_metadata.csv"
EXAMPLE_CONFIG = REPO / "infra/examples/ingest.toml"
NGSI = REPO / "tests/fixtures/ngsi-ld"
API_KEY = "integration-key"
SEGMENTS = ["158895", "187509", "190744", "195041", "195552", "197274"]

Key = tuple[str, str, str, int]


# --- shared helpers (also used by test_ingest_mqtt.py) -----------------------------------


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def prepare_namespace(settings: Settings) -> None:
    """Topics, schemas and the road-segment reference data, as a replay would publish it."""
    ensure_topics(settings)
    register_schemas(settings)
    events = EventPublisher(settings, "test-reference")
    events.setup()
    segments, _rejected = read_segments(METADATA)
    for segment in segments:
        events.road_segment(segment)
    events.flush()


def expected_kpis(readings: list[tuple[str, int, int, float]]) -> dict[Key, tuple[float, int]]:
    """`citystream verify`'s recount of the KPI contract over (segment, ms, count, speed)."""
    return aggregate(readings, read_metadata(METADATA), partitions=6)


def assert_kpis(settings: Settings, expected: dict[Key, tuple[float, int]]) -> None:
    _, rows = run_query(
        settings,
        "SELECT kpi, scope, entity_id, toUnixTimestamp64Milli(window_start), value, samples "
        "FROM kpi FINAL WHERE startsWith(kpi, 'traffic.')",
    )
    actual = {(r[0], r[1], r[2], int(r[3])): (float(r[4]), int(r[5])) for r in rows}
    assert actual.keys() == expected.keys()
    for key, (value, samples) in expected.items():
        assert actual[key][0] == pytest.approx(value, rel=1e-9, abs=1e-9), key
        assert actual[key][1] == samples, key


def read_topic(settings: Settings, name: str) -> list[dict[str, Any]]:
    """Every record of a topic, with confluent-kafka's own Avro deserializer."""
    topic = settings.topic(name)
    deserializer = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    consumer = Consumer(settings.kafka_config(**{"group.id": "ingest-test-reader"}))
    ends = end_offsets(settings, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(out) < sum(ends.values()) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=2):
            assert msg.error() is None
            ctx = SerializationContext(topic, MessageField.VALUE)
            out.append(deserializer(msg.value(), ctx))
    consumer.close()
    assert len(out) == sum(ends.values())
    return out


def start_command(settings: Settings, name: str, *args: str) -> subprocess.Popen[bytes]:
    return launch(settings, settings.data_dir / "logs" / f"{name}.log", *args)


def stop_command(process: subprocess.Popen[bytes]) -> int:
    process.terminate()
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise


def log_tail(settings: Settings, name: str) -> str:
    path = settings.data_dir / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


# --- the HTTP service ----------------------------------------------------------------------


@pytest.fixture
def ingest(settings: Settings) -> Iterator[tuple[Settings, httpx.Client]]:
    """`citystream ingest http` as a user runs it, on a free port, with one API key."""
    s = settings.model_copy(
        update={
            "ingest_http_port": free_port(),
            "ingest_config": EXAMPLE_CONFIG,
            "ingest_api_keys": SecretStr(json.dumps({"tester": API_KEY})),
        }
    )
    prepare_namespace(s)
    process = start_command(s, "ingest-http", "ingest", "http")
    base = f"http://127.0.0.1:{s.ingest_http_port}"
    client = httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log_tail(s, "ingest-http")
        try:
            if client.get("/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log_tail(s, "ingest-http")
        time.sleep(0.2)
    try:
        yield s, client
    finally:
        client.close()
        assert stop_command(process) == 0, log_tail(s, "ingest-http")


def canonical_events(rng: random.Random) -> list[dict[str, Any]]:
    """Readings for real segments in two 15-minute windows of 2016-12-07."""
    events = []
    for minute in (1, 5, 10, 16, 20, 25):
        for segment in SEGMENTS:
            events.append(
                {
                    "domain": "traffic",
                    "segment_id": segment,
                    "event_time": f"2016-12-07T11:{minute:02}:00Z",
                    "vehicle_count": rng.randint(0, 30),
                    "avg_speed_kmh": round(rng.uniform(10, 90), 2),
                }
            )
    return events


def as_reading(e: dict[str, Any]) -> tuple[str, int, int, float]:
    return (e["segment_id"], iso_ms(e["event_time"]), e["vehicle_count"], e["avg_speed_kmh"])


def entity(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((NGSI / name).read_text())
    return result


def notification(*entities: dict[str, Any]) -> dict[str, Any]:
    """An NGSI-LD Notification as Orion-LD sends it for a subscription."""
    return {
        "id": "urn:ngsi-ld:Notification:6397d3d2-test",
        "type": "Notification",
        "subscriptionId": "urn:ngsi-ld:Subscription:citystream-traffic",
        "notifiedAt": "2016-12-07T11:30:00.000Z",
        "data": list(entities),
    }


def test_http_ingest_to_clickhouse_matches_independent_computation(
    ingest: tuple[Settings, httpx.Client],
) -> None:
    settings, client = ingest
    rng = random.Random(4)
    events = canonical_events(rng)
    half = len(events) // 2
    sent: list[tuple[str, int, int, float]] = []

    # a JSON array, then the same array again (a client retry), then NDJSON
    first = client.post("/v1/events", json=events[:half])
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == half
    retry = client.post("/v1/events", json=events[:half])
    assert [i["event_id"] for i in retry.json()["items"]] == [
        i["event_id"] for i in first.json()["items"]
    ]
    ndjson = "\n".join(json.dumps(e) for e in events[half:]) + "\n"
    third = client.post(
        "/v1/events", content=ndjson, headers={"Content-Type": "application/x-ndjson"}
    )
    assert third.status_code == 202 and third.json()["accepted"] == len(events) - half
    sent += [as_reading(e) for e in events[:half] * 2 + events[half:]]

    # NGSI-LD: the published examples, normalized and key-values, mapped to Aarhus
    normalized = entity("TrafficFlowObserved-normalized.jsonld")  # -> 190744 @ 11:15
    keyvalues = entity("TrafficFlowObserved-keyvalues.jsonld")
    keyvalues.update(
        id="urn:ngsi-ld:TrafficFlowObserved:aarhus:158895",
        dateObservedTo={"@type": "DateTime", "@value": "2016-12-07T11:27:00Z"},
        intensity=42,
        averageVehicleSpeed=33.3,
    )
    by_ref = entity("TrafficFlowObserved-normalized.jsonld")
    by_ref.update(
        id="urn:ngsi-ld:TrafficFlowObserved:unmapped-sensor-7",
        refRoadSegment={"type": "Relationship", "object": "urn:ngsi-ld:RoadSegment:aarhus:999999"},
        averageVehicleSpeed={"type": "Property", "value": 12.5, "unitCode": "MTS"},
    )
    answer = client.post(
        "/ngsi-ld/v1/notify",
        content=json.dumps(notification(normalized, keyvalues, by_ref)),
        headers={"Content-Type": "application/ld+json"},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 3
    sent += [
        ("190744", iso_ms("2016-12-07T11:15:00+00:00"), 197, 52.6),
        ("158895", iso_ms("2016-12-07T11:27:00+00:00"), 42, 33.3),
        ("999999", iso_ms("2016-12-07T11:15:00+00:00"), 197, 45.0),  # unknown segment
    ]

    # bad input: per item, and whole bodies
    good = events[0]
    bad_items = [
        {**good, "vehicle_count": "12"},
        {**good, "avg_speed_kmh": float("nan")},
        {**good, "event_time": "2099-01-01T00:00:00Z"},
        {**good, "domain": "noise"},
    ]
    bad = client.post(
        "/v1/events",
        content=json.dumps(bad_items),  # NaN written as JSON's NaN literal
        headers={"Content-Type": "application/json"},
    )
    assert [i["reason"] for i in bad.json()["items"]] == [
        "invalid_event",
        "invalid_event",
        "future_timestamp",
        "unknown_domain",
    ]
    assert client.post("/v1/events", content=b"[{oops").status_code == 400
    unknown = client.post(
        "/ngsi-ld/v1/notify",
        json=notification(  # entity types the mapping file does not name
            {**entity("AirQualityObserved-keyvalues.jsonld"), "type": "WaterQualityObserved"},
            {**entity("ParkingSpot-normalized.jsonld"), "type": "ParkingGroup"},
        ),
    )
    assert [i["reason"] for i in unknown.json()["items"]] == ["unknown_entity"] * 2
    assert client.post("/v1/events", json=[good], headers={"X-API-Key": "nope"}).status_code == 401

    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start()
        stats = pipeline.wait_caught_up(len(sent), timeout=300)
        assert stats["duplicates"] == half and stats["late"] == 0
        assert stats["unknown_reference"] == 1
        assert_kpis(settings, expected_kpis(sent))
    finally:
        pipeline.stop()

    # the canonical Avro records, read with confluent-kafka's deserializer
    records = read_topic(settings, "city.traffic.v1")
    assert sorted((r["segment_id"], r["event_time"].timestamp() * 1000) for r in records) == sorted(
        (s, float(ms)) for s, ms, _c, _v in sent
    )
    assert {r["source"] for r in records} == {"http-ingest"}
    by_key = {(r["segment_id"], int(r["event_time"].timestamp() * 1000)): r for r in records}
    assert by_key[("999999", iso_ms("2016-12-07T11:15:00+00:00"))]["avg_speed_kmh"] == 45.0

    letters = read_topic(settings, "city.dlq.v1")
    assert {d["component"] for d in letters} == {"http-ingest"}
    reasons = sorted(d["reason"] for d in letters)
    assert reasons == sorted(
        ["invalid_event", "invalid_event", "future_timestamp", "unknown_domain"]
        + ["invalid_json"]
        + ["unknown_entity"] * 2
    )
    nan = next(d for d in letters if b"NaN" in d["payload"])
    assert nan["reason"] == "invalid_event" and nan["origin"].startswith("http:tester:")
    whole = next(d for d in letters if d["reason"] == "invalid_json")
    assert whole["payload"].startswith(b"<6 bytes not kept: not JSON")  # #16: no raw body

    counts = client.get("/stats").json()
    assert counts["events"]["accepted"] == len(events) + half
    assert counts["events"]["rejected"] == 5
    assert counts["ngsi-ld"] == {
        "accepted": 3,
        "duplicates": 0,
        "opted_out": 0,
        "rejected": 2,
        "rejected_by_reason": {"unknown_entity": 2},
    }
    openapi = client.get("/openapi.json").json()
    assert "/ngsi-ld/v1/notify" in openapi["paths"]

    # telemetry: the ingest's /metrics counts what it published and dead-lettered
    from collections import Counter

    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{settings.ingest_metrics_port}/metrics").text
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    published = {
        s.labels["topic"]: s.value for s in samples if s.name == "citystream_events_out_total"
    }
    assert published[settings.topic("city.traffic.v1")] == len(sent)
    dead = Counter({
        s.labels["reason"]: int(s.value) for s in samples
        if s.name == "citystream_dead_letters_total" and s.labels["component"] == "http-ingest"
    })  # fmt: skip
    assert dead == Counter(d["reason"] for d in letters)
