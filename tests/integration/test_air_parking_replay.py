"""Air and parking replays on the real stack: CSV → Kafka (Avro) → read back and checked.

Real recordings cut from the shipped files, plus bad rows and a duplicate, go through the
replay sources; every topic they write is read back with confluent-kafka's own Avro
deserializer and compared with the CSV, read here plainly.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from citystream.replay import AarhusFiles, run_replays, summary
from connectors.sources.aarhus import CsvReplay
from connectors.sources.aarhus_air import AarhusAirReplay
from connectors.sources.aarhus_parking import AarhusParkingReplay
from core.kafka import end_offsets, partition_for
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.aarhus_air_parking import recompute_air, recompute_parking

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
AIR_FIXTURE = REPO / "tests/fixtures/pollution_2014-08-02_0600-0700.csv.gz"
PARKING_FIXTURE = REPO / "tests/fixtures/parking_2014-08-01_03.csv.gz"
SHIPPED = AarhusFiles.shipped()
AARHUS = ZoneInfo("Europe/Copenhagen")
BAD_AIR = {
    "NaN,94,49,44,87,10.1,56.2,2014-08-02 06:30:00,158324": "invalid_row",
    "101,94,49,700,87,10.1,56.2,2014-08-02 06:30:00,158324": "invalid_row",
    "101,94,49,44,87,10.1,56.2,2014-08-02 25:30:00,158324": "invalid_timestamp",
    "101,94,49,44,87,10.1,56.2,2014-03-30 02:30:00,158324": "invalid_timestamp",
    "101,94,49,44,87,10.1,56.2,2014-08-02 06:30:00": "invalid_row",
}
BAD_PARKING = {
    "5,2014-08-02 12:00:00.000,1,0,SALLING,x": "invalid_row",
    "-5,2014-08-02 12:00:00.000,1,700,SALLING,x": "invalid_row",
    "5,2014-08-02 12:00:00.000,1,700,,x": "invalid_row",
    "5,2014-13-02 12:00:00.000,1,700,SALLING,x": "invalid_timestamp",
}
UNKNOWN_CAR_PARK = "5,2014-08-02 12:00:00.000,1,10,NEWPARK,x"
LATE_PARKING = "100,2014-08-01 00:05:00.000,1,953,BRUUNS,x"  # valid, but 1.5 days behind
PARKING_EXTRA = [*BAD_PARKING, UNKNOWN_CAR_PARK, LATE_PARKING]
PARKING_DUPLICATE = 575  # the last fixture row before the inserted ones: a true duplicate


def with_rows(source: Path, target: Path, extra: list[str], duplicate: int) -> list[str]:
    """The fixture with ``extra`` rows and a repeat of row ``duplicate`` in the middle."""
    with gzip.open(source, "rt", newline="") as handle:
        lines = handle.read().splitlines()
    header, rows = lines[0], lines[1:]
    middle = len(rows) // 2
    body = [*rows[:middle], rows[duplicate], *extra, *rows[middle:]]
    target.write_bytes(gzip.compress("\n".join([header, *body]).encode()))
    return [header, *body]


def consume(settings: Settings, name: str) -> list[tuple[bytes, int, dict[str, Any]]]:
    """Every message of a topic as (key, partition, value), decoded by confluent-kafka."""
    topic = settings.topic(name)
    deserializer = AvroDeserializer(SchemaRegistryClient(settings.registry_config()))
    consumer = Consumer(settings.kafka_config(**{"group.id": f"reader-{name}"}))
    ends = end_offsets(settings, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    out: list[tuple[bytes, int, dict[str, Any]]] = []
    while len(out) < sum(ends.values()):
        for msg in consumer.consume(1000, timeout=0.2):
            assert msg.error() is None
            value = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
            out.append((msg.key() or b"", int(msg.partition() or 0), value))
    consumer.close()
    return out


def local_ms(text: str) -> int:
    aware = datetime.fromisoformat(text).replace(tzinfo=AARHUS)
    return round(aware.timestamp() * 1000)


def table(lines: list[str]) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


@pytest.fixture
def replayed(settings: Settings, tmp_path: Path) -> dict[str, Any]:
    """Both replays run side by side, paced (the CLI's --speed path), on the real stack."""
    ensure_topics(settings)
    register_schemas(settings)
    air_file, parking_file = tmp_path / "air_test.csv.gz", tmp_path / "parking_test.csv.gz"
    air_lines = with_rows(AIR_FIXTURE, air_file, list(BAD_AIR), duplicate=10)
    parking_lines = with_rows(
        PARKING_FIXTURE, parking_file, PARKING_EXTRA, duplicate=PARKING_DUPLICATE
    )
    speed = 500_000.0  # 3 days of parking in about half a second
    sources: dict[str, CsvReplay[Any]] = {
        "air": AarhusAirReplay(settings, air_file, SHIPPED.metadata, speed),
        "parking": AarhusParkingReplay(settings, parking_file, SHIPPED.car_parks, speed),
    }
    for source in sources.values():
        source.setup()
    reports = run_replays(sources, paced=True, announce=lambda _: None)
    return {
        "reports": reports,
        "air": (air_file, air_lines),
        "parking": (parking_file, parking_lines),
    }


def test_air_readings_reach_both_topics_with_their_values(
    settings: Settings, replayed: dict[str, Any]
) -> None:
    report = replayed["reports"]["air"]
    air_file, lines = replayed["air"]
    good = [r for r in table(lines) if not _is_bad(r, BAD_AIR)]
    assert report.rows_read == len(lines) - 1 == 5388 + 1 + len(BAD_AIR)
    assert report.published == len(good) == 5389
    assert report.dead_lettered == Counter(BAD_AIR.values())
    assert "[OK]" in summary(replayed["reports"]) and "MISMATCH" not in summary(replayed["reports"])
    # the sensors' road segments are published first, for the processor's districts
    assert report.reference["road_segments"] == 449
    assert len({key for key, _, _ in consume(settings, "city.road_segments.v1")}) == 449

    events = consume(settings, "city.air.v1")
    assert len(events) == len(good)
    by_row = Counter(
        (
            v["sensor_id"],
            int(v["event_time"].timestamp() * 1000),
            v["ozone"],
            v["particulate_matter"],
            v["carbon_monoxide"],
            v["sulfure_dioxide"],
            v["nitrogen_dioxide"],
            v["latitude"],
            v["longitude"],
        )
        for _, _, v in events
    )
    expected = Counter(
        (
            r["REPORT_ID"],
            local_ms(r["timestamp"]),
            float(r["ozone"]),
            float(r["particullate_matter"]),
            float(r["carbon_monoxide"]),
            float(r["sulfure_dioxide"]),
            float(r["nitrogen_dioxide"]),
            float(r["latitude"]),
            float(r["longitude"]),
        )
        for r in good
    )
    assert by_row == expected  # every value, the duplicate twice
    for key, partition, value in events:
        assert key == value["sensor_id"].encode()
        assert partition == partition_for(key, settings.partitions)
        assert value["source"] == "aarhus-air-replay"
        assert value["event_time"].tzinfo is not None

    batches = consume(settings, "city.air.batches.v1")
    columns = ("sensor_id", "event_time_ms", "ozone", "particulate_matter", "carbon_monoxide")
    flat = Counter(
        tuple(b[c][i] for c in columns)
        for _, partition, b in batches
        for i in range(len(b["sensor_id"]))
    )
    assert flat == Counter(
        (
            r["REPORT_ID"],
            local_ms(r["timestamp"]),
            float(r["ozone"]),
            float(r["particullate_matter"]),
            float(r["carbon_monoxide"]),
        )
        for r in good
    )
    for _, partition, b in batches:
        assert b["source"] == "aarhus-air-replay"
        assert {partition_for(s.encode(), settings.partitions) for s in b["sensor_id"]} == {
            partition
        }
        assert all(o.startswith("air_test.csv.gz:") for o in b["origin"])
        assert len(b["origin"]) == len(b["sensor_id"]) == len(b["nitrogen_dioxide"])

    # the oracle accepts exactly the published readings, the duplicate once
    oracle = recompute_air(air_file, SHIPPED.metadata, settings.partitions)
    city = sum(n for k, (_, n) in oracle.items() if k[:3] == ("air.aqi", "city", "aarhus"))
    assert city == len(good) - 1


def test_parking_readings_and_car_parks_reach_their_topics(
    settings: Settings, replayed: dict[str, Any]
) -> None:
    report = replayed["reports"]["parking"]
    parking_file, lines = replayed["parking"]
    rows = table(lines)
    valid = [r for r in rows if not _is_bad(r, BAD_PARKING)]
    over = [r for r in valid if int(r["vehiclecount"]) > int(r["totalspaces"])]
    good = [r for r in valid if r not in over]
    assert len(over) == 123
    assert report.rows_read == 1152 + 1 + len(PARKING_EXTRA)
    assert report.published == len(good)
    assert report.dead_lettered == Counter(BAD_PARKING.values()) + Counter(invalid_row=len(over))
    assert report.reference["car_parks"] == 8

    events = consume(settings, "city.parking.v1")
    assert Counter(
        (
            v["car_park_id"],
            int(v["event_time"].timestamp() * 1000),
            v["vehicle_count"],
            v["total_spaces"],
        )
        for _, _, v in events
    ) == Counter(
        (
            r["garagecode"],
            local_ms(r["updatetime"]),
            int(r["vehiclecount"]),
            int(r["totalspaces"]),
        )
        for r in good
    )
    for key, partition, value in events:
        assert key == value["car_park_id"].encode()
        assert partition == partition_for(key, settings.partitions)
        assert value["source"] == "aarhus-parking-replay"

    batches = consume(settings, "city.parking.batches.v1")
    assert sum(len(b["car_park_id"]) for _, _, b in batches) == len(good)
    assert sorted(
        (c, t, n, s)
        for _, _, b in batches
        for c, t, n, s in zip(
            b["car_park_id"], b["event_time_ms"], b["vehicle_count"], b["total_spaces"], strict=True
        )
    ) == sorted(
        (r["garagecode"], local_ms(r["updatetime"]), int(r["vehiclecount"]), int(r["totalspaces"]))
        for r in good
    )

    car_parks = {key: value for key, _, value in consume(settings, "city.car_parks.v1")}
    assert set(car_parks) == {
        k.encode()
        for k in (
            "BRUUNS",
            "BUSGADEHUSET",
            "KALKVAERKSVEJ",
            "MAGASIN",
            "NORREPORT",
            "SALLING",
            "SCANDCENTER",
            "SKOLEBAKKEN",
        )
    }
    assert car_parks[b"SCANDCENTER"]["total_spaces"] == 1240
    assert car_parks[b"SCANDCENTER"]["district"] == "8000"

    oracle = recompute_parking(parking_file, SHIPPED.car_parks, settings.partitions)
    city = sum(n for k, (_, n) in oracle.items() if k[1] == "city")
    assert city == len(good) - 2  # the duplicate counts once, the late reading nowhere
    assert oracle[("parking.occupancy_pct", "district", "unknown", local_ms("2014-08-02T12:00"))]


def test_bad_rows_are_dead_lettered_with_reason_origin_and_raw_row(
    settings: Settings, replayed: dict[str, Any]
) -> None:
    letters = consume(settings, "city.dlq.v1")
    by_payload: dict[str, list[dict[str, Any]]] = {}
    for key, _, letter in letters:
        assert key == letter["reason"].encode()
        by_payload.setdefault(letter["payload"].decode(), []).append(letter)
    for row, reason in BAD_AIR.items():
        (letter,) = by_payload[row]
        assert letter["reason"] == reason and letter["component"] == "aarhus-air-replay"
        assert letter["origin"].startswith("air_test.csv.gz:")
    for row, reason in BAD_PARKING.items():
        (letter,) = by_payload[row]
        assert letter["reason"] == reason and letter["component"] == "aarhus-parking-replay"
        assert letter["origin"].startswith("parking_test.csv.gz:")
    _, lines = replayed["parking"]
    over_line = next(i for i, line in enumerate(lines) if line.startswith("202,2014-08-02 00:01"))
    (letter,) = by_payload[lines[over_line]]
    assert letter["detail"] == "vehiclecount 202 exceeds totalspaces 130"
    assert letter["origin"] == f"parking_test.csv.gz:{over_line + 1}"
    assert (
        len(letters)
        == len(BAD_AIR) + len(BAD_PARKING) + 123
        == sum(sum(r.dead_lettered.values()) for r in replayed["reports"].values())
    )
    assert all(letter["occurred_at"] <= datetime.now(UTC) for _, _, letter in letters)


def _is_bad(row: dict[str, Any], bad: dict[str, str]) -> bool:
    values = [v for k, v in row.items() if k is not None and v is not None]
    return ",".join(values) in bad
