"""The analyst queries of the docs run as written, on realistic data, with sensible results.

Every block marked ``<!-- analyst-query: NAME -->`` on a page of ``docs/`` (they are on
docs/analysts.md) is extracted and run through the read-only query path.

The data: the traffic KPIs of three real Aarhus hours (tests/fixtures), computed by
``citystream verify``'s independent recomputation and inserted through the sink, with some
windows first inserted as an earlier, smaller revision, as late readings produce them.
Each query's result is checked against that recomputation.
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from connectors.sinks.clickhouse import ClickHouseSink
from connectors.sinks.clickhouse.endpoint import QueryResult
from core.settings import Settings
from oracles.aarhus_traffic import recompute
from oracles.compare import Key, Value

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted((REPO / "docs").glob("*.md"))  # published pages; docs/pending/ is not
FIXTURE = REPO / "tests" / "fixtures" / "traffic_2014-08-02_0600-0900.csv.gz"
METADATA = REPO / "data" / "aarhus" / "traffic_metadata.csv"
AARHUS = ZoneInfo("Europe/Copenhagen")
QUERY = re.compile(r"<!-- analyst-query: ([\w-]+) -->\n```sql\n(.*?)```", re.S)
REVISE_EVERY = 7  # every 7th window with more than one reading arrives in two revisions

Oracle = dict[Key, Value]


def docs_queries() -> dict[str, str]:
    found = [query for page in PAGES for query in QUERY.findall(page.read_text())]
    assert len({name for name, _ in found}) == len(found), "query names must be unique"
    return dict(found)


def record(key: Key, value: float, samples: int, revision: int) -> dict[str, Any]:
    kpi, scope, entity, start_ms = key
    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    return {
        "kpi": kpi,
        "scope": scope,
        "entity_id": entity,
        "window_start": start,
        "window_end": start + timedelta(minutes=15),
        "value": value,
        "samples": samples,
        "revision": revision,
        "computed_at": start + timedelta(minutes=16 + revision),
    }


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    return recompute(FIXTURE, METADATA, partitions=6)


@pytest.fixture(scope="module")
def revised(oracle: Oracle) -> set[Key]:
    return {k for i, (k, (_, n)) in enumerate(sorted(oracle.items())) if n > 1 and i % 7 == 0}


@pytest.fixture(scope="module")
def sink(
    oracle: Oracle, revised: set[Key], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClickHouseSink]:
    data_dir = tmp_path_factory.mktemp("docs-queries")
    settings = Settings().model_copy(update={"data_dir": data_dir, "clickhouse_url": None})
    with ClickHouseSink(settings) as sink:
        sink.setup()
        # Revision 0 of every window, the stale smaller one where a late reading followed...
        sink.write(
            [
                record(k, v * 0.5, n - 1, 0) if k in revised else record(k, v, n, 0)
                for k, (v, n) in oracle.items()
            ]
        )
        sink.write([record(k, *oracle[k], 1) for k in sorted(revised)])  # ...then the revision
        sink.write([record(k, *oracle[k], 0) for k in list(oracle)[:500]])  # a redelivery
        yield sink


def by_scope(oracle: Oracle, kpi: str, scope: str) -> dict[tuple[str, int], Value]:
    return {(e, w): v for (k, s, e, w), v in oracle.items() if k == kpi and s == scope}


# --- one check per docs query, on the recomputation ---------------------------------------------


def congested_segments(result: QueryResult, oracle: Oracle, revised: set[Key]) -> None:
    per_segment: dict[str, list[float]] = defaultdict(list)
    for (segment, _), (value, _) in by_scope(oracle, "traffic.congestion_index", "segment").items():
        per_segment[segment].append(value)
    means = {s: statistics.fmean(v) for s, v in per_segment.items()}
    assert result.columns == ["segment", "congestion", "windows"] and len(result.rows) == 10
    shown = [row[1] for row in result.rows]
    assert shown == sorted(shown, reverse=True) and 0 < shown[-1] <= shown[0] <= 1
    for segment, congestion, windows in result.rows:
        assert congestion == pytest.approx(means[segment], abs=6e-4)
        assert windows == len(per_segment[segment])
    left_out = [m for s, m in means.items() if s not in {row[0] for row in result.rows}]
    assert max(left_out) <= shown[-1] + 6e-4


def daily_by_district(result: QueryResult, oracle: Oracle, revised: set[Key]) -> None:
    days: dict[str, list[Value]] = defaultdict(list)
    for (district, _), value in by_scope(oracle, "traffic.vehicle_count", "district").items():
        days[district].append(value)
    expected = sorted(
        (
            [
                "2014-08-02",
                district,
                len(values),
                sum(v for v, _ in values),
                max(v for v, _ in values),
                sum(n for _, n in values),
            ]
            for district, values in days.items()
        ),
        key=lambda row: -row[3],
    )
    assert len(days) > 5 and result.rows == expected


def equity_speed(result: QueryResult, oracle: Oracle, revised: set[Key]) -> None:
    speeds = by_scope(oracle, "traffic.avg_speed_kmh", "district")
    windows: dict[int, dict[str, float]] = defaultdict(dict)
    for (district, start), (value, _) in speeds.items():
        if district != "unknown":
            windows[start][district] = value
    gaps: dict[str, list[float]] = defaultdict(list)
    for values in windows.values():
        median = statistics.median(values.values())
        for district, value in values.items():
            gaps[district].append(value - median)
    rows = {row[0]: row for row in result.rows}
    assert set(rows) == set(gaps) and "unknown" not in rows
    for district, gap in gaps.items():
        assert rows[district][3] == pytest.approx(statistics.fmean(gap), abs=0.051)
        assert rows[district][5] == len(gap)
    assert min(r[3] for r in result.rows) < 0 < max(r[3] for r in result.rows)


def hourly_local_time(result: QueryResult, oracle: Oracle, revised: set[Key]) -> None:
    hours: dict[int, float] = defaultdict(float)
    for (_, start), (value, _) in by_scope(oracle, "traffic.vehicle_count", "city").items():
        hours[datetime.fromtimestamp(start / 1000, AARHUS).hour] += value
    assert sorted(hours) == [6, 7, 8]
    assert result.rows == [[f"2014-08-02 {h:02}:00", v] for h, v in sorted(hours.items())]


def revised_windows(result: QueryResult, oracle: Oracle, revised: set[Key]) -> None:
    windows: dict[tuple[str, str], int] = defaultdict(int)
    changed: dict[tuple[str, str], int] = defaultdict(int)
    for kpi, scope, _, _ in oracle:
        windows[(kpi, scope)] += 1
    for kpi, scope, _, _ in revised:
        changed[(kpi, scope)] += 1
    expected = [
        [kpi, scope, n, changed[(kpi, scope)], 1 if changed[(kpi, scope)] else 0]
        for (kpi, scope), n in sorted(windows.items())
    ]
    assert result.rows == expected and sum(changed.values()) > 0


CHECKS: dict[str, Callable[[QueryResult, Oracle, set[Key]], None]] = {
    "congested-segments": congested_segments,
    "daily-by-district": daily_by_district,
    "equity-speed": equity_speed,
    "hourly-local-time": hourly_local_time,
    "revised-windows": revised_windows,
}


def test_every_docs_query_has_a_check() -> None:
    assert set(docs_queries()) == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_docs_query_runs_as_written(
    name: str, sink: ClickHouseSink, oracle: Oracle, revised: set[Key]
) -> None:
    result = sink.query(docs_queries()[name])  # the read-only path `citystream query` uses
    assert result.rows, f"{name} returned nothing"
    CHECKS[name](result, oracle, revised)
