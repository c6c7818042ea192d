"""`citystream verify`: recompute the traffic KPIs independently, compare with ClickHouse.

Two inputs: the source files (`verify aarhus`), or the raw per-reading topic
`city.traffic.v1` plus `city.road_segments.v1` as any subscriber sees them
(`verify topics`, optionally for windows in a time range).

For auditors, and the oracle of the tests and the benchmark. It deliberately shares no
parsing or aggregation code with the source or the processors: it is the KPI table
contract (docs/contracts.md) written a second time, as plainly as possible, so a bug in
either side shows up as a difference. Topics are decoded with confluent-kafka's stock Avro
deserializer.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from citystream.query import run_query
from core.kafka import partition_for
from core.settings import Settings

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


def stored_kpis(
    settings: Settings,
    kpi_prefix: str = "traffic.",
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> dict[Key, Value]:
    """KPI rows in ClickHouse; with a range, those whose window starts in [since, until)."""
    where = f"startsWith(kpi, '{kpi_prefix}')"
    if since_ms is not None:
        where += f" AND window_start >= fromUnixTimestamp64Milli(toInt64({int(since_ms)}))"
    if until_ms is not None:
        where += f" AND window_start < fromUnixTimestamp64Milli(toInt64({int(until_ms)}))"
    _, rows = run_query(
        settings,
        "SELECT kpi, scope, entity_id, toUnixTimestamp64Milli(window_start), value, samples "
        f"FROM kpi FINAL WHERE {where}",
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


# --- from the raw topics --------------------------------------------------------------------


@dataclass
class TopicInput:
    readings: list[tuple[str, int, int, float]] = field(default_factory=list)
    segments: dict[str, dict[str, str | None]] = field(default_factory=dict)
    undecodable: int = 0


UNDECODABLE = object()


def _topic_values(settings: Settings, topic: str) -> Iterator[tuple[Any, Any]]:
    """Every (key, decoded value) of ``topic`` up to its current end, partition by partition.

    Per-partition order is what the contract's duplicate and late rules depend on.
    """
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from core.kafka import end_offsets

    decode = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    context = SerializationContext(topic, MessageField.VALUE)
    conf = {"group.id": settings.group("citystream-verify"), "enable.auto.commit": False}
    consumer = Consumer(settings.kafka_config(**conf, **{"isolation.level": "read_committed"}))
    try:
        for partition, end in sorted(end_offsets(settings, topic).items()):
            consumer.assign([TopicPartition(topic, partition, 0)])
            position = 0
            while position < end:
                batch = consumer.consume(5000, timeout=1.0)
                if not batch:  # compaction may have removed the last offsets
                    position = consumer.position([TopicPartition(topic, partition)])[0].offset
                for msg in batch:
                    if msg.error() is not None:
                        raise RuntimeError(f"reading {topic}: {msg.error()}")
                    position = (msg.offset() or 0) + 1
                    if msg.value() is None:
                        yield msg.key(), None  # a tombstone
                        continue
                    try:
                        yield msg.key(), decode(msg.value(), context)
                    except Exception:  # counted and reported, never a KPI
                        yield msg.key(), UNDECODABLE
    finally:
        consumer.close()


def _epoch_ms(value: datetime | int) -> int:
    if isinstance(value, int):
        return value
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def read_topics(settings: Settings) -> TopicInput:
    """Readings of ``city.traffic.v1`` and the latest segment of ``city.road_segments.v1``."""
    out = TopicInput()
    for key, segment in _topic_values(settings, settings.topic("city.road_segments.v1")):
        sid = key.decode() if isinstance(key, bytes) else str(key)
        if segment is None:
            out.segments.pop(sid, None)
        elif isinstance(segment, dict):
            out.segments[sid] = {
                "POINT_1_POSTAL_CODE": segment["district"],
                "NDT_IN_KMH": str(segment["free_flow_speed_kmh"]),
            }
    for _, reading in _topic_values(settings, settings.topic("city.traffic.v1")):
        if reading is UNDECODABLE or not isinstance(reading, dict):
            out.undecodable += 1
            continue
        out.readings.append(
            (
                reading["segment_id"],
                _epoch_ms(reading["event_time"]),
                int(reading["vehicle_count"]),
                float(reading["avg_speed_kmh"]),
            )
        )
    return out


def in_range(
    kpis: dict[Key, Value], since_ms: int | None, until_ms: int | None
) -> dict[Key, Value]:
    low = since_ms if since_ms is not None else -(2**63)
    high = until_ms if until_ms is not None else 2**63
    return {k: v for k, v in kpis.items() if low <= k[3] < high}


def parse_instant(text: str) -> int:
    """ISO 8601 to epoch ms; a time without an offset is UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _epoch_ms(moment)


def verify_topics(
    settings: Settings, since_ms: int | None = None, until_ms: int | None = None
) -> tuple[TopicInput, Comparison]:
    """Recompute from the whole per-reading topic (dedup and lateness depend on what came
    before a window), then compare the windows that start in [since, until)."""
    data = read_topics(settings)
    expected = aggregate(
        data.readings,
        data.segments,
        settings.partitions,
        settings.window_minutes,
        settings.grace_minutes,
    )
    result = compare(
        in_range(expected, since_ms, until_ms),
        stored_kpis(settings, since_ms=since_ms, until_ms=until_ms),
    )
    return data, result


def run_verify_topics(settings: Settings, since: str | None, until: str | None) -> int:
    since_ms = parse_instant(since) if since else None
    until_ms = parse_instant(until) if until else None
    data, result = verify_topics(settings, since_ms, until_ms)
    print(
        f"read {len(data.readings):,} readings from {settings.topic('city.traffic.v1')} "
        f"({data.undecodable:,} undecodable, skipped), {len(data.segments):,} road segments"
    )
    print(result.summary())
    print("verify: OK" if result.ok else "verify: DIFFERENCES FOUND")
    return 0 if result.ok else 1
