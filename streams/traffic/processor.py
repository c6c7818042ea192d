"""The traffic processor's Kafka side: decode, window, publish. Agents are in agents.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from citystream import telemetry
from citystream.kafka import Publisher
from citystream.settings import Settings
from schemas.deadletter import dead_letter
from schemas.faust_codec import Undecodable
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde
from streams.reference import CompactedTable
from streams.traffic.windows import CityWindows, Counters, Emission, PartitionWindows, SegmentInfo

log = logging.getLogger(__name__)
Pending = deque[tuple[Any, frozenset[int]]]  # unacked input: (event, windows it fed)
COMPONENT = "traffic-processor"
TOPICS = (
    "city.road_segments.v1",
    "city.traffic.batches.v1",
    "city.traffic.partials.v1",
    "city.kpi.v1",
    "city.kpi.batches.v1",
    "city.dlq.v1",
)
CITY_STAGE = "city"  # telemetry: lineage key of the merge stage (stage 1 uses its partition)
KPI_BATCH_ROWS = 5000  # ~300 KB per message
KPI_FIELDS = ("kpi", "scope", "entity_id", "window_start", "window_end", "value", "samples",
              "revision", "computed_at")  # fmt: skip


def segment_info(record: dict[str, Any]) -> SegmentInfo:
    return SegmentInfo(str(record["district"]), float(record["free_flow_speed_kmh"]))


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Stats:
    """Counters served at /citystream/stats for reconciliation and the demo."""

    counters: Counters = field(default_factory=Counters)
    batches: int = 0
    undecodable: int = 0
    kpis_emitted: int = 0
    partials_emitted: int = 0
    last_input_monotonic: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "accepted": c.accepted,
            "duplicates": c.duplicates,
            "late": c.late,
            "unknown_segment": c.unknown_segment,
            "batches": self.batches,
            "undecodable": self.undecodable,
            "kpis_emitted": self.kpis_emitted,
            "partials_emitted": self.partials_emitted,
            "idle_seconds": round(time.monotonic() - self.last_input_monotonic, 3),
        }


class TrafficProcessor:
    """Holds the windows of the partitions this worker owns and the merge stage."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = {name: settings.topic(name) for name in TOPICS}
        self.size_ms = settings.window_minutes * 60_000
        self.grace_ms = settings.grace_minutes * 60_000
        self.idle_ms = int(settings.idle_timeout_s * 1000)
        self.partitions: dict[int, PartitionWindows] = {}
        self.city = CityWindows(self.size_ms, self.grace_ms, self.idle_ms)
        self.stats = Stats()
        self._last_reference_refresh = 0.0
        # Input not yet safe to commit: (event, windows it went to), per input partition.
        self.pending: dict[int, Pending] = {}
        # The merge stage rebuilds from the partials it re-reads, watermarks included:
        # restoring later watermarks would close windows before their older parts arrive.
        self.city_pending: Pending = deque()
        # telemetry: which input messages fed which window, for the KPIs' span links
        self.lineage = telemetry.WindowLineage(2 * (self.size_ms + self.grace_ms))

    def setup(self) -> None:
        """Registry, producer and reference data; run by the entry point before the worker."""
        registry = SchemaRegistry(self.settings.registry_config())
        self.serdes: dict[str, AvroSerde] = {
            n: registry.serde(t, n) for n, t in self.topics.items()
        }
        self.publisher = Publisher.create(self.settings, **{"linger.ms": 5})
        self.segments = CompactedTable(
            self.settings.kafka_config(),
            self.topics["city.road_segments.v1"],
            self.serdes["city.road_segments.v1"],
            segment_info,
            self._reject,
        )
        self.segments.refresh()
        log.info("loaded %d road segments", len(self.segments.data))

    def close(self) -> None:
        self.publisher.flush()
        self.segments.close()

    # --- stage 1 ---------------------------------------------------------------------

    async def on_batch(
        self, partition: int, value: dict[str, Any] | Undecodable, origin: str, event: Any = None
    ) -> list[Any]:
        """Process one batch message; returns the input events that may now be acked."""
        self.stats.last_input_monotonic = time.monotonic()
        pending = self.pending.setdefault(partition, deque())
        if isinstance(value, Undecodable):
            self.stats.undecodable += 1
            self._reject(value.payload, value.reason, value.detail, origin)
            await self._flush()
            pending.append((event, frozenset()))
            return _release(pending, set())
        self.stats.batches += 1
        await self._maybe_refresh_reference(value["segment_id"])
        windows = await self._partition_windows(partition)
        before = Counters(**vars(windows.counters))
        emission = windows.add(
            value["segment_id"], value["event_time_ms"], value["vehicle_count"],
            value["avg_speed_kmh"], self.segments.data, _now_ms(),
        )  # fmt: skip
        self._count(windows.counters, before)
        self._dead_letter_late(emission, value)
        self.lineage.fed(partition, emission.touched)  # telemetry
        await self._publish(emission, partition)
        pending.append((event, frozenset(emission.touched)))
        return _release(pending, windows.open_windows())

    async def _partition_windows(self, partition: int) -> PartitionWindows:
        if partition not in self.partitions:
            loop = asyncio.get_running_loop()
            watermarks, count = await loop.run_in_executor(None, self.published_watermarks)
            windows = PartitionWindows(partition, count, self.size_ms, self.grace_ms)
            if partition in watermarks:
                windows.restore(watermarks[partition])
                log.info("partition %d resumes at stream time %d", partition, watermarks[partition])
            self.partitions[partition] = windows
        return self.partitions[partition]

    def published_watermarks(self) -> tuple[dict[int, int], int]:
        """Latest watermark each input partition published on the partials topic."""
        topic = self.topics["city.traffic.partials.v1"]
        count = self._batch_partition_count()
        consumer = Consumer(self.settings.kafka_config(**{"group.id": f"{topic}-restore"}))
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
            start = max(low, high - 50 * count)
            consumer.assign([TopicPartition(topic, 0, start)])
            found: dict[int, int] = {}
            position, deadline = start, time.monotonic() + 60
            while position < high:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} up to offset {high}")
                for msg in consumer.consume(1000, timeout=0.1):
                    if msg.error() is not None:
                        continue
                    position = (msg.offset() or 0) + 1
                    partial = self.serdes["city.traffic.partials.v1"].decode(msg.value())
                    p, mark = int(partial["source_partition"]), int(partial["watermark_ms"])
                    found[p] = max(found.get(p, -1), mark)
            return found, count
        finally:
            consumer.close()

    def on_assigned(self, owned: dict[str, set[int]]) -> None:
        """Forget the state of partitions another worker owns now; it rebuilds them.

        Partitions this worker keeps across a rebalance keep their state: Faust goes on
        reading them where it was, and a re-read message would only meet the dedup set.
        """
        batches = owned.get(self.topics["city.traffic.batches.v1"], set())
        for partition in set(self.partitions) - batches:
            del self.partitions[partition]
            self.pending.pop(partition, None)
        self.lineage.forget(lambda key: key == CITY_STAGE or key in self.partitions)  # telemetry
        if not owned.get(self.topics["city.traffic.partials.v1"]):
            self.city = CityWindows(self.size_ms, self.grace_ms, self.idle_ms)
            self.city_pending.clear()

    def _batch_partition_count(self) -> int:
        topic = self.topics["city.traffic.batches.v1"]
        meta = self.publisher.producer.list_topics(topic, timeout=30).topics[topic]
        return len(meta.partitions)

    def _count(self, after: Counters, before: Counters) -> None:
        delta = Counters(
            after.accepted - before.accepted,
            after.duplicates - before.duplicates,
            after.late - before.late,
            after.unknown_segment - before.unknown_segment,
        )
        self.stats.counters.merge(delta)

    async def _maybe_refresh_reference(self, segment_ids: list[str]) -> None:
        """Unknown segments trigger a re-read of the reference topic, at most once a second."""
        known = self.segments.data
        if all(s in known for s in segment_ids):
            return
        if time.monotonic() - self._last_reference_refresh < 1.0:
            return
        self._last_reference_refresh = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self.segments.refresh)

    def _dead_letter_late(self, emission: Emission, batch: dict[str, Any]) -> None:
        for late in emission.late:
            i = late.position
            payload = orjson.dumps(
                {
                    "segment_id": batch["segment_id"][i],
                    "event_time_ms": late.event_ms,
                    "vehicle_count": batch["vehicle_count"][i],
                    "avg_speed_kmh": batch["avg_speed_kmh"][i],
                    "source": batch["source"],
                }
            )
            detail = (
                f"event time {late.event_ms} is past window end + grace; "
                f"stream time {late.stream_time_ms}"
            )
            self._reject(payload, "late", detail, batch["origin"][i])

    # --- stage 2 ---------------------------------------------------------------------

    async def on_partial(
        self, value: dict[str, Any] | Undecodable, origin: str, event: Any = None
    ) -> list[Any]:
        if isinstance(value, Undecodable):
            self.stats.undecodable += 1
            self._reject(value.payload, value.reason, value.detail, origin)
            await self._flush()
            self.city_pending.append((event, frozenset()))
            return _release(self.city_pending, set())
        kpis = self.city.add(value, _now_ms())
        self.lineage.fed(CITY_STAGE, self.city.touched)  # telemetry
        await self._publish(Emission(kpis=kpis), CITY_STAGE)
        self.city_pending.append((event, frozenset(self.city.touched)))
        return _release(self.city_pending, self.city.open_windows())

    # --- idle timer --------------------------------------------------------------------

    async def on_tick(self) -> None:
        """Emit what waits for input that is not coming (the end of a finite replay)."""
        idle = time.monotonic() - self.stats.last_input_monotonic >= self.settings.idle_timeout_s
        if idle:
            for partition, windows in list(self.partitions.items()):
                await self._publish(windows.flush(self.segments.data, _now_ms()), partition)
        await self._publish(Emission(kpis=self.city.emit_due(_now_ms())), CITY_STAGE)

    # --- output ------------------------------------------------------------------------

    def _reject(self, payload: bytes, reason: str, detail: str, origin: str) -> None:
        record = dead_letter(reason, detail, COMPONENT, origin, payload)
        self.publisher.send(
            self.topics["city.dlq.v1"], reason.encode(), self.serdes["city.dlq.v1"].encode(record)
        )
        telemetry.dead_lettered(COMPONENT, reason)  # telemetry

    async def _publish(self, emission: Emission, stage: Any) -> None:
        """Send, then wait for the acks: Faust commits the input offset only after this.

        ``stage`` is the input partition (stage 1) or CITY_STAGE: whose windows emitted.
        """
        # telemetry: an ``emit kpi`` span linked to the inputs; its context in the headers
        with self.lineage.emit(stage, emission.kpis, emission.partial) as headers:
            self._send_emission(emission, headers)
        telemetry.window_emitted(emission.kpis, _now_ms())  # telemetry
        if emission.kpis or emission.partial is not None or emission.late:
            await self._flush()

    def _send_emission(self, emission: Emission, headers: telemetry.Headers | None) -> None:
        kpi_serde, kpi_topic = self.serdes["city.kpi.v1"], self.topics["city.kpi.v1"]
        per_record = telemetry.trace_context_only(headers)  # telemetry: short, one per record
        for record in emission.kpis:
            key = (
                f"{record['kpi']}|{record['scope']}|{record['entity_id']}|{record['window_start']}"
            )
            self.publisher.send(kpi_topic, key.encode(), kpi_serde.encode(record), -1, per_record)
        self._send_kpi_batches(emission.kpis, headers)
        self.stats.kpis_emitted += len(emission.kpis)
        telemetry.count_out(kpi_topic, len(emission.kpis))  # telemetry
        if emission.partial is not None:
            partial = emission.partial
            self.publisher.send(
                self.topics["city.traffic.partials.v1"],
                str(partial["source_partition"]).encode(),
                self.serdes["city.traffic.partials.v1"].encode(partial),
                -1,
                headers,
            )
            self.stats.partials_emitted += 1

    def _send_kpi_batches(
        self, kpis: list[dict[str, Any]], headers: telemetry.Headers | None = None
    ) -> None:
        """The same records, column-wise, for the sink (one message per KPI_BATCH_ROWS)."""
        serde, topic = self.serdes["city.kpi.batches.v1"], self.topics["city.kpi.batches.v1"]
        for start in range(0, len(kpis), KPI_BATCH_ROWS):
            chunk = kpis[start : start + KPI_BATCH_ROWS]
            columns = {name: [r[name] for r in chunk] for name in KPI_FIELDS}
            self.publisher.send(topic, None, serde.encode(columns), -1, headers)

    async def _flush(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.publisher.flush)


def _release(pending: Pending, open_windows: set[int]) -> list[Any]:
    """The oldest events none of whose windows is still open, in offset order.

    Holding the others back keeps the committed offset at or before the first message of
    every open window, so a restarted worker re-reads exactly what it needs to rebuild.
    Acks stay in offset order (a later message waits for an earlier one) because Faust
    may commit past an unacked message at the head of a partition.
    """
    done = []
    while pending and not pending[0][1] & open_windows:
        done.append(pending.popleft()[0])
    return done
