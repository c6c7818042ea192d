"""The Kafka side of a windowed KPI processor: decode, window, publish, ack in order.

Every KPI family runs on this with its own :class:`~streams.engine.windows.Domain`; the
agents are in :mod:`streams.engine.agents`. Recovery is exact without Faust's exactly-once
mode or windowed tables: input is acked only when every window it fed is final, and a
restarted worker resumes stream time from the watermark it last published on its
partials topic, rebuilding open windows from the re-read input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from core import telemetry
from core.family import Family, Input
from core.kafka import Publisher, wait_for_topic
from core.settings import Settings
from schemas.catalog import TopicSpec
from schemas.deadletter import dead_letter
from schemas.faust_codec import Undecodable
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde
from streams.engine.windows import (
    Counters,
    Emission,
    MergeWindows,
    PartitionWindows,
    WindowKey,
)
from streams.reference import CompactedTable, FollowStats

log = logging.getLogger(__name__)
Pending = deque[tuple[Any, frozenset[WindowKey]]]  # unacked input: (event, windows it fed)
KPI_BATCH_ROWS = 5000  # ~300 KB per message
KPI_FIELDS = ("kpi", "scope", "entity_id", "window_start", "window_end", "value", "samples",
              "revision", "computed_at")  # fmt: skip
PARTIAL_ID_STRIDE = 1000  # input n's partition p publishes its partials as n * 1000 + p
MERGE_STAGE = "merge"  # telemetry: lineage key of the merge stage (stage 1: (input, partition))


@dataclass(frozen=True)
class ProcessorSpec:
    """What a KPI family's processor reads and writes (built from its :class:`Family`)."""

    name: str
    inputs: tuple[Input, ...]
    partials_topic: str
    catalogue: Mapping[str, TopicSpec]  # the declarations of (at least) its topics
    reference_topic: str | None = None
    to_reference: Callable[[dict[str, Any]], Any] = dict
    # False for a processor reading another family's input (devices reads traffic and
    # air): their own processors dead-letter bad and late input, once.
    dead_letters_input: bool = True

    @classmethod
    def of(
        cls, family: Family, catalogue: Mapping[str, TopicSpec], city: str | None = None
    ) -> ProcessorSpec:
        """The processor of ``family`` (its topics declared in ``catalogue``: the registry's);
        with ``city``, its rules name the city scope after it."""
        inputs = family.processor_inputs
        if city is not None:
            inputs = tuple(Input(i.domain.for_city(city), i.batch_topic) for i in inputs)
        return cls(
            name=family.name,
            inputs=inputs,
            partials_topic=family.partials_topic,
            catalogue=catalogue,
            reference_topic=family.reference.topic if family.reference else None,
            to_reference=family.to_reference,
            dead_letters_input=family.dead_letters_input,
        )

    @property
    def input_topics(self) -> tuple[str, ...]:
        """What the processor's consumer group reads (for lag)."""
        return (*(i.batch_topic for i in self.inputs), self.partials_topic)

    @property
    def topics(self) -> tuple[str, ...]:
        names = [i.batch_topic for i in self.inputs]
        names += [self.partials_topic, "city.kpi.v1", "city.kpi.batches.v1", "city.dlq.v1"]
        return (*names, self.reference_topic) if self.reference_topic else tuple(names)


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
    reference: FollowStats = field(default_factory=FollowStats)  # the reference table's

    def as_dict(self) -> dict[str, Any]:
        return {
            **vars(self.counters),
            "batches": self.batches,
            "undecodable": self.undecodable,
            "kpis_emitted": self.kpis_emitted,
            "partials_emitted": self.partials_emitted,
            "idle_seconds": round(time.monotonic() - self.last_input_monotonic, 3),
            **self.reference.as_dict(),
        }


class _NoReference(dict[str, Any]):
    """A processor without reference data: always empty, nothing to follow or wait for."""

    stats = FollowStats()

    def refresh(self) -> int:
        return 0

    def follow(self) -> None: ...

    def needs_wait(self, keys: list[str]) -> bool:
        return False

    def wait_for_keys(self, keys: list[str]) -> bool:
        return True

    def close(self) -> None: ...

    @property
    def data(self) -> dict[str, Any]:
        return self


class WindowedProcessor:
    """Holds the windows of the partitions this worker owns and the merge stage."""

    def __init__(self, settings: Settings, spec: ProcessorSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.name = spec.name
        self.component = f"{spec.name}-processor"
        self.topics = {name: settings.topic(name) for name in spec.topics}
        self.size_ms = settings.window_minutes * 60_000
        self.grace_ms = settings.grace_minutes * 60_000
        self.idle_ms = int(settings.idle_timeout_s * 1000)
        self.partitions: dict[tuple[int, int], PartitionWindows[Any]] = {}  # (input, partition)
        self.merge = self._new_merge()
        self.stats = Stats()
        self._refresh_lock = asyncio.Lock()
        # Input not yet safe to commit: (event, windows it went to), per input partition.
        self.pending: dict[tuple[int, int], Pending] = {}
        # The merge stage rebuilds from the partials it re-reads, watermarks included:
        # restoring later watermarks would close windows before their older parts arrive.
        self.merge_pending: Pending = deque()
        # telemetry: which input messages fed which window, for the KPIs' span links
        # (the merge stage keeps windows an hour longer for the trend windows)
        self.lineage = telemetry.WindowLineage(2 * (self.size_ms + self.grace_ms) + 3_600_000)

    def _new_merge(self) -> MergeWindows:
        domain = self.spec.inputs[0].domain
        return MergeWindows(domain, self.grace_ms, self.idle_ms, size_ms=self.size_ms)

    def setup(self) -> None:
        """Registry, producer and reference data; run by the entry point before the worker."""
        registry = SchemaRegistry(self.settings.registry_config())
        self.serdes: dict[str, AvroSerde] = {
            n: registry.serde(t, self.spec.catalogue[n]) for n, t in self.topics.items()
        }
        self.publisher = Publisher.create(self.settings, **{"linger.ms": 5})
        self.reference: CompactedTable | _NoReference = _NoReference()
        if self.spec.reference_topic:
            self.reference = CompactedTable(
                self.settings.kafka_config(),
                self.topics[self.spec.reference_topic],
                self.serdes[self.spec.reference_topic],
                self.spec.to_reference,
                self._reject,
            )
        self.reference.refresh()  # to the end before any input, then followed
        self.reference.follow()
        self.stats.reference = self.reference.stats
        log.info("%s: %d reference records", self.name, len(self.reference.data))
        self.partition_counts = [self._partition_count(i.batch_topic) for i in self.spec.inputs]

    def close(self) -> None:
        self.reference.close()  # first: the follower may still dead-letter a bad record
        self.publisher.flush()

    # --- stage 1 ---------------------------------------------------------------------

    async def on_batch(
        self,
        source: int,
        partition: int,
        value: dict[str, Any] | Undecodable,
        origin: str,
        event: Any = None,
    ) -> list[Any]:
        """Process one batch message of input ``source``; returns the input events to ack."""
        self.stats.last_input_monotonic = time.monotonic()
        pending = self.pending.setdefault((source, partition), deque())
        if isinstance(value, Undecodable):
            self.stats.undecodable += 1
            if self.spec.dead_letters_input:
                self._reject(value.payload, value.reason, value.detail, origin)
                await self._flush()
            pending.append((event, frozenset()))
            return _release(pending, set())
        self.stats.batches += 1
        domain = self.spec.inputs[source].domain
        if domain.reference_column:
            await self._maybe_refresh_reference(value[domain.reference_column])
        windows = await self._partition_windows(source, partition)
        before = Counters(**vars(windows.counters))
        emission = windows.add(value, self.reference.data, _now_ms())
        self._count(windows.counters, before)
        if self.spec.dead_letters_input:
            self._dead_letter_late(emission, value)
        self.lineage.fed((source, partition), emission.touched)  # telemetry
        await self._publish(emission, (source, partition))
        pending.append((event, frozenset(emission.touched)))
        return _release(pending, windows.open_windows())

    async def _partition_windows(self, source: int, partition: int) -> PartitionWindows[Any]:
        key = (source, partition)
        if key not in self.partitions:
            loop = asyncio.get_running_loop()
            watermarks = await loop.run_in_executor(None, self.published_watermarks)
            partial_id = source * PARTIAL_ID_STRIDE + partition
            windows: PartitionWindows[Any] = PartitionWindows(
                self.spec.inputs[source].domain,
                partition,
                self.partition_counts[source],
                self.size_ms,
                self.grace_ms,
                partial_id=partial_id,
                merge_count=sum(self.partition_counts),
            )
            if partial_id in watermarks:
                windows.restore(watermarks[partial_id])
                log.info("%s: %s resumes at stream time %d", self.name, key, watermarks[partial_id])
            self.partitions[key] = windows
        return self.partitions[key]

    def published_watermarks(self) -> dict[int, int]:
        """Latest watermark each input partition published on the partials topic."""
        topic = self.topics[self.spec.partials_topic]
        count = sum(self.partition_counts)
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
                    partial = self.serdes[self.spec.partials_topic].decode(msg.value())
                    p, mark = int(partial["source_partition"]), int(partial["watermark_ms"])
                    found[p] = max(found.get(p, -1), mark)
            return found
        finally:
            consumer.close()

    def on_assigned(self, owned: dict[str, set[int]]) -> None:
        """Forget the state of partitions another worker owns now; it rebuilds them.

        Partitions this worker keeps across a rebalance keep their state: Faust goes on
        reading them where it was, and a re-read message would only meet the dedup set.
        """
        for source, spec_input in enumerate(self.spec.inputs):
            kept = owned.get(self.topics[spec_input.batch_topic], set())
            for key in [k for k in self.partitions if k[0] == source and k[1] not in kept]:
                del self.partitions[key]
                self.pending.pop(key, None)
        if not owned.get(self.topics[self.spec.partials_topic]):
            self.merge = self._new_merge()
            self.merge_pending.clear()
        self.lineage.forget(lambda key: key == MERGE_STAGE or key in self.partitions)  # telemetry

    def _partition_count(self, name: str) -> int:
        return len(wait_for_topic(self.publisher.producer, self.topics[name]).partitions)

    def _count(self, after: Counters, before: Counters) -> None:
        self.stats.counters.merge(
            Counters(**{k: getattr(after, k) - getattr(before, k) for k in vars(after)})
        )

    async def _maybe_refresh_reference(self, keys: list[str]) -> None:
        """A key never seen before waits once (at most a second) for the follower.

        The reference topic is followed in the background; this only makes a record
        published just before its first reading count for it whatever the follower's
        timing (see streams/reference.py). A key still unknown afterwards never waits
        again: its events count as ``unknown_reference`` and go to district ``unknown``.
        The lock makes a processor's other input agents wait for a catch-up in flight
        instead of going on with reference data that is about to arrive.
        """
        if not self.reference.needs_wait(keys):  # the hot path: a dict lookup per key
            return
        async with self._refresh_lock:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.reference.wait_for_keys, keys)

    def _dead_letter_late(self, emission: Emission, batch: dict[str, Any]) -> None:
        for late in emission.late:
            i = late.position
            event = {k: v[i] for k, v in batch.items() if isinstance(v, list) and k != "origin"}
            payload = orjson.dumps({**event, "source": batch.get("source")})
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
            self.merge_pending.append((event, frozenset()))
            return _release(self.merge_pending, set())
        kpis = self.merge.add(value, _now_ms())
        self.lineage.fed(MERGE_STAGE, self.merge.touched)  # telemetry
        await self._publish(Emission(kpis=kpis), MERGE_STAGE)
        self.merge_pending.append((event, frozenset(self.merge.touched)))
        return _release(self.merge_pending, self.merge.open_windows())

    # --- idle timer --------------------------------------------------------------------

    async def on_tick(self) -> None:
        """Emit what waits for input that is not coming (the end of a finite replay)."""
        idle = time.monotonic() - self.stats.last_input_monotonic >= self.settings.idle_timeout_s
        if idle:
            for key, windows in list(self.partitions.items()):
                await self._publish(windows.flush(self.reference.data, _now_ms()), key)
        await self._publish(Emission(kpis=self.merge.emit_due(_now_ms())), MERGE_STAGE)

    # --- output ------------------------------------------------------------------------

    def _reject(self, payload: bytes, reason: str, detail: str, origin: str) -> None:
        record = dead_letter(reason, detail, self.component, origin, payload)
        self.publisher.send(
            self.topics["city.dlq.v1"], reason.encode(), self.serdes["city.dlq.v1"].encode(record)
        )
        telemetry.dead_lettered(self.component, reason)  # telemetry

    async def _publish(self, emission: Emission, stage: Any) -> None:
        """Send, then wait for the acks: Faust commits the input offset only after this.

        ``stage`` is (input, partition) for the first stage, MERGE_STAGE for the second.
        """
        # telemetry: an ``emit kpi`` span linked to the inputs; its context in the headers
        with self.lineage.emit(stage, emission.kpis, emission.partial) as headers:
            self._send_emission(emission, headers)
        telemetry.window_emitted(emission.kpis, _now_ms())  # telemetry
        if emission.kpis or emission.partial is not None or emission.late:
            await self._flush()

    def _send_emission(self, emission: Emission, headers: telemetry.Headers | None) -> None:
        kpi_serde, kpi_topic = self.serdes["city.kpi.v1"], self.topics["city.kpi.v1"]
        # telemetry: no trace headers on the one-record messages: at one per reading they
        # cost more than the rest of tracing (measured); the batches carry the context.
        for record in emission.kpis:
            key = (
                f"{record['kpi']}|{record['scope']}|{record['entity_id']}|{record['window_start']}"
            )
            self.publisher.send(kpi_topic, key.encode(), kpi_serde.encode(record))
        self._send_kpi_batches(emission.kpis, headers)
        self.stats.kpis_emitted += len(emission.kpis)
        telemetry.count_out(kpi_topic, len(emission.kpis))  # telemetry
        if emission.partial is not None:
            partial = emission.partial
            self.publisher.send(
                self.topics[self.spec.partials_topic],
                str(partial["source_partition"]).encode(),
                self.serdes[self.spec.partials_topic].encode(partial),
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
        # a broker outage makes this wait (with log lines), not end the worker
        await asyncio.get_running_loop().run_in_executor(None, self.publisher.flush_until_delivered)


def _release(pending: Pending, open_windows: set[WindowKey]) -> list[Any]:
    """The oldest events none of whose windows is still open, in offset order.

    Holding the others back keeps the committed offset at or before the first message of
    every open window, so a restarted worker re-reads exactly what it needs to rebuild.
    Acks stay in offset order (a later message waits for an earlier one) because Faust
    may commit past an unacked head of a partition.
    """
    done = []
    while pending and not pending[0][1] & open_windows:
        done.append(pending.popleft()[0])
    return done
