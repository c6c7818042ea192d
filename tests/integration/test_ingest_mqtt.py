"""MQTT ingest end to end: a real Mosquitto (Debian's package, started through `infra`), a
real MQTT client (paho-mqtt) publishing SensorThings observations and plain JSON events,
`citystream ingest mqtt` as a user runs it, Kafka, processor and ClickHouse.

The broker is private to this module (own port and directory), so concurrent test runs
never share sessions; it is restarted once to check that the source reconnects.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citystream.pipeline import Pipeline
from core.settings import Settings
from infra import _proc, mosquitto_service
from infra.config import StackConfig
from tests.conftest import free_port
from tests.integration.test_ingest_http import (
    assert_kpis,
    expected_kpis,
    iso_ms,
    log_tail,
    prepare_namespace,
    read_topic,
    start_command,
    stop_command,
)

pytestmark = pytest.mark.integration
OBJECT_DS, COUNT_DS, SPEED_DS = "1", "2", "3"  # see the config below
EVENTS_TOPIC = "citystream/events/city-app"


class Broker:
    """A Mosquitto of our own, through the same code `citystream stack up` uses."""

    def __init__(self, data_dir: Path) -> None:
        if mosquitto_service.binary() is None:
            pytest.fail(
                f"mosquitto is not installed ({mosquitto_service.INSTALL_HINT}); "
                "`make test` installs it",
                pytrace=False,
            )
        self.port = free_port()
        self.cfg = StackConfig(data_dir=data_dir, mosquitto_port=self.port)
        self.svc = mosquitto_service.service(self.cfg, self.port)
        self.pid: int | None = None

    def start(self) -> None:
        cmd = self.svc.prepare(print)
        self.pid = _proc.spawn(cmd, self.svc.workdir, self.svc.stdout_log)
        deadline = time.monotonic() + 20
        while not self.svc.is_ready():
            assert _proc.is_alive(self.pid), self.svc.log_tail()
            assert time.monotonic() < deadline, self.svc.log_tail()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.pid is not None:
            _proc.stop(self.pid, 10)
            self.pid = None


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    b.start()
    try:
        yield b
    finally:
        b.stop()


class Client:
    """paho-mqtt as a SensorThings client publishes, and a watcher of retained status."""

    def __init__(self, port: int, name: str) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.latest: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.latest[msg.topic] = msg.payload

    def publish(self, topic: str, body: object) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published()

    def watch(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS

    def status(self, topic: str) -> dict[str, Any]:
        with self.lock:
            raw = self.latest.get(topic)
        result: dict[str, Any] = json.loads(raw) if raw else {}
        return result

    def wait_status(self, topic: str, timeout: float = 60, **wanted: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(topic)
            if all(status.get(k) == v for k, v in wanted.items()):
                return status
            assert time.monotonic() < deadline, f"status {status}, wanted {wanted}"
            time.sleep(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def write_config(path: Path, port: int, client_id: str) -> None:
    path.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client_id}"
reconnect_min_s = 1
reconnect_max_s = 2
join_timeout_s = 2
status_interval_s = 0.3
subscriptions = [
  {{ filter = "v1.1/+/Observations", format = "sensorthings" }},
  {{ filter = "citystream/events/#", format = "events" }},
]

[[datastreams]]
id = "{OBJECT_DS}"
domain = "traffic"
sensor = "158895"
result = {{ vehicleCount = "vehicle_count", avgSpeed = "avg_speed_kmh" }}

[[datastreams]]
id = "{COUNT_DS}"
domain = "traffic"
sensor = "187509"
field = "vehicle_count"

[[datastreams]]
id = "{SPEED_DS}"
domain = "traffic"
sensor = "187509"
field = "avg_speed_kmh"
unit = "m/s"
""",
        encoding="utf-8",
    )


def topic(ds: str) -> str:
    return f"v1.1/Datastreams({ds})/Observations"


def at(minute: int) -> str:
    return f"2016-12-07T11:{minute:02}:00Z"


def test_mqtt_ingest_to_clickhouse_matches_independent_computation(
    settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    prepare_namespace(settings)
    client_id = f"citystream-test-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "ingest.toml"
    write_config(config, broker.port, client_id)
    status_topic = f"citystream/ingest/{client_id}/status"
    rng = random.Random(11)
    sent: list[tuple[str, int, int, float]] = []

    sensor = Client(broker.port, f"sensor-{client_id}")
    sensor.watch(status_topic)
    process = start_command(settings, "ingest-mqtt", "ingest", "mqtt", "--config", str(config))
    try:
        sensor.wait_status(status_topic, state="online")

        # objects: one Datastream carries the whole reading; the first is sent twice
        for minute in (1, 5, 10):
            count, speed = rng.randint(1, 30), round(rng.uniform(20, 80), 1)
            body = {
                "phenomenonTime": at(minute),
                "resultTime": at(minute),
                "result": {"vehicleCount": count, "avgSpeed": speed},
            }
            sensor.publish(topic(OBJECT_DS), body)
            sent.append(("158895", iso_ms(at(minute)), count, speed))
            if minute == 1:
                sensor.publish(topic(OBJECT_DS), body)  # a QoS 1 retry: dropped by the source
        # scalars: a count and a speed (m/s) Datastream joined per phenomenonTime
        for minute, first in ((5, COUNT_DS), (20, SPEED_DS)):
            count, speed_ms = rng.randint(1, 30), rng.choice([8.5, 12.5, 15.0])
            parts = {
                COUNT_DS: {"phenomenonTime": at(minute), "result": count},
                SPEED_DS: {"phenomenonTime": at(minute), "result": speed_ms},
            }
            second = SPEED_DS if first == COUNT_DS else COUNT_DS
            sensor.publish(topic(first), parts[first])
            sensor.publish(topic(second), parts[second])
            sent.append(("187509", iso_ms(at(minute)), count, speed_ms * 3.6))
        # plain JSON events
        events = [
            {
                "domain": "traffic",
                "segment_id": "190744",
                "event_time": at(minute),
                "vehicle_count": rng.randint(0, 30),
                "avg_speed_kmh": round(rng.uniform(20, 80), 1),
            }
            for minute in (5, 16)
        ]
        sensor.publish(EVENTS_TOPIC, events)
        sent += [
            (e["segment_id"], iso_ms(e["event_time"]), e["vehicle_count"], e["avg_speed_kmh"])
            for e in events
        ]
        # bad input
        good = {"phenomenonTime": at(12), "result": {"vehicleCount": 3, "avgSpeed": 40.0}}
        bad: list[tuple[str, object, str]] = [
            (topic(OBJECT_DS), b"{not json", "invalid_json"),
            (topic("99"), good, "unknown_datastream"),
            (
                topic(OBJECT_DS),
                b'{"phenomenonTime": "2016-12-07T11:13:00Z", '
                b'"result": {"vehicleCount": 3, "avgSpeed": NaN}}',
                "invalid_event",
            ),
            (
                topic(OBJECT_DS),
                {**good, "phenomenonTime": "2099-01-01T00:00:00Z"},
                "future_timestamp",
            ),
            (topic(COUNT_DS), {**good, "result": 4, "parameters": {"unit": "degC"}}, "wrong_unit"),
            (topic(COUNT_DS), {"phenomenonTime": at(14), "result": 9}, "incomplete_observation"),
            (EVENTS_TOPIC, [{**events[0], "vehicle_count": -1}], "invalid_event"),
        ]
        for where, body, _reason in bad:
            sensor.publish(where, body)
        expected_rejects = sorted(reason for _w, _b, reason in bad)
        status = sensor.wait_status(status_topic, accepted=len(sent), rejected=len(bad), timeout=60)
        assert status["duplicates"] == 1

        # stopped cleanly; what is published meanwhile waits in the persistent session
        assert stop_command(process) == 0, log_tail(settings, "ingest-mqtt")
        sensor.wait_status(status_topic, state="offline")
        for minute in (20, 25):
            count, speed = rng.randint(1, 30), round(rng.uniform(20, 80), 1)
            body = {
                "phenomenonTime": at(minute),
                "result": {"vehicleCount": count, "avgSpeed": speed},
            }
            sensor.publish(topic(OBJECT_DS), body)
            sent.append(("158895", iso_ms(at(minute)), count, speed))
        process = start_command(settings, "ingest-mqtt", "ingest", "mqtt", "--config", str(config))
        sensor.wait_status(status_topic, state="online", accepted=2)

        # the broker restarts: the source reconnects with backoff and subscribes again
        sensor.close()
        broker.stop()
        broker.start()
        sensor = Client(broker.port, f"sensor-{client_id}")
        sensor.watch(status_topic)
        sensor.wait_status(status_topic, state="online")
        body = {"phenomenonTime": at(28), "result": {"vehicleCount": 5, "avgSpeed": 30.0}}
        sensor.publish(topic(OBJECT_DS), body)
        sent.append(("158895", iso_ms(at(28)), 5, 30.0))
        sensor.wait_status(status_topic, accepted=3)
    finally:
        sensor.close()
        if process.poll() is None:
            assert stop_command(process) == 0, log_tail(settings, "ingest-mqtt")

    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start()
        stats = pipeline.wait_caught_up(len(sent), timeout=300)
        assert stats["duplicates"] == 0 and stats["late"] == 0
        assert_kpis(settings, expected_kpis(sent))
    finally:
        pipeline.stop()

    records = read_topic(settings, "city.traffic.v1")
    assert sorted((r["segment_id"], int(r["event_time"].timestamp() * 1000)) for r in records) == (
        sorted((s, ms) for s, ms, _c, _v in sent)
    )
    assert {r["source"] for r in records} == {"mqtt-ingest"}
    letters = read_topic(settings, "city.dlq.v1")
    assert sorted(d["reason"] for d in letters) == expected_rejects
    assert {d["component"] for d in letters} == {"mqtt-ingest"}
    not_json = next(d for d in letters if d["reason"] == "invalid_json")
    assert not_json["payload"].startswith(b"<9 bytes not kept: not JSON")  # #16: no raw body
    assert not_json["origin"] == f"mqtt:{topic(OBJECT_DS)}"
