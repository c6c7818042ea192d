"""The alerts processor's Kafka side: decode, judge, publish, restore. Agents are in agents.py.

State lives in memory and is rebuilt on start from two durable places:

- ``city.alerts.v1`` is compacted by ``type|entity_id``, so reading it back gives the
  latest transition of every alert: what is raised now, and from which window on each
  entity was last judged (:meth:`AlertsProcessor.restore`). Nothing still raised is raised
  again, and nothing cleared is cleared again.
- The input offsets. A KPI batch is acked once the KPI stream time is ``RETAIN_MS`` past
  its windows, and a service request event once its request is closed or has a later
  event, so a restart re-reads the recent windows (the first of two congested windows,
  say) and the latest event of every open request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from core import telemetry
from core.kafka import Publisher
from core.settings import Settings
from families.registry import TOPICS as CATALOGUE
from schemas.deadletter import dead_letter
from schemas.faust_codec import Undecodable
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde
from streams.alerts.rules import (
    CLEARED,
    RAISED,
    SERVICE_SLA,
    Alert,
    InvalidEvent,
    KpiAlerts,
    KpiWindow,
    ReorderBuffer,
    SlaAlerts,
    default_rules,
    district_of,
)
from streams.reference import CompactedTable

log = logging.getLogger(__name__)
COMPONENT = "alerts-processor"
TOPICS = (
    "city.kpi.batches.v1",
    "city.service_requests.v1",
    "city.service_categories.v1",
    "city.road_segments.v1",
    "city.alerts.v1",
    "city.dlq.v1",
)
# KPI input is held (not committed) until the KPI stream time is this far past its windows:
# two of the longest windows (hourly uptime) cover every window a rule looks back at.
RETAIN_MS = 2 * 3_600_000

T = TypeVar("T")


@dataclass
class Stats:
    """Counters served at /citystream/stats/ on the alerts processor's web port."""

    kpi_batches: int = 0
    kpi_rows: int = 0
    request_events: int = 0
    undecodable: int = 0
    invalid: int = 0
    raised: int = 0
    cleared: int = 0
    restored: int = 0
    last_input_monotonic: float = field(default_factory=time.monotonic)


class AlertsProcessor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = {name: settings.topic(name) for name in TOPICS}
        self.kpis = KpiAlerts(default_rules(settings.alert_aqi_threshold), self._district_of)
        self.sla = SlaAlerts()
        self.stats = Stats()
        self.kpi_stream_time = 0  # largest window_end seen on the KPI input
        self.kpi_watermark = 0  # windows ending at or before it have been judged
        self.reorder = ReorderBuffer()
        self._kpi_seen: dict[int, tuple[int, float]] = {}  # partition: (newest end, when)
        self._kpi_started = 0.0
        # Unacked input per partition: (event, what keeps it from being acked).
        self.kpi_pending: dict[int, deque[tuple[Any, int]]] = {}
        self.request_pending: dict[int, deque[tuple[Any, tuple[int, str]]]] = {}
        self._categories_checked = 0  # categories' version the waiting requests last saw
        self._unflushed = False
        # The agents and the timer take turns: nothing is acked while another turn's
        # alerts are still on their way to Kafka.
        self._turn = asyncio.Lock()

    def setup(self) -> None:
        """Registry, producer, reference data and alert state; run before the worker starts."""
        registry = SchemaRegistry(self.settings.registry_config())
        self.serdes: dict[str, AvroSerde] = {
            n: registry.serde(t, CATALOGUE[n]) for n, t in self.topics.items()
        }
        self.publisher = Publisher.create(self.settings, **{"linger.ms": 5})
        self.segments = self._table("city.road_segments.v1", lambda r: str(r["district"]))
        self.categories = self._table("city.service_categories.v1", lambda r: int(r["sla_minutes"]))
        for table in (self.segments, self.categories):
            table.refresh()  # to the end before any input, then followed in the background
            table.follow()
        self.restore()

    def close(self) -> None:
        self.segments.close()  # first: a follower may still dead-letter a bad record
        self.categories.close()
        self.publisher.flush()

    def _table(self, name: str, to_value: Callable[[dict[str, Any]], Any]) -> CompactedTable:
        config = self.settings.kafka_config()
        return CompactedTable(config, self.topics[name], self.serdes[name], to_value, self._reject)

    def restore(self) -> None:
        """Seed the rules with the latest transition per key of ``city.alerts.v1``."""
        table = self._table("city.alerts.v1", Alert.from_record)
        try:
            table.refresh()
        finally:
            table.close()
        for alert in table.data.values():
            if alert.type == SERVICE_SLA:
                self.sla.restore(alert)
            else:
                self.kpis.restore(alert)
        self._flush_rejects()
        self.stats.restored = len(table.data)
        active = sum(1 for a in table.data.values() if a.state == RAISED)
        log.info("restored %d alerts from %s, %d active", len(table.data), table.topic, active)

    # --- KPI input ---------------------------------------------------------------------

    async def _on_kpi_batch(
        self,
        partition: int,
        value: dict[str, Any] | Undecodable,
        origin: str,
        assigned: set[int],
        event: Any = None,
    ) -> list[Any]:
        now = time.monotonic()
        self.stats.last_input_monotonic = now
        pending = self.kpi_pending.setdefault(partition, deque())
        newest = 0
        if isinstance(value, Undecodable):
            self._reject_undecodable(value, origin)
        else:
            self.stats.kpi_batches += 1
            newest = self._hold_batch(value, origin)
        self.saw_kpis(partition, newest, now)
        await self._publish(self._judge_due(assigned))
        pending.append((event, newest))
        return self._release_kpis(pending)

    async def on_kpi_batch(
        self,
        partition: int,
        value: dict[str, Any] | Undecodable,
        origin: str,
        assigned: set[int],
        event: Any = None,
    ) -> list[Any]:
        """Judge one KPI batch message; returns the input events that may now be acked."""
        async with self._turn:
            return await self._on_kpi_batch(partition, value, origin, assigned, event)

    def _hold_batch(self, batch: dict[str, Any], origin: str) -> int:
        """Buffer the watched rows until the watermark passes them; returns the newest end."""
        watched, ends = self.kpis.by_kpi, batch["window_end"]
        self.stats.kpi_rows += len(ends)
        for i, kpi in enumerate(batch["kpi"]):
            if kpi not in watched:
                continue
            window = KpiWindow(
                kpi, batch["scope"][i], batch["entity_id"][i], batch["window_start"][i],
                ends[i], batch["value"][i], batch["samples"][i], batch["revision"][i],
            )  # fmt: skip
            if not math.isfinite(window.value):
                self.stats.invalid += 1
                detail = f"{kpi} value {window.value} is not a finite number"
                self._reject(orjson.dumps(window), "invalid_row", detail, f"{origin}#{i}")
            else:
                self.reorder.push(window)
        return max(ends, default=0)

    def saw_kpis(self, partition: int, newest_end: int, now: float) -> None:
        """A partition delivered windows up to ``newest_end`` (0: nothing decodable)."""
        self._kpi_started = self._kpi_started or now
        if newest_end:
            seen_end, _ = self._kpi_seen.get(partition, (0, now))
            self._kpi_seen[partition] = (max(seen_end, newest_end), now)
            self.kpi_stream_time = max(self.kpi_stream_time, newest_end)

    def _judge_due(self, assigned: set[int]) -> list[Alert]:
        self.kpi_watermark = self._watermark(assigned)
        alerts = []
        for window in self.reorder.pop_until(self.kpi_watermark):
            alerts += self.kpis.add(window)
        return alerts

    def _watermark(self, assigned: set[int], now: float | None = None) -> int:
        """The smallest newest window end over the partitions still delivering.

        A partition silent for the idle timeout (or never heard from that long after the
        first KPI arrived) no longer holds the others back; when all are silent, every held
        window is judged. The watermark never goes back.
        """
        now = time.monotonic() if now is None else now
        idle = self.settings.idle_timeout_s
        marks = []
        for partition in assigned:
            seen = self._kpi_seen.get(partition)
            if seen is None:
                if self._kpi_started and now - self._kpi_started < idle:
                    marks.append(self.kpi_watermark)
            elif now - seen[1] < idle:
                marks.append(seen[0])
        mark = min(marks) if marks else self.kpi_stream_time
        return max(self.kpi_watermark, mark)

    def _release_kpis(self, pending: deque[tuple[Any, int]]) -> list[Any]:
        return release(pending, lambda newest: newest + RETAIN_MS <= self.kpi_watermark)

    def release_kpis(self) -> list[Any]:
        """Acks that became possible when the watermark moved without new input."""
        return [e for pending in self.kpi_pending.values() for e in self._release_kpis(pending)]

    # --- service request input -----------------------------------------------------------

    async def _on_request(
        self,
        partition: int,
        offset: int,
        value: dict[str, Any] | Undecodable,
        origin: str,
        event: Any = None,
    ) -> list[Any]:
        self.stats.last_input_monotonic = time.monotonic()
        pending = self.request_pending.setdefault(partition, deque())
        alerts: list[Alert] = []
        request_id = ""
        if isinstance(value, Undecodable):
            self._reject_undecodable(value, origin)
        else:
            self.stats.request_events += 1
            request_id = value["request_id"]
            await self._wait_for_category(str(value["category"]))
            try:
                alerts = self.sla.add(partition, offset, value, self.categories.data)
            except InvalidEvent as exc:
                self.stats.invalid += 1
                self._reject(orjson.dumps(value), "invalid_event", str(exc), origin)
        alerts += self._recheck_waiting()
        await self._publish(alerts)
        pending.append((event, (offset, request_id)))
        return release(pending, lambda pin: not self.sla.pins(partition, *pin))

    async def on_request(
        self,
        partition: int,
        offset: int,
        value: dict[str, Any] | Undecodable,
        origin: str,
        event: Any = None,
    ) -> list[Any]:
        """Apply one request event; returns the input events that may now be acked."""
        async with self._turn:
            return await self._on_request(partition, offset, value, origin, event)

    async def _wait_for_category(self, category: str) -> None:
        """A category never seen before waits once (at most a second) for its follower.

        The categories are followed in the background (streams/reference.py); this makes
        one published just before its first request count for it whatever the follower's
        timing. A request whose category is still unknown waits for it (``sla.waiting``)
        without holding anything up.
        """
        if self.categories.needs_wait((category,)):
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, self.categories.wait_for_keys, (category,))

    def _recheck_waiting(self) -> list[Alert]:
        """Requests waiting for their category's SLA, scheduled once the categories change."""
        version = self.categories.version
        if not self.sla.waiting or version == self._categories_checked:
            return []
        self._categories_checked = version
        return self.sla.recheck(self.categories.data)

    # --- timer -------------------------------------------------------------------------

    async def _on_tick(self, assigned: set[int]) -> list[Any]:
        alerts = self._judge_due(assigned) + self._recheck_waiting()
        await self._publish(alerts)
        return self.release_kpis()

    async def on_tick(self, assigned: set[int]) -> list[Any]:
        """Judge windows of partitions gone idle, schedule requests whose category arrived.

        Returns the KPI input events that may now be acked.
        """
        async with self._turn:
            return await self._on_tick(assigned)

    # --- output ------------------------------------------------------------------------

    def _district_of(self, scope: str, entity_id: str) -> str | None:
        return district_of(scope, entity_id, self.segments.data)

    def _reject_undecodable(self, value: Undecodable, origin: str) -> None:
        self.stats.undecodable += 1
        self._reject(value.payload, value.reason, value.detail, origin)

    def _reject(self, payload: bytes, reason: str, detail: str, origin: str) -> None:
        record = dead_letter(reason, detail, COMPONENT, origin, payload)
        self.publisher.send(
            self.topics["city.dlq.v1"], reason.encode(), self.serdes["city.dlq.v1"].encode(record)
        )
        self._unflushed = True
        telemetry.dead_lettered(COMPONENT, reason)  # telemetry

    def _flush_rejects(self) -> None:
        if self._unflushed:
            self.publisher.flush_until_delivered()
            self._unflushed = False

    async def _publish(self, alerts: list[Alert]) -> None:
        """Send, then wait for the acks: the input is acked only after this returns."""
        serde, topic = self.serdes["city.alerts.v1"], self.topics["city.alerts.v1"]
        for alert in alerts:
            self.publisher.send(topic, alert.key.encode(), serde.encode(alert.record()))
            log.info("alert %s %s: %s", alert.state, alert.alert_id, alert.message)
        telemetry.count_out(topic, len(alerts))  # telemetry
        self.stats.raised += sum(1 for a in alerts if a.state == RAISED)
        self.stats.cleared += sum(1 for a in alerts if a.state == CLEARED)
        if alerts or self._unflushed:
            flush = self.publisher.flush_until_delivered  # waits through a broker outage
            await asyncio.get_running_loop().run_in_executor(None, flush)
            self._unflushed = False

    def stats_dict(self) -> dict[str, Any]:
        s, k = self.stats, self.kpis.counters
        active = len(self.kpis.active()) + sum(
            1 for a in self.sla.alerts.values() if a.state == RAISED
        )
        return {
            "kpi_batches": s.kpi_batches,
            "kpi_rows": s.kpi_rows,
            "windows_judged": k.windows,
            "ignored_versions": k.ignored_versions,
            "stale_windows": k.stale,
            "request_events": s.request_events,
            "open_requests": len(self.sla.open),
            "unknown_category": self.sla.counters.unknown_category,
            "undecodable": s.undecodable,
            "invalid": s.invalid,
            "raised": s.raised,
            "cleared": s.cleared,
            "active": active,
            "restored": s.restored,
            "kpi_stream_time": self.kpi_stream_time,
            "kpi_watermark": self.kpi_watermark,
            "kpi_windows_held": len(self.reorder),
            "idle_seconds": round(time.monotonic() - s.last_input_monotonic, 3),
            **self.segments.stats.as_dict("road_segments_"),
            **self.categories.stats.as_dict("service_categories_"),
        }


def release(pending: deque[tuple[Any, T]], releasable: Callable[[T], bool]) -> list[Any]:
    """The oldest pending events that may be acked, in offset order.

    Acks stay in offset order (a later message waits for an earlier one) because Faust may
    commit past an unacked message at the head of a partition; streams/traffic/processor.py
    holds its input back the same way.
    """
    done = []
    while pending and releasable(pending[0][1]):
        done.append(pending.popleft()[0])
    return done
