"""The air and parking oracle on small hand-computed inputs, one rule at a time."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

from core.kafka import partition_for
from oracles.aarhus_air_parking import (
    hopping_starts,
    local_ms,
    recompute_air,
    recompute_parking,
)

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "data/aarhus/traffic_metadata.csv"
CAR_PARKS = REPO / "data/aarhus/car_parks.csv"
AIR_HEADER = (
    "ozone,particullate_matter,carbon_monoxide,sulfure_dioxide,nitrogen_dioxide,"
    "longitude,latitude,timestamp,REPORT_ID"
)
PARKING_HEADER = "vehiclecount,updatetime,_id,totalspaces,garagecode,streamtime"
MIN = 60_000
W0 = 1406952000000  # 2014-08-02T04:00Z = 06:00 in Aarhus
POLLUTANTS = ("ozone", "particulate_matter", "carbon_monoxide", "sulfure_dioxide")


def write(tmp_path: Path, name: str, header: str, *rows: str) -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress("\n".join([header, *rows]).encode()))
    return path


def air(values: str, local: str, sensor: str = "158895") -> str:
    return f"{values},10.1,56.2,2014-08-02 {local},{sensor}"


def test_local_time_is_exact_to_the_millisecond() -> None:
    expected = datetime(2014, 5, 22, 7, 9, 4, 145000, tzinfo=UTC)
    assert local_ms("2014-05-22 09:09:04.145") == int(expected.timestamp()) * 1000 + 145
    assert local_ms("2014-08-02T06:00:00") == W0
    assert local_ms("2014-01-15 12:00:00") == 1389783600000  # winter: UTC+1
    assert local_ms("2014-10-26 02:30:00") == 1414283400000  # fold: the summer-time one
    assert local_ms("2014-03-30 02:30:00") is None  # spring gap
    assert local_ms("yesterday") is None


def test_hopping_windows_are_the_four_quarter_hours_covering_a_time() -> None:
    ts = W0 + 5 * MIN
    assert sorted(hopping_starts(ts, 15 * MIN, 60 * MIN)) == [
        W0 - 45 * MIN,
        W0 - 30 * MIN,
        W0 - 15 * MIN,
        W0,
    ]
    assert sorted(hopping_starts(W0, 15 * MIN, 60 * MIN))[0] == W0 - 45 * MIN  # start inclusive
    assert W0 - 60 * MIN not in hopping_starts(W0, 15 * MIN, 60 * MIN)  # end exclusive


def test_air_means_aqi_scopes_duplicates_and_invalid_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "air.csv.gz",
        AIR_HEADER,
        air("10,20,30,40,50", "06:05:00"),
        air("30,20,10,0,100", "06:10:00"),
        air("99,99,99,99,99", "06:10:00"),  # duplicate: the first wins
        air("nan,20,10,0,100", "06:10:00", "158324"),  # NaN
        air("501,20,10,0,100", "06:10:00", "158324"),  # above the index scale
        air("-1,20,10,0,100", "06:10:00", "158324"),  # negative
        "1,2,3,4,5,10.1,56.2,2014-03-30 02:30:00,158324",  # DST gap
        "1,2,3,4,5,10.1,56.2,2014-08-02 06:10:00",  # a column missing
        "1,2,3,4,5,10.1,56.2,2014-08-02 06:10:00,158324,x",  # a column extra
        "1,2,3,4,5,10.1,95,2014-08-02 06:10:00,158324",  # latitude out of range
        air("5,5,5,5,5", "06:10:00", "999999"),  # unknown sensor
        "7,7,7,7,7,,,2014-08-02 06:11:00,158324",  # no coordinates: fine
    )
    kpis = recompute_air(path, METADATA, partitions=6)
    for name, expected in zip(POLLUTANTS, (20.0, 20.0, 20.0, 20.0), strict=True):
        assert kpis[(f"air.{name}_mean", "segment", "158895", W0)] == (expected, 2)
    assert kpis[("air.nitrogen_dioxide_mean", "segment", "158895", W0)] == (75.0, 2)
    assert kpis[("air.aqi", "segment", "158895", W0)] == (75.0, 2)  # mean of max 50 and 100
    assert kpis[("air.aqi", "segment", "158324", W0)] == (7.0, 1)
    assert kpis[("air.aqi", "district", "8200", W0)] == (75.0, 2)  # 158895 is in 8200
    assert kpis[("air.aqi", "district", "unknown", W0)] == (5.0, 1)
    assert kpis[("air.aqi", "district", "8382", W0)] == (7.0, 1)  # 158324's postal code
    assert kpis[("air.aqi", "city", "aarhus", W0)] == ((50 + 100 + 5 + 7) / 4, 4)
    assert kpis[("air.ozone_mean", "city", "aarhus", W0)] == ((10 + 30 + 5 + 7) / 4, 4)
    assert {k[0] for k in kpis if k[3] == W0 and k[1] == "segment" and k[2] == "158895"} == {
        *(f"air.{p}_mean" for p in (*POLLUTANTS, "nitrogen_dioxide")),
        "air.aqi",
    }  # trends (air.aqi_1h) are for districts and the city only


def test_air_hopping_hour_and_late_readings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "air.csv.gz",
        AIR_HEADER,
        air("10,20,30,40,50", "06:05:00"),  # max 50 -> hours starting 03:15Z .. 04:00Z
        air("90,20,30,40,50", "06:40:00"),  # max 90 -> 03:45Z .. 04:30Z
        air("10,20,30,40,60", "07:10:00"),  # max 60 -> 04:15Z .. 05:00Z
        air("10,20,30,40,10", "08:00:00"),  # stream time 06:00Z
        air("200,20,30,40,50", "06:20:00"),  # window ends 04:30Z + 15 min grace < 06:00Z: late
    )
    kpis = recompute_air(path, METADATA, partitions=1)
    hour = {k[3]: v for k, v in kpis.items() if k[:3] == ("air.aqi_1h", "district", "8200")}
    assert not any(k[0] == "air.aqi_1h" and k[1] == "segment" for k in kpis)
    assert hour[W0 - 45 * MIN] == (50.0, 1)
    assert hour[W0 - 15 * MIN] == (70.0, 2)
    assert hour[W0] == (70.0, 2)  # [04:00Z, 05:00Z) holds 06:05 and 06:40 local, not 07:10
    assert hour[W0 + 15 * MIN] == (75.0, 2)
    assert hour[W0 + 60 * MIN] == (60.0, 1)
    assert ("air.aqi", "segment", "158895", W0 + 15 * MIN) not in kpis  # the late reading
    assert all(v[0] < 200 for k, v in kpis.items() if k[0] == "air.ozone_mean")


def test_late_rule_is_per_partition(tmp_path: Path) -> None:
    """With many partitions another sensor's later readings do not make a reading late."""
    rows = [air("10,10,10,10,10", "08:00:00", "187509"), air("20,20,20,20,20", "06:20:00")]
    path = write(tmp_path, "air.csv.gz", AIR_HEADER, *rows)
    assert partition_for(b"187509", 6) == 5 and partition_for(b"158895", 6) == 3
    assert ("air.aqi", "segment", "158895", W0 + 15 * MIN) in recompute_air(path, METADATA, 6)
    assert ("air.aqi", "segment", "158895", W0 + 15 * MIN) not in recompute_air(path, METADATA, 1)


def test_parking_takes_each_car_parks_last_reading(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "parking.csv.gz",
        PARKING_HEADER,
        "100,2014-08-02 06:01:00.000,1,953,BRUUNS,x",
        "200,2014-08-02 06:11:00.250,2,953,BRUUNS,x",
        "300,2014-08-02 06:09:00.000,3,953,BRUUNS,x",  # earlier event time: not the last
        "13,2014-08-02 06:05:00.000,4,65,NORREPORT,x",
        "60,2014-08-02 06:05:00.000,5,65,NORREPORT,x",  # duplicate time: the first wins
        "800,2014-08-02 06:03:00.000,6,700,SALLING,x",  # more vehicles than spaces
        "5,2014-08-02 06:03:00.000,7,0,SALLING,x",  # no spaces
        "1.5,2014-08-02 06:03:00.000,8,700,SALLING,x",  # fractional count
        "-1,2014-08-02 06:03:00.000,9,700,SALLING,x",  # negative count
        "5,2014-03-30 02:10:00.000,10,700,SALLING,x",  # DST gap
        "5,2014-08-02 06:03:00.000,11,700",  # columns missing
        "5.0,2014-08-02 06:07:00.000,12,10,NEWPARK,x",  # unknown car park; "5.0" is 5
        "50,2014-08-02 06:20:00.000,13,953,BRUUNS,x",  # next window
    )
    kpis = recompute_parking(path, CAR_PARKS, partitions=6)
    occupancy = {k[1:]: v for k, v in kpis.items() if k[0] == "parking.occupancy_pct"}
    assert occupancy[("car_park", "BRUUNS", W0)] == (200 / 953 * 100, 3)
    assert occupancy[("car_park", "NORREPORT", W0)] == (13 / 65 * 100, 1)
    assert occupancy[("car_park", "NEWPARK", W0)] == (50.0, 1)
    assert ("car_park", "SALLING", W0) not in occupancy
    assert occupancy[("district", "8000", W0)] == ((200 + 13) / (953 + 65) * 100, 4)
    assert occupancy[("district", "unknown", W0)] == (50.0, 1)
    assert occupancy[("city", "aarhus", W0)] == ((200 + 13 + 5) / (953 + 65 + 10) * 100, 5)
    assert occupancy[("car_park", "BRUUNS", W0 + 15 * MIN)] == (50 / 953 * 100, 1)
    assert occupancy[("city", "aarhus", W0 + 15 * MIN)] == (50 / 953 * 100, 1)
    assert len(occupancy) == 9  # W0: 3 car parks, 2 districts, city; W0+15: 1, 1, 1


def test_parking_late_reading_counts_nowhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "parking.csv.gz",
        PARKING_HEADER,
        "100,2014-08-02 08:00:00.000,1,953,BRUUNS,x",
        "900,2014-08-02 06:01:00.000,2,953,BRUUNS,x",  # 2 h behind: late
    )
    kpis = recompute_parking(path, CAR_PARKS, partitions=6)
    assert set(kpis) == {
        ("parking.occupancy_pct", scope, entity, W0 + 120 * MIN)
        for scope, entity in (("car_park", "BRUUNS"), ("district", "8000"), ("city", "aarhus"))
    }


def test_shipped_parking_file_recomputes_to_valid_percentages() -> None:
    kpis = recompute_parking(REPO / "data/aarhus/parking.csv.gz", CAR_PARKS, partitions=6)
    assert kpis and all(0 <= v <= 100 for v, _ in kpis.values())
    city = [n for k, (_, n) in kpis.items() if k[1] == "city"]
    assert sum(city) == 55264 - 4520  # every row but the over-capacity ones; none late
