"""Retention comes from the data contracts: `citystream init` (ensure_topics) sets each topic's
``retention.ms`` from its schema's contract and aligns existing topics, idempotently; a topic
past its retention has its segments deleted by the broker; `citystream migrate` sets the
ClickHouse TTLs from the KPI contract (a setting may shorten them) and expired rows are gone.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from connectors.sinks.clickhouse.backend import connect
from connectors.sinks.clickhouse.schema import Retention, migrate
from connectors.sinks.clickhouse.sink import ClickHouseSink
from core.kafka import align_retention, create_topics
from core.settings import Settings
from families.registry import TOPICS, ensure_topics
from infra import _proc, kafka_service
from schemas.catalog import AVRO_DIR, TopicSpec, load_schema
from schemas.contracts import parse_contract
from tests.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000


def topic_configs(settings: Settings, names: list[str]) -> dict[str, dict[str, str]]:
    admin = AdminClient(settings.kafka_config())
    resources = [ConfigResource(ResourceType.TOPIC, settings.topic(n)) for n in names]
    found = admin.describe_configs(resources, request_timeout=30)
    return {
        resource.name.removeprefix(settings.topic_prefix): {
            key: str(entry.value) for key, entry in future.result().items()
        }
        for resource, future in found.items()
    }


def config_value(settings: Settings, name: str, key: str, expected: str) -> str:
    """The topic's ``key`` once it reads ``expected``, or what it reads after a while: the
    broker applies created and altered configs asynchronously."""
    deadline = time.monotonic() + 30
    while True:
        try:
            value = topic_configs(settings, [name])[name][key]
        except KafkaException:  # the new topic is not known to every part of the broker yet
            value = "(unknown topic)"
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_init_sets_every_topic_s_retention_from_its_contract(settings: Settings) -> None:
    ensure_topics(settings)
    config_value(settings, "city.audit.v1", "retention.ms", "-1")
    configs = topic_configs(
        settings,
        ["city.service_requests.v1", "city.traffic.batches.v1", "city.dlq.v1", "city.kpi.v1",
         "city.audit.v1"],
    )  # fmt: skip
    assert configs["city.service_requests.v1"]["retention.ms"] == str(35 * DAY_MS)
    assert configs["city.service_requests.v1"]["segment.ms"] == str(DAY_MS)
    assert configs["city.traffic.batches.v1"]["retention.ms"] == str(7 * DAY_MS)
    assert configs["city.dlq.v1"]["retention.ms"] == str(30 * DAY_MS)
    # the KPI contract keeps values forever (in ClickHouse); the topic is a week's buffer
    assert configs["city.kpi.v1"]["retention.ms"] == str(7 * DAY_MS)
    assert configs["city.audit.v1"]["retention.ms"] == "-1"


def test_init_aligns_an_existing_topic_and_then_changes_nothing(settings: Settings) -> None:
    ensure_topics(settings)
    topic = settings.topic("city.service_requests.v1")
    admin = AdminClient(settings.kafka_config())
    drifted = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[
            ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in admin.incremental_alter_configs([drifted]).values():
        future.result()
    assert config_value(settings, "city.service_requests.v1", "retention.ms", "-1") == "-1"

    assert align_retention(settings, TOPICS.values()) == {topic: {"retention.ms": str(35 * DAY_MS)}}
    wanted = str(35 * DAY_MS)
    assert config_value(settings, "city.service_requests.v1", "retention.ms", wanted) == wanted
    assert align_retention(settings, TOPICS.values()) == {}  # idempotent
    ensure_topics(settings)  # what `citystream init` runs: still as the contract says
    assert config_value(settings, "city.service_requests.v1", "retention.ms", wanted) == wanted


def short_lived_schema(tmp_path: Path, retention: str) -> Path:
    """The traffic reading schema with a contract of ``retention``, in a temporary file."""
    schema = copy.deepcopy(load_schema("traffic_reading.avsc"))
    schema["citystream.retention"] = retention
    schema["name"] = "ShortLivedReading"
    path = tmp_path / "short_lived.avsc"
    path.write_text(json.dumps(schema))
    return path


def start_with_fast_retention_checks(broker: PrivateKafka) -> None:
    """Start the private broker checking retention every second (the default is 5 minutes,
    a broker-wide setting that a topic cannot override)."""
    cmd = broker.svc.prepare(print)
    props = kafka_service.state_dir(broker.cfg) / "server.properties"
    props.write_text(props.read_text() + "\nlog.retention.check.interval.ms=1000\n")
    broker.pid = _proc.spawn(cmd, broker.svc.workdir, broker.svc.stdout_log)
    deadline = time.monotonic() + 180
    while not broker.svc.is_ready():
        assert _proc.is_alive(broker.pid), broker.svc.log_tail()
        assert time.monotonic() < deadline, broker.svc.log_tail()
        time.sleep(0.5)


def watermarks(settings: Settings, topic: str) -> tuple[int, int]:
    consumer = Consumer(settings.kafka_config(**{"group.id": f"{topic}-wm"}))
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
        return int(low), int(high)
    finally:
        consumer.close()


def test_a_topic_past_its_retention_has_its_segments_deleted(
    settings: Settings, tmp_path: Path
) -> None:
    broker = PrivateKafka(tmp_path / "private-kafka")
    try:
        start_with_fast_retention_checks(broker)
        private = settings.model_copy(
            update={"kafka_bootstrap_servers": broker.cfg.bootstrap_servers, "partitions": 1}
        )
        spec = TopicSpec(
            "city.short_lived.v1", str(short_lived_schema(tmp_path, "PT3S")), key="id", doc="t"
        )
        topic = private.topic(spec.name)
        assert create_topics(private, [spec]) == [topic]
        assert config_value(private, spec.name, "retention.ms", "3000") == "3000"
        assert config_value(private, spec.name, "segment.ms", "3000") == "3000"

        producer = Producer(private.producer_config())
        for i in range(50):
            producer.produce(topic, f"reading {i}".encode(), partition=0)
        assert producer.flush(30) == 0
        assert watermarks(private, topic) == (0, 50)

        deadline = time.monotonic() + 120  # a bound on waiting, not a timing assertion
        while watermarks(private, topic)[0] < 50:
            assert time.monotonic() < deadline, "the broker did not delete expired segments"
            time.sleep(1)

        partition_dir = kafka_service.log_dir(broker.cfg) / f"{topic}-0"
        logs = list(partition_dir.glob("*.log"))
        assert logs and all(p.stat().st_size == 0 for p in logs), logs  # only a new, empty one
        consumer = Consumer(
            private.kafka_config(**{"group.id": f"{topic}-read", "auto.offset.reset": "earliest"})
        )
        try:
            consumer.assign([TopicPartition(topic, 0, 0)])
            message = consumer.poll(3)
            assert message is None or message.error() is not None
        finally:
            consumer.close()
    finally:
        broker.stop()


def kpi_row(start: datetime, value: float) -> dict[str, object]:
    return {
        "kpi": "traffic.vehicle_count", "scope": "city", "entity_id": "city",
        "window_start": start, "window_end": start + timedelta(minutes=15), "value": value,
        "samples": 9, "revision": 0, "computed_at": start + timedelta(minutes=15),
    }  # fmt: skip


def test_clickhouse_ttls_follow_the_contract_and_expired_rows_are_gone(tmp_path: Path) -> None:
    local = Settings().model_copy(update={"data_dir": tmp_path / "data", "clickhouse_url": None})
    schema = copy.deepcopy(load_schema("kpi_record.avsc"))
    schema["citystream.retention"] = "P30D"
    contract = parse_contract("kpi_record.avsc", schema)

    assert Retention.from_settings(local, contract) == Retention(30, 30)  # the default
    shorter = local.model_copy(update={"clickhouse_kpi_ttl_days": 7})
    assert Retention.from_settings(shorter, contract) == Retention(7, 30)  # may shorten
    longer = local.model_copy(update={"clickhouse_rollup_ttl_days": 400})
    assert Retention.from_settings(longer, contract) == Retention(30, 30)  # never lengthen
    assert Retention.from_settings(local) == Retention(0, 0)  # shipped KPI contract: forever
    assert (AVRO_DIR / "kpi_record.avsc").is_file()

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    with ClickHouseSink(local) as sink:
        sink.setup()
        sink.write([kpi_row(now - timedelta(days=40), 1.0), kpi_row(now - timedelta(hours=2), 2.0)])
        client = connect(local)
        try:
            migrate(client, local.clickhouse_database, Retention.from_settings(local, contract))
            client.command("OPTIMIZE TABLE kpi FINAL")  # apply the TTL now, not at some merge
            client.command("OPTIMIZE TABLE kpi_window_state FINAL")
        finally:
            client.close()
        assert sink.query("SELECT value FROM kpi").rows == [[2.0]]
        state = sink.query("SELECT count() FROM kpi_window_state").rows
        assert state == [[1]]
