"""Recompute device uptime from the Aarhus traffic and air files: the oracle.

Shares no code with the processors. The rules, written plainly:

- per sensor kind (``traffic``, ``air``) and Kafka partition of the sensor id, readings
  count by the late and duplicate rules of :mod:`oracles.aarhus_traffic`, with 1-hour
  windows;
- every hour from a partition's first accepted reading to its last gets a row for every
  known sensor on that partition (the road segments of ``traffic_metadata.csv``), with
  uptime = readings / 12 × 100, so a silent sensor shows 0; an unknown sensor that
  reports gets rows for the hours it reported in;
- district and city: the mean of their sensors' uptimes (both kinds) in the hour;
  ``samples`` is the readings counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from core.kafka import partition_for
from oracles.aarhus_air_parking import Admission, valid_air
from oracles.aarhus_traffic import csv_rows, read_metadata, valid_traffic
from oracles.compare import Key, Value

CITY = "aarhus"  # the city scope's entity_id by default (a pack's id: ``city``)
HOUR_MS = 3_600_000
PER_HOUR = 12


def recompute_devices(
    traffic: Path | None,
    air: Path | None,
    metadata: Path,
    partitions: int,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    """``devices.uptime_pct`` from either file or both (``None``: that kind is left out)."""
    districts = {s: str(m["POINT_1_POSTAL_CODE"]) for s, m in read_metadata(metadata).items()}
    readings: dict[str, Iterable[tuple[str, int]]] = {}
    if traffic is not None:
        readings["traffic"] = ((r[0], r[1]) for r in map(valid_traffic, csv_rows(traffic)) if r)
    if air is not None:
        readings["air"] = ((r.sensor, r.ts) for r in map(valid_air, csv_rows(air)) if r)
    counts: dict[tuple[str, str, int], int] = {}
    for kind, rows in readings.items():
        counts.update(_hourly_counts(kind, rows, set(districts), partitions, grace_minutes))
    return _uptime_kpis(counts, districts, city)


def _hourly_counts(
    kind: str,
    rows: Iterable[tuple[str, int]],
    known: set[str],
    partitions: int,
    grace_minutes: int,
) -> dict[tuple[str, str, int], int]:
    admission = Admission(partitions, 60, grace_minutes)
    counts: dict[tuple[str, str, int], int] = defaultdict(int)
    hours: dict[int, list[int]] = {}  # partition -> [first hour, last hour]
    for sensor, ts in rows:
        if not admission.accepts(sensor, ts):
            continue
        hour = ts - ts % HOUR_MS
        counts[(kind, sensor, hour)] += 1
        span = hours.setdefault(partition_for(sensor.encode(), partitions), [hour, hour])
        span[0], span[1] = min(span[0], hour), max(span[1], hour)
    for sensor in known:
        active = hours.get(partition_for(sensor.encode(), partitions))
        for hour in range(active[0], active[1] + 1, HOUR_MS) if active else ():
            counts.setdefault((kind, sensor, hour), 0)
    return counts


def _uptime_kpis(
    counts: dict[tuple[str, str, int], int], districts: dict[str, str], city: str = CITY
) -> dict[Key, Value]:
    out: dict[Key, Value] = {}
    groups: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for (kind, sensor, hour), n in counts.items():
        pct = n / PER_HOUR * 100.0
        out[("devices.uptime_pct", "sensor", f"{kind}:{sensor}", hour)] = (pct, n)
        for scope, entity in (("district", districts.get(sensor, "unknown")), ("city", city)):
            acc = groups[(scope, entity, hour)]
            acc[0] += pct
            acc[1] += 1
            acc[2] += n
    for (scope, entity, hour), (total, sensors, readings) in groups.items():
        out[("devices.uptime_pct", scope, entity, hour)] = (total / sensors, int(readings))
    return out
