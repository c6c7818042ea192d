"""KPI windows recomputed from the messages a signed statement names (the statements' oracle).

``citystream statement verify`` re-reads the stated input (offset ranges of the
processors' input topics), decodes it with the stock Avro deserializer and hands the
plain records here. Nothing in this module comes from the processors: the rules are the
contract's, written again, and the devices part reuses the device-uptime oracle
(:mod:`oracles.devices`), which is itself independent of the processors.

Service requests (``service.*``), per 15-minute window (``window_ms``) of each event's own
time, windows aligned to the UTC epoch:

- per input partition, in offset order: an event is late (left out) when the largest
  event time accepted so far on that partition is past its window end + grace; then an
  event already seen as (request, status, event time) is a duplicate (left out);
- ``requests_opened`` = opened events; ``response_minutes_p50/_p90`` = nearest rank of
  (closed − opened) in minutes over the closed events; ``sla_met_pct`` = closes met ×
  100 / closes judged, met when closed ≤ the event's own due time, else (no due time) when
  the minutes are ≤ the category's SLA; with neither the close is not judged;
- scopes category, district (the event's), city (the city id).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from oracles.compare import Key, Value
from oracles.devices import _hourly_counts, _uptime_kpis


@dataclass(frozen=True)
class ServiceEvent:
    """One status change as the processor's input carries it."""

    request_id: str
    status: str
    category: str
    district: str
    event_ms: int
    opened_ms: int
    due_ms: int | None


def service_windows(
    partitions: Iterable[Sequence[ServiceEvent]],
    sla_minutes: Mapping[str, float],
    window_ms: int,
    grace_ms: int,
    city: str,
) -> dict[Key, Value]:
    """Every service KPI row from the events of each input partition, in offset order."""
    opened: dict[tuple[str, str, int], int] = defaultdict(int)
    closes: dict[tuple[str, str, int], list[tuple[float, bool | None]]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for events in partitions:
        stream_time = -1
        for e in events:
            start = e.event_ms - e.event_ms % window_ms
            if stream_time > start + window_ms + grace_ms:
                continue  # late
            stream_time = max(stream_time, e.event_ms)
            if (e.request_id, e.status, e.event_ms) in seen:
                continue  # duplicate
            seen.add((e.request_id, e.status, e.event_ms))
            for scope, entity in (("category", e.category), ("district", e.district),
                                  ("city", city)):  # fmt: skip
                if e.status == "opened":
                    opened[(scope, entity, start)] += 1
                elif e.status == "closed":
                    closes[(scope, entity, start)].append(_close(e, sla_minutes))
    return _service_rows(opened, closes)


def _close(e: ServiceEvent, sla_minutes: Mapping[str, float]) -> tuple[float, bool | None]:
    minutes = (e.event_ms - e.opened_ms) / 60_000
    if e.due_ms is not None:
        return minutes, e.event_ms <= e.due_ms
    sla = sla_minutes.get(e.category)
    return minutes, None if sla is None else minutes <= sla


def _rank(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct * len(ordered) / 100)) - 1]


def _service_rows(
    opened: dict[tuple[str, str, int], int],
    closes: dict[tuple[str, str, int], list[tuple[float, bool | None]]],
) -> dict[Key, Value]:
    out: dict[Key, Value] = {
        ("service.requests_opened", *key): (float(n), n) for key, n in opened.items()
    }
    for key, items in closes.items():
        minutes = [m for m, _ in items]
        out[("service.response_minutes_p50", *key)] = (_rank(minutes, 50), len(minutes))
        out[("service.response_minutes_p90", *key)] = (_rank(minutes, 90), len(minutes))
        judged = [met for _, met in items if met is not None]
        if judged:
            out[("service.sla_met_pct", *key)] = (100.0 * sum(judged) / len(judged), len(judged))
    return out


def uptime_windows(
    readings: Mapping[str, Iterable[tuple[str, int]]],
    districts: Mapping[str, str],
    partitions: int,
    grace_minutes: int,
    city: str,
) -> dict[Key, Value]:
    """``devices.uptime_pct`` rows from each sensor kind's (sensor, event ms) readings in
    per-partition offset order, with the device-uptime oracle's rules (oracles/devices.py);
    ``districts``: every known sensor (the road segments) and its district."""
    counts: dict[tuple[str, str, int], int] = {}
    for kind, rows in readings.items():
        counts.update(_hourly_counts(kind, rows, set(districts), partitions, grace_minutes))
    return _uptime_kpis(counts, dict(districts), city)
