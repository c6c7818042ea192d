"""Kafka plumbing shared by sources, processors and sinks: topics, publishing, lag."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from citystream.settings import Settings
from schemas.catalog import TOPICS, TopicSpec, load_schema
from schemas.registry import SchemaRegistry

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A produced message was not acknowledged: the caller must not commit its input."""


def topic_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    conf = {"min.insync.replicas": str(min(2, settings.replication_factor))}
    if spec.compacted:
        conf.update({"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"})
    if spec.retention_ms is not None:
        conf["retention.ms"] = str(spec.retention_ms)
    return conf


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing catalogue topics; existing ones are left as they are."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            settings.topic(spec.name),
            num_partitions=1 if spec.single_partition else settings.partitions,
            replication_factor=settings.replication_factor,
            config=topic_config(spec, settings),
        )
        for spec in TOPICS.values()
        if settings.topic(spec.name) not in existing
    ]
    if not wanted:
        return []
    for future in admin.create_topics(wanted, operation_timeout=timeout).values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return [t.topic for t in wanted]


def register_schemas(settings: Settings) -> dict[str, int]:
    """Register every catalogue schema under its topic's subject (BACKWARD compatible)."""
    registry = SchemaRegistry(settings.registry_config())
    return {
        settings.topic(name): registry.register(settings.topic(name), load_schema(spec.schema_file))
        for name, spec in TOPICS.items()
    }


@dataclass
class Publisher:
    """An idempotent acks=all producer that remembers delivery failures until flushed.

    ``flush`` raises :class:`DeliveryError` if any message since the last flush failed, so
    callers commit their input only after everything they produced is durable.
    """

    producer: Producer
    errors: list[str] = field(default_factory=list)
    delivered: int = 0

    @classmethod
    def create(cls, settings: Settings, **overrides: object) -> Publisher:
        return cls(Producer(settings.producer_config(**overrides)))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}: {err}")
        else:
            self.delivered += 1

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int = -1,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    on_delivery=self._on_delivery,
                    headers=headers,
                )
                return
            except BufferError:  # local queue full: let librdkafka drain it
                self.producer.poll(0.05)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self.producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} messages not delivered within {timeout}s")
        if self.errors:
            errors, self.errors = self.errors, []
            raise DeliveryError(f"{len(errors)} deliveries failed, first: {errors[0]}")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2, so our partitioning matches Java producers' default partitioner."""
    length = len(data)
    seed, m, r = 0x9747B28C, 0x5BD1E995, 24
    h = (seed ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length % 4
    base = length - tail
    if tail >= 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """Same partition as Kafka's Java DefaultPartitioner for a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    consumer = Consumer(settings.kafka_config(**{"group.id": "citystream-offsets"}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: Iterable[int], timeout: float = 10.0
) -> dict[int, int]:
    consumer = Consumer(settings.kafka_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        wanted = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(wanted, timeout)}
    finally:
        consumer.close()


def partition_lag(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Per partition: messages in ``topic`` the consumer ``group`` has not committed yet."""
    ends = end_offsets(settings, topic)
    committed = committed_offsets(settings, group, topic, ends)
    return {p: max(0, end - committed.get(p, 0)) for p, end in ends.items()}


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Messages in ``topic`` the consumer ``group`` has not committed yet."""
    return sum(partition_lag(settings, group, topic).values())
