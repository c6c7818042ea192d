from __future__ import annotations

import gzip
from pathlib import Path

from core.kafka import partition_for
from oracles.aarhus_traffic import recompute
from oracles.compare import compare

REPO = Path(__file__).resolve().parents[2]
METADATA = REPO / "data/aarhus/traffic_metadata.csv"
HEADER = (
    "status,avgMeasuredTime,avgSpeed,extID,medianMeasuredTime,TIMESTAMP,vehicleCount,_id,REPORT_ID"
)
W0 = 1406952000000  # 2014-08-02T04:00Z = 06:00 in Aarhus


def write(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "t.csv.gz"
    path.write_bytes(gzip.compress("\n".join([HEADER, *rows]).encode()))
    return path


def test_recompute_applies_the_contract(tmp_path: Path) -> None:
    traffic = write(
        tmp_path,
        "OK,1,50,1,1,2014-08-02T06:05:00,10,1,158895",
        "OK,1,70,1,1,2014-08-02T06:10:00,30,2,158895",
        "OK,1,70,1,1,2014-08-02T06:10:00,30,3,158895",  # duplicate
        "OK,1,NaN,1,1,2014-08-02T06:10:00,30,4,158895",  # invalid
        "OK,1,40,1,1,2014-08-02T06:10:00,7,5,999999",  # unknown segment
    )
    kpis = recompute(traffic, METADATA, partitions=6)
    assert kpis[("traffic.vehicle_count", "segment", "158895", W0)] == (40.0, 2)
    assert kpis[("traffic.avg_speed_kmh", "segment", "158895", W0)] == (65.0, 2)
    assert kpis[("traffic.congestion_index", "segment", "158895", W0)][0] == 1 - 65 / 70
    assert kpis[("traffic.vehicle_count", "district", "8200", W0)] == (40.0, 2)
    assert kpis[("traffic.vehicle_count", "district", "unknown", W0)] == (7.0, 1)
    assert kpis[("traffic.vehicle_count", "city", "aarhus", W0)] == (47.0, 3)
    assert ("traffic.congestion_index", "segment", "999999", W0) not in kpis


def test_late_reading_is_judged_by_its_partitions_stream_time(tmp_path: Path) -> None:
    same = partition_for(b"158895", 6)
    other = next(s for s in ("158324", "158355", "158446") if partition_for(s.encode(), 6) != same)
    traffic = write(
        tmp_path,
        "OK,1,50,1,1,2014-08-02T07:00:00,5,1,158895",
        f"OK,1,50,1,1,2014-08-02T06:05:00,5,2,{other}",  # other partition: on time
        "OK,1,50,1,1,2014-08-02T06:05:00,5,3,158895",  # 06:00 window closed at 06:45: late
    )
    kpis = recompute(traffic, METADATA, partitions=6)
    assert ("traffic.vehicle_count", "segment", "158895", W0) not in kpis
    assert kpis[("traffic.vehicle_count", "segment", other, W0)] == (5.0, 1)


def test_compare_reports_each_kind_of_difference() -> None:
    a = ("traffic.vehicle_count", "city", "aarhus", 0)
    b = ("traffic.vehicle_count", "city", "aarhus", 900_000)
    c = ("traffic.vehicle_count", "city", "aarhus", 1_800_000)
    d = ("traffic.vehicle_count", "city", "aarhus", 2_700_000)
    result = compare(
        {a: (1.0, 1), b: (2.0, 1), c: (3.0, 1)}, {a: (1.0, 1), c: (3.5, 1), d: (1.0, 1)}
    )
    assert (result.matched, result.missing, result.extra) == (1, [b], [d])
    assert result.different == [(c, (3.0, 1), (3.5, 1))]
    assert not result.ok
