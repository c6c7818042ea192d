"""What the sink tests share: a sink running in a thread, waits on its counters, its
group's committed offsets, and the dead letters it wrote."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from connectors.sinks.base import DLQ_TOPIC, BatchingSink
from core.settings import Settings
from schemas.registry import SchemaRegistry


def wait_for(condition: Callable[[], bool], what: str, errors: list[BaseException]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if errors:
            raise AssertionError(f"sink crashed while waiting for {what}") from errors[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextmanager
def running(sink: BatchingSink, *, may_fail: bool = False) -> Iterator[list[BaseException]]:
    """The sink's loop in a thread; its exception, if any, lands in the yielded list (and
    fails the test unless ``may_fail``)."""
    stop, errors = threading.Event(), []

    def target() -> None:
        try:
            sink.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="sink-under-test")
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(timeout=60)
        sink.close()
    assert not thread.is_alive(), "sink did not stop"
    assert may_fail or not errors, f"sink failed: {errors[0]!r}"


def committed_and_end(settings: Settings, topic: str, group: str) -> tuple[list[int], list[int]]:
    """Per partition of ``topic``: ``group``'s committed offset and the end offset."""
    consumer = Consumer(settings.kafka_config(**{"group.id": group}))
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        committed = [tp.offset for tp in consumer.committed(parts, timeout=10)]
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    finally:
        consumer.close()
    return committed, ends


def dead_letters(settings: Settings, count: int = 1) -> list[dict[str, Any]]:
    """The first ``count`` dead letters (fewer if they do not come within 20 s)."""
    topic = settings.topic(DLQ_TOPIC)
    serde = SchemaRegistry(settings.registry_config()).serde(topic, DLQ_TOPIC)
    consumer = Consumer(
        settings.kafka_config(
            **{"group.id": settings.group("dlq-reader"), "auto.offset.reset": "earliest"}
        )
    )
    consumer.subscribe([topic])
    letters: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 20
        while len(letters) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=100, timeout=1.0):
                assert msg.error() is None, msg.error()
                letters.append(serde.decode(msg.value()))
    finally:
        consumer.close()
    return letters
