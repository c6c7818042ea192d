"""The API's live view of Kafka: new KPI windows and alert transitions, for ``/v1/stream``
(server-sent events) and ``/v1/alerts``.

One :class:`LiveFeed` per API process reads, in a background thread, each city's
``city.kpi.v1`` from its end (new windows only) and ``city.alerts.v1`` from its beginning
(the topic is compacted by ``type|entity_id``, so it holds every alert's latest
transition; everything after start-up is kept as history). It uses a consumer group of
its own (``api_stream_group_id`` under the city's prefix, plus a per-process suffix: every
API replica must see every event) and commits nothing.

Fan-out never blocks: each SSE client has a bounded queue filled from the Kafka thread
with ``call_soon_threadsafe``; when a slow client's queue is full, its events are dropped
and counted (the client is told how many), while the reader and every other client go on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from core.settings import Settings
from schemas.registry import SchemaRegistry

if TYPE_CHECKING:
    from api.context import City

log = logging.getLogger(__name__)

KPI_TOPIC = "city.kpi.v1"
ALERTS_TOPIC = "city.alerts.v1"
HISTORY_LIMIT = 10_000  # alert transitions kept in memory (newest)


def plain(record: dict[str, Any]) -> dict[str, Any]:
    """An Avro record as JSON values (datetimes as ISO 8601 UTC)."""
    return {
        key: value.isoformat().replace("+00:00", "Z") if isinstance(value, datetime) else value
        for key, value in record.items()
    }


@dataclass
class AlertBook:
    """Every alert's latest transition, and the transitions seen, de-duplicated by
    (alert_id, state) as docs/alerts.md asks of consumers."""

    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # alert_id -> transition
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    _seen: set[tuple[str, str]] = field(default_factory=set)

    def add(self, alert: dict[str, Any]) -> bool:
        """Record a transition; False when it is a redelivery."""
        key = (alert["alert_id"], alert["state"])
        if key in self._seen:
            return False
        self._seen.add(key)
        self.history.append(alert)
        held = self.latest.get(alert["alert_id"])
        if held is None or held["state"] == "raised":  # a clear is final
            self.latest[alert["alert_id"]] = alert
        return True

    def active(self, city: str | None = None) -> list[dict[str, Any]]:
        return [
            a for a in self.latest.values()
            if a["state"] == "raised" and (city is None or a["city"] == city)
        ]  # fmt: skip


@dataclass(eq=False)
class Subscription:
    """One SSE client: its bounded queue (on its event loop) and what it dropped."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any]]
    dropped: int = 0

    def offer(self, event: dict[str, Any]) -> None:
        """On the client's loop: enqueue, or count a drop when the client is behind."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


class LiveFeed:
    """The background Kafka reader; nothing connects until :meth:`start`."""

    def __init__(self, settings: Settings, cities: list[City], queue_size: int = 1000) -> None:
        self.settings = settings
        self.cities = {city.topic(ALERTS_TOPIC): city for city in cities}
        self.kpi_topics = {city.topic(KPI_TOPIC): city for city in cities}
        self.queue_size = queue_size
        self.alerts = AlertBook()
        self.caught_up = threading.Event()  # the alerts topics read to their end once
        self.error: str | None = None
        self.events = 0
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start reading (once: a second call while it runs changes nothing)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="api-live-feed", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    @property
    def group(self) -> str:
        return self.settings.group(f"{self.settings.api_stream_group_id}-{uuid.uuid4().hex[:8]}")

    # --- subscribers ----------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        """A new client on the running loop."""
        loop = asyncio.get_running_loop()
        subscription = Subscription(loop, asyncio.Queue(maxsize=self.queue_size))
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)

    def active_alerts(self, city: str) -> list[dict[str, Any]]:
        with self._lock:
            return self.alerts.active(city)

    def alert_history(self, city: str) -> list[dict[str, Any]]:
        """The city's transitions, newest first."""
        with self._lock:
            return [a for a in reversed(self.alerts.history) if a["city"] == city]

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        """To every client, without waiting for any (a closed loop is skipped)."""
        self.events += 1
        with self._lock:
            targets = list(self._subscribers)
        for subscription in targets:
            try:
                subscription.loop.call_soon_threadsafe(subscription.offer, event)
            except RuntimeError:  # the client's loop has closed
                self.unsubscribe(subscription)

    # --- the reader -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._read()
        except Exception as exc:  # reported on /v1/status and by /v1/alerts, then re-raised
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("live feed stopped")
            raise

    def _read(self) -> None:
        registry = SchemaRegistry(self.settings.registry_config())
        serdes = {t: registry.serde(t, ALERTS_TOPIC) for t in self.cities}
        serdes |= {t: registry.serde(t, KPI_TOPIC) for t in self.kpi_topics}
        consumer = Consumer(
            self.settings.kafka_config(
                **{"group.id": self.group, "enable.auto.commit": False,
                   "auto.offset.reset": "earliest", "enable.partition.eof": True}
            )
        )  # fmt: skip
        try:
            pending = self._assign(consumer)
            while not self._stop.is_set():
                for msg in self._next_batch(consumer):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard((msg.topic(), msg.partition()))
                            continue
                        raise KafkaException(error)
                    topic = str(msg.topic())
                    self._handle(topic, serdes[topic].decode(msg.value()))
                if not pending:
                    self.caught_up.set()
        finally:
            consumer.close()

    @staticmethod
    def _next_batch(consumer: Consumer) -> list[Any]:
        """What is there now: the first message as soon as it comes (no batching delay),
        then whatever else is already fetched."""
        first = consumer.poll(0.5)
        if first is None:
            return []
        return [first, *consumer.consume(num_messages=500, timeout=0)]

    def _assign(self, consumer: Consumer) -> set[tuple[str, int]]:
        """Alerts from the beginning, KPIs from the end; the alert partitions to read up."""
        parts, pending = [], set()
        for topic in [*self.cities, *self.kpi_topics]:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            start = OFFSET_BEGINNING if topic in self.cities else OFFSET_END
            for p in sorted(meta.partitions):
                parts.append(TopicPartition(topic, p, start))
                if topic in self.cities:
                    low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), 10)
                    if high > low:
                        pending.add((topic, p))
        consumer.assign(parts)
        if not pending:
            self.caught_up.set()
        return pending

    def _handle(self, topic: str, record: dict[str, Any]) -> None:
        if topic in self.cities:
            alert = plain(record) | {"city": self.cities[topic].id}
            with self._lock:
                new = self.alerts.add(alert)
            if new:
                self.publish({"type": "alert", "data": alert})
        else:
            kpi = plain(record) | {"city": self.kpi_topics[topic].id}
            self.publish({"type": "kpi", "data": kpi})
