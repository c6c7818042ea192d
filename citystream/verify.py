"""`citystream verify`: recompute the traffic KPIs from the source files, compare with ClickHouse.

For auditors, and the oracle of the tests and the benchmark. It deliberately shares no
parsing or aggregation code with the source or the processors: it is the README's KPI
contract written a second time, as plainly as possible, so a bug in either side shows
up as a difference.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from citystream.kafka import partition_for
from citystream.query import run_query
from citystream.settings import Settings

Key = tuple[str, str, str, int]  # kpi, scope, entity_id, window_start (epoch ms)
Value = tuple[float, int]  # value, samples
AARHUS = ZoneInfo("Europe/Copenhagen")


def _rows(path: Path) -> Iterator[dict[str, str]]:
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


def _valid(row: Mapping[str, str | None]) -> tuple[str, int, int, float] | None:
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
) -> dict[Key, Value]:
    """Every KPI the contract defines for the readings of ``traffic``, in file order."""
    readings = (r for r in map(_valid, _rows(traffic)) if r is not None)
    return aggregate(readings, read_metadata(metadata), partitions, window_minutes, grace_minutes)


def read_metadata(metadata: Path) -> dict[str, dict[str, str]]:
    return {str(r["REPORT_ID"]): r for r in _rows(metadata)}


def aggregate(
    readings: Iterable[tuple[str, int, int, float]],
    meta: Mapping[str, Mapping[str, str | None]],
    partitions: int,
    window_minutes: int = 15,
    grace_minutes: int = 15,
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
            for scope, entity in (("segment", segment), ("district", district), ("city", "aarhus")):
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


def stored_kpis(settings: Settings, kpi_prefix: str = "traffic.") -> dict[Key, Value]:
    _, rows = run_query(
        settings,
        "SELECT kpi, scope, entity_id, toUnixTimestamp64Milli(window_start), value, samples "
        f"FROM kpi FINAL WHERE startsWith(kpi, '{kpi_prefix}')",
    )
    return {(r[0], r[1], r[2], int(r[3])): (float(r[4]), int(r[5])) for r in rows}


@dataclass
class Comparison:
    matched: int = 0
    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    different: list[tuple[Key, Value, Value]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self) -> str:
        lines = [
            f"matched {self.matched:,}  missing {len(self.missing):,}  "
            f"extra {len(self.extra):,}  different {len(self.different):,}"
        ]
        lines += [f"  missing   {k}" for k in self.missing[:5]]
        lines += [f"  extra     {k}" for k in self.extra[:5]]
        lines += [f"  different {k}: expected {e}, stored {a}" for k, e, a in self.different[:5]]
        return "\n".join(lines)


def compare(expected: dict[Key, Value], actual: dict[Key, Value]) -> Comparison:
    result = Comparison()
    result.missing = sorted(expected.keys() - actual.keys())
    result.extra = sorted(actual.keys() - expected.keys())
    for key in expected.keys() & actual.keys():
        (want, want_n), (got, got_n) = expected[key], actual[key]
        if want_n != got_n or abs(want - got) > 1e-9 * max(1.0, abs(want)):
            result.different.append((key, expected[key], actual[key]))
        else:
            result.matched += 1
    result.different.sort()
    return result


def run_verify(settings: Settings, traffic: Path, metadata: Path) -> int:
    expected = recompute(
        traffic, metadata, settings.partitions, settings.window_minutes, settings.grace_minutes
    )
    result = compare(expected, stored_kpis(settings))
    print(result.summary())
    print("verify: OK" if result.ok else "verify: DIFFERENCES FOUND")
    return 0 if result.ok else 1
