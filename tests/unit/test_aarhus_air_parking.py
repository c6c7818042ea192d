"""Parsing and rejection reasons of the air and parking replays (pure, no Kafka)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import fastavro
import pytest

from connectors.publishing import AIR, PARKING, Rejected
from connectors.sources.aarhus import RowError, local_to_utc_ms
from connectors.sources.aarhus_air import AirParser, iter_air
from connectors.sources.aarhus_parking import ParkingParser, iter_parking, read_car_parks
from families.registry import TOPICS
from schemas.catalog import load_schema

REPO = Path(__file__).resolve().parents[2]
AIR_HEADER = (
    "ozone,particullate_matter,carbon_monoxide,sulfure_dioxide,nitrogen_dioxide,"
    "longitude,latitude,timestamp,REPORT_ID"
)
PARKING_HEADER = "vehiclecount,updatetime,_id,totalspaces,garagecode,streamtime"
GOOD_AIR = "101,94,49,44,87,10.104986076057457,56.23172069428216,2014-08-01 00:05:00,158324"
GOOD_PARKING = "22,2014-05-22 09:09:04.145,4,953,BRUUNS,2014-11-03 16:18:44"


def utc_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def parse_air(line: str) -> dict | Rejected:
    return AirParser(AIR_HEADER.split(","), "p.csv").parse(line.split(","), 9)


def parse_parking(line: str) -> dict | Rejected:
    return ParkingParser(PARKING_HEADER.split(","), "k.csv").parse(line.split(","), 4)


def test_air_row_becomes_a_reading_of_the_schema() -> None:
    record = parse_air(GOOD_AIR)
    assert isinstance(record, dict)
    assert record["sensor_id"] == "158324"
    assert record["event_time"] == record["event_time_ms"] == utc_ms(2014, 7, 31, 22, 5)
    assert (record["ozone"], record["particulate_matter"], record["carbon_monoxide"]) == (
        101.0,
        94.0,
        49.0,
    )
    assert (record["sulfure_dioxide"], record["nitrogen_dioxide"]) == (44.0, 87.0)
    assert record["latitude"] == pytest.approx(56.23172069428216)
    assert record["longitude"] == pytest.approx(10.104986076057457)
    assert record["source"] == "aarhus-air-replay" and record["origin"] == "p.csv:9"
    # the record satisfies the event schema and carries every batch column
    fastavro.validation.validate(record, fastavro.parse_schema(load_schema("air_reading.avsc")))
    assert set(AIR.columns) <= record.keys()


def test_air_without_coordinates_has_null_ones() -> None:
    record = parse_air("1,2,3,4,5,,,2014-08-01 00:05:00,158324")
    assert isinstance(record, dict) and record["latitude"] is None and record["longitude"] is None


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        ("NaN,94,49,44,87,10.1,56.2,2014-08-01 00:05:00,158324", "invalid_row", "ozone"),
        ("101,inf,49,44,87,10.1,56.2,2014-08-01 00:05:00,158324", "invalid_row", "particullate"),
        ("101,94,-3,44,87,10.1,56.2,2014-08-01 00:05:00,158324", "invalid_row", "carbon_monoxide"),
        ("101,94,49,501,87,10.1,56.2,2014-08-01 00:05:00,158324", "invalid_row", "0..500"),
        ("101,94,49,44,high,10.1,56.2,2014-08-01 00:05:00,158324", "invalid_row", "not a number"),
        ("101,94,49,44,87,10.1,91,2014-08-01 00:05:00,158324", "invalid_row", "latitude"),
        ("101,94,49,44,87,181,56.2,2014-08-01 00:05:00,158324", "invalid_row", "longitude"),
        ("101,94,49,44,87,10.1,56.2,2014-08-01 00:05:00, ", "invalid_row", "REPORT_ID is empty"),
        ("101,94,49,44,87,10.1,56.2,2014-08-01 00:05:00", "invalid_row", "expected 9 fields"),
        ("101,94,49,44,87,10.1,56.2,x,2014-08-01 00:05:00,1", "invalid_row", "expected 9 fields"),
        ("1,2,3,4,5,10.1,56.2,2014-13-01 00:05:00,158324", "invalid_timestamp", "unparseable"),
        ("1,2,3,4,5,10.1,56.2,2014-03-30 02:05:00,158324", "invalid_timestamp", "DST gap"),
    ],
)
def test_bad_air_rows_are_rejected_with_reason_origin_and_raw_row(
    line: str, reason: str, detail: str
) -> None:
    rejected = parse_air(line)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason and detail in rejected.detail
    assert rejected.origin == "p.csv:9" and rejected.raw == line


def test_parking_row_becomes_a_reading_of_the_schema() -> None:
    record = parse_parking(GOOD_PARKING)
    assert isinstance(record, dict)
    assert record["car_park_id"] == "BRUUNS"
    assert record["event_time_ms"] == utc_ms(2014, 5, 22, 7, 9, 4) + 145  # CEST, exact ms
    assert (record["vehicle_count"], record["total_spaces"]) == (22, 953)
    assert record["source"] == "aarhus-parking-replay" and record["origin"] == "k.csv:4"
    schema = fastavro.parse_schema(load_schema("parking_reading.avsc"))
    fastavro.validation.validate(record, schema)
    assert set(PARKING.columns) <= record.keys()


def test_a_full_car_park_is_valid() -> None:
    record = parse_parking("953,2014-05-22 09:09:04.145,4,953,BRUUNS,x")
    assert isinstance(record, dict) and record["vehicle_count"] == 953


@pytest.mark.parametrize(
    ("line", "reason", "detail"),
    [
        ("144,2014-05-22 10:40:24.706,29,130,BUSGADEHUSET,x", "invalid_row", "exceeds"),
        ("0,2014-05-22 10:40:24.706,29,0,BUSGADEHUSET,x", "invalid_row", "totalspaces must be"),
        ("-1,2014-05-22 10:40:24.706,29,130,BUSGADEHUSET,x", "invalid_row", "negative"),
        ("1.5,2014-05-22 10:40:24.706,29,130,BUSGADEHUSET,x", "invalid_row", "whole number"),
        ("NaN,2014-05-22 10:40:24.706,29,130,BUSGADEHUSET,x", "invalid_row", "whole number"),
        ("x,2014-05-22 10:40:24.706,29,130,BUSGADEHUSET,x", "invalid_row", "not a number"),
        ("5,2014-05-22 10:40:24.706,29,130,,x", "invalid_row", "garagecode is empty"),
        ("5,2014-05-22 10:40:24.706,29,130", "invalid_row", "expected 6 fields"),
        ("5,22/05/2014,29,130,BUSGADEHUSET,x", "invalid_timestamp", "updatetime"),
        ("5,2014-03-30 02:40:00.000,29,130,BUSGADEHUSET,x", "invalid_timestamp", "DST gap"),
    ],
)
def test_bad_parking_rows_are_rejected_with_reason_origin_and_raw_row(
    line: str, reason: str, detail: str
) -> None:
    rejected = parse_parking(line)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason and detail in rejected.detail
    assert rejected.origin == "k.csv:4" and rejected.raw == line


def test_headers_without_needed_columns_fail_loudly() -> None:
    with pytest.raises(ValueError, match="REPORT_ID"):
        AirParser(AIR_HEADER.split(",")[:-1], "p.csv")
    with pytest.raises(ValueError, match="totalspaces"):
        ParkingParser(["vehiclecount", "updatetime", "garagecode"], "k.csv")


def test_fractional_local_time_keeps_its_milliseconds() -> None:
    assert local_to_utc_ms("2014-05-22 09:09:04.145") % 1000 == 145
    with pytest.raises(RowError, match="updatetime"):
        local_to_utc_ms("nonsense", "updatetime")


def test_files_are_read_with_line_numbers(tmp_path: Path) -> None:
    air = tmp_path / "a.csv.gz"
    air.write_bytes(gzip.compress("\n".join([AIR_HEADER, GOOD_AIR, "junk"]).encode()))
    first, second = iter_air(air)
    assert isinstance(first, dict) and first["origin"] == "a.csv.gz:2"
    assert isinstance(second, Rejected) and second.origin == "a.csv.gz:3"
    parking = tmp_path / "k.csv"
    parking.write_text("\n".join([PARKING_HEADER, GOOD_PARKING]))
    (only,) = iter_parking(parking)
    assert isinstance(only, dict) and only["origin"] == "k.csv:2"


def test_shipped_car_parks_cover_every_garage_code_with_its_capacity() -> None:
    car_parks, rejected = read_car_parks(REPO / "data/aarhus/car_parks.csv")
    assert not rejected
    spaces = {c["car_park_id"]: c["total_spaces"] for c in car_parks}
    assert spaces == {
        "BRUUNS": 953,
        "BUSGADEHUSET": 130,
        "KALKVAERKSVEJ": 210,
        "MAGASIN": 400,
        "NORREPORT": 65,
        "SALLING": 700,
        "SCANDCENTER": 1240,
        "SKOLEBAKKEN": 512,
    }
    assert {c["district"] for c in car_parks} == {"8000"}
    schema = fastavro.parse_schema(load_schema("car_park.avsc"))
    for car_park in car_parks:
        fastavro.validation.validate(car_park, schema)


def test_bad_car_park_rows_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "car_parks.csv"
    path.write_text(
        "garagecode,name,postal_code,address,latitude,longitude,totalspaces\n"
        "A,a,8000,street,56.1,10.2,0\n"
        "B,b,,street,56.1,10.2,10\n"
        "C,c,8000,street,north,10.2,10\n"
        "D,d,8000,street,56.1\n"
        "E,e,8000,street,56.1,10.2,10\n"
    )
    car_parks, rejected = read_car_parks(path)
    assert [c["car_park_id"] for c in car_parks] == ["E"]
    assert [r.reason for r in rejected] == ["invalid_car_park"] * 4
    assert [r.origin for r in rejected] == [f"car_parks.csv:{n}" for n in (2, 3, 4, 5)]


def test_the_streams_topics_are_in_the_catalogue_with_their_keys() -> None:
    assert TOPICS["city.air.v1"].key == "sensor_id"
    assert TOPICS["city.parking.v1"].key == "car_park_id"
    assert TOPICS["city.air.batches.v1"].internal and TOPICS["city.parking.batches.v1"].internal
    assert TOPICS["city.car_parks.v1"].compacted
    for stream in (AIR, PARKING):
        batch = load_schema(TOPICS[stream.batch_topic].schema_file)
        names = [f["name"] for f in batch["fields"]]
        assert names == ["source", *stream.columns, "origin"]


@pytest.mark.parametrize(
    "name",
    [
        "air_reading.avsc",
        "air_reading_batch.avsc",
        "parking_reading.avsc",
        "parking_reading_batch.avsc",
        "car_park.avsc",
    ],
)
def test_every_field_is_documented(name: str) -> None:
    assert all(field.get("doc") for field in load_schema(name)["fields"])
