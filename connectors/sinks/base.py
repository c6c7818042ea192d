"""The consume loop every sink shares, so that a sink only says how to write a batch.

:class:`BatchingSink` subscribes to one topic, decodes each message with the topic's
catalogue schema, dead-letters what cannot be decoded or checked to ``city.dlq.v1`` (with
the reason), gathers rows until ``sink_batch_rows`` or ``sink_batch_seconds`` and hands
them to :meth:`BatchingSink.write`. A sink serving several namespaces (one per city, each
with its own topic prefix) consumes the topic of each with one consumer, dead-letters into
each message's own namespace and gets the rows grouped by topic
(:meth:`BatchingSink.write_topics`). What it guarantees a subclass:

- offsets are committed only after ``write`` returned and the dead letters of the same
  messages are durable, so a crash anywhere re-delivers rows rather than losing them
  (delivery is at-least-once: ``write`` must tolerate a batch it has seen before);
- a ``write`` raising one of ``retryable`` is retried with growing waits (0.5 s doubling
  up to 30 s) until it works or the sink is stopped, and nothing is committed meanwhile;
- when the group takes partitions away, the batch is written and committed first if it
  can be, else dropped to be re-consumed by the new owner; lost partitions drop it.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import orjson
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from core import telemetry
from core.kafka import Publisher, TopicUnavailable, wait_for_topic
from core.settings import Settings
from schemas.deadletter import dead_letter
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde, SerdeError

log = logging.getLogger(__name__)

DLQ_TOPIC = "city.dlq.v1"
MAX_CONSUME = 100  # messages per consume call
MAX_BACKOFF_SECONDS = 30.0

Row = dict[str, Any]


class InvalidRecord(ValueError):
    """A row that decodes but must not be written (it would fail every later write)."""

    reason = "invalid_row"


@dataclass
class TopicRows:
    """The rows of one batch that came from one topic, with their messages' trace context."""

    rows: list[Row] = field(default_factory=list)
    traces: telemetry.KpiTraces = field(default_factory=telemetry.KpiTraces)  # telemetry


@dataclass
class _Batch:
    """Rows waiting for the next write (by topic) and the offsets that write will allow to
    commit."""

    topics: dict[str, TopicRows] = field(default_factory=dict)
    size: int = 0  # rows in all topics
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    since: float | None = None
    messages: int = 0

    def part(self, topic: str) -> TopicRows:
        part = self.topics.get(topic)
        if part is None:
            part = self.topics[topic] = TopicRows()
        return part

    def rows(self) -> list[Row]:
        if len(self.topics) == 1:
            return next(iter(self.topics.values())).rows
        return [row for part in self.topics.values() for row in part.rows]

    def tracked(self, messages: int) -> None:
        self.messages += messages
        if messages and self.since is None:
            self.since = time.monotonic()

    def age(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


class BatchingSink(ABC):
    """Consumes ``topic`` and writes it in batches; see the module docstring.

    A subclass sets ``component`` and ``topic``, implements :meth:`write`, and may override
    :meth:`setup`, :meth:`close`, :meth:`rows`, :meth:`check`, :meth:`group`,
    :meth:`running`, :meth:`namespaces`, :meth:`write_topics`, ``retryable`` and
    ``rows_per_message``. The constructor does no I/O.

    Counters (read them from any thread): ``dead_lettered``, ``write_failures``.
    """

    component: ClassVar[str]  # the consumer's client.id and the dead letters' component
    topic: ClassVar[str]  # catalogue name of the input topic (its schema decodes messages)
    retryable: ClassVar[tuple[type[BaseException], ...]] = (OSError,)
    # A rough count of rows per message, so that one consume call does not overshoot the
    # batch by much (a column-wise batch message holds hundreds of rows).
    rows_per_message: ClassVar[int] = 1

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dead_lettered = 0
        self.write_failures = 0
        # Called after each successful write with its rows (the benchmark times KPI delay).
        self.on_written: Callable[[Sequence[Row]], None] | None = None
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._run_stop: threading.Event | None = None
        self._batch = _Batch()
        self._publisher: Publisher | None = None
        self._dlq: dict[str, tuple[str, AvroSerde]] = {}  # input topic: its dead-letter topic

    # --- what a sink provides -----------------------------------------------------------------

    @abstractmethod
    def write(self, rows: Sequence[Row], traces: telemetry.KpiTraces | None = None) -> None:
        """Write ``rows`` as one batch, or raise. A retryable error is retried; another one
        ends :meth:`run`. ``traces`` is the trace context of the messages the rows came in
        (telemetry: empty unless tracing is on)."""

    def write_topics(self, batch: Mapping[str, TopicRows]) -> None:
        """Write one batch, its rows grouped by the (prefixed) topic they came from, or
        raise like :meth:`write`. By default all rows go to :meth:`write` at once; a sink of
        several namespaces overrides this to send each topic's rows where they belong."""
        if len(batch) == 1:
            (part,) = batch.values()
            self.write(part.rows, part.traces)
            return
        traces = telemetry.KpiTraces()
        for part in batch.values():
            traces.links.update(part.traces.links)
            traces.rows.extend(part.traces.rows)
        self.write([row for part in batch.values() for row in part.rows], traces)

    def namespaces(self) -> Sequence[Settings]:
        """The settings whose topic prefix names the input topic and the dead-letter topic:
        the sink's own by default; one per city for a sink serving several."""
        return [self.settings]

    def setup(self) -> Any:  # noqa: B027 (an optional hook)
        """Prepare the destination (idempotent); :meth:`run` calls it before consuming."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release the destination; safe to call more than once."""

    def rows(self, record: Any) -> list[Row]:
        """The rows one decoded message holds (one by default). KeyError or ValueError
        dead-letters the whole message as ``invalid_row``."""
        return [record]

    def check(self, row: Row) -> None:  # noqa: B027 (an optional hook)
        """Raise :class:`InvalidRecord` for a row that must not be written; it alone is
        dead-lettered and the message's other rows are written."""

    def group(self) -> str:
        """The consumer group: one per sink, so each sink reads every message."""
        return self.settings.group(self.component)

    def running(self) -> AbstractContextManager[object]:
        """What the sink holds open only while it consumes (nothing by default)."""
        return nullcontext()

    # --- lifecycle ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set or :meth:`stop` is called; runs :meth:`setup` first.

        After :meth:`stop` the destination is closed on return; after ``stop.set()`` it
        stays open (for queries) until :meth:`close` or :meth:`stop`.
        """
        self._run_stop = stop
        self._running.set()
        try:
            self._consume()
        finally:
            self._running.clear()
            if self._stopping.is_set():
                self.close()

    def stop(self) -> None:
        """Make :meth:`run` write what it can and return, then close.

        Safe from any thread and after run returned (then it just closes).
        """
        self._stopping.set()
        if not self._running.is_set():
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- consume loop -------------------------------------------------------------------------

    def _consume(self) -> None:
        self.setup()
        registry = SchemaRegistry(self.settings.registry_config())
        serdes: dict[str, AvroSerde] = {}
        for namespace in self.namespaces():
            topic, dlq = namespace.topic(self.topic), namespace.topic(DLQ_TOPIC)
            if topic in serdes:
                raise ValueError(f"two namespaces of {self.component} share the topic {topic}")
            serdes[topic] = registry.serde(topic, self.topic)
            self._dlq[topic] = (dlq, registry.serde(dlq, DLQ_TOPIC))
        publisher = self._publisher = Publisher.create(self.settings)
        try:
            with self.running():
                consumer = Consumer(self._consumer_config())
                try:
                    for topic in serdes:
                        if not self._input_ready(consumer, topic):
                            return
                    consumer.subscribe(
                        list(serdes), on_revoke=self._on_revoke, on_lost=self._on_lost
                    )
                    self._loop(consumer, serdes)
                    self._flush(consumer)
                finally:
                    self._discard("the sink is stopping")
                    consumer.close()
        finally:
            publisher.flush()

    def _input_ready(self, consumer: Consumer, topic: str) -> bool:
        """Wait (bounded, said in the log) for a topic created a moment ago or a broker still
        loading its partitions after a restart; False if asked to stop meanwhile."""
        try:
            wait_for_topic(consumer, topic, stopping=self._should_stop)
        except TopicUnavailable:
            if self._should_stop():
                return False
            raise
        return True

    def _consumer_config(self) -> dict[str, Any]:
        return self.settings.kafka_config(
            **{
                "group.id": self.group(),
                "client.id": self.component,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )

    def _should_stop(self) -> bool:
        return self._stopping.is_set() or (self._run_stop is not None and self._run_stop.is_set())

    def _loop(self, consumer: Consumer, serdes: Mapping[str, AvroSerde]) -> None:
        batch_rows, batch_seconds = self.settings.sink_batch_rows, self.settings.sink_batch_seconds
        while not self._should_stop():
            missing = batch_rows - self._batch.size
            wanted = max(1, min(MAX_CONSUME, missing // self.rows_per_message))
            timeout = 0.5 if self._batch.since is None else batch_seconds - self._batch.age()
            messages = consumer.consume(num_messages=wanted, timeout=min(0.5, max(0.01, timeout)))
            self._accept(messages, serdes)
            if self._batch.size >= batch_rows or (
                self._batch.since is not None and self._batch.age() >= batch_seconds
            ):
                self._flush(consumer)

    def _accept(self, messages: list[Message], serdes: Mapping[str, AvroSerde]) -> None:
        """Decode into the batch; the hot path, hence the local names."""
        batch = self._batch
        tracked = 0
        for msg in messages:
            if msg.error() is not None:
                self._consumer_error(msg)
                continue
            try:
                rows = self.rows(serdes[msg.topic()].decode(msg.value()))  # type: ignore[index]
            except (SerdeError, KeyError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, SerdeError) else InvalidRecord.reason
                self._dead_letter(msg, reason, str(exc), msg.value() or b"")
            else:
                self._accept_rows(msg, rows)
            # topic, partition and offset are always set on a message without error
            batch.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1  # type: ignore[index,operator]
            tracked += 1
        batch.tracked(tracked)

    def _accept_rows(self, msg: Message, rows: list[Row]) -> None:
        """Valid rows join the batch; an invalid one is dead-lettered on its own."""
        part = self._batch.part(msg.topic())  # type: ignore[arg-type]
        first = len(part.rows)
        for index, row in enumerate(rows):
            try:
                self.check(row)
            except InvalidRecord as exc:
                payload = orjson.dumps(row)
                self._dead_letter(msg, exc.reason, f"row {index}: {exc}", payload)
            else:
                part.rows.append(row)
        self._batch.size += len(part.rows) - first
        if telemetry.tracing():  # telemetry: the message's context, for links and rows
            part.traces.add(msg.headers(), part.rows[first:])
        telemetry.count_in(msg.topic() or self.topic, len(rows))  # telemetry

    def _consumer_error(self, msg: Message) -> None:
        err = msg.error()
        if err is not None and err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err)

    def _dead_letter(self, msg: Message, reason: str, detail: str, payload: bytes) -> None:
        assert self._publisher is not None
        dlq_topic, dlq_serde = self._dlq[msg.topic()]  # type: ignore[index]
        origin = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        letter = dead_letter(
            reason=reason,
            detail=detail,
            component=self.component,
            origin=origin,
            payload=payload,
        )
        self._publisher.send(dlq_topic, reason.encode(), dlq_serde.encode(letter))
        self.dead_lettered += 1
        telemetry.dead_lettered(self.component, reason)  # telemetry
        log.warning("dead-lettered %s: %s (%s)", origin, reason, detail)

    def _flush(self, consumer: Consumer) -> bool:
        """Write, make dead letters durable, then commit; False if the write gave up."""
        batch = self._batch
        if not batch.messages:
            return True
        if batch.size and not self._write_with_retry(batch):
            return False
        assert self._publisher is not None
        self._publisher.flush()  # dead letters durable before their offsets are committed
        self._commit(consumer, batch.offsets)
        self._batch = _Batch()
        return True

    def _write_with_retry(self, batch: _Batch) -> bool:
        """Retry with exponential backoff until it works; False only when asked to stop."""
        attempt = 0
        while True:
            try:
                self.write_topics(batch.topics)
            except self.retryable as exc:
                attempt += 1
                self.write_failures += 1
                telemetry.sink_insert_failed()  # telemetry
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (attempt - 1))
                log.error(
                    "write of %d rows failed (attempt %d), retrying in %.1fs: %s",
                    batch.size,
                    attempt,
                    delay,
                    exc,
                )
                if self._wait_unless_stopping(delay):
                    return False
            else:
                if self.on_written is not None:
                    self.on_written(batch.rows())
                return True

    def _wait_unless_stopping(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self._should_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._stopping.wait(min(0.2, remaining))
        return True

    def _commit(self, consumer: Consumer, offsets: Mapping[tuple[str, int], int]) -> None:
        """Synchronous commit; a failure is logged, not raised: the rows are already
        written, and re-consuming them after a rebalance must not double count."""
        wanted = [TopicPartition(topic, part, offset) for (topic, part), offset in offsets.items()]
        try:
            committed = consumer.commit(offsets=wanted, asynchronous=False) or []
        except KafkaException as exc:
            log.error("offset commit failed, records will be re-consumed: %s", exc)
            return
        for tp in committed:
            if tp.error is not None:
                log.error("offset commit failed for %s[%d]: %s", tp.topic, tp.partition, tp.error)

    def _discard(self, why: str) -> None:
        """Drop the uncommitted batch; Kafka redelivers it from the committed offsets."""
        if self._batch.messages:
            log.warning(
                "%s: %d rows (%d messages) not written/committed, they will be re-consumed",
                why,
                self._batch.size,
                self._batch.messages,
            )
        self._batch = _Batch()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._flush(consumer):
            self._discard("partitions revoked while the write was failing")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._discard("partitions lost")
