"""The alerts processor on the real stack: KPI batches and service requests in, alerts out.

The scenario is produced as a backlog before the processor starts, spread unevenly over
the KPI topic's partitions, so the processor has to put one entity's windows back in
order. Then the processor is SIGKILLed and restarted: it re-reads its unacked input and
must raise nothing again, while new input still raises and clears.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from citystream.pipeline import Pipeline, http_get
from core.kafka import Publisher, end_offsets
from core.settings import Settings
from families.registry import TOPICS, ensure_topics, register_schemas
from schemas.catalog import load_schema
from schemas.registry import SchemaRegistry
from tests.conftest import free_port

pytestmark = pytest.mark.integration
T0 = 1406959200000  # 2014-08-02T06:00:00Z
M15, H1, MIN = 15 * 60_000, 60 * 60_000, 60_000
KPI_FIELDS = [f["name"] for f in load_schema("kpi_batch.avsc")["fields"]]


def kpi(name: str, scope: str, entity: str, i: int, value: float, *, size: int = M15,
        samples: int = 3, revision: int = 0) -> dict[str, Any]:  # fmt: skip
    start = T0 + i * size
    return {
        "kpi": name, "scope": scope, "entity_id": entity, "window_start": start,
        "window_end": start + size, "value": value, "samples": samples, "revision": revision,
        "computed_at": start + size,
    }  # fmt: skip


def congestion(i: int, value: float, entity: str = "158895", **kw: int) -> dict[str, Any]:
    return kpi("traffic.congestion_index", "segment", entity, i, value, **kw)  # type: ignore[arg-type]


def request(rid: str, status: str, minute: int, opened: int) -> dict[str, Any]:
    return {
        "event_id": f"{rid}:{status}:{minute}", "request_id": rid, "status": status,
        "category": "pothole", "district": "8000", "event_time": T0 + minute * MIN,
        "opened_at": T0 + opened * MIN, "source": "test",
    }  # fmt: skip


class Producer:
    """The project's serde and idempotent Publisher, on the test's topics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = SchemaRegistry(settings.registry_config())
        self.publisher = Publisher.create(settings)

    def send(self, name: str, key: bytes | None, record: dict[str, Any], partition: int) -> None:
        serde = self.registry.serde(self.settings.topic(name), TOPICS[name])
        self.publisher.send(self.settings.topic(name), key, serde.encode(record), partition)

    def kpis(self, partition: int, *rows: dict[str, Any]) -> None:
        batch = {field: [row[field] for row in rows] for field in KPI_FIELDS}
        self.send("city.kpi.batches.v1", None, batch, partition)

    def requests(self, *events: dict[str, Any]) -> None:
        # one partition, so the events share a stream time as in the unit tests
        for event in events:
            self.send("city.service_requests.v1", event["request_id"].encode(), event, 0)

    def raw(self, name: str, payload: bytes, partition: int) -> None:
        self.publisher.send(self.settings.topic(name), None, payload, partition)


def read_topic(settings: Settings, name: str) -> list[tuple[str, dict[str, Any]]]:
    """Everything on the topic, with confluent-kafka's own Avro deserializer."""
    topic = settings.topic(name)
    deserializer = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    ends = end_offsets(settings, topic)
    consumer = Consumer(settings.kafka_config(**{"group.id": f"{topic}-reader"}))
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[tuple[int, int, str, dict[str, Any]]] = []
    deadline = time.monotonic() + 30
    while len(out) < sum(ends.values()) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.2):
            assert msg.error() is None
            value = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
            out.append((msg.partition(), msg.offset(), (msg.key() or b"").decode(), value))
    consumer.close()
    return [(key, value) for _, _, key, value in sorted(out, key=lambda x: x[:2])]


def transitions(alerts: list[tuple[str, dict[str, Any]]]) -> dict[str, list[str]]:
    """The raise/clear sequence per key (Kafka orders a key's messages, not the topic)."""
    out: dict[str, list[str]] = {}
    for key, alert in alerts:
        assert key == f"{alert['type']}|{alert['entity_id']}"
        out.setdefault(key, []).append(alert["state"])
    return out


def wait_for_alerts(pipeline: Pipeline, count: int, quiet_s: float) -> list[tuple[str, Any]]:
    """Until ``count`` alerts are out and nothing more came for ``quiet_s``."""
    s = pipeline.settings
    deadline = time.monotonic() + 120
    while sum(end_offsets(s, s.topic("city.alerts.v1")).values()) < count:
        pipeline.check_alive()
        assert time.monotonic() < deadline, f"alerts: {read_topic(s, 'city.alerts.v1')}"
        time.sleep(0.3)
    time.sleep(quiet_s)
    return read_topic(s, "city.alerts.v1")


def test_alerts_raise_and_clear_once_and_a_restart_raises_nothing_again(
    settings: Settings,
) -> None:
    s = settings.model_copy(
        update={"alerts_web_port": free_port(), "alert_aqi_threshold": 80.0,
                "alerts_processor_id": "alerts"}
    )  # fmt: skip
    ensure_topics(s)
    register_schemas(s)
    p = Producer(s)
    p.send("city.road_segments.v1", b"158895", {
        "segment_id": "158895", "name": "", "district": "8000", "free_flow_speed_kmh": 60.0,
        "length_m": None, "road_type": "", "start_lat": 56.1, "start_lon": 10.1,
        "end_lat": 56.2, "end_lon": 10.2}, 0)  # fmt: skip
    p.send("city.service_categories.v1", b"pothole",
           {"category": "pothole", "name": "Pothole", "sla_minutes": 120}, 0)  # fmt: skip
    # A backlog, unevenly spread: partition 0 holds windows 0 and 2..3, partition 1 window 1.
    p.kpis(
        0,
        congestion(0, 0.6),
        congestion(0, 0.6, entity="200000"),
        kpi("air.aqi", "district", "8000", 0, 90.0),
        kpi("parking.occupancy_pct", "car_park", "BRUUNS", 0, 96.0),
        kpi("devices.uptime_pct", "sensor", "traffic:158895", 0, 100.0, size=H1),
        kpi("traffic.vehicle_count", "segment", "158895", 0, 40.0),
    )
    p.kpis(0, congestion(2, 0.8), congestion(3, 0.3), congestion(2, 0.7, entity="200000"))
    p.kpis(1, congestion(1, 0.7), kpi("air.aqi", "district", "8000", 1, 70.0))
    p.kpis(
        2,
        congestion(1, 0.75, samples=4, revision=1),  # a revision: no second raise
        kpi("parking.occupancy_pct", "car_park", "BRUUNS", 1, 97.0),
        kpi("devices.uptime_pct", "sensor", "traffic:158895", 1, 0.0, size=H1, samples=0),
        congestion(3, float("nan"), entity="300000"),  # invalid row: dead-lettered
    )
    p.raw("city.kpi.batches.v1", b"not avro at all", 3)
    p.requests(
        request("r1", "opened", 0, 0),
        request("r4", "opened", 60, 60),
        request("r2", "opened", 100, 100),
        request("r2", "assigned", 130, 100),  # stream time 130 > r1's deadline 120
        request("r1", "closed", 150, 0),
        request("r2", "closed", 160, 100),  # within its SLA (deadline 220)
        request("r4", "assigned", 190, 60),  # past r4's deadline 180
        request("r5", "reopened", 191, 191),  # not a status: dead-lettered
    )
    p.publisher.flush()

    pipeline = Pipeline(s)
    try:
        pipeline.start("alerts")
        quiet = 2 * s.idle_timeout_s + 3
        first = wait_for_alerts(pipeline, 9, quiet)
        assert transitions(first) == {
            "congestion|158895": ["raised", "cleared"],
            "air_quality|8000": ["raised", "cleared"],
            "parking_full|BRUUNS": ["raised"],
            "sensor_silent|traffic:158895": ["raised"],
            "service_sla|r1": ["raised", "cleared"],
            "service_sla|r4": ["raised"],
        }
        by_state = {(k, a["state"]): a for k, a in first}
        raised = by_state[("congestion|158895", "raised")]
        assert raised["alert_id"] == f"congestion|158895|{T0}"
        assert by_state[("congestion|158895", "cleared")]["alert_id"] == raised["alert_id"]
        assert raised["district"] == "8000"
        assert raised["since"].timestamp() * 1000 == T0
        assert raised["at"].timestamp() * 1000 == T0 + 2 * M15
        assert raised["kpi_values"] == {
            "traffic.congestion_index@2014-08-02T06:00:00Z": 0.6,
            "traffic.congestion_index@2014-08-02T06:15:00Z": 0.7,
        }
        silent = by_state[("sensor_silent|traffic:158895", "raised")]
        assert silent["since"].timestamp() * 1000 == T0 + H1 and silent["district"] == "8000"
        sla = by_state[("service_sla|r1", "raised")]
        assert sla["since"].timestamp() * 1000 == T0 + 120 * MIN
        assert sla["at"].timestamp() * 1000 == T0 + 130 * MIN
        assert "past its 120-minute SLA" in sla["message"]
        reasons = sorted(d["reason"] for _, d in read_topic(s, "city.dlq.v1"))
        assert reasons == ["invalid_event", "invalid_row", "undecodable"]
        stats = pipeline.alerts_stats()
        assert stats["kpi_batches"] == 4 and stats["undecodable"] == 1
        metrics = http_get(f"http://127.0.0.1:{s.alerts_metrics_port}/metrics").splitlines()
        out = [m for m in metrics if m.startswith("citystream_events_out_total{")]
        assert any(s.topic("city.alerts.v1") in m and m.endswith(" 9.0") for m in out), out
        dead = [m for m in metrics if m.startswith("citystream_dead_letters_total{")]
        assert any('reason="undecodable"' in m for m in dead), dead
        assert stats["active"] == 3 and stats["restored"] == 0

        # A crash, then more input: the restart re-reads its unacked input (every KPI
        # batch: all are within two hours of the watermark), raises nothing again, and
        # goes on judging.
        pipeline.kill("alerts")
        p.kpis(4, congestion(4, 0.9), kpi("parking.occupancy_pct", "car_park", "BRUUNS", 2, 50.0))
        p.kpis(5, congestion(5, 0.9))
        p.requests(request("r4", "closed", 200, 60))
        p.publisher.flush()
        pipeline.start("alerts")
        second = wait_for_alerts(pipeline, 12, quiet)
        assert len(second) == 12 and all(alert in second for alert in first)
        later = [alert for alert in second if alert not in first]
        assert transitions(later) == {
            "congestion|158895": ["raised"],
            "parking_full|BRUUNS": ["cleared"],
            "service_sla|r4": ["cleared"],
        }
        again = {(k, a["state"]): a for k, a in later}
        assert again[("congestion|158895", "raised")]["alert_id"] == (
            f"congestion|158895|{T0 + 4 * M15}"
        )
        stats = pipeline.alerts_stats()
        assert stats["restored"] == 6
        assert stats["kpi_batches"] >= 6  # the held batches were read again
        assert stats["active"] == 2  # sensor_silent|traffic:158895 and the new congestion
    finally:
        pipeline.stop()


def recount_congestion(kpis: list[dict[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """The congestion rule written plainly over each segment's windows in time order."""
    series: dict[str, dict[int, float]] = {}
    for record in kpis:
        if record["kpi"] == "traffic.congestion_index" and record["scope"] == "segment":
            start = int(record["window_start"].timestamp() * 1000)
            series.setdefault(record["entity_id"], {})[start] = record["value"]
    out: dict[str, list[tuple[str, str]]] = {}
    for segment, values in series.items():
        raised_since: int | None = None
        for start in sorted(values):
            congested = values[start] > 0.5
            if raised_since is None and congested and values.get(start - M15, 0.0) > 0.5:
                raised_since = start - M15
                out.setdefault(f"congestion|{segment}", []).append(
                    ("raised", f"congestion|{segment}|{raised_since}")
                )
            elif raised_since is not None and not congested:
                out[f"congestion|{segment}"].append(
                    ("cleared", f"congestion|{segment}|{raised_since}")
                )
                raised_since = None
    return out


def test_congestion_alerts_on_a_real_traffic_replay_match_a_plain_recount(
    settings: Settings,
) -> None:
    """Three hours of real Aarhus traffic through the traffic processor, alerts running
    alongside: its KPIs reach the alerts processor unkeyed over six partitions."""
    from connectors.sources.aarhus import AarhusReplaySource
    from tests.oracle import METADATA, REPO

    s = settings.model_copy(
        update={"alerts_web_port": free_port(), "alerts_processor_id": "alerts"}
    )
    ensure_topics(s)
    register_schemas(s)
    pipeline = Pipeline(s)
    try:
        pipeline.start("processor", "alerts")
        source = AarhusReplaySource(
            s, REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz", METADATA
        )
        source.setup()
        report = source.run()
        pipeline.wait_processed(report.published, timeout=300)
        batches = s.topic("city.kpi.batches.v1")
        deadline, last, quiet_since = time.monotonic() + 300, -1, time.monotonic()
        while True:  # the traffic processor's idle flush is out and the alerts saw it all
            pipeline.check_alive()
            end = sum(end_offsets(s, batches).values())
            last, quiet_since = (end, time.monotonic()) if end != last else (last, quiet_since)
            stats = pipeline.alerts_stats()
            caught_up = stats["kpi_batches"] == end and stats["kpi_windows_held"] == 0
            if caught_up and time.monotonic() - quiet_since > 2 * s.idle_timeout_s + 2:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.5)

        kpis = [
            record
            for _, record in read_topic(s, "city.kpi.v1")
            if record["kpi"] == "traffic.congestion_index"
        ]
        assert {r["revision"] for r in kpis} == {0}  # the plain recount assumes no revisions
        expected = recount_congestion(kpis)
        actual: dict[str, list[tuple[str, str]]] = {}
        for key, alert in read_topic(s, "city.alerts.v1"):
            if alert["type"] == "congestion":
                actual.setdefault(key, []).append((alert["state"], alert["alert_id"]))
        assert len(expected) >= 3, "the fixture has congested segments (11 when written)"
        assert actual == expected
    finally:
        pipeline.stop()
