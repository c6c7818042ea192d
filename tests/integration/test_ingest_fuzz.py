"""Hostile input on the real stack (issue #19): a seeded barrage against `citystream ingest
http` (both endpoints) and `citystream ingest mqtt`, then valid events.

For each service: no 5xx but 503 with Retry-After (every answer is one the request may
get, see tests/hostile.py), the process stays up and logs no failed request, everything
it put into Kafka decodes with confluent-kafka's Avro deserializer, every accepted event
is valid and is exactly what was answered (or counted) as accepted, the dead letters
match the refusals, and valid events still flow afterwards. The input is seeded and the
run bounded by count: the same requests every time (CITYSTREAM_FUZZ_SEED picks others).

The services and their helpers are those of test_ingest_http.py and test_ingest_mqtt.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from core.kafka import end_offsets
from core.settings import Settings
from families.air.domain import POLLUTANTS
from tests import hostile
from tests.hostile import CHARS, SEGMENTS, Hostile, Request
from tests.integration import test_ingest_http, test_ingest_mqtt
from tests.integration.test_ingest_http import (
    API_KEY,
    iso_ms,
    log_tail,
    notification,
    prepare_namespace,
    read_topic,
    start_command,
    stop_command,
)
from tests.integration.test_ingest_mqtt import OBJECT_DS, Broker, Client, topic, write_config

pytestmark = pytest.mark.integration
SEED = int(os.environ.get("CITYSTREAM_FUZZ_SEED", "20260419"))  # another seed: other input
HTTP_REQUESTS = 2400
MQTT_MESSAGES = 500
CONCURRENCY = 8
MAX_FUTURE_MS = 300_000
DEAD_LETTER_PAYLOAD = 512 * 1024
REFUSALS = {"invalid_json", "too_complex", "invalid_event"}  # 400s that are dead-lettered
REASONS = {
    *REFUSALS,
    "invalid_timestamp",
    "future_timestamp",
    "wrong_unit",
    "unknown_domain",
    "unknown_context",
    "unknown_datastream",
    "unknown_entity",
    "incomplete_observation",
    "too_large",
}
DOMAINS = {  # topic -> (domain, sensor field)
    "city.traffic.v1": ("traffic", "segment_id"),
    "city.air.v1": ("air", "sensor_id"),
    "city.parking.v1": ("parking", "car_park_id"),
}

ingest = test_ingest_http.ingest  # `citystream ingest http` with one API key (a fixture)
broker = test_ingest_mqtt.broker  # a Mosquitto of this module (a fixture)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No rate limit: the barrage is about bodies (429s are tested in test_http_ingest.py).

    The generator expects the default limits (its requests say which answers they get).
    """
    limits = (
        settings.ingest_max_body_bytes,
        settings.ingest_max_depth,
        settings.ingest_max_items,
        settings.ingest_max_string_chars,
    )
    assert limits == (hostile.MAX_BODY, hostile.DEPTH, hostile.ITEMS, CHARS), limits
    return settings.model_copy(update={"ingest_rate_limit_rps": 1e6, "ingest_rate_burst": 10**6})


# --- what Kafka holds ------------------------------------------------------------------------


def read_topics(settings: Settings, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every record of several topics at once, with confluent-kafka's Avro deserializer
    (read_topic of test_ingest_http.py, one consumer for all: no idle wait per topic)."""
    topics = {settings.topic(name): name for name in names}
    ends = {(t, p): n for t in topics for p, n in end_offsets(settings, t).items()}
    deserializer = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    consumer = Consumer(settings.kafka_config(**{"group.id": "ingest-fuzz-reader"}))
    consumer.assign([TopicPartition(t, p, 0) for t, p in ends])
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    deadline = time.monotonic() + 60
    while sum(map(len, out.values())) < sum(ends.values()) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.2):
            assert msg.error() is None
            ctx = SerializationContext(msg.topic(), MessageField.VALUE)
            out[topics[msg.topic()]].append(deserializer(msg.value(), ctx))
    consumer.close()
    assert sum(map(len, out.values())) == sum(ends.values())
    return out


def accepted_records(settings: Settings, component: str) -> Counter[str]:
    """The event ids of every record on the domain topics, each checked to be valid.

    Each record decodes, comes from ``component`` and holds what the canonical models
    allow; its batch topic carries the same events.
    """
    ids: Counter[str] = Counter()
    now_ms = int(time.time() * 1000)
    names = [*DOMAINS, *(name.replace(".v1", ".batches.v1") for name in DOMAINS)]
    topics = read_topics(settings, names)
    for name, (domain, sensor_field) in DOMAINS.items():
        for r in topics[name]:
            assert r["source"] == component, r
            sensor = r[sensor_field]
            assert isinstance(sensor, str) and sensor.strip() == sensor and sensor, r
            assert len(sensor) <= CHARS and sensor.encode()  # UTF-8, no lone surrogates
            event_ms = int(r["event_time"].timestamp() * 1000)
            assert event_ms <= now_ms + MAX_FUTURE_MS, r
            assert_domain_values(domain, r)
            ids[f"{domain}:{sensor}:{event_ms}"] += 1
        batches = topics[name.replace(".v1", ".batches.v1")]
        rows = Counter(
            f"{domain}:{s}:{ms}"
            for b in batches
            for s, ms in zip(b[sensor_field], b["event_time_ms"], strict=True)
        )
        assert rows == Counter({k: v for k, v in ids.items() if k.startswith(f"{domain}:")})
    return ids


def finite(value: Any, low: float, high: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and low <= value <= high


def assert_domain_values(domain: str, r: dict[str, Any]) -> None:
    if domain == "traffic":
        assert isinstance(r["vehicle_count"], int) and 0 <= r["vehicle_count"] <= 10_000_000, r
        assert finite(r["avg_speed_kmh"], 0, 400), r
        assert len(r["status"]) <= 32, r
    elif domain == "air":
        for name in POLLUTANTS:
            assert finite(r[name], 0, 500), r
        assert r["latitude"] is None or finite(r["latitude"], -90, 90), r
        assert r["longitude"] is None or finite(r["longitude"], -180, 180), r
    else:
        assert 0 <= r["vehicle_count"] <= r["total_spaces"], r


def dead_letters(settings: Settings, component: str) -> Counter[str]:
    letters = read_topic(settings, "city.dlq.v1")
    for d in letters:
        assert d["component"] == component and d["reason"] in REASONS, d
        assert len(d["payload"]) <= DEAD_LETTER_PAYLOAD, (d["reason"], d["detail"])
    return Counter(d["reason"] for d in letters)


# --- HTTP --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the service answered, to reconcile with Kafka."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)  # event ids answered accepted
    dead_lettered: Counter[str] = field(default_factory=Counter)  # reasons, per item or body
    wrong: list[str] = field(default_factory=list)

    def check(self, i: int, request: Request, status: int, headers: Any, body: bytes) -> None:
        self.statuses[(request.kind, status)] += 1
        if status not in request.expect and not (status == 503 and "Retry-After" in headers):
            self.wrong.append(f"#{i} {request.kind} {request.path}: {status} {body[:300]!r}")
            return
        if status == 202:
            answer = json.loads(body)
            assert len(answer["items"]) == answer["accepted"] + answer["rejected"]
            for item in answer["items"]:
                if item["status"] == "accepted":
                    self.accepted[item["event_id"]] += 1
                else:
                    self.dead_lettered[item["reason"]] += 1
        elif headers.get("Content-Type", "").startswith("application/json"):
            error = json.loads(body)
            assert set(error) == {"error", "detail"}, error
            if status == 400 and error["error"] in REFUSALS:
                self.dead_lettered[error["error"]] += 1  # the body, whole
        else:  # only aiohttp's own answer to an encoding it cannot decode at all
            assert status == 400 and "Content-Encoding" in request.headers, body


async def chunks(content: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(content), 65_536):
        yield content[start : start + 65_536]


async def barrage(base_url: str, requests: list[Request], tally: Tally) -> None:
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        queue = list(enumerate(requests))

        async def worker() -> None:
            while queue:
                i, request = queue.pop(0)
                content = chunks(request.content) if request.chunked else request.content
                try:
                    resp = await client.post(request.path, content=content, headers=request.headers)
                except httpx.TransportError as exc:
                    # refused while still uploading a megabyte: the connection closes early
                    if request.kind != "too large":
                        tally.wrong.append(f"#{i} {request.kind}: {exc!r}")
                    continue
                tally.check(i, request, resp.status_code, resp.headers, resp.content)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def test_http_ingest_survives_a_hostile_barrage(ingest: tuple[Settings, httpx.Client]) -> None:
    settings, client = ingest
    generator = Hostile(SEED, API_KEY)
    requests = [generator.request() for _ in range(HTTP_REQUESTS)]
    tally = Tally()
    started = time.monotonic()
    asyncio.run(barrage(str(client.base_url), requests, tally))
    took = time.monotonic() - started
    assert not tally.wrong, "\n".join(tally.wrong[:20])
    statuses = Counter(status for (_kind, status), n in tally.statuses.items() for _ in range(n))
    print(f"HTTP fuzz: {HTTP_REQUESTS} requests in {took:.1f} s: {dict(sorted(statuses.items()))}")
    assert {202, 400, 401, 413} <= set(statuses)

    # the process is up, ready, and logged no failed request
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200, client.get("/ready").text
    log = (settings.data_dir / "logs" / "ingest-http.log").read_text(errors="replace")
    assert "Error handling request" not in log and '" 500 ' not in log, log_tail(
        settings, "ingest-http"
    )

    # valid events still flow: canonical events and an NGSI-LD notification
    after = [
        {
            "domain": "traffic",
            "segment_id": segment,
            "event_time": f"2016-12-07T13:{minute:02}:00Z",
            "vehicle_count": minute,
            "avg_speed_kmh": 50.0,
        }
        for minute in (1, 2)
        for segment in SEGMENTS
    ]
    answer = client.post("/v1/events", json=after)
    assert answer.status_code == 202 and answer.json()["accepted"] == len(after), answer.text
    flow = test_ingest_http.entity("TrafficFlowObserved-keyvalues.jsonld")
    flow.update(
        id="urn:ngsi-ld:TrafficFlowObserved:aarhus:158895",
        dateObservedTo="2016-12-07T13:05:00Z",
        intensity=7,
        averageVehicleSpeed=42.0,
    )
    notified = client.post("/ngsi-ld/v1/notify", json=notification(flow))
    assert notified.status_code == 202 and notified.json()["accepted"] == 1, notified.text
    for item in [*answer.json()["items"], *notified.json()["items"]]:
        tally.accepted[item["event_id"]] += 1

    # Kafka holds exactly what was answered: accepted events (valid), and dead letters
    records = accepted_records(settings, "http-ingest")
    assert records == tally.accepted
    assert f"traffic:158895:{iso_ms('2016-12-07T13:05:00+00:00')}" in records
    assert dead_letters(settings, "http-ingest") == tally.dead_lettered
    counts = client.get("/stats").json()
    answered = sum(tally.accepted.values())
    assert counts["events"]["accepted"] + counts["ngsi-ld"]["accepted"] == answered


# --- MQTT --------------------------------------------------------------------------------------

EXTRA_DATASTREAMS = """
[[datastreams]]
id = "air-fuzz"
domain = "air"
sensor = "158895"
components = [
  "ozone", "particulate_matter", "carbon_monoxide", "sulfure_dioxide", "nitrogen_dioxide",
]
[datastreams.units]
ozone = "AQI"
particulate_matter = "GQ"
carbon_monoxide = "GP"
sulfure_dioxide = "GQ"
nitrogen_dioxide = "AQI"

[[datastreams]]
id = "parking-fuzz"
domain = "parking"
sensor = "NORREPORT"
result = { occupied = "vehicle_count", capacity = "total_spaces" }
"""
DATASTREAMS = ["1", "2", "3", "air-fuzz", "parking-fuzz"]
EVENTS_TOPIC = "citystream/events/fuzz"


def settled(sensor: Client, status_topic: str, messages: int) -> dict[str, Any]:
    """The status once every message is handled and the joins have timed out."""
    deadline = time.monotonic() + 90
    last: dict[str, Any] = {}
    stable_since = time.monotonic()
    while True:
        status = sensor.status(status_topic)
        if status != last:
            last, stable_since = status, time.monotonic()
        elif status.get("messages", 0) >= messages and time.monotonic() - stable_since > 3.0:
            return status  # 3 s unchanged: longer than join_timeout_s = 2 of write_config
        assert time.monotonic() < deadline, f"status {status} after {messages} messages"
        time.sleep(0.1)


def test_mqtt_ingest_survives_a_hostile_barrage(
    settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    prepare_namespace(settings)
    client_id = f"citystream-fuzz-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "ingest.toml"
    write_config(config, broker.port, client_id)
    config.write_text(config.read_text() + EXTRA_DATASTREAMS)
    status_topic = f"citystream/ingest/{client_id}/status"
    generator = Hostile(SEED + 1, API_KEY)
    sensor = Client(broker.port, f"fuzzer-{client_id}")
    sensor.watch(status_topic)
    process = start_command(settings, "ingest-mqtt", "ingest", "mqtt", "--config", str(config))
    try:
        sensor.wait_status(status_topic, state="online")
        started = time.monotonic()
        messages = [generator.mqtt(DATASTREAMS, EVENTS_TOPIC) for _ in range(MQTT_MESSAGES)]
        big = b"[" + b" " * hostile.MAX_BODY + b"]"  # over the byte limit: too_large
        messages += [(EVENTS_TOPIC, big), (topic(OBJECT_DS), big)]
        for where, payload in messages:
            sensor.publish(where, payload)
        barrage = settled(sensor, status_topic, len(messages))
        took = time.monotonic() - started
        print(f"MQTT fuzz: {len(messages)} messages in {took:.1f} s: {barrage}")
        assert process.poll() is None, log_tail(settings, "ingest-mqtt")
        assert barrage["accepted"] > 0 and barrage["rejected"] > 0
        assert barrage["rejected_by_reason"].get("too_large") == 2

        # valid observations and events still flow
        valid = [
            (topic(OBJECT_DS), {"phenomenonTime": f"2016-12-07T14:0{m}:00Z", "result": r})
            for m, r in ((1, {"vehicleCount": 3, "avgSpeed": 30.0}), (2, {"vehicleCount": 4}))
        ]
        valid[1][1]["result"]["avgSpeed"] = 31.0
        events = [
            {
                "domain": "traffic",
                "segment_id": "190744",
                "event_time": "2016-12-07T14:03:00Z",
                "vehicle_count": 9,
                "avg_speed_kmh": 45.5,
            }
        ]
        for where, body in [*valid, (EVENTS_TOPIC, events)]:
            sensor.publish(where, json.dumps(body).encode())
        final = settled(sensor, status_topic, len(messages) + 3)
        assert final["accepted"] == barrage["accepted"] + 3, final
        assert final["rejected"] == barrage["rejected"]
        assert process.poll() is None, log_tail(settings, "ingest-mqtt")
    finally:
        sensor.close()
        if process.poll() is None:
            assert stop_command(process) == 0, log_tail(settings, "ingest-mqtt")
    log = (settings.data_dir / "logs" / "ingest-mqtt.log").read_text(errors="replace")
    assert "Traceback" not in log, log_tail(settings, "ingest-mqtt")

    records = accepted_records(settings, "mqtt-ingest")
    assert sum(records.values()) == final["accepted"]
    for minute, segment in ((1, "158895"), (2, "158895"), (3, "190744")):
        ms = int(datetime(2016, 12, 7, 14, minute, tzinfo=UTC).timestamp() * 1000)
        assert records[f"traffic:{segment}:{ms}"] >= 1
    letters = dead_letters(settings, "mqtt-ingest")
    assert letters == Counter(final["rejected_by_reason"])
