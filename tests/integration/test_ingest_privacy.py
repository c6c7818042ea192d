"""Declared identifiers and opt-outs at the live ingest edge (#16), on the real stack: a real
Mosquitto, `citystream ingest mqtt|http` and `citystream rights opt-out` as a user runs
them, Kafka and the registry.

- A mapping declares a device's MAC (used as its sensor id) and a `reporter` personal
  identifiers: every message of every topic under the test's prefix, dead letters
  included, holds their pseudonyms and never the raw values; same value, same pseudonym.
- An opt-out recorded WHILE the ingest runs is applied without a restart: that
  identifier's observations published afterwards are dropped and counted `opted_out`
  (not dead-lettered, even an invalid one), the others still flow.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from core.kafka import end_offsets
from core.privacy.edge import pseudonymiser
from core.settings import Settings
from tests.conftest import free_port
from tests.integration.test_ingest_http import (
    API_KEY,
    EXAMPLE_CONFIG,
    iso_ms,
    log_tail,
    prepare_namespace,
    read_topic,
    start_command,
    stop_command,
)
from tests.integration.test_ingest_mqtt import (  # noqa: F401  (broker: the fixture)
    Broker,
    Client,
    broker,
)

pytestmark = pytest.mark.integration
MAC = "a4:c1:38:0f:22:9e"  # a resident's own traffic counter, its MAC as the sensor id
OTHER = "a4:c1:38:77:10:01"
REPORTER = "jane.roe@example.org"
EVENTS_TOPIC = "citystream/events/resident-app"
OBSERVATIONS = "v1.1/Datastreams(1)/Observations"


def at(minute: int) -> str:
    return f"2016-12-07T11:{minute:02}:00Z"


def event(sensor: str, minute: int, count: int = 7, **extra: Any) -> dict[str, Any]:
    return {"domain": "traffic", "segment_id": sensor, "event_time": at(minute),
            "vehicle_count": count, "avg_speed_kmh": 42.5, **extra}  # fmt: skip


def observation(minute: int) -> dict[str, Any]:
    return {"phenomenonTime": at(minute), "result": {"vehicleCount": 5, "avgSpeed": 31.0}}


def opt_out(settings: Settings, field: str, value: str) -> None:
    """`citystream rights opt-out` as a resident's request is recorded, in its own process."""
    process = start_command(settings, "opt-out", "rights", "opt-out", "--field", field,
                            "--value", value)  # fmt: skip
    assert process.wait(120) == 0, log_tail(settings, "opt-out")


def scan_topics(settings: Settings, *raw: str) -> dict[str, int]:
    """Every message (key and value) of every topic under the prefix; fails on a raw value."""
    admin = AdminClient(settings.kafka_config())
    topics = sorted(
        t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)
    )
    needles = [r.encode() for r in raw]
    read: dict[str, int] = {}
    for topic in topics:
        read[topic] = 0
        for data in messages(settings, topic):
            read[topic] += 1
            assert not [n for n in needles if n in data], (topic, data[:300])
    return read


def messages(settings: Settings, topic: str) -> Iterator[bytes]:
    """Each message of ``topic`` up to its end now, as its key and value bytes."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    consumer = Consumer(settings.kafka_config(**{"group.id": "privacy-scan"}))
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + 60
        while ends:
            assert time.monotonic() < deadline, f"{topic} not read to its end: {ends}"
            for msg in consumer.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                    ends.pop(msg.partition() or 0, None)
                yield (msg.key() or b"") + b"\0" + (msg.value() or b"")
    finally:
        consumer.close()


def by_sensor(settings: Settings) -> dict[str, list[int]]:
    """Published traffic readings: event times (ms) by segment id."""
    out: dict[str, list[int]] = {}
    for r in read_topic(settings, "city.traffic.v1"):
        out.setdefault(r["segment_id"], []).append(int(r["event_time"].timestamp() * 1000))
    return {k: sorted(v) for k, v in out.items()}


def ms(minute: int) -> int:
    return iso_ms(at(minute))


# --- MQTT ------------------------------------------------------------------------------------


def write_mqtt_config(path: Path, port: int, client_id: str) -> None:
    path.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
reconnect_min_s = 1
reconnect_max_s = 2
status_interval_s = 0.3
subscriptions = [
  {{ filter = "v1.1/+/Observations", format = "sensorthings" }},
  {{ filter = "citystream/events/#", format = "events" }},
]

[privacy]
identifiers = ["segment_id", "reporter"]

[[datastreams]]
id = "1"
domain = "traffic"
sensor = "{MAC}"
result = {{ vehicleCount = "vehicle_count", avgSpeed = "avg_speed_kmh" }}
""",
        encoding="utf-8",
    )


def test_mqtt_ingest_pseudonymises_declared_identifiers_and_follows_opt_outs(
    settings: Settings,
    broker: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    prepare_namespace(settings)
    client_id = f"citystream-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "ingest.toml"
    write_mqtt_config(config, broker.port, client_id)
    status_topic = f"citystream/ingest/{client_id}/status"
    sensor = Client(broker.port, f"sensor-{client_id}")
    sensor.watch(status_topic)
    process = start_command(settings, "ingest-mqtt", "ingest", "mqtt", "--config", str(config))
    try:
        sensor.wait_status(status_topic, state="online", optouts=0)
        for minute in (1, 2):  # the device's own observations: the sensor is the MAC
            sensor.publish(OBSERVATIONS, observation(minute))
        sensor.publish(EVENTS_TOPIC, [event(OTHER, 1)])
        # invalid (a negative count): dead-lettered, its MAC and reporter as pseudonyms
        sensor.publish(EVENTS_TOPIC, [event(MAC, 4, count=-1, reporter=REPORTER)])
        sensor.wait_status(status_topic, accepted=3, rejected=1, opted_out=0)

        opt_out(settings, "segment_id", MAC)  # while the ingest runs
        sensor.wait_status(status_topic, optouts=1)  # followed, no restart

        sensor.publish(OBSERVATIONS, observation(3))  # dropped
        sensor.publish(EVENTS_TOPIC, [event(MAC, 5, count=-1)])  # dropped, not dead-lettered
        sensor.publish(EVENTS_TOPIC, [event(OTHER, 3)])  # still flows
        status = sensor.wait_status(status_topic, accepted=4, opted_out=2)
        assert status["rejected"] == 1 and status["state"] == "online"
    finally:
        sensor.close()
        assert stop_command(process) == 0, log_tail(settings, "ingest-mqtt")

    pseudonyms = pseudonymiser(settings)  # the ingest's key: the same data directory
    mac, other = (pseudonyms.pseudonym("segment_id", v) for v in (MAC, OTHER))
    assert by_sensor(settings) == {mac: [ms(1), ms(2)], other: [ms(1), ms(3)]}
    (letter,) = read_topic(settings, "city.dlq.v1")
    assert letter["reason"] == "invalid_event"
    shape = json.loads(letter["payload"])  # the rejected item of the array
    assert shape["segment_id"] == mac
    assert shape["reporter"] == pseudonyms.pseudonym("reporter", REPORTER)
    read = scan_topics(settings, MAC, OTHER, REPORTER, "jane")
    assert read[settings.topic("city.traffic.v1")] == 4
    assert read[settings.topic("city.dlq.v1")] == 1
    assert read[settings.topic("city.privacy.optouts.v1")] == 1


# --- HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def private_ingest(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, httpx.Client]]:
    """`citystream ingest http` with the example mapping and `segment_id` declared."""
    config = tmp_path / "ingest.toml"
    example = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    config.write_text(f'{example}\n[privacy]\nidentifiers = ["segment_id"]\n', encoding="utf-8")
    s = settings.model_copy(
        update={
            "ingest_http_port": free_port(),
            "ingest_config": config,
            "ingest_api_keys": SecretStr(json.dumps({"tester": API_KEY})),
        }
    )
    prepare_namespace(s)
    process = start_command(s, "ingest-http", "ingest", "http")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{s.ingest_http_port}", headers={"X-API-Key": API_KEY},
        timeout=30,
    )  # fmt: skip
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


def wait_stats(client: httpx.Client, **wanted: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        stats: dict[str, Any] = client.get("/stats").json()
        if all(stats.get(k) == v for k, v in wanted.items()):
            return stats
        assert time.monotonic() < deadline, f"stats {stats}, wanted {wanted}"
        time.sleep(0.1)


def test_http_ingest_applies_an_opt_out_recorded_while_it_runs(
    private_ingest: tuple[Settings, httpx.Client],
) -> None:
    settings, client = private_ingest
    pseudonyms = pseudonymiser(settings)
    mac, other = (pseudonyms.pseudonym("segment_id", v) for v in (MAC, OTHER))
    before = client.post("/v1/events", json=[event(MAC, 1), event(OTHER, 1)])
    assert before.status_code == 202, before.text
    assert [i["event_id"] for i in before.json()["items"]] == [
        f"traffic:{mac}:{ms(1)}",
        f"traffic:{other}:{ms(1)}",
    ]
    wait_stats(client, optouts=0)

    opt_out(settings, "segment_id", MAC)  # while the ingest runs
    wait_stats(client, optouts=1)

    after = client.post("/v1/events", json=[event(MAC, 2), event(OTHER, 2)])
    assert after.status_code == 202, after.text
    # answered as it would have been: the sender did nothing wrong and learns nothing
    assert after.json()["accepted"] == 2
    assert [i["event_id"] for i in after.json()["items"]] == [
        f"traffic:{mac}:{ms(2)}",
        f"traffic:{other}:{ms(2)}",
    ]
    counters = client.get("/stats").json()["events"]
    assert (counters["accepted"], counters["opted_out"], counters["rejected"]) == (3, 1, 0)

    assert by_sensor(settings) == {mac: [ms(1)], other: [ms(1), ms(2)]}
    read = scan_topics(settings, MAC, OTHER)
    assert read[settings.topic("city.dlq.v1")] == 0
