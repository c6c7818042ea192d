from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest

from connectors.publishing import Reading, Rejected
from connectors.sources.aarhus import (
    ReadingParser,
    RowError,
    iter_readings,
    local_to_utc_ms,
    read_segments,
)

REPO = Path(__file__).resolve().parents[2]
HEADER = (
    "status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,vehicleCount,_id,REPORT_ID"
)


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def parse(line: str) -> Reading | Rejected:
    return ReadingParser(HEADER.split(","), "t.csv").parse(line.split(","), 7)


def test_summer_time_is_utc_plus_two() -> None:
    assert local_to_utc_ms("2014-08-02T07:50:00") == ms(2014, 8, 2, 5, 50)


def test_winter_time_is_utc_plus_one() -> None:
    assert local_to_utc_ms("2014-01-15T12:00:00") == ms(2014, 1, 15, 11, 0)


def test_ambiguous_autumn_time_is_read_as_summer_time() -> None:
    assert local_to_utc_ms("2014-10-26T02:30:00") == ms(2014, 10, 26, 0, 30)


def test_time_in_the_spring_gap_is_rejected() -> None:
    with pytest.raises(RowError) as err:
        local_to_utc_ms("2014-03-30T02:30:00")
    assert err.value.reason == "invalid_timestamp"


def test_unparseable_timestamp_is_rejected() -> None:
    with pytest.raises(RowError) as err:
        local_to_utc_ms("yesterday")
    assert err.value.reason == "invalid_timestamp"


def test_valid_row_becomes_a_reading() -> None:
    reading = parse("OK,74,50,668,73,2014-08-01T07:50:00,5,20746220,158324")
    assert reading == Reading(
        segment_id="158324",
        event_time_ms=ms(2014, 8, 1, 5, 50),
        vehicle_count=5,
        avg_speed_kmh=50.0,
        avg_measured_time_s=74,
        median_measured_time_s=73,
        status="OK",
        origin="t.csv:7",
    )


@pytest.mark.parametrize(
    ("line", "reason", "words"),
    [
        ("OK,74,50,668,74,2014-08-01T07:50:00,5,20746220", "invalid_row", "fields"),
        ("OK,74,50,668,74,2014-08-01T07:50:00,five,20746220,158324", "invalid_row", "number"),
        ("OK,74,NaN,668,74,2014-08-01T07:50:00,5,20746220,158324", "invalid_row", "finite"),
        ("OK,74,inf,668,74,2014-08-01T07:50:00,5,20746220,158324", "invalid_row", "finite"),
        ("OK,74,50,668,74,2014-08-01T07:50:00,-3,20746220,158324", "invalid_row", "negative"),
        ("OK,74,50,668,74,2014-08-01T07:50:00,2.5,20746220,158324", "invalid_row", "whole"),
        ("OK,74,50,668,74,2014-08-01T07:50:00,5,20746220,", "invalid_row", "REPORT_ID"),
        ("OK,74,50,668,74,not-a-time,5,20746220,158324", "invalid_timestamp", "TIMESTAMP"),
    ],
)
def test_bad_rows_are_rejected_with_reason_origin_and_raw_row(
    line: str, reason: str, words: str
) -> None:
    rejected = parse(line)
    assert isinstance(rejected, Rejected)
    assert rejected.reason == reason
    assert words in rejected.detail
    assert rejected.origin == "t.csv:7"
    assert rejected.raw == line


def test_header_without_needed_columns_fails_loudly() -> None:
    with pytest.raises(ValueError, match="vehicleCount"):
        ReadingParser(["status", "TIMESTAMP"], "x.csv")


def test_fixture_parses_completely(tmp_path: Path) -> None:
    items = list(iter_readings(REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"))
    assert len(items) == 16164
    assert all(isinstance(i, Reading) for i in items)
    assert {i.segment_id for i in items if isinstance(i, Reading)}.__len__() == 449


def test_plain_csv_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "t.csv.gz"
    rows = [HEADER, "OK,74,50,668,74,2014-08-01T07:50:00,5,1,158324", "garbage"]
    path.write_bytes(gzip.compress("\n".join(rows).encode()))
    first, second = iter_readings(path)
    assert isinstance(first, Reading) and first.origin == "t.csv.gz:2"
    assert isinstance(second, Rejected) and second.origin == "t.csv.gz:3"


def test_segments_take_district_from_first_point_postal_code() -> None:
    segments, rejected = read_segments(REPO / "data/aarhus/traffic_metadata.csv")
    assert len(segments) == 449 and not rejected
    by_id = {s["segment_id"]: s for s in segments}
    assert by_id["158895"]["district"] == "8200"
    assert by_id["158895"]["free_flow_speed_kmh"] == 70.0
    assert by_id["158895"]["road_type"] == "MAJOR_ROAD"
    assert by_id["158895"]["start_lat"] == pytest.approx(56.2149789163549)


def test_pacer_keeps_event_time_and_wall_time_in_step() -> None:
    import time

    from connectors.sources.pacing import Pacer

    pacer = Pacer(speed=600.0)  # 10 minutes of event time per real second
    start = time.monotonic()
    assert not pacer.wait_needed(0)  # the first reading sets the clock
    assert pacer.wait_needed(5 * 60_000)  # 5 event minutes = 0.5 s ahead
    pacer.sleep(5 * 60_000)
    assert 0.45 <= time.monotonic() - start < 1.0
