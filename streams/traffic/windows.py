"""Traffic KPI windowing: pure state machines, no Kafka, so every rule is unit-testable.

Two stages, so workers can share partitions:

1. :class:`PartitionWindows` (one per input partition) de-duplicates, drops late readings,
   keeps per-segment sums per tumbling window and emits segment KPIs when stream time
   passes a window's end. It also hands on its district and city sums as a *partial*,
   with its stream time as watermark.
2. :class:`CityWindows` (single partition) merges the partials of all input partitions
   and emits district and city KPIs once every partition's watermark has passed the
   window's end, or ``idle_ms`` after the first partial arrived (an idle or empty partition
   cannot hold results back forever).

A window is emitted first with revision 0; readings that arrive within grace re-emit it
with the next revision. Windows are forgotten once stream time passes end + grace, and a
reading for a forgotten window is *late*.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

VEHICLE_COUNT = "traffic.vehicle_count"
AVG_SPEED = "traffic.avg_speed_kmh"
CONGESTION = "traffic.congestion_index"
UNKNOWN_DISTRICT = "unknown"
CITY = "aarhus"


def window_start(event_ms: int, size_ms: int) -> int:
    """Tumbling windows aligned to the UTC epoch."""
    return event_ms - event_ms % size_ms


class SegmentInfo(NamedTuple):
    district: str
    free_flow_kmh: float


@dataclass(slots=True)
class Sums:
    samples: int = 0
    vehicles: int = 0
    speed_weighted: float = 0.0

    def add(self, vehicles: int, speed: float) -> None:
        self.samples += 1
        self.vehicles += vehicles
        self.speed_weighted += speed * vehicles

    def merge(self, other: Sums) -> None:
        self.samples += other.samples
        self.vehicles += other.vehicles
        self.speed_weighted += other.speed_weighted


def kpi_values(sums: Sums, free_flow_kmh: float | None = None) -> list[tuple[str, float]]:
    """The traffic KPIs of one entity and window (the README's KPI contract)."""
    values = [(VEHICLE_COUNT, float(sums.vehicles))]
    if sums.vehicles > 0:
        avg_speed = sums.speed_weighted / sums.vehicles
        values.append((AVG_SPEED, avg_speed))
        if free_flow_kmh:
            values.append((CONGESTION, max(0.0, 1.0 - avg_speed / free_flow_kmh)))
    return values


def kpi_records(
    scope: str,
    entity_id: str,
    sums: Sums,
    start_ms: int,
    size_ms: int,
    revision: int,
    now_ms: int,
    free_flow_kmh: float | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "kpi": kpi,
            "scope": scope,
            "entity_id": entity_id,
            "window_start": start_ms,
            "window_end": start_ms + size_ms,
            "value": value,
            "samples": sums.samples,
            "revision": revision,
            "computed_at": now_ms,
        }
        for kpi, value in kpi_values(sums, free_flow_kmh)
    ]


@dataclass
class Counters:
    """Reconciliation: every reading read is exactly one of accepted, duplicate, late."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    unknown_segment: int = 0  # accepted readings whose segment has no reference data

    def merge(self, other: Counters) -> None:
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.late += other.late
        self.unknown_segment += other.unknown_segment


class LateReading(NamedTuple):
    position: int  # index in the batch, so the caller can dead-letter the original
    event_ms: int
    stream_time_ms: int


@dataclass
class Emission:
    kpis: list[dict[str, Any]] = field(default_factory=list)
    late: list[LateReading] = field(default_factory=list)
    partial: dict[str, Any] | None = None
    touched: set[int] = field(default_factory=set)  # windows the input's readings went to


@dataclass
class _SegmentWindow:
    sums: dict[str, Sums] = field(default_factory=dict)
    seen: set[tuple[str, int]] = field(default_factory=set)
    dirty: set[str] = field(default_factory=set)
    revision: int = -1


class PartitionWindows:
    """Stage 1 state for one input partition."""

    def __init__(self, partition: int, partition_count: int, size_ms: int, grace_ms: int) -> None:
        self.partition = partition
        self.partition_count = partition_count
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.stream_time = -1
        self.windows: dict[int, _SegmentWindow] = {}
        self.counters = Counters()
        self._reported_watermark_window = -1

    def add(
        self,
        segment_ids: list[str],
        event_ms: list[int],
        vehicles: list[int],
        speeds: list[float],
        reference: Mapping[str, SegmentInfo],
        now_ms: int,
    ) -> Emission:
        """Account one batch of readings, then emit what stream time has closed."""
        emission = Emission()
        size, grace, windows, counters = self.size_ms, self.grace_ms, self.windows, self.counters
        for i, segment in enumerate(segment_ids):
            ts = event_ms[i]
            start = ts - ts % size
            if self.stream_time > start + size + grace:
                counters.late += 1
                emission.late.append(LateReading(i, ts, self.stream_time))
                continue
            window = windows.get(start)
            if window is None:
                window = windows[start] = _SegmentWindow()
            key = (segment, ts)
            if key in window.seen:
                counters.duplicates += 1
                continue
            window.seen.add(key)
            sums = window.sums.get(segment)
            if sums is None:
                sums = window.sums[segment] = Sums()
            sums.add(vehicles[i], speeds[i])
            window.dirty.add(segment)
            emission.touched.add(start)
            counters.accepted += 1
            if segment not in reference:
                counters.unknown_segment += 1
            if ts > self.stream_time:
                self.stream_time = ts
        self._emit(emission, reference, now_ms, lambda start: start + size <= self.stream_time)
        return emission

    def restore(self, watermark_ms: int) -> None:
        """Resume after a restart or rebalance at the stream time last published.

        Input is re-read from the oldest open window's first message (the committed
        offset); readings of windows finalized before the watermark are then late, and
        open windows are rebuilt exactly from their readings.
        """
        self.stream_time = max(self.stream_time, watermark_ms)
        self._reported_watermark_window = window_start(self.stream_time, self.size_ms)

    def open_windows(self) -> set[int]:
        return set(self.windows)

    def flush(self, reference: Mapping[str, SegmentInfo], now_ms: int) -> Emission:
        """Emit every window with unemitted readings (no more input is coming for now)."""
        emission = Emission()
        self._emit(emission, reference, now_ms, lambda start: True)
        return emission

    def _emit(
        self, emission: Emission, reference: Mapping[str, SegmentInfo], now_ms: int, due: Any
    ) -> None:
        emitted: list[dict[str, Any]] = []
        finalized = False
        for start in sorted(self.windows):
            window = self.windows[start]
            if window.dirty and due(start):
                window.revision += 1
                emission.kpis.extend(self._segment_kpis(start, window, reference, now_ms))
                emitted.append(self._partial_window(start, window, reference))
                window.dirty.clear()
            if self.stream_time > start + self.size_ms + self.grace_ms:
                del self.windows[start]
                finalized = True
        watermark_window = window_start(self.stream_time, self.size_ms)
        # The watermark is published whenever a window is finalized, so a restarted worker
        # restoring it knows which windows are done (see restore()).
        if emitted or finalized or watermark_window != self._reported_watermark_window:
            self._reported_watermark_window = watermark_window
            emission.partial = {
                "source_partition": self.partition,
                "partition_count": self.partition_count,
                "watermark_ms": self.stream_time,
                "windows": emitted,
            }

    def _segment_kpis(
        self,
        start: int,
        window: _SegmentWindow,
        reference: Mapping[str, SegmentInfo],
        now_ms: int,
    ) -> Iterable[dict[str, Any]]:
        for segment in sorted(window.dirty):
            info = reference.get(segment)
            yield from kpi_records(
                "segment",
                segment,
                window.sums[segment],
                start,
                self.size_ms,
                window.revision,
                now_ms,
                info.free_flow_kmh if info else None,
            )

    def _partial_window(
        self, start: int, window: _SegmentWindow, reference: Mapping[str, SegmentInfo]
    ) -> dict[str, Any]:
        groups: dict[tuple[str, str], Sums] = {}
        for segment, sums in window.sums.items():
            info = reference.get(segment)
            district = info.district if info else UNKNOWN_DISTRICT
            for key in (("district", district), ("city", CITY)):
                groups.setdefault(key, Sums()).merge(sums)
        return {
            "window_start_ms": start,
            "groups": [
                {
                    "scope": scope,
                    "entity_id": entity,
                    "samples": s.samples,
                    "vehicles": s.vehicles,
                    "speed_weighted": s.speed_weighted,
                }
                for (scope, entity), s in sorted(groups.items())
            ],
        }


@dataclass
class _MergeWindow:
    parts: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    first_seen_ms: int = 0
    dirty: bool = False
    revision: int = -1


class CityWindows:
    """Stage 2: merges partition partials into district and city KPIs.

    A window is forgotten once every partition's watermark has passed end + grace (no
    partition can send more for it); to bound memory when a partition never reports at
    all, also once every reporting one is ``retain_ms`` past it. Partials for a
    forgotten window are ignored and counted, never merged into a fresh, incomplete one.
    """

    def __init__(
        self, size_ms: int, grace_ms: int, idle_ms: int, retain_ms: int = 24 * 3_600_000
    ) -> None:
        self.size_ms = size_ms
        self.grace_ms = grace_ms
        self.idle_ms = idle_ms
        self.retain_ms = retain_ms
        self.watermarks: dict[int, int] = {}
        self.partition_count = 0
        self.windows: dict[int, _MergeWindow] = {}
        self.forgotten_before = -1
        self.ignored_partials = 0
        self.touched: set[int] = set()  # windows the last add() went to

    def open_windows(self) -> set[int]:
        return set(self.windows)

    def add(self, partial: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
        self.touched = set()
        partition = int(partial["source_partition"])
        self.partition_count = max(self.partition_count, int(partial["partition_count"]))
        self.watermarks[partition] = max(
            self.watermarks.get(partition, -1), int(partial["watermark_ms"])
        )
        for item in partial["windows"]:
            start = int(item["window_start_ms"])
            if start < self.forgotten_before:
                self.ignored_partials += 1
                continue
            self.touched.add(start)
            window = self.windows.get(start)
            if window is None:
                window = self.windows[start] = _MergeWindow(first_seen_ms=now_ms)
            groups = list(item["groups"])
            # A partition's sums only grow; a smaller part is stale (from a worker that
            # has since lost the partition) and must not replace a fuller one.
            if _samples(groups) >= _samples(window.parts.get(partition, [])):
                window.parts[partition] = groups
                window.dirty = True
        return self.emit_due(now_ms)

    def _complete_until(self) -> int:
        """Stream time every input partition has passed (-1 until all have reported)."""
        if len(self.watermarks) < self.partition_count or not self.watermarks:
            return -1
        return min(self.watermarks.values())

    def emit_due(self, now_ms: int) -> list[dict[str, Any]]:
        """KPIs of windows all partitions have passed, or that waited ``idle_ms``."""
        complete_until = self._complete_until()
        # Memory bound for partitions that never report (no data at all): once every
        # partition that does report is retain_ms past a window. A lagging partition
        # that reports holds windows open, so its parts are never dropped.
        silent = len(self.watermarks) < self.partition_count
        reporting = min(self.watermarks.values(), default=-1)
        out: list[dict[str, Any]] = []
        for start in sorted(self.windows):
            window = self.windows[start]
            end = start + self.size_ms
            due = end <= complete_until or now_ms - window.first_seen_ms >= self.idle_ms
            if window.dirty and due:
                window.revision += 1
                window.dirty = False
                out.extend(self._merged_kpis(start, window, now_ms))
            finished = complete_until > end + self.grace_ms
            abandoned = silent and reporting > end + self.retain_ms
            if not window.dirty and (finished or abandoned):
                del self.windows[start]
                self.forgotten_before = max(self.forgotten_before, end)
        return out

    def _merged_kpis(self, start: int, window: _MergeWindow, now_ms: int) -> list[dict[str, Any]]:
        merged: dict[tuple[str, str], Sums] = {}
        for groups in window.parts.values():
            for g in groups:
                sums = merged.setdefault((g["scope"], g["entity_id"]), Sums())
                sums.merge(Sums(int(g["samples"]), int(g["vehicles"]), float(g["speed_weighted"])))
        records: list[dict[str, Any]] = []
        for (scope, entity), sums in sorted(merged.items()):
            records.extend(
                kpi_records(scope, entity, sums, start, self.size_ms, window.revision, now_ms)
            )
        return records


def _samples(groups: list[dict[str, Any]]) -> int:
    return sum(int(g["samples"]) for g in groups if g["scope"] == "city")
