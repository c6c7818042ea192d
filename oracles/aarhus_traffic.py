"""The traffic KPIs recomputed from the Aarhus files or from any list of readings: the oracle.

For auditors, and the oracle of the tests and the benchmark. It deliberately shares no
parsing or aggregation code with the source or the processors: it is the KPI table
contract (docs/contracts.md) written a second time, as plainly as possible, so a bug in
either side shows up as a difference. `citystream verify` (citystream/verify.py) feeds it
the source files or the readings it read back from the topics, and compares the result
with what ClickHouse holds.

The rules the other Aarhus oracles follow too:

- readings are taken in order; a row the source would dead-letter is skipped;
- a reading is **late** when stream time (the largest event time seen so far on its
  entity's Kafka partition, murmur2 of the entity id) is past its window's end + grace;
- a **duplicate** (same entity and event time as an accepted reading) counts once.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from core.kafka import partition_for
from oracles.compare import Key, Value

AARHUS = ZoneInfo("Europe/Copenhagen")
CITY = "aarhus"  # the city scope's entity_id by default (a pack's id: ``city``)
Reading = tuple[str, int, int, float]  # segment, event time (epoch ms), vehicles, speed


def csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """The rows of a CSV file, gzipped or not (the CityPulse files come both ways)."""
    with (
        path.open("rb") as raw,
        gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw as data,
    ):
        yield from csv.DictReader(io.TextIOWrapper(data, encoding="utf-8", newline=""))


def _event_ms(text: str) -> int | None:
    """Local Aarhus time to UTC ms; None for unparseable or non-existent (DST gap) times."""
    try:
        naive = datetime.fromisoformat(text)
    except ValueError:
        return None
    aware = naive.replace(tzinfo=AARHUS)
    if aware.astimezone(ZoneInfo("UTC")).astimezone(AARHUS).replace(tzinfo=None) != naive:
        return None
    return int(aware.timestamp() * 1000)


def valid_traffic(row: Mapping[str, str | None]) -> Reading | None:
    """(segment, event ms, vehicles, speed) of a row the contract accepts, else None."""
    try:
        segment = (row["REPORT_ID"] or "").strip()
        count = float(row["vehicleCount"] or "")
        speed = float(row["avgSpeed"] or "")
        ts = _event_ms((row["TIMESTAMP"] or "").strip())
    except (KeyError, ValueError):
        return None
    if None in row.values() or not segment or ts is None:
        return None
    if not (math.isfinite(count) and math.isfinite(speed)) or count < 0 or speed < 0:
        return None
    if count != int(count):
        return None
    return segment, ts, int(count), speed


def recompute(
    traffic: Path,
    metadata: Path,
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    """Every KPI the contract defines for the readings of ``traffic``, in file order."""
    readings = (r for r in map(valid_traffic, csv_rows(traffic)) if r is not None)
    meta = read_metadata(metadata)
    return aggregate(readings, meta, partitions, window_minutes, grace_minutes, city)


def read_metadata(metadata: Path) -> dict[str, dict[str, str]]:
    """``traffic_metadata.csv`` by segment id (``REPORT_ID``)."""
    return {str(r["REPORT_ID"]): r for r in csv_rows(metadata)}


def aggregate(
    readings: Iterable[Reading],
    meta: Mapping[str, Mapping[str, str | None]],
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
    city: str = CITY,
) -> dict[Key, Value]:
    """The KPI contract over (segment, event ms, vehicles, speed) readings, in order."""
    size, grace = window_minutes * 60_000, grace_minutes * 60_000
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    seen: set[tuple[str, int]] = set()
    sums: dict[tuple[str, str, str, int], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for segment, ts, vehicles, speed in readings:
        window = ts - ts % size
        partition = partition_for(segment.encode(), partitions)
        if stream_time[partition] > window + size + grace:
            continue  # late
        stream_time[partition] = max(stream_time[partition], ts)
        if (segment, ts) in seen:
            continue  # duplicate
        seen.add((segment, ts))
        district = str(meta[segment]["POINT_1_POSTAL_CODE"]) if segment in meta else "unknown"
        for suffix, start in _windows_of(window, size):
            for scope, entity in (("segment", segment), ("district", district), ("city", city)):
                if suffix and scope == "segment":
                    continue  # trends are for districts and the city
                acc = sums[(suffix, scope, entity, start)]
                acc[0] += 1
                acc[1] += vehicles
                acc[2] += speed * vehicles
    return _kpis(sums, meta)


def _windows_of(window: int, size: int) -> list[tuple[str, int]]:
    """The tumbling window, and every hourly trend window (suffix _1h) that holds it."""
    hour = 3_600_000
    trends = [("_1h", window - back) for back in range(0, hour, size)] if size < hour else []
    return [("", window), *trends]


def _kpis(
    sums: dict[tuple[str, str, str, int], list[float]],
    meta: Mapping[str, Mapping[str, str | None]],
) -> dict[Key, Value]:
    out: dict[Key, Value] = {}
    for (suffix, scope, entity, window), (n, vehicles, weighted) in sums.items():
        samples = int(n)
        out[("traffic.vehicle_count" + suffix, scope, entity, window)] = (float(vehicles), samples)
        if vehicles > 0:
            speed = weighted / vehicles
            out[("traffic.avg_speed_kmh" + suffix, scope, entity, window)] = (speed, samples)
            if scope == "segment" and entity in meta and not suffix:
                congestion = max(0.0, 1 - speed / float(meta[entity]["NDT_IN_KMH"] or "nan"))
                out[("traffic.congestion_index", scope, entity, window)] = (congestion, samples)
    return out


# --- time ranges -------------------------------------------------------------------------


def in_range(
    kpis: dict[Key, Value], since_ms: int | None, until_ms: int | None
) -> dict[Key, Value]:
    """The rows whose window starts in [since, until); an open end is unbounded."""
    low = since_ms if since_ms is not None else -(2**63)
    high = until_ms if until_ms is not None else 2**63
    return {k: v for k, v in kpis.items() if low <= k[3] < high}


def epoch_ms(value: datetime | int) -> int:
    """A timestamp-millis as Avro decoders give it (int or aware datetime) to epoch ms."""
    if isinstance(value, int):
        return value
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def parse_instant(text: str) -> int:
    """ISO 8601 to epoch ms; a time without an offset is UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return epoch_ms(moment)
