"""Boston 311 rows → service lifecycle events (the pack's declarative source), the SLA
rules of the service domain, and the independent oracle on a hand-checked sample."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.publishing import SERVICE, Rejected
from connectors.sources.city_files import iter_service_events
from core.city import load_pack
from families.service.domain import P50, SLA_MET, Service, service_kpis
from oracles.boston_311 import boston_ms, expected_for_pack, read_areas
from streams.engine.windows import Group
from tests.unit.test_city_pack import BOSTON, to_geopackage

MONTH = BOSTON / "boston_311_2015-01.csv.gz"
BEACON_HILL = ("42.3574", "-71.0648")
CITY_HALL = ("42.3594", "-71.0587")
OUTSIDE = ("42.3736", "-71.1097")  # Harvard Square, Cambridge
W = 900_000  # 15 minutes
KEEP = {"event_id", "request_id", "status", "category", "district", "event_time",
        "event_time_ms", "opened_at", "opened_at_ms", "sla_due_at", "sla_due_ms", "source",
        "origin"}  # fmt: skip


def header() -> list[str]:
    with gzip.open(MONTH, "rt", newline="") as handle:
        return next(csv.reader(handle))


def row(
    rid: str,
    opened: str,
    closed: str = "",
    target: str = "",
    kind: str = "Pothole",
    at: tuple[str, str] = BEACON_HILL,
) -> dict[str, str]:
    return {"CASE_ENQUIRY_ID": rid, "OPEN_DT": opened, "CLOSED_DT": closed, "TARGET_DT": target,
            "TYPE": kind, "LATITUDE": at[0], "LONGITUDE": at[1],
            "Location": "33 Beacon St  Boston  MA  02108", "CLOSURE_REASON": "Case Closed by J.",
            "SubmittedPhoto": "https://example.org/photo.jpg"}  # fmt: skip


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    names = header()
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(names)
    for r in rows:
        writer.writerow([r.get(name, "") for name in names])
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def events(tmp_path: Path, *rows: dict[str, str]) -> list[dict[str, Any] | Rejected]:
    pack = load_pack(BOSTON)
    path = write_rows(tmp_path / "rows.csv", list(rows))
    return list(iter_service_events(pack, pack.source("requests"), path))


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# --- rows → events -------------------------------------------------------------------


def test_a_closed_row_is_an_opened_and_a_closed_event_in_utc(tmp_path: Path) -> None:
    opened, closed = events(
        tmp_path, row("1", "01/05/2015 09:00:00 AM", "01/05/2015 01:20:00 PM",
                      "01/06/2015 09:00:00 AM")
    )  # fmt: skip
    assert isinstance(opened, dict) and isinstance(closed, dict)
    assert opened["status"] == "opened" and closed["status"] == "closed"
    assert opened["event_time_ms"] == opened["opened_at_ms"] == ms("2015-01-05T14:00:00")
    assert closed["event_time_ms"] == ms("2015-01-05T18:20:00")  # EST: UTC-5
    assert closed["opened_at_ms"] == opened["opened_at_ms"]
    assert closed["sla_due_ms"] == ms("2015-01-06T14:00:00") == opened["sla_due_ms"]
    assert (opened["category"], opened["district"]) == ("Pothole", "Beacon Hill")
    assert opened["event_id"] == "1:opened" and closed["event_id"] == "1:closed"


def test_only_district_category_times_and_id_enter_kafka(tmp_path: Path) -> None:
    """Minimised at the source: no address, free text, photo URL or coordinate."""
    items = events(tmp_path, row("1", "01/05/2015 09:00:00 AM", "01/05/2015 09:05:00 AM"))
    for item in items:
        assert isinstance(item, dict) and set(item) == KEEP
        assert set(SERVICE.columns) | set(SERVICE.optional) <= set(item)
        values = " ".join(map(str, item.values()))
        assert "Beacon St" not in values and "42.35" not in values and "photo" not in values


def test_an_ambiguous_autumn_time_is_its_first_occurrence(tmp_path: Path) -> None:
    (opened,) = events(tmp_path, row("1", "11/01/2015 01:30:00 AM"))
    assert isinstance(opened, dict)
    assert opened["event_time_ms"] == ms("2015-11-01T05:30:00")  # EDT, UTC-4: the first 01:30
    assert boston_ms("11/01/2015 01:30:00 AM") == ms("2015-11-01T05:30:00")  # the oracle agrees


def test_a_spring_gap_time_is_dead_lettered_as_invalid_timestamp(tmp_path: Path) -> None:
    gap_open, gap_close = events(
        tmp_path,
        row("1", "03/08/2015 02:30:00 AM", "03/08/2015 09:00:00 AM"),
    )
    assert isinstance(gap_open, Rejected) and isinstance(gap_close, Rejected)
    assert {gap_open.reason, gap_close.reason} == {"invalid_timestamp"}
    assert "does not exist in America/New_York (DST gap)" in gap_open.detail
    assert boston_ms("03/08/2015 02:30:00 AM") is None
    rejected, opened = events(
        tmp_path, row("2", "03/08/2015 01:59:59 AM", "03/08/2015 02:00:00 AM")
    )  # a close in the gap loses the close only
    assert isinstance(rejected, Rejected) and rejected.reason == "invalid_timestamp"
    assert rejected.detail.startswith("closed event: CLOSED_DT '03/08/2015 02:00:00 AM'")
    assert isinstance(opened, dict) and opened["event_time_ms"] == ms("2015-03-08T06:59:59")


def test_a_close_before_the_open_loses_the_close_only(tmp_path: Path) -> None:
    rejected, opened = events(
        tmp_path, row("101001371095", "05/06/2015 07:34:47 AM", "05/06/2015 07:34:36 AM")
    )
    assert isinstance(opened, dict) and opened["status"] == "opened"
    assert isinstance(rejected, Rejected) and rejected.reason == "invalid_event"
    assert rejected.detail == "closed event: CLOSED_DT is before OPEN_DT"
    assert rejected.origin == "rows.csv:2"
    # the dead letter keeps the mapped columns, never the location or free text
    assert rejected.raw.startswith("CASE_ENQUIRY_ID=101001371095,TYPE=Pothole,OPEN_DT=")
    assert "LATITUDE" not in str(rejected.raw) and "Beacon" not in str(rejected.raw)


def test_districts_city_hall_outside_and_missing_points_are_unknown(tmp_path: Path) -> None:
    items = events(
        tmp_path,
        row("1", "01/05/2015 09:00:00 AM", at=BEACON_HILL),
        row("2", "01/05/2015 09:00:01 AM", at=CITY_HALL),
        row("3", "01/05/2015 09:00:02 AM", at=OUTSIDE),
        row("4", "01/05/2015 09:00:03 AM", at=("", "")),
        row("5", "01/05/2015 09:00:04 AM", at=("42.3594", "-71.0588")),
    )
    districts = {e["request_id"]: e["district"] for e in items if isinstance(e, dict)}
    assert districts == {"1": "Beacon Hill", "2": "unknown", "3": "unknown", "4": "unknown",
                         "5": "Downtown"}  # fmt: skip


def test_bad_rows_are_dead_lettered_with_their_reason(tmp_path: Path) -> None:
    items = events(
        tmp_path,
        row("", "01/05/2015 09:00:00 AM"),
        row("2", "01/05/2015 09:00:00 AM", kind=""),
        row("3", "2015-01-05 09:00", "01/05/2015 10:00:00 AM"),
        row("4", "01/05/2015 09:00:00 AM", at=("north", "-71.06")),
        row("5", "01/05/2015 09:00:00 AM", "01/05/2015 10:00:00 AM", target="soon"),
    )
    rejected = [(i.origin, i.reason, i.detail) for i in items if isinstance(i, Rejected)]
    assert rejected == [
        ("rows.csv:2", "invalid_row", "opened event: CASE_ENQUIRY_ID is empty"),
        ("rows.csv:3", "invalid_row", "opened event: TYPE is empty"),
        ("rows.csv:4", "invalid_timestamp", "opened event: unparseable OPEN_DT '2015-01-05 09:00'"),
        ("rows.csv:4", "invalid_timestamp", "closed event: unparseable OPEN_DT '2015-01-05 09:00'"),
        ("rows.csv:5", "invalid_row", "opened event: LATITUDE is not a valid latitude"),
        ("rows.csv:6", "invalid_timestamp", "closed event: unparseable TARGET_DT 'soon'"),
    ]
    (opened,) = [i for i in items if isinstance(i, dict)]  # row 5 opens, without a due time
    assert opened["request_id"] == "5" and opened["sla_due_ms"] is None


def test_events_come_in_event_time_order_so_a_late_close_is_not_late(tmp_path: Path) -> None:
    items = events(
        tmp_path,
        row("1", "01/05/2015 09:00:00 AM", "01/09/2015 09:00:00 AM"),
        row("2", "01/06/2015 09:00:00 AM", "01/06/2015 09:00:00 AM"),
    )
    order = [(e["request_id"], e["status"]) for e in items if isinstance(e, dict)]
    assert order == [("1", "opened"), ("2", "opened"), ("2", "closed"), ("1", "closed")]


def test_the_shipped_month_reconciles_and_meets_the_oracle_on_openings() -> None:
    pack = load_pack(BOSTON)
    items = list(iter_service_events(pack, pack.source("requests"), MONTH))
    statuses = Counter(e["status"] for e in items if isinstance(e, dict))
    assert statuses == {"opened": 7528, "closed": 6078}  # every row opens; 6078 have closed
    assert not [i for i in items if isinstance(i, Rejected)]
    opened: Counter[tuple[str, str, int]] = Counter()
    for e in items:
        if isinstance(e, dict) and e["status"] == "opened":
            start = e["event_time_ms"] - e["event_time_ms"] % W
            for scope, entity in (("category", e["category"]), ("district", e["district"]),
                                  ("city", "boston")):  # fmt: skip
                opened[(scope, entity, start)] += 1
    expected = expected_for_pack(BOSTON)
    oracle = {k[1:]: v[0] for k, v in expected.items() if k[0] == "service.requests_opened"}
    assert oracle == {k: float(n) for k, n in opened.items()}
    district_total = Counter[str]()
    for (scope, entity, _), n in opened.items():
        if scope == "district":
            district_total[entity] += n
    assert district_total["unknown"] == 1141  # the City Hall rows: every other is in a polygon
    assert len(district_total) == 25 + 1  # Harbor Islands has no request this month


# --- the SLA rules of the service domain ---------------------------------------------


def kpis_of(batch: dict[str, list[Any]], reference: dict[str, int], city: str = "boston"):
    domain = Service(city)
    acc = domain.new()
    for i in range(len(batch["request_id"])):
        domain.add(acc, batch, i)
    groups: dict[tuple[str, str], Group] = {}
    domain.contribute("r", acc, reference, groups)
    return {key: {k: (v, n) for k, v, n in service_kpis(g)} for key, g in groups.items()}


def closes(*cases: tuple[str, int, int | None]) -> dict[str, list[Any]]:
    """Closed events (category, minutes after the open, due minutes after the open)."""
    t0 = ms("2015-01-05T14:00:00")
    return {
        "request_id": [f"r{i}" for i in range(len(cases))],
        "status": ["closed"] * len(cases),
        "category": [c for c, _, _ in cases],
        "district": ["Fenway"] * len(cases),
        "event_time_ms": [t0 + m * 60_000 for _, m, _ in cases],
        "opened_at_ms": [t0] * len(cases),
        "sla_due_ms": [None if d is None else t0 + d * 60_000 for _, _, d in cases],
    }


def test_a_due_time_decides_the_sla_before_the_category() -> None:
    kpis = kpis_of(closes(("Pothole", 60, 60), ("Pothole", 61, 60), ("Pothole", 5, 4)),
                   {"Pothole": 1000})  # fmt: skip
    assert kpis[("city", "boston")][SLA_MET] == (pytest.approx(100 / 3), 3)  # met: closed ≤ due


def test_without_a_due_time_the_category_sla_applies_else_no_sla() -> None:
    kpis = kpis_of(closes(("Noise", 10, None), ("Noise", 11, None), ("Other", 500, None)),
                   {"Noise": 10})  # fmt: skip
    assert kpis[("city", "boston")][SLA_MET] == (50.0, 2)  # Other is not judged
    assert kpis[("city", "boston")][P50] == (11.0, 3)  # ...but counts in the response times
    assert SLA_MET not in kpis[("category", "Other")]
    assert kpis[("category", "Noise")][SLA_MET] == (50.0, 2)


def test_batches_without_the_due_column_keep_the_category_rule() -> None:
    batch = closes(("Noise", 10, None), ("Noise", 11, None))
    del batch["sla_due_ms"]  # written before the field existed
    assert kpis_of(batch, {"Noise": 10}, "aarhus")[("city", "aarhus")][SLA_MET] == (50.0, 2)
    batch["sla_due_ms"] = []  # the reader's default for such a batch
    assert kpis_of(batch, {"Noise": 10}, "aarhus")[("city", "aarhus")][SLA_MET] == (50.0, 2)


def test_the_service_domain_names_its_city_scope_after_the_pack() -> None:
    assert Service().city == "aarhus"
    assert ("city", "boston") in kpis_of(closes(("Noise", 1, None)), {})


# --- the oracle ----------------------------------------------------------------------

SAMPLE = [  # hand-checked: January is EST (UTC-5), so 09:00 AM is 14:00Z
    row("R1", "01/05/2015 09:00:00 AM", "01/05/2015 09:20:00 AM", "01/05/2015 09:30:00 AM"),
    row("R2", "01/05/2015 09:05:00 AM", "01/05/2015 10:05:00 AM", "01/05/2015 09:35:00 AM",
        at=CITY_HALL),
    row("R3", "01/05/2015 09:10:00 AM", kind="Graffiti", at=OUTSIDE),
    row("R4", "01/05/2015 09:14:00 AM", "01/05/2015 09:05:00 AM", kind="Graffiti"),
    row("R5", "01/05/2015 09:16:00 AM", "01/05/2015 09:29:00 AM", kind="Noise"),
    row("R6", "01/05/2015 09:17:00 AM", "01/05/2015 09:27:00 AM", kind="Other", at=("", "")),
    row("R7", "11/01/2015 01:30:00 AM", kind="Other", at=("", "")),
    row("R8", "03/08/2015 02:30:00 AM", "03/08/2015 04:00:00 AM"),
]  # fmt: skip
W1, W2, W5 = ms("2015-01-05T14:00:00"), ms("2015-01-05T14:15:00"), ms("2015-01-05T15:00:00")
NOV = ms("2015-11-01T05:30:00")
OPN, P50K, P90K, SLA = (
    "service.requests_opened", "service.response_minutes_p50", "service.response_minutes_p90",
    "service.sla_met_pct",
)  # fmt: skip
HAND_CHECKED = {
    (OPN, "city", "boston", W1): (4.0, 4), (OPN, "city", "boston", W2): (2.0, 2),
    (OPN, "city", "boston", NOV): (1.0, 1),
    (P50K, "city", "boston", W2): (13.0, 3), (P90K, "city", "boston", W2): (20.0, 3),
    (SLA, "city", "boston", W2): (50.0, 2),  # R1 met its target, R5 missed Noise's 10 min
    (P50K, "city", "boston", W5): (60.0, 1), (P90K, "city", "boston", W5): (60.0, 1),
    (SLA, "city", "boston", W5): (0.0, 1),  # R2 closed 30 minutes after its target
    (OPN, "district", "Beacon Hill", W1): (2.0, 2), (OPN, "district", "Beacon Hill", W2): (1.0, 1),
    (P50K, "district", "Beacon Hill", W2): (13.0, 2),
    (P90K, "district", "Beacon Hill", W2): (20.0, 2),
    (SLA, "district", "Beacon Hill", W2): (50.0, 2),
    (OPN, "district", "unknown", W1): (2.0, 2), (OPN, "district", "unknown", W2): (1.0, 1),
    (OPN, "district", "unknown", NOV): (1.0, 1),
    (P50K, "district", "unknown", W2): (10.0, 1), (P90K, "district", "unknown", W2): (10.0, 1),
    (P50K, "district", "unknown", W5): (60.0, 1), (P90K, "district", "unknown", W5): (60.0, 1),
    (SLA, "district", "unknown", W5): (0.0, 1),
    (OPN, "category", "Pothole", W1): (2.0, 2),
    (P50K, "category", "Pothole", W2): (20.0, 1), (P90K, "category", "Pothole", W2): (20.0, 1),
    (SLA, "category", "Pothole", W2): (100.0, 1),
    (P50K, "category", "Pothole", W5): (60.0, 1), (P90K, "category", "Pothole", W5): (60.0, 1),
    (SLA, "category", "Pothole", W5): (0.0, 1),
    (OPN, "category", "Graffiti", W1): (2.0, 2),
    (OPN, "category", "Noise", W2): (1.0, 1),
    (P50K, "category", "Noise", W2): (13.0, 1), (P90K, "category", "Noise", W2): (13.0, 1),
    (SLA, "category", "Noise", W2): (0.0, 1),
    (OPN, "category", "Other", W2): (1.0, 1), (OPN, "category", "Other", NOV): (1.0, 1),
    (P50K, "category", "Other", W2): (10.0, 1), (P90K, "category", "Other", W2): (10.0, 1),
}  # fmt: skip


def sample_pack(tmp_path: Path, districts: Path | None = None) -> Path:
    pack = tmp_path / "boston"
    pack.mkdir()
    shutil.copy(BOSTON / "boston_neighborhoods.geojson", pack)
    toml = (BOSTON / "city.toml").read_text().replace("boston_311_2015-01.csv.gz", "sample.csv")
    toml += '\n[reference.service_categories]\nfile = "categories.csv"\n'
    if districts is not None:
        toml = toml.replace("boston_neighborhoods.geojson", districts.name)
    (pack / "city.toml").write_text(toml)
    (pack / "categories.csv").write_text("category,name,sla_minutes\nNoise,Noise,10\n")
    write_rows(pack / "sample.csv", SAMPLE)
    return pack


def test_the_oracle_on_a_hand_checked_sample(tmp_path: Path) -> None:
    assert expected_for_pack(sample_pack(tmp_path)) == HAND_CHECKED


def test_the_oracle_reads_a_geopackage_layer_as_its_geojson(tmp_path: Path) -> None:
    geojson = BOSTON / "boston_neighborhoods.geojson"
    gpkg = to_geopackage(geojson, "Name", tmp_path / "hoods.gpkg")
    from_json, from_gpkg = read_areas(geojson, "Name"), read_areas(gpkg, "Name")
    assert [a.name for a in from_gpkg] == [a.name for a in from_json]
    assert [a.box for a in from_gpkg] == [a.box for a in from_json]
    pack = sample_pack(tmp_path, districts=gpkg)
    shutil.copy(gpkg, pack)
    assert expected_for_pack(pack) == HAND_CHECKED


def test_the_oracle_follows_a_replaced_file(tmp_path: Path) -> None:
    other = write_rows(tmp_path / "other.csv", SAMPLE[:1])
    expected = expected_for_pack(sample_pack(tmp_path), file=other)
    assert expected[(OPN, "city", "boston", W1)] == (1.0, 1)
    assert (OPN, "city", "boston", W2) not in expected


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("01/05/2015 12:00:00 AM", "2015-01-05T05:00:00"),  # midnight
        ("01/05/2015 12:30:00 PM", "2015-01-05T17:30:00"),  # half past noon
        ("03/08/2015 03:00:00 AM", "2015-03-08T07:00:00"),  # right after the gap: EDT
        ("11/01/2015 02:00:00 AM", "2015-11-01T07:00:00"),  # after the fold: EST
    ],
)
def test_oracle_times(text: str, utc: str) -> None:
    assert boston_ms(text) == ms(utc)
