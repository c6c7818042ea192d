"""Recompute the air-quality and parking KPIs from the Aarhus source files: the oracle.

For auditors and for the tests. Like :mod:`oracles.aarhus_traffic` for traffic, it shares
no parsing or aggregation code with the sources or the processors: it is the KPI catalogue
(``core/kpis.py``) written a second time, as plainly as possible, so a bug on either
side shows up as a difference. It follows the traffic oracle's rules:

- rows are taken in file order; a row the source would dead-letter is skipped;
- a reading is **late** when stream time (the largest event time seen so far on its
  entity's Kafka partition, murmur2 of the entity id) is past its 15-minute window's
  end + grace: it counts nowhere. Lateness is decided once per reading by its tumbling
  window; a hopping window containing the reading never ends earlier, so the rule is the
  same for ``air.aqi_1h``;
- a **duplicate** (same entity and event time as an accepted reading) counts once: the
  first wins;
- tumbling windows are 15 minutes aligned to the UTC epoch; hopping windows start every
  15 minutes and cover [start, start + 60 min);
- ``samples`` is the number of accepted readings in the window, at every scope.

Air (scopes segment/district/city): a sensor is the road segment of its ``REPORT_ID``; its
district is the segment's ``POINT_1_POSTAL_CODE`` in ``traffic_metadata.csv``, or
``unknown``. ``air.<pollutant>_mean`` is the mean of that index; ``air.aqi`` and
``air.aqi_1h`` are the mean over readings of the largest of the five indexes.

Parking (scopes car_park/district/city): per car park and window the reading with the
greatest event time counts (ties: the first in the file). ``parking.occupancy_pct`` is its
vehicle_count / total_spaces × 100 for the car park, and Σ vehicle_count / Σ total_spaces
× 100 over those last readings for a district (``car_parks.csv`` postal code, or
``unknown``) and for the city.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.kafka import partition_for
from oracles.aarhus_traffic import AARHUS, csv_rows, read_metadata
from oracles.compare import Key, Value

CITY = "aarhus"  # the city scope's entity_id by default (a pack's id: ``city``)
MINUTE_MS = 60_000
HOP_MINUTES = 60
POLLUTANTS = {  # KPI name part -> source column (the source spells "particullate")
    "ozone": "ozone",
    "particulate_matter": "particullate_matter",
    "carbon_monoxide": "carbon_monoxide",
    "sulfure_dioxide": "sulfure_dioxide",
    "nitrogen_dioxide": "nitrogen_dioxide",
}
AIR_COLUMNS = (*POLLUTANTS.values(), "longitude", "latitude", "timestamp", "REPORT_ID")
PARKING_COLUMNS = ("vehiclecount", "updatetime", "totalspaces", "garagecode")
INDEX_MAX = 500.0


@dataclass(frozen=True)
class AirRow:
    sensor: str
    ts: int
    values: tuple[float, ...]  # in POLLUTANTS order


@dataclass(frozen=True)
class ParkingRow:
    car_park: str
    ts: int
    vehicles: int
    spaces: int


# --- what the contract accepts ---------------------------------------------------------


def local_ms(text: str) -> int | None:
    """Aarhus wall time to exact UTC ms; None if unparseable or in the spring DST gap.

    An ambiguous autumn time is its first (summer-time) occurrence, as in the contract.
    """
    try:
        naive = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if naive.tzinfo is not None:
        return (naive - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    aware = naive.replace(tzinfo=AARHUS)
    if aware.astimezone(UTC).astimezone(AARHUS).replace(tzinfo=None) != naive:
        return None
    offset = aware.utcoffset() or timedelta()
    return (naive - offset - datetime(1970, 1, 1)) // timedelta(milliseconds=1)


def _complete(row: Mapping[Any, Any], columns: Iterable[str]) -> bool:
    """No field missing, none extra, and every needed column present."""
    return None not in row and None not in row.values() and all(c in row for c in columns)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(text: str) -> int | None:
    value = _number(text)
    return int(value) if value is not None and value >= 0 and value == int(value) else None


def valid_air(row: Mapping[Any, Any]) -> AirRow | None:
    if not _complete(row, AIR_COLUMNS):
        return None
    sensor = str(row["REPORT_ID"]).strip()
    ts = local_ms(str(row["timestamp"]))
    values = [_number(str(row[column])) for column in POLLUTANTS.values()]
    if not sensor or ts is None:
        return None
    if any(v is None or not 0 <= v <= INDEX_MAX for v in values):
        return None
    for column, limit in (("latitude", 90.0), ("longitude", 180.0)):
        text = str(row[column]).strip()
        coordinate = _number(text) if text else 0.0
        if coordinate is None or abs(coordinate) > limit:
            return None
    return AirRow(sensor, ts, tuple(float(v or 0) for v in values))


def valid_parking(row: Mapping[Any, Any]) -> ParkingRow | None:
    if not _complete(row, PARKING_COLUMNS):
        return None
    car_park = str(row["garagecode"]).strip()
    ts = local_ms(str(row["updatetime"]))
    vehicles, spaces = _count(str(row["vehiclecount"])), _count(str(row["totalspaces"]))
    if not car_park or ts is None or vehicles is None or spaces is None:
        return None
    if spaces <= 0 or vehicles > spaces or spaces >= 2**31:
        return None
    return ParkingRow(car_park, ts, vehicles, spaces)


def read_car_park_districts(path: Path) -> dict[str, str]:
    return {
        str(r["garagecode"]).strip(): str(r["postal_code"]).strip()
        for r in csv_rows(path)
        if (r.get("garagecode") or "").strip() and (r.get("postal_code") or "").strip()
    }


# --- the rules every KPI shares ----------------------------------------------------------


class Admission:
    """Late and duplicate rules of the traffic oracle: which readings count, in order."""

    def __init__(self, partitions: int, window_minutes: int, grace_minutes: int) -> None:
        self.partitions = partitions
        self.size = window_minutes * MINUTE_MS
        self.grace = grace_minutes * MINUTE_MS
        self.stream_time: dict[int, int] = defaultdict(lambda: -1)
        self.seen: set[tuple[str, int]] = set()

    def accepts(self, entity: str, ts: int) -> bool:
        window = ts - ts % self.size
        partition = partition_for(entity.encode(), self.partitions)
        if self.stream_time[partition] > window + self.size + self.grace:
            return False  # late
        self.stream_time[partition] = max(self.stream_time[partition], ts)
        if (entity, ts) in self.seen:
            return False  # duplicate
        self.seen.add((entity, ts))
        return True


def hopping_starts(ts: int, hop_ms: int, length_ms: int) -> list[int]:
    """Starts of every window [start, start + length) holding ts; starts are hop-aligned."""
    last = ts - ts % hop_ms
    return [
        last - k * hop_ms for k in range(length_ms // hop_ms) if last - k * hop_ms > ts - length_ms
    ]


# --- air -----------------------------------------------------------------------------------


def recompute_air(
    air: Path,
    metadata: Path,
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    """Every air KPI of the catalogue for the readings of ``air``, in file order."""
    readings = (r for r in map(valid_air, csv_rows(air)) if r is not None)
    districts = {s: str(m["POINT_1_POSTAL_CODE"]) for s, m in read_metadata(metadata).items()}
    return aggregate_air(readings, districts, partitions, window_minutes, grace_minutes, city)


def aggregate_air(
    readings: Iterable[AirRow],
    districts: Mapping[str, str],
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    admission = Admission(partitions, window_minutes, grace_minutes)
    size = window_minutes * MINUTE_MS
    # (kpi family, scope, entity, window) -> [n, Σ per pollutant..., Σ max]
    sums: dict[tuple[str, str, str, int], list[float]] = defaultdict(lambda: [0.0] * 7)
    for r in readings:
        if not admission.accepts(r.sensor, r.ts):
            continue
        scopes = (("segment", r.sensor), ("district", districts.get(r.sensor, "unknown")))
        windows = [("tumbling", r.ts - r.ts % size)]
        windows += [("hopping", s) for s in hopping_starts(r.ts, size, HOP_MINUTES * MINUTE_MS)]
        for family, start in windows:
            for scope, entity in (*scopes, ("city", city)):
                if family == "hopping" and scope == "segment":
                    continue  # trends are for districts and the city
                acc = sums[(family, scope, entity, start)]
                acc[0] += 1
                for i, value in enumerate(r.values):
                    acc[1 + i] += value
                acc[6] += max(r.values)
    out: dict[Key, Value] = {}
    for (family, scope, entity, start), acc in sums.items():
        n = int(acc[0])
        if family == "hopping":
            out[("air.aqi_1h", scope, entity, start)] = (acc[6] / n, n)
            continue
        for i, name in enumerate(POLLUTANTS):
            out[(f"air.{name}_mean", scope, entity, start)] = (acc[1 + i] / n, n)
        out[("air.aqi", scope, entity, start)] = (acc[6] / n, n)
    return out


# --- parking -------------------------------------------------------------------------------


def recompute_parking(
    parking: Path,
    car_parks: Path,
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    """``parking.occupancy_pct`` for the readings of ``parking``, in file order."""
    readings = (r for r in map(valid_parking, csv_rows(parking)) if r is not None)
    districts = read_car_park_districts(car_parks)
    return aggregate_parking(readings, districts, partitions, window_minutes, grace_minutes, city)


def aggregate_parking(
    readings: Iterable[ParkingRow],
    districts: Mapping[str, str],
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    admission = Admission(partitions, window_minutes, grace_minutes)
    size = window_minutes * MINUTE_MS
    last: dict[tuple[str, int], ParkingRow] = {}  # (car park, window) -> its last reading
    samples: dict[tuple[str, int], int] = defaultdict(int)
    for r in readings:
        if not admission.accepts(r.car_park, r.ts):
            continue
        key = (r.car_park, r.ts - r.ts % size)
        samples[key] += 1
        if key not in last or r.ts > last[key].ts:  # ties: the first in the file stays
            last[key] = r
    totals: dict[tuple[str, str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    out: dict[Key, Value] = {}
    for (car_park, start), r in last.items():
        n = samples[(car_park, start)]
        out[("parking.occupancy_pct", "car_park", car_park, start)] = (
            r.vehicles / r.spaces * 100,
            n,
        )
        for scope, entity in (("district", districts.get(car_park, "unknown")), ("city", city)):
            acc = totals[(scope, entity, start)]
            acc[0] += n
            acc[1] += r.vehicles
            acc[2] += r.spaces
    for (scope, entity, start), (n, vehicles, spaces) in totals.items():
        out[("parking.occupancy_pct", scope, entity, start)] = (vehicles / spaces * 100, n)
    return out
