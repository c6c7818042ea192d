"""Publishing canonical events, shared by every source connector.

A traffic reading goes to ``city.traffic.v1`` (one per message, for subscribers) and into
a column-wise batch on ``city.traffic.batches.v1`` (the processor's input), both on the
segment's murmur2 partition. Other domains do the same through :meth:`EventPublisher.event`
and an :class:`EventStream` (``city.<domain>.v1`` plus ``city.<domain>.batches.v1``).
Anything rejected goes to ``city.dlq.v1`` with its reason. Every source (replay,
simulator, MQTT, HTTP) publishes through here, so the processors see them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from core import telemetry
from core.kafka import Publisher, partition_for, wait_for_topic
from core.settings import Settings
from schemas.deadletter import dead_letter
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde

TOPICS = ("city.road_segments.v1", "city.traffic.v1", "city.traffic.batches.v1", "city.dlq.v1")


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


@dataclass(frozen=True)
class EventStream:
    """A domain's pair of topics: one event per message, and column-wise batches of them.

    ``columns`` are the fields of the event copied into the batch record (the batch schema
    has one array per column, plus ``origin``); ``key`` names the field whose value is the
    message key and picks the partition, so one entity's events stay in order.
    ``optional`` columns may be absent from a record (None in the batch): a field added
    later, which older sources do not fill.
    """

    topic: str
    batch_topic: str
    key: str
    columns: tuple[str, ...]
    optional: tuple[str, ...] = ()


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
    ) -> None:
        self.settings = settings
        self.component = component
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
            n: registry.serde(t, n) for n, t in self.topics.items()
        }
        self.publisher = Publisher.create(self.settings)
        self.partitions = self._partition_count()
        self._buffers = [_BatchBuffer() for _ in range(self.partitions)]
        self._columns = {
            s.topic: [_Columns(s.columns, s.optional) for _ in range(self.partitions)]
            for s in self.streams.values()
        }

    def _partition_count(self) -> int:
        return len(
            wait_for_topic(self.publisher.producer, self.topics["city.traffic.v1"]).partitions
        )

    def road_segment(self, segment: dict[str, Any]) -> None:
        value = self.serdes["city.road_segments.v1"].encode(segment)
        key = segment["segment_id"].encode()
        self.publisher.send(self.topics["city.road_segments.v1"], key, value)

    def reading(self, r: Reading) -> None:
        partition = _partition_of(r.segment_id, self.partitions)
        value = self.serdes["city.traffic.v1"].encode(
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
                self.topics["city.traffic.batches.v1"], partition, self.component
            )
        topic = self.topics["city.traffic.v1"]
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
        value = self.serdes["city.dlq.v1"].encode(record)
        self.publisher.send(self.topics["city.dlq.v1"], rejected.reason.encode(), value)
        self.dead_lettered += 1
        telemetry.dead_lettered(self.component, rejected.reason)  # telemetry

    def _send_batch(self, partition: int) -> None:
        batch = self._buffers[partition]
        value = self.serdes["city.traffic.batches.v1"].encode(batch.record(self.component))
        topic = self.topics["city.traffic.batches.v1"]
        self.publisher.send(topic, str(partition).encode(), value, partition, batch.trace.headers)
        self._batch_sent(batch.trace, batch.origin, (self.topics["city.traffic.v1"], topic))
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


# --- domain streams
# A record given to EventPublisher.event carries its batch columns by name, so a domain
# record holds ``event_time_ms`` next to the Avro ``event_time``: fastavro writes only the
# schema's fields to the per-event topic.
AIR = EventStream(
    "city.air.v1",
    "city.air.batches.v1",
    key="sensor_id",
    columns=(
        "sensor_id",
        "event_time_ms",
        "ozone",
        "particulate_matter",
        "carbon_monoxide",
        "sulfure_dioxide",
        "nitrogen_dioxide",
    ),
)
PARKING = EventStream(
    "city.parking.v1",
    "city.parking.batches.v1",
    key="car_park_id",
    columns=("car_park_id", "event_time_ms", "vehicle_count", "total_spaces"),
)
ENERGY = EventStream(
    "city.energy.v1",
    "city.energy.batches.v1",
    key="meter_id",
    columns=("meter_id", "district", "event_time_ms", "kwh"),
)
WASTE = EventStream(
    "city.waste.v1",
    "city.waste.batches.v1",
    key="bin_id",
    columns=("bin_id", "district", "event_time_ms", "fill_pct"),
)
SERVICE = EventStream(
    "city.service_requests.v1",
    "city.service_requests.batches.v1",
    key="request_id",
    columns=("request_id", "status", "category", "district", "event_time_ms", "opened_at_ms"),
    optional=("sla_due_ms",),  # a request's own due time (Boston's TARGET_DT), else None
)
