"""Recompute the energy, waste and service KPIs from the simulator's events (the oracle).

The events are given: the caller regenerates a simulation from its seed or reads the
``city.<domain>.v1`` topics back (``simulated_events`` and ``published_events`` in
citystream/verify.py), so this module needs neither the simulator nor Kafka. The KPIs are
the formulas of ``core/kpis.py`` written a second time, as plainly as possible, sharing
no aggregation code with the processors, so a bug on either side shows up as a difference
(compare with :func:`oracles.compare.compare`).

Rules, over 15-minute tumbling windows aligned to the UTC epoch, by event time:

- An event whose ``event_id`` was already seen on its topic is a duplicate: counted once.
- ``energy.kwh`` = Σ kwh; ``energy.co2e_kg`` = Σ kwh × the district's grid emission factor,
  only where every reading's district has a factor (no partial sums). Scopes meter,
  district, city.
- ``waste.bins_over_80pct`` = bins whose last fill level in the window (latest event time;
  on a tie the later event) is > 80. Scopes district, city; ``samples`` = fill reports.
- ``service.requests_opened`` = "opened" events. ``service.response_minutes_p50/_p90``
  = nearest-rank percentile (the value at rank ceil(p/100 × n) of the sorted list) of
  (closed.event_time − opened_at) in minutes over the requests closed in the window.
  ``service.sla_met_pct`` = closed within the category's SLA (≤) / closed × 100; requests
  of a category without an SLA are left out of it. Scopes category, district, city.
- A row exists only where its window has at least one counted event of that kind.
- City scope: ``entity_id`` = ``aarhus``, as for traffic.

Late events are counted unless :func:`drop_late` removes them first, with the processors'
rule: per topic partition, an event is late when its window end + grace is before the
largest event time accepted so far on that partition.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.kafka import partition_for
from oracles.compare import Key, Value

WINDOW_MS = 15 * 60_000
CITY = "aarhus"  # the city scope's entity_id by default (a pack's id: ``city``)
ENERGY_TOPIC = "city.energy.v1"
WASTE_TOPIC = "city.waste.v1"
SERVICE_TOPIC = "city.service_requests.v1"
TOPIC_KEYS = {ENERGY_TOPIC: "meter_id", WASTE_TOPIC: "bin_id", SERVICE_TOPIC: "request_id"}


@dataclass(frozen=True)
class Event:
    """One published event: its catalogue topic and its record as Avro has it."""

    topic: str
    record: Mapping[str, Any]


def millis(value: int | datetime) -> int:
    """Avro timestamp-millis as epoch ms, whether given as int or decoded to datetime."""
    return value if isinstance(value, int) else round(value.timestamp() * 1000)


def window_of(ms: int, window_ms: int = WINDOW_MS) -> int:
    return ms - ms % window_ms


def nearest_rank(values: Iterable[float], p: int) -> float:
    """The value at rank ceil(p/100 × n) (1-based) of the sorted values."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, -(-p * len(ordered) // 100))
    return ordered[rank - 1]


def unique(events: Iterable[Event]) -> Iterator[Event]:
    """Each (topic, event_id) once: the first occurrence."""
    seen: set[tuple[str, str]] = set()
    for event in events:
        key = (event.topic, event.record["event_id"])
        if key not in seen:
            seen.add(key)
            yield event


def drop_late(
    events: Iterable[Event], partitions: int, window_ms: int = WINDOW_MS, grace_ms: int = WINDOW_MS
) -> Iterator[Event]:
    """The events the processors accept: late ones (window end + grace < the partition's
    stream time, the largest event time accepted before on that partition) left out."""
    stream_time: dict[tuple[str, int], int] = {}
    for event in events:
        key = str(event.record[TOPIC_KEYS[event.topic]]).encode()
        partition = (event.topic, partition_for(key, partitions))
        ts = millis(event.record["event_time"])
        now = stream_time.get(partition, -(2**62))
        if now > window_of(ts, window_ms) + window_ms + grace_ms:
            continue
        stream_time[partition] = max(now, ts)
        yield event


def recompute(
    events: Iterable[Event],
    emission_factors: Mapping[str, float],
    sla_minutes: Mapping[str, int],
    window_ms: int = WINDOW_MS,
    city: str = CITY,
) -> dict[Key, Value]:
    """Every energy, waste and service KPI of these events: {key: (value, samples)}."""
    by_topic: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in unique(events):
        by_topic[event.topic].append(event.record)
    return {
        **energy_kpis(by_topic[ENERGY_TOPIC], emission_factors, window_ms, city),
        **waste_kpis(by_topic[WASTE_TOPIC], window_ms, city),
        **service_kpis(by_topic[SERVICE_TOPIC], sla_minutes, window_ms, city),
    }


def energy_kpis(
    readings: Iterable[Mapping[str, Any]],
    factors: Mapping[str, float],
    window_ms: int,
    city: str = CITY,
) -> dict[Key, Value]:
    kwh: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    co2e: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in readings:
        start = window_of(millis(r["event_time"]), window_ms)
        for scope, entity in (
            ("meter", r["meter_id"]),
            ("district", r["district"]),
            ("city", city),
        ):
            kwh[(scope, entity, start)].append(r["kwh"])
            if r["district"] in factors:
                co2e[(scope, entity, start)].append(r["kwh"] * factors[r["district"]])
    out: dict[Key, Value] = {}
    for (scope, entity, start), values in kwh.items():
        out[("energy.kwh", scope, entity, start)] = (math.fsum(values), len(values))
    for key, values in co2e.items():
        if len(values) == len(kwh[key]):  # every reading has a factor: no partial CO2e
            out[("energy.co2e_kg", *key)] = (math.fsum(values), len(values))
    return out


def waste_kpis(
    reports: Iterable[Mapping[str, Any]], window_ms: int, city: str = CITY
) -> dict[Key, Value]:
    last: dict[tuple[str, int], tuple[int, float, str]] = {}  # (bin, window) -> latest
    reports_of: dict[tuple[str, int], int] = defaultdict(int)
    for r in reports:
        ts = millis(r["event_time"])
        key = (r["bin_id"], window_of(ts, window_ms))
        reports_of[key] += 1
        if key not in last or ts >= last[key][0]:
            last[key] = (ts, r["fill_pct"], r["district"])
    over: dict[tuple[str, str, int], int] = defaultdict(int)
    samples: dict[tuple[str, str, int], int] = defaultdict(int)
    for (bin_id, start), (_, fill, district) in last.items():
        for scope, entity in (("district", district), ("city", city)):
            samples[(scope, entity, start)] += reports_of[(bin_id, start)]
            over[(scope, entity, start)] += fill > 80
    return {
        ("waste.bins_over_80pct", scope, entity, start): (float(over[(scope, entity, start)]), n)
        for (scope, entity, start), n in samples.items()
    }


def service_kpis(
    events: Iterable[Mapping[str, Any]],
    sla_minutes: Mapping[str, int],
    window_ms: int,
    city: str = CITY,
) -> dict[Key, Value]:
    opened: dict[tuple[str, str, int], int] = defaultdict(int)
    responses: dict[tuple[str, str, int], list[tuple[float, str]]] = defaultdict(list)
    for e in events:
        ts = millis(e["event_time"])
        start = window_of(ts, window_ms)
        scopes = (("category", e["category"]), ("district", e["district"]), ("city", city))
        for scope, entity in scopes:
            if e["status"] == "opened":
                opened[(scope, entity, start)] += 1
            elif e["status"] == "closed":
                minutes = (ts - millis(e["opened_at"])) / 60_000
                responses[(scope, entity, start)].append((minutes, e["category"]))
    out: dict[Key, Value] = {
        ("service.requests_opened", *key): (float(n), n) for key, n in opened.items()
    }
    for key, closed in responses.items():
        times = [m for m, _ in closed]
        out[("service.response_minutes_p50", *key)] = (nearest_rank(times, 50), len(times))
        out[("service.response_minutes_p90", *key)] = (nearest_rank(times, 90), len(times))
        judged = [t <= sla_minutes[c] for t, c in closed if c in sla_minutes]
        if judged:
            out[("service.sla_met_pct", *key)] = (100.0 * sum(judged) / len(judged), len(judged))
    return out
