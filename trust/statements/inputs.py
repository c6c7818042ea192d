"""The input a statement was computed from: offset ranges of Kafka topics, and a SHA-256
over their raw messages.

A range is (topic, partition, start, end): the messages at offsets start ≤ o < end, as
read with isolation.level=read_committed. Its digest is SHA-256 over, per message in
offset order: the offset (8 bytes, big-endian), then the key and then the value, each as
its length (4 bytes, big-endian; 0xFFFFFFFF for none) followed by its bytes. Kafka never
changes a message in place, so the same range read again gives the same digest unless
retention or compaction removed some of it (then verification says so) or the range is
read from another topic than the one stated.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.settings import Settings

NONE_LENGTH = 0xFFFFFFFF
STALL_S = 30.0  # no progress for this long on a range: it cannot be read


@dataclass(frozen=True)
class Message:
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Range:
    topic: str
    partition: int
    start: int
    end: int

    def label(self) -> str:
        return f"{self.topic}[{self.partition}] offsets {self.start}..{self.end}"


def _consumer(settings: Settings) -> Any:
    from confluent_kafka import Consumer

    conf = {
        "group.id": settings.group("citystream-statements"),
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }
    return Consumer(settings.kafka_config(**conf))


def current_ranges(settings: Settings, topic: str, timeout: float = 10.0) -> list[Range]:
    """Every partition of ``topic`` from its earliest offset to its end now."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(settings)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"topic {topic}: {meta.error}")
        out = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
            out.append(Range(topic, p, int(low), int(high)))
        return out
    finally:
        consumer.close()


def read_range(settings: Settings, r: Range) -> list[Message]:
    """The messages of ``r``; RuntimeError saying which offsets could not be read."""
    return list(_messages(settings, r))


def _messages(settings: Settings, r: Range) -> Iterator[Message]:
    from confluent_kafka import KafkaException, TopicPartition

    if r.end <= r.start:
        return
    consumer = _consumer(settings)
    try:
        try:
            low, _ = consumer.get_watermark_offsets(
                TopicPartition(r.topic, r.partition), timeout=10
            )
        except KafkaException as exc:
            raise RuntimeError(f"{r.label()}: cannot be read ({exc})") from exc
        if low > r.start:
            raise RuntimeError(
                f"{r.label()}: offsets {r.start}..{low} are no longer in the topic "
                "(retention or compaction removed them)"
            )
        consumer.assign([TopicPartition(r.topic, r.partition, r.start)])
        position, stalled = r.start, time.monotonic() + STALL_S
        while position < r.end:
            batch = consumer.consume(min(5000, r.end - position), timeout=1.0)
            if not batch:  # transaction markers take offsets but hold no message
                tp = consumer.position([TopicPartition(r.topic, r.partition)])[0]
                if tp.offset > position:
                    position = tp.offset
                elif time.monotonic() > stalled:
                    raise RuntimeError(f"{r.label()}: no message past offset {position}")
                continue
            stalled = time.monotonic() + STALL_S
            for msg in batch:
                if msg.error() is not None:
                    raise RuntimeError(f"{r.label()}: {msg.error()}")
                offset = int(msg.offset())
                if offset >= r.end:
                    position = r.end
                    break
                position = offset + 1
                yield Message(offset, msg.key(), msg.value())
    finally:
        consumer.close()


def digest(messages: list[Message]) -> str:
    h = hashlib.sha256()
    for m in messages:
        h.update(struct.pack(">Q", m.offset))
        for part in (m.key, m.value):
            if part is None:
                h.update(struct.pack(">I", NONE_LENGTH))
            else:
                h.update(struct.pack(">I", len(part)))
                h.update(part)
    return h.hexdigest()


def combined(digests: list[str]) -> str:
    """SHA-256 over the ranges' digests (hex, in the statement's order, one per line)."""
    return hashlib.sha256("".join(d + "\n" for d in digests).encode()).hexdigest()


class Decoder:
    """Avro values as any subscriber decodes them: confluent-kafka's stock deserializer
    against the registry (read only: nothing is registered)."""

    def __init__(self, settings: Settings) -> None:
        self.conf = settings.registry_config()
        self._deserializer: Any = None
        self.failures: list[str] = []  # what could not be decoded (then left out)

    def decode(self, topic: str, value: bytes | None, where: str = "") -> dict[str, Any] | None:
        """The record, None for a tombstone or (recorded in ``failures``) an undecodable value."""
        try:
            return self._decode(topic, value)
        except Exception as exc:  # reported by the verdict, never counted
            self.failures.append(f"{where or topic}: does not decode ({exc})")
            return None

    def _decode(self, topic: str, value: bytes | None) -> dict[str, Any] | None:
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        if value is None:
            return None
        if self._deserializer is None:
            self._deserializer = AvroDeserializer(SchemaRegistryClient(self.conf))
        record = self._deserializer(value, SerializationContext(topic, MessageField.VALUE))
        return dict(record) if record is not None else None
