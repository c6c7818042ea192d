"""Publishing canonical events, shared by every source connector.

A traffic reading goes to ``city.traffic.v1`` (one per message, for subscribers) and into
a column-wise batch on ``city.traffic.batches.v1`` (the processor's input), both on the
segment's murmur2 partition. Other families do the same through
:meth:`EventPublisher.event` and their :class:`EventStream` (``city.<stem>.v1`` plus
``city.<stem>.batches.v1``), derived from the family's declaration in ``families/``.
Anything rejected goes to ``city.dlq.v1`` with its reason. Every source (replay,
simulator, MQTT, HTTP) publishes through here, so the processors see them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from core import telemetry
from core.family import EventStream
from core.kafka import Publisher, partition_for, wait_for_topic
from core.settings import Settings
from families import traffic
from families.registry import EVENT_STREAMS
from families.registry import TOPICS as CATALOGUE
from schemas.catalog import TopicSpec
from schemas.deadletter import dead_letter
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde

# The families' event streams, as declared in families/ (the names the sources import).
# A record given to EventPublisher.event carries its batch columns by name, so a family's
# record holds ``event_time_ms`` next to the Avro ``event_time``: fastavro writes only the
# schema's fields to the per-event topic.
TRAFFIC = EVENT_STREAMS["traffic"]  # published through the fast path below (Reading)
AIR = EVENT_STREAMS["air"]
PARKING = EVENT_STREAMS["parking"]
ENERGY = EVENT_STREAMS["energy"]
WASTE = EVENT_STREAMS["waste"]
SERVICE = EVENT_STREAMS["service"]

SEGMENTS = traffic.SEGMENTS.topic
DLQ = "city.dlq.v1"
TOPICS = (SEGMENTS, TRAFFIC.topic, TRAFFIC.batch_topic, DLQ)  # every publisher's


@dataclass(frozen=True, slots=True)
class Reading:
    """A canonical traffic reading, whatever the source."""

    segment_id: str
    event_time_ms: int
    vehicle_count: int
    avg_speed_kmh: float
    avg_measured_time_s: int | None
    median_measured_time_s: int | None
    status: str
    origin: str  # file:line, topic/partition/offset, request id: where it came from


class _Columns:
    """Events of one stream and partition waiting to become one batch message."""

    __slots__ = ("columns", "optional", "origin", "trace")

    def __init__(self, names: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in names}
        self.optional: dict[str, list[Any]] = {name: [] for name in optional}
        self.origin: list[str] = []
        self.trace = telemetry.NO_TRACE  # telemetry: the batch's span, from its first event

    def add(self, event: dict[str, Any], origin: str) -> int:
        for name, column in self.columns.items():
            column.append(event[name])
        for name, column in self.optional.items():
            column.append(event.get(name))
        self.origin.append(origin)
        return len(self.origin)

    def record(self, source: str) -> dict[str, Any]:
        return {"source": source, **self.columns, **self.optional, "origin": self.origin}


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str
    origin: str
    raw: bytes | str


class _BatchBuffer:
    """Column-wise readings of one partition waiting to become one batch message."""

    __slots__ = ("avg_speed_kmh", "event_time_ms", "origin", "segment_id", "trace", "vehicle_count")

    def __init__(self) -> None:
        self.segment_id: list[str] = []
        self.event_time_ms: list[int] = []
        self.vehicle_count: list[int] = []
        self.avg_speed_kmh: list[float] = []
        self.origin: list[str] = []
        self.trace = telemetry.NO_TRACE  # telemetry: the batch's span, from its first reading

    def add(self, r: Reading) -> int:
        self.segment_id.append(r.segment_id)
        self.event_time_ms.append(r.event_time_ms)
        self.vehicle_count.append(r.vehicle_count)
        self.avg_speed_kmh.append(r.avg_speed_kmh)
        self.origin.append(r.origin)
        return len(self.segment_id)

    def record(self, source: str) -> dict[str, Any]:
        return {
            "source": source,
            "segment_id": self.segment_id,
            "event_time_ms": self.event_time_ms,
            "vehicle_count": self.vehicle_count,
            "avg_speed_kmh": self.avg_speed_kmh,
            "origin": self.origin,
        }


@lru_cache(maxsize=65536)
def _partition_of(segment_id: str, partitions: int) -> int:
    return partition_for(segment_id.encode(), partitions)


class EventPublisher:
    """One per source process; ``setup`` connects, ``flush`` makes everything durable."""

    def __init__(
        self,
        settings: Settings,
        component: str,
        streams: tuple[EventStream, ...] = (),
        reference_topics: tuple[str, ...] = (),
        catalogue: Mapping[str, TopicSpec] = CATALOGUE,
    ) -> None:
        """``catalogue``: the topics' declarations (default: the families registry's)."""
        self.settings = settings
        self.component = component
        self.catalogue = catalogue
        self.streams = {s.topic: s for s in streams}
        names = [*TOPICS, *reference_topics]
        for s in streams:
            names += [s.topic, s.batch_topic]
        self.topics = {name: settings.topic(name) for name in names}
        self.batches_sent = 0
        self.dead_lettered = 0

    def setup(self) -> None:
        registry = SchemaRegistry(self.settings.registry_config())
        self.serdes: dict[str, AvroSerde] = {
            n: registry.serde(t, self.catalogue[n]) for n, t in self.topics.items()
        }
        self.publisher = Publisher.create(self.settings)
        self.partitions = self._partition_count()
        self._buffers = [_BatchBuffer() for _ in range(self.partitions)]
        self._columns = {
            s.topic: [_Columns(s.columns, s.optional) for _ in range(self.partitions)]
            for s in self.streams.values()
        }

    def _partition_count(self) -> int:
        return len(wait_for_topic(self.publisher.producer, self.topics[TRAFFIC.topic]).partitions)

    def road_segment(self, segment: dict[str, Any]) -> None:
        value = self.serdes[SEGMENTS].encode(segment)
        key = segment["segment_id"].encode()
        self.publisher.send(self.topics[SEGMENTS], key, value)

    def reading(self, r: Reading) -> None:
        partition = _partition_of(r.segment_id, self.partitions)
        value = self.serdes[TRAFFIC.topic].encode(
            {
                "segment_id": r.segment_id,
                "event_time": r.event_time_ms,
                "vehicle_count": r.vehicle_count,
                "avg_speed_kmh": r.avg_speed_kmh,
                "avg_measured_time_s": r.avg_measured_time_s,
                "median_measured_time_s": r.median_measured_time_s,
                "status": r.status,
                "source": self.component,
            }
        )
        buffer = self._buffers[partition]
        if not buffer.segment_id:  # telemetry: one span per batch message
            buffer.trace = telemetry.start_batch(
                self.topics[TRAFFIC.batch_topic], partition, self.component
            )
        topic = self.topics[TRAFFIC.topic]
        self.publisher.send(topic, r.segment_id.encode(), value, partition, buffer.trace.headers)
        if buffer.add(r) >= self.settings.source_batch_size:
            self._send_batch(partition)

    def reference(self, topic: str, key: str, record: dict[str, Any]) -> None:
        """One record of a compacted reference topic (latest value per key)."""
        self.publisher.send(self.topics[topic], key.encode(), self.serdes[topic].encode(record))

    def event(self, topic: str, record: dict[str, Any], origin: str) -> None:
        """One canonical event of another domain: its topic, and its partition's batch."""
        stream = self.streams[topic]
        key = str(record[stream.key])
        partition = _partition_of(key, self.partitions)
        value = self.serdes[topic].encode(record)
        columns = self._columns[topic][partition]
        if not columns.origin:  # telemetry: one span per batch message
            columns.trace = telemetry.start_batch(
                self.topics[stream.batch_topic], partition, self.component
            )
        self.publisher.send(
            self.topics[topic], key.encode(), value, partition, columns.trace.headers
        )
        if columns.add(record, origin) >= self.settings.source_batch_size:
            self._send_columns(stream, partition)

    def _send_columns(self, stream: EventStream, partition: int) -> None:
        buffers = self._columns[stream.topic]
        batch = buffers[partition]
        value = self.serdes[stream.batch_topic].encode(batch.record(self.component))
        topic = self.topics[stream.batch_topic]
        self.publisher.send(topic, str(partition).encode(), value, partition, batch.trace.headers)
        self._batch_sent(batch.trace, batch.origin, (self.topics[stream.topic], topic))
        buffers[partition] = _Columns(stream.columns, stream.optional)
        self.batches_sent += 1

    def reject(self, rejected: Rejected) -> None:
        raw = rejected.raw.encode() if isinstance(rejected.raw, str) else rejected.raw
        record = dead_letter(rejected.reason, rejected.detail, self.component, rejected.origin, raw)
        value = self.serdes[DLQ].encode(record)
        self.publisher.send(self.topics[DLQ], rejected.reason.encode(), value)
        self.dead_lettered += 1
        telemetry.dead_lettered(self.component, rejected.reason)  # telemetry

    def _send_batch(self, partition: int) -> None:
        batch = self._buffers[partition]
        value = self.serdes[TRAFFIC.batch_topic].encode(batch.record(self.component))
        topic = self.topics[TRAFFIC.batch_topic]
        self.publisher.send(topic, str(partition).encode(), value, partition, batch.trace.headers)
        self._batch_sent(batch.trace, batch.origin, (self.topics[TRAFFIC.topic], topic))
        self._buffers[partition] = _BatchBuffer()
        self.batches_sent += 1

    @staticmethod
    def _batch_sent(
        trace: telemetry.BatchTrace, origin: list[str], topics: tuple[str, str]
    ) -> None:
        """telemetry: end the batch's span; count its events out on both topics."""
        trace.end(len(origin), origin[0], origin[-1])
        for topic in topics:
            telemetry.count_out(topic, len(origin))

    def send_batches(self) -> None:
        """Hand partly filled batches to the producer (before a pause, or at the end)."""
        for partition, buffer in enumerate(self._buffers):
            if buffer.segment_id:
                self._send_batch(partition)
        for stream in self.streams.values():
            for partition, columns in enumerate(self._columns[stream.topic]):
                if columns.origin:
                    self._send_columns(stream, partition)
        self.publisher.producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        """Everything published so far is acknowledged, or DeliveryError is raised."""
        self.send_batches()
        self.publisher.flush(timeout)
