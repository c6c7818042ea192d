"""Event-time windows for every KPI family: pure state machines, no Kafka, unit-testable.

Two stages, so workers can share partitions:

1. :class:`PartitionWindows` (one per input partition) de-duplicates, drops late events,
   keeps one accumulator per entity and window, and emits entity KPIs when stream time
   passes a window's end. It hands on its group sums (district, city, category…) as a
   *partial*, with its stream time as watermark.
2. :class:`MergeWindows` (single partition) merges the partials of all input partitions
   and emits group KPIs once every partition's watermark has passed the window's end, or
   ``idle_ms`` after the first partial arrived (an idle or empty partition cannot hold
   results back forever).

What an event adds and which KPIs come out is a :class:`Domain`'s business; the rules on
time are the same for every domain and live here only. A window is emitted first with
revision 0; events that arrive within grace re-emit it with the next revision. Windows are
forgotten once stream time passes end + grace, and an event for a forgotten window is
*late*. A domain with ``trend`` also gets hopping windows (1 h, advancing one window size)
for its groups (district, city): the merge stage builds them from the tumbling parts it
holds, so an event is in a trend window exactly when it is in one of its tumbling
windows, and a restarted first stage, which rebuilds only open windows, cannot lose them.
Entity-level trends are left to queries over the tumbling rows: carrying every entity's
sums through the merge stage cost more than the whole first stage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple

# The pure types of a family's rules live in the core (core/family.py), so family packages
# need nothing from the engine.
from core.family import HOUR_MS, Acc, Batch, Domain, Group, GroupKey, group

WindowKey = tuple[int, int]  # (start ms, end ms)


def window_start(event_ms: int, size_ms: int) -> int:
    """Windows are aligned to the UTC epoch."""
    return event_ms - event_ms % size_ms


def kpi_record(
    kpi: str, scope: str, entity: str, key: WindowKey, value: float, samples: int,
    revision: int, now_ms: int,
) -> dict[str, Any]:  # fmt: skip
    return {
        "kpi": kpi,
        "scope": scope,
        "entity_id": entity,
        "window_start": key[0],
        "window_end": key[1],
        "value": value,
        "samples": samples,
        "revision": revision,
        "computed_at": now_ms,
    }


@dataclass
class Counters:
    """Reconciliation: every event read is exactly one of accepted, duplicate, late."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    unknown_reference: int = 0  # accepted events whose entity has no reference data

    def merge(self, other: Counters) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.late += other.late
        self.unknown_reference += other.unknown_reference


class LateEvent(NamedTuple):
    position: int  # index in the batch, so the caller can dead-letter the original
    event_ms: int
    stream_time_ms: int


@dataclass
class Emission:
    kpis: list[dict[str, Any]] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    touched: set[WindowKey] = field(default_factory=set)  # windows the input's events went to


@dataclass
class _Window(Generic[Acc]):
    accs: dict[str, Acc] = field(default_factory=dict)
    seen: set[Any] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    revision: int = -1


class PartitionWindows(Generic[Acc]):
    """Stage 1 state for one input partition."""

    def __init__(
        self,
        domain: Domain[Acc],
        partition: int,
        partition_count: int,
        size_ms: int,
        grace_ms: int,
        partial_id: int | None = None,
        merge_count: int | None = None,
    ) -> None:
        self.domain = domain
        self.partition = partition
        self.partition_count = partition_count
        # The merge stage waits for this many partials sources (all inputs' partitions).
        self.partial_id = partition if partial_id is None else partial_id
        self.merge_count = merge_count or partition_count
        self.size_ms = domain.window_ms or size_ms
        self.grace_ms = grace_ms
        self.stream_time = -1
        self.windows: dict[WindowKey, _Window[Acc]] = {}
        self.counters = Counters()
        self._reported_watermark_window = -1
        self._filled_until = -1  # silence detection: windows exist up to here

    def add(self, batch: Batch, reference: Mapping[str, Any], now_ms: int) -> Emission:
        """Account one batch of events, then emit what stream time has closed."""
        emission = Emission()
        domain, size, grace, counters = self.domain, self.size_ms, self.grace_ms, self.counters
        entities, times = batch[domain.entity_column], batch["event_time_ms"]
        refs = batch[domain.reference_column] if domain.reference_column else None
        for i, entity in enumerate(entities):
            ts = times[i]
            start = ts - ts % size
            if self.stream_time > start + size + grace:
                counters.late += 1
                emission.late.append(LateEvent(i, ts, self.stream_time))
                continue
            key = (start, start + size)
            window = self.windows.get(key) or self._open(key, reference)
            dedup = domain.dedup_key(batch, i)
            if dedup in window.seen:
                counters.duplicates += 1
                continue
            window.seen.add(dedup)
            self._account(window, entity, batch, i)
            emission.touched.add(key)
            counters.accepted += 1
            if refs is not None and refs[i] not in reference:
                counters.unknown_reference += 1
            if ts > self.stream_time:
                self.stream_time = ts
        self._fill_silent_windows(reference)
        self._emit(emission, reference, now_ms, lambda end: end <= self.stream_time)
        return emission

    def _account(self, window: _Window[Acc], entity: str, batch: Batch, i: int) -> None:
        acc = window.accs.get(entity)
        if acc is None:
            acc = window.accs[entity] = self.domain.new()
        self.domain.add(acc, batch, i)
        window.dirty.add(entity)

    def _open(self, key: WindowKey, reference: Mapping[str, Any]) -> _Window[Acc]:
        """A new window; entities expected to report start in it with nothing."""
        window: _Window[Acc] = _Window()
        for entity in self.domain.expected(self.partition, self.partition_count, reference):
            window.accs[entity] = self.domain.new()
            window.dirty.add(entity)
        self.windows[key] = window
        return window

    def _fill_silent_windows(self, reference: Mapping[str, Any]) -> None:
        """With expected entities, every window up to stream time exists, even an empty one."""
        if self.stream_time < 0 or not self.domain.expected(
            self.partition, self.partition_count, reference
        ):
            return
        last = window_start(self.stream_time, self.size_ms)
        if self._filled_until >= 0:
            first = self._filled_until + self.size_ms
        else:
            first = min((s for s, e in self.windows if e - s == self.size_ms), default=last)
        for start in range(first, last + 1, self.size_ms):
            key = (start, start + self.size_ms)
            if key not in self.windows:
                self._open(key, reference)  # emitted by _emit even if already past grace
        self._filled_until = max(self._filled_until, last)

    def restore(self, watermark_ms: int) -> None:
        """Resume after a restart or rebalance at the stream time last published.

        Input is re-read from the oldest open window's first message (the committed
        offset); events of windows finalized before the watermark are then late, and
        open windows are rebuilt exactly from their events.
        """
        self.stream_time = max(self.stream_time, watermark_ms)
        self._reported_watermark_window = window_start(self.stream_time, self.size_ms)
        self._filled_until = window_start(self.stream_time, self.size_ms) - self.size_ms

    def open_windows(self) -> set[WindowKey]:
        return set(self.windows)

    def flush(self, reference: Mapping[str, Any], now_ms: int) -> Emission:
        """Emit every window with unemitted events (no more input is coming for now)."""
        emission = Emission()
        self._emit(emission, reference, now_ms, lambda end: True)
        return emission

    def _emit(
        self, emission: Emission, reference: Mapping[str, Any], now_ms: int, due: Any
    ) -> None:
        emitted: list[dict[str, Any]] = []
        finalized = False
        for key in sorted(self.windows, key=lambda k: (k[1], k[0])):
            window = self.windows[key]
            if window.dirty and due(key[1]):
                window.revision += 1
                emission.kpis.extend(self._entity_kpis(key, window, reference, now_ms))
                emitted.append(self._partial_window(key, window, reference))
                window.dirty.clear()
            if self.stream_time > key[1] + self.grace_ms:
                del self.windows[key]
                finalized = True
        watermark_window = window_start(self.stream_time, self.size_ms)
        # The watermark is published whenever a window is finalized, so a restarted worker
        # restoring it knows which windows are done (see restore()).
        if emitted or finalized or watermark_window != self._reported_watermark_window:
            self._reported_watermark_window = watermark_window
            emission.partial = {
                "source_partition": self.partial_id,
                "partition_count": self.merge_count,
                "watermark_ms": self.stream_time,
                "windows": emitted,
            }

    def _entity_kpis(
        self, key: WindowKey, window: _Window[Acc], reference: Mapping[str, Any], now_ms: int
    ) -> Iterable[dict[str, Any]]:
        domain = self.domain
        for entity in sorted(window.dirty):
            for kpi, value, samples in domain.entity_kpis(
                entity, window.accs[entity], reference, False
            ):
                label = domain.label(entity)
                yield kpi_record(
                    kpi, domain.entity_scope, label, key, value, samples, window.revision, now_ms
                )

    def _partial_window(
        self, key: WindowKey, window: _Window[Acc], reference: Mapping[str, Any]
    ) -> dict[str, Any]:
        groups: dict[GroupKey, Group] = {}
        for entity, acc in window.accs.items():
            self.domain.contribute(entity, acc, reference, groups)
        rows = [
            {
                "scope": scope,
                "entity_id": entity,
                "samples": g.samples,
                "sums": g.sums,
                "values": g.values,
            }
            for (scope, entity), g in sorted(groups.items())
        ]
        return {"window_start_ms": key[0], "window_end_ms": key[1], "groups": rows}


@dataclass
class _MergeWindow:
    parts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    first_seen_ms: int = 0
    dirty: bool = False
    revision: int = -1


@dataclass
class _Trend:
    dirty: bool = False
    revision: int = -1


class MergeWindows:
    """Stage 2: merges partition partials into group KPIs (district, city, category…).

    A window is forgotten once every partition's watermark has passed end + grace (no
    partition can send more for it); to bound memory when a partition never reports at
    all, also once every reporting one is ``retain_ms`` past it. Partials for a
    forgotten window are ignored and counted, never merged into a fresh, incomplete one.
    That memory bound also waits ``hold_ms`` of wall-clock time: in a fast replay one
    partition can race a day ahead before another has sent anything at all.
    With a trend domain, tumbling windows are kept until every 1-hour window holding
    them is final too, and each trend window is the merge of its tumbling windows.
    """

    def __init__(
        self,
        domain: Domain[Any],
        grace_ms: int,
        idle_ms: int,
        retain_ms: int = 24 * HOUR_MS,
        size_ms: int = 0,
        hold_ms: int = 300_000,
    ) -> None:
        self.domain = domain
        self.hold_ms = hold_ms
        self.size_ms = domain.window_ms or size_ms
        self.grace_ms = grace_ms
        self.idle_ms = idle_ms
        self.retain_ms = retain_ms
        trend = domain.trend and self.size_ms < HOUR_MS
        self.keep_ms = HOUR_MS - self.size_ms if trend else 0  # kept past end for trends
        self.watermarks: dict[int, int] = {}
        self.partition_count = 0
        self.windows: dict[WindowKey, _MergeWindow] = {}
        self.trends: dict[int, _Trend] = {}  # by start; end = start + 1 h
        self.forgotten_before = -1
        self.ignored_partials = 0
        self.touched: set[WindowKey] = set()  # windows the last add() went to

    def open_windows(self) -> set[WindowKey]:
        return set(self.windows)

    def add(self, partial: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
        self.touched = set()
        partition = int(partial["source_partition"])
        self.partition_count = max(self.partition_count, int(partial["partition_count"]))
        self.watermarks[partition] = max(
            self.watermarks.get(partition, -1), int(partial["watermark_ms"])
        )
        for item in partial["windows"]:
            key = (int(item["window_start_ms"]), int(item["window_end_ms"]))
            if key[1] <= self.forgotten_before:
                self.ignored_partials += 1
                continue
            self.touched.add(key)
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = _MergeWindow(first_seen_ms=now_ms)
            groups = list(item["groups"])
            # A partition's sums only grow; a smaller part is stale (from a worker that
            # has since lost the partition) and must not replace a fuller one.
            if _samples(groups) >= _samples(window.parts.get(partition, [])):
                window.parts[partition] = groups
                window.dirty = True
                self._mark_trends(key[0])
        return self.emit_due(now_ms)

    def _mark_trends(self, start: int) -> None:
        if self.keep_ms:
            for hop in range(start - self.keep_ms, start + 1, self.size_ms):
                self.trends.setdefault(hop, _Trend()).dirty = True

    def _complete_until(self) -> int:
        """Stream time every input partition has passed (-1 until all have reported)."""
        if len(self.watermarks) < self.partition_count or not self.watermarks:
            return -1
        return min(self.watermarks.values())

    def emit_due(self, now_ms: int) -> list[dict[str, Any]]:
        """KPIs of windows all partitions have passed, or that waited ``idle_ms``."""
        complete_until = self._complete_until()
        out: list[dict[str, Any]] = []
        for key in sorted(self.windows, key=lambda k: (k[1], k[0])):
            window = self.windows[key]
            if window.dirty and self._due(key[1], [window], complete_until, now_ms):
                window.revision += 1
                window.dirty = False
                out.extend(self._kpis(key, [window], window.revision, now_ms))
        out.extend(self._emit_trends(complete_until, now_ms))
        self._forget(complete_until, now_ms)
        return out

    def _due(self, end: int, windows: list[_MergeWindow], complete_until: int, now_ms: int) -> bool:
        waited = now_ms - max(w.first_seen_ms for w in windows) >= self.idle_ms
        return end <= complete_until or waited

    def _emit_trends(self, complete_until: int, now_ms: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in sorted(self.trends):
            trend, end = self.trends[start], start + HOUR_MS
            quarters = [
                self.windows[(q, q + self.size_ms)]
                for q in range(start, end, self.size_ms)
                if (q, q + self.size_ms) in self.windows
            ]
            if trend.dirty and quarters and self._due(end, quarters, complete_until, now_ms):
                trend.revision += 1
                trend.dirty = False
                out.extend(self._kpis((start, end), quarters, trend.revision, now_ms))
            if not trend.dirty and complete_until > end + self.grace_ms:
                del self.trends[start]
        return out

    def _forget(self, complete_until: int, now_ms: int) -> None:
        # Memory bound for partitions that never report (no data at all): once every
        # partition that does report is retain_ms past a window. A lagging partition
        # that reports holds windows open, so its parts are never dropped.
        silent = len(self.watermarks) < self.partition_count
        reporting = min(self.watermarks.values(), default=-1)
        for key, window in list(self.windows.items()):
            end = key[1] + self.keep_ms
            finished = complete_until > end + self.grace_ms
            held = now_ms - window.first_seen_ms >= self.hold_ms
            abandoned = silent and reporting > end + self.retain_ms and held
            if not window.dirty and (finished or abandoned):
                del self.windows[key]
                self.forgotten_before = max(self.forgotten_before, key[1])

    def _kpis(
        self, key: WindowKey, windows: list[_MergeWindow], revision: int, now_ms: int
    ) -> list[dict[str, Any]]:
        trend = key[1] - key[0] != self.size_ms
        merged: dict[GroupKey, Group] = {}
        for window in windows:
            for groups in window.parts.values():
                for g in groups:
                    if g["scope"] == self.domain.entity_scope and not trend:
                        continue  # entity KPIs of tumbling windows come from the first stage
                    values = {k: list(v) for k, v in g["values"].items()}
                    part = Group(int(g["samples"]), dict(g["sums"]), values)
                    group(merged, g["scope"], g["entity_id"]).merge(part)
        return [
            kpi_record(kpi, scope, entity, key, value, samples, revision, now_ms)
            for (scope, entity), g in sorted(merged.items())
            for kpi, value, samples in self.domain.group_kpis(scope, g, trend)
        ]


def _samples(groups: list[dict[str, Any]]) -> int:
    """A part's size: every event is in exactly one city group."""
    return sum(int(g["samples"]) for g in groups if g["scope"] == "city")
