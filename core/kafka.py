"""Kafka plumbing shared by sources, processors and sinks: topics, publishing, lag."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ClusterMetadata,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
    TopicMetadata,
)

from core.settings import Settings
from schemas.catalog import TopicSpec, load_schema
from schemas.contracts import retention_ms, topic_retention
from schemas.registry import SchemaRegistry

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A produced message was not acknowledged: the caller must not commit its input."""


def topic_config(spec: TopicSpec, settings: Settings) -> dict[str, str]:
    conf = {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
    if spec.compacted:
        conf.update({"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"})
    conf.update(retention_config(spec))
    return conf


MAX_SEGMENT_MS = 86_400_000  # a day: a deleted topic's data outlives its retention by <= this


def retention_config(spec: TopicSpec) -> dict[str, str]:
    """``retention.ms`` from the topic's data contract (schemas/contracts.py), and a
    ``segment.ms`` of at most a day, so that expired data is deleted within a day of its
    retention (Kafka deletes whole segments) rather than up to a week later. A topic without
    an Avro schema (no contract) keeps its own ``retention_ms``, or the broker's default."""
    if not spec.schema_file:
        return {} if spec.retention_ms is None else {"retention.ms": str(spec.retention_ms)}
    ms = retention_ms(topic_retention(spec))
    conf = {"retention.ms": str(ms)}
    if ms >= 0 and not spec.compacted:
        conf["segment.ms"] = str(min(ms, MAX_SEGMENT_MS))
    return conf


def align_retention(
    settings: Settings, specs: Iterable[TopicSpec], timeout: float = 30.0
) -> dict[str, dict[str, str]]:
    """Alter existing topics whose retention differs from :func:`retention_config`; returns
    the topics changed and what was set. Idempotent: a topic that matches is not altered."""
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = {
        settings.topic(spec.name): retention_config(spec)
        for spec in specs
        if settings.topic(spec.name) in existing
    }
    if not wanted:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in wanted]
    changes: dict[str, dict[str, str]] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        current = future.result()
        differing = {
            key: value
            for key, value in wanted[resource.name].items()
            if key not in current or current[key].value != value
        }
        if differing:
            changes[resource.name] = differing
    if not changes:
        return {}
    alters = [
        ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                for key, value in conf.items()
            ],
        )
        for topic, conf in changes.items()
    ]
    for future in admin.incremental_alter_configs(alters, request_timeout=timeout).values():
        future.result()
    for topic, conf in changes.items():
        log.info("topic %s: %s (from its data contract)", topic, conf)
    return changes


def create_topics(
    settings: Settings, specs: Iterable[TopicSpec], timeout: float = 30.0
) -> list[str]:
    """Create the missing ones of ``specs``; existing ones are left as they are.

    The topic catalogue is the families registry's (``families.registry.ensure_topics``
    passes it); the core does not know the families.
    """
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(
            settings.topic(spec.name),
            num_partitions=1 if spec.single_partition else settings.partitions,
            replication_factor=settings.replication_factor,
            config=topic_config(spec, settings),
        )
        for spec in specs
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


def register_subjects(settings: Settings, specs: Iterable[TopicSpec]) -> dict[str, int]:
    """Register the schema of each of ``specs`` under its topic's subject (BACKWARD
    compatible); ``families.registry.register_schemas`` passes the whole catalogue."""
    registry = SchemaRegistry(settings.registry_config())
    return {
        settings.topic(spec.name): registry.register(
            settings.topic(spec.name), load_schema(spec.schema_file)
        )
        for spec in specs
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
        """Wait up to ``timeout`` for every message; for callers with a deadline of their own
        (the HTTP ingest answers 503 instead of waiting)."""
        remaining = self.producer.flush(timeout)
        if remaining:
            raise DeliveryError(f"{remaining} messages not delivered within {timeout}s")
        self._raise_failures()

    def flush_until_delivered(self, first_wait: float = 10.0, longest_wait: float = 60.0) -> None:
        """Wait for every message for as long as Kafka may still take them.

        During a broker outage a flush times out with messages still queued. They are
        not lost: librdkafka keeps retrying them until ``message.timeout.ms``. So a
        processor waits again, each wait twice as long (up to ``longest_wait``), with a
        log line each time, instead of ending the worker. What librdkafka gives up on
        comes back as a failed delivery and raises :class:`DeliveryError`: the input is
        then not committed and a restarted worker re-reads it, so recovery stays exact.
        """
        wait, waited = first_wait, 0.0
        while remaining := self.producer.flush(wait):
            if self.errors:
                break
            waited += wait
            log.warning(
                "%d messages not yet acknowledged by Kafka after %.0fs (broker unreachable?);"
                " waiting %.0fs more",
                remaining,
                waited,
                min(2 * wait, longest_wait),
            )
            wait = min(2 * wait, longest_wait)
        self._raise_failures()

    def _raise_failures(self) -> None:
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


_MOVED = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
T = TypeVar("T")
TOPIC_WAIT_S = 60.0  # a busy broker (thousands of partitions) takes seconds to show a new topic
_NOT_YET = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.LEADER_NOT_AVAILABLE)


class TopicUnavailable(RuntimeError):
    """A topic did not appear (or had a partition without a leader) within the wait."""


class _MetadataClient(Protocol):
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata: ...


def wait_for_topic(
    client: _MetadataClient,
    topic: str,
    timeout: float = TOPIC_WAIT_S,
    poll_s: float = 0.2,
    stopping: Callable[[], bool] = lambda: False,
) -> TopicMetadata:
    """The topic's metadata once it exists and every partition has a leader.

    Right after a topic is created, or after a broker (re)start with many partitions to
    load, the metadata says ``UNKNOWN_TOPIC_OR_PART`` or has leaderless partitions for a
    while. Every place that looks a topic up calls this instead of failing on the first
    answer: it says once what it waits for, and raises :class:`TopicUnavailable` naming the
    topic and Kafka's last answer when ``timeout`` runs out, or as soon as ``stopping()``
    is true (a service asked to stop while it waits).
    """
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        problem = _topic_problem(client, topic, max(1.0, min(10.0, deadline - time.monotonic())))
        if isinstance(problem, TopicMetadata):
            if announced:
                log.info("topic %s is ready", topic)
            return problem
        if time.monotonic() >= deadline:
            raise TopicUnavailable(f"topic {topic} not ready after {timeout:.0f}s: {problem}")
        if not announced:
            log.info("waiting up to %.0fs for topic %s (%s)", timeout, topic, problem)
            announced = True
        if stopping():
            raise TopicUnavailable(f"stopped waiting for topic {topic}: {problem}")
        time.sleep(poll_s)


def _topic_problem(client: _MetadataClient, topic: str, timeout: float) -> TopicMetadata | str:
    """The metadata when the topic is usable, else why not (a transient answer only)."""
    try:
        meta = client.list_topics(topic, timeout=timeout).topics.get(topic)
    except KafkaException as exc:
        error = exc.args[0]
        if error.retriable() or error.code() in (*_MOVED, KafkaError._TRANSPORT):
            return error.str()
        raise
    if meta is None:
        return "not in the metadata yet"
    if meta.error is not None:
        if meta.error.code() in _NOT_YET or meta.error.retriable():
            return str(meta.error.str())
        raise TopicUnavailable(f"topic {topic}: {meta.error}")
    if not meta.partitions:
        return "no partitions yet"
    leaderless = [p for p, pm in meta.partitions.items() if pm.leader < 0]
    if leaderless:
        return f"partitions {sorted(leaderless)} have no leader yet"
    return meta


def retrying(what: str, timeout: float, call: Callable[[], T]) -> T:
    """``call()``, again while the error is transient (a broker restarting moves leaders
    and the group coordinator), until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0]
            if time.monotonic() > deadline or not (error.retriable() or error.code() in _MOVED):
                raise
            log.info("%s: %s; retrying", what, error.str())
        time.sleep(0.5)


def end_offsets(settings: Settings, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Log end offset per partition."""

    def read() -> dict[int, int]:
        consumer = Consumer(settings.kafka_config(**{"group.id": "citystream-offsets"}))
        try:
            meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                for p in meta.partitions
            }
        finally:
            consumer.close()

    return retrying(f"end offsets of {topic}", timeout, read)


def committed_offsets(
    settings: Settings, group: str, topic: str, partitions: Iterable[int], timeout: float = 10.0
) -> dict[int, int]:
    wanted = [TopicPartition(topic, p) for p in partitions]

    def read() -> dict[int, int]:
        conf = settings.kafka_config(**{"group.id": group, "enable.auto.commit": False})
        consumer = Consumer(conf)
        try:
            return {tp.partition: max(tp.offset, 0) for tp in consumer.committed(wanted, timeout)}
        finally:
            consumer.close()

    return retrying(f"committed offsets of {group}", timeout, read)


def partition_lag(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Per partition: messages in ``topic`` the consumer ``group`` has not committed yet."""
    ends = end_offsets(settings, topic)
    committed = committed_offsets(settings, group, topic, ends)
    return {p: max(0, end - committed.get(p, 0)) for p, end in ends.items()}


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Messages in ``topic`` the consumer ``group`` has not committed yet."""
    return sum(partition_lag(settings, group, topic).values())


def read_topic(settings: Settings, topic: str, timeout: float = 30.0) -> Iterator[bytes]:
    """Every value in ``topic`` up to its end offsets now (no consumer group commits)."""
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end > 0}
    consumer = Consumer(
        settings.kafka_config(**{"group.id": "citystream-read", "enable.auto.commit": False})
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout}s")
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is not None:
                    continue
                if (msg.offset() or 0) + 1 >= ends.get(msg.partition() or 0, 0):
                    ends.pop(msg.partition() or 0, None)
                value = msg.value()
                if value is not None:
                    yield value
    finally:
        consumer.close()
