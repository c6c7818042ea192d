"""The real KPIs of the shipped Aarhus day, built once and served by a running sink.

:func:`build_aarhus_day` replays ``data/aarhus`` (2014-08-02: traffic, air, parking) through
the real processors (traffic, air, parking, devices), the alerts processor and the
ClickHouse sink, as ``citystream demo`` does, and leaves the chDB directory and the topics
behind. :func:`serve_copy` then gives a test module its own copy: the directory copied, a
topic prefix of its own (the day's alerts copied onto it), and a sink running on it, so
what a module publishes (new KPI windows, alerts) reaches only its own tables.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from citystream.demo import replay_day
from citystream.pipeline import Pipeline
from citystream.replay import AarhusFiles, wait_processed
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.conftest import PORT_SETTINGS, free_ports

PROCESSORS = ("traffic", "air", "parking", "devices")  # every family the Aarhus files feed
ALERTS_TOPIC = "city.alerts.v1"


def isolated(base: Settings, data_dir: Path) -> Settings:
    """``base`` with its own topic prefix, data directory (chDB) and ports."""
    return base.model_copy(
        update={
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
            "data_dir": data_dir,
            "clickhouse_url": None,
            "processor_id": None,
            "idle_timeout_s": 2.0,
            "sink_batch_seconds": 0.5,
            **dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True)),
        }
    )


def build_aarhus_day(settings: Settings) -> None:
    """The shipped day through processors, alerts and sink; returns when all is stored."""
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings, processors=PROCESSORS)
    try:
        pipeline.start("processor", "alerts", "sink")
        reports = replay_day(settings, AarhusFiles.shipped())
        published = {name: report.published for name, report in reports.items()}
        published["devices"] = published["traffic"] + published["air"]
        wait_processed(pipeline, published)
        wait_alerts_settled(settings)
    finally:
        pipeline.stop()


def wait_alerts_settled(settings: Settings, quiet_s: float = 3.0, timeout: float = 60.0) -> None:
    """Until the alerts topic has not grown for ``quiet_s`` (the processor has caught up)."""
    topic = settings.topic(ALERTS_TOPIC)
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        end = sum(end_offsets(settings, topic).values())
        if end != last:
            last, since = end, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.3)
    raise AssertionError(f"{topic} still growing after {timeout}s")


def copy_topic(source: Settings, target: Settings, name: str) -> int:
    """Every record of ``name`` under ``source``'s prefix, re-published under ``target``'s
    (same bytes: schema ids are the registry's, valid for both); how many."""
    topic = source.topic(name)
    ends = end_offsets(source, topic)
    consumer = Consumer(source.kafka_config(**{"group.id": f"copy-{uuid.uuid4().hex}"}))
    producer = Producer(target.kafka_config())
    copied = 0
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        remaining = {p: end for p, end in ends.items() if end > 0}
        while remaining:
            for msg in consumer.consume(num_messages=500, timeout=2.0):
                assert msg.error() is None, msg.error()
                producer.produce(target.topic(name), msg.value(), msg.key(), msg.partition())
                copied += 1
                if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                    remaining.pop(msg.partition(), None)
        assert producer.flush(30) == 0, "alerts copy not delivered"
    finally:
        consumer.close()
    return copied


@dataclass
class ServedCopy:
    """A module's own copy of the day: its settings (prefix, chDB, ports) and its sink."""

    settings: Settings
    pipeline: Pipeline


@contextmanager
def serve_copy(built: Settings, data_dir: Path) -> Iterator[ServedCopy]:
    """A copy of ``built``'s tables and alerts, served by a sink of its own."""
    settings = isolated(built, data_dir)
    shutil.copytree(built.data_dir / "clickhouse", data_dir / "clickhouse", symlinks=True)
    ensure_topics(settings)
    register_schemas(settings)
    copy_topic(built, settings, ALERTS_TOPIC)
    pipeline = Pipeline(settings, processors=PROCESSORS)
    try:
        pipeline.start("sink")
        yield ServedCopy(settings, pipeline)
    finally:
        pipeline.stop()
