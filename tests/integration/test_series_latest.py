"""kpi_series_latest (each series' latest window) against the full-table queries it replaced.

The NGSI-LD listing and the map used to group or filter all of ``kpi FINAL``; they now read
``kpi_series_latest FINAL``. These tests run the old queries (kept here as the oracle) and
the new ones on the same real chDB tables, written through the real sink, and require the
same rows: after revisions and corrections of the latest window and of older ones, replays
of whole batches, a processor restarted with its revisions from 0, late older windows,
ties, merges, and on a database created before the table existed (migrated and
back-filled). No Kafka: the sink's ``write`` is what its consume loop calls.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.ngsi_ld import COUNT_SQL, LATEST_SQL, LIST_SQL
from api.routes_map import LATEST_SQL as MAP_AT_SQL
from api.routes_map import NEWEST_SQL as MAP_NEWEST_SQL
from connectors.sinks.clickhouse.backend import connect
from connectors.sinks.clickhouse.endpoint import QueryRequest
from connectors.sinks.clickhouse.schema import MIGRATIONS, SERIES_LATEST_TABLE, Retention, migrate
from connectors.sinks.clickhouse.sink import ClickHouseSink
from core.settings import Settings
from tests.conftest import free_port

# The queries as they were before kpi_series_latest (api/ngsi_ld.py, api/routes_map.py).
OLD_LIST_SQL = """SELECT kpi, scope, entity_id,
    toUnixTimestamp64Milli(max(window_start)) AS start_ms,
    toUnixTimestamp64Milli(argMax(window_end, window_start)) AS end_ms,
    argMax(value, window_start) AS value,
    argMax(samples, window_start) AS samples
FROM kpi FINAL
WHERE kpi IN {kpis:Array(String)}
GROUP BY kpi, scope, entity_id
ORDER BY kpi, scope, entity_id
LIMIT {limit:UInt32} OFFSET {offset:UInt32}"""

OLD_COUNT_SQL = """SELECT count() FROM (
    SELECT DISTINCT kpi, scope, entity_id FROM kpi FINAL WHERE kpi IN {kpis:Array(String)}
)"""

OLD_LATEST_SQL = """SELECT kpi, scope, entity_id,
    toUnixTimestamp64Milli(window_start) AS start_ms,
    toUnixTimestamp64Milli(window_end) AS end_ms, value, samples
FROM kpi FINAL
WHERE kpi = {kpi:String} AND scope = {scope:String} AND entity_id = {entity:String}
ORDER BY window_start DESC
LIMIT 1"""

T0 = datetime(2024, 5, 31, 22, 0, tzinfo=UTC)  # windows cross a month: kpi's partitions
WINDOW = timedelta(minutes=15)
KPIS = ["traffic.vehicle_count", "air.aqi"]
SERIES = [
    ("traffic.vehicle_count", "segment", "seg-1"),
    ("traffic.vehicle_count", "segment", "seg-2"),
    ("traffic.vehicle_count", "district", "8000"),
    ("traffic.vehicle_count", "city", "aarhus"),
    ("air.aqi", "district", "8000"),
    ("air.aqi", "district", "8200 Aarhus N"),
]


def row(
    series: tuple[str, str, str], window: int, value: float, samples: int = 3, revision: int = 0
) -> dict[str, Any]:
    kpi, scope, entity = series
    start = T0 + window * WINDOW
    return {
        "kpi": kpi, "scope": scope, "entity_id": entity,
        "window_start": start, "window_end": start + WINDOW,
        "value": value, "samples": samples, "revision": revision,
        "computed_at": start + WINDOW + timedelta(seconds=revision),
    }  # fmt: skip


def local(tmp_path: Path) -> Settings:
    return Settings().model_copy(
        update={"data_dir": tmp_path / "data", "clickhouse_url": None, "query_port": free_port()}
    )


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[ClickHouseSink]:
    with ClickHouseSink(local(tmp_path)) as sink:
        sink.setup()
        yield sink


def read(sink: ClickHouseSink, sql: str, **parameters: Any) -> list[list[Any]]:
    return sink.query(QueryRequest(sql, parameters)).rows


def assert_same_as_full_table(sink: ClickHouseSink) -> list[list[Any]]:
    """Every query on kpi_series_latest answers what its full-table query answers; returns
    the listing."""
    every = {"kpis": KPIS, "limit": 1000, "offset": 0}
    listing = read(sink, LIST_SQL, **every)
    assert listing == read(sink, OLD_LIST_SQL, **every)
    for limit, offset in ((2, 0), (2, 2), (3, 4), (5, 10)):
        page = {"kpis": KPIS, "limit": limit, "offset": offset}
        assert read(sink, LIST_SQL, **page) == read(sink, OLD_LIST_SQL, **page)
    for kpis in (KPIS, KPIS[:1], ["no.such_kpi"]):
        assert read(sink, COUNT_SQL, kpis=kpis) == read(sink, OLD_COUNT_SQL, kpis=kpis)
    for kpi, scope, entity in SERIES:
        one = {"kpi": kpi, "scope": scope, "entity": entity}
        assert read(sink, LATEST_SQL, **one) == read(sink, OLD_LATEST_SQL, **one)
        layer = {"kpi": kpi, "scope": scope}
        newest = sorted(read(sink, MAP_NEWEST_SQL, **layer))
        assert newest == sorted(read(sink, MAP_AT_SQL, **layer, at="2299-12-31 00:00:00.000"))
    return listing


def value_of(listing: list[list[Any]], series: tuple[str, str, str]) -> tuple[int, float]:
    """(window start in ms, value) of ``series`` in a listing."""
    [found] = [r for r in listing if tuple(r[:3]) == series]
    return int(found[3]), float(found[5])


def start_ms(window: int) -> int:
    return round((T0 + window * WINDOW).timestamp() * 1000)


def test_listing_follows_revisions_replays_and_late_windows(sink: ClickHouseSink) -> None:
    seg = SERIES[0]
    first = [row(s, w, float(10 * i + w)) for i, s in enumerate(SERIES) for w in range(4)]
    sink.write(first)
    listing = assert_same_as_full_table(sink)
    assert len(listing) == len(SERIES)
    assert value_of(listing, seg) == (start_ms(3), 3.0)

    sink.write([row(seg, 3, 99.0, samples=5, revision=1)])  # the latest window revised
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(3), 99.0)

    sink.write([row(seg, 3, 50.0, samples=4, revision=2)])  # fewer samples: loses
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(3), 99.0)

    sink.write([row(seg, 3, 77.0, samples=6, revision=0)])  # restarted: fuller, revision 0
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(3), 77.0)

    sink.write([row(seg, 1, -1.0, samples=9, revision=7)])  # an older window revised
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(3), 77.0)

    sink.write(first)  # a replay of the first batch: nothing changes
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(3), 77.0)

    sink.write([row(seg, 9, 5.0), row(seg, 8, 4.0)])  # a newer window, then a late older one
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(9), 5.0)

    sink.write([row(SERIES[1], 9, 1.0), row(SERIES[1], 9, 2.0)])  # a tie: the last inserted
    assert value_of(assert_same_as_full_table(sink), SERIES[1]) == (start_ms(9), 2.0)

    client = connect(sink.settings)
    try:
        client.command(f"OPTIMIZE TABLE {SERIES_LATEST_TABLE} FINAL")
        client.command("OPTIMIZE TABLE kpi FINAL")
    finally:
        client.close()
    assert value_of(assert_same_as_full_table(sink), seg) == (start_ms(9), 5.0)
    assert read(sink, f"SELECT count() FROM {SERIES_LATEST_TABLE}") == [[len(SERIES)]]


def test_listing_equals_the_full_table_query_over_random_histories(sink: ClickHouseSink) -> None:
    """Random batches of windows, revisions, replays and ties, checked after each batch."""
    chance = random.Random(15)
    written: list[list[dict[str, Any]]] = []
    for _ in range(25):
        if written and chance.random() < 0.2:
            batch = chance.choice(written)  # a replay
        else:
            batch = [
                row(
                    chance.choice(SERIES),
                    chance.randrange(12),
                    float(chance.randrange(100)),
                    samples=chance.randrange(1, 5),
                    revision=chance.randrange(3),
                )
                for _ in range(chance.randrange(1, 30))
            ]
        sink.write(batch)
        written.append(batch)
        assert_same_as_full_table(sink)


def test_an_existing_database_gains_the_table_back_filled(tmp_path: Path) -> None:
    settings = local(tmp_path)
    before = [m for m in MIGRATIONS if m.version < 9]
    client = connect(settings)
    try:
        migrate(client, settings.clickhouse_database, Retention(), before)  # a city of before
    finally:
        client.close()
    with ClickHouseSink(settings) as sink:
        sink._client = connect(settings)  # write as the sink does, without migrating
        history = [row(s, w, float(w), samples=2) for s in SERIES for w in range(6)]
        sink.write(history)
        sink.write([row(SERIES[2], 5, 42.0, samples=3, revision=1)])
        tables = read(sink, "SHOW TABLES")
        assert [SERIES_LATEST_TABLE] not in tables
        old = read(sink, OLD_LIST_SQL, kpis=KPIS, limit=1000, offset=0)

        assert sink.setup() == [9]  # the sink's start (as citystream migrate) upgrades it
        assert sink.setup() == []
        listing = assert_same_as_full_table(sink)
        assert listing == old
        assert value_of(listing, SERIES[2]) == (start_ms(5), 42.0)
        assert read(sink, f"SELECT count() FROM {SERIES_LATEST_TABLE}") == [[len(SERIES)]]

        sink.write([row(SERIES[2], 6, 7.0)])  # and the view keeps it from then on
        assert value_of(assert_same_as_full_table(sink), SERIES[2]) == (start_ms(6), 7.0)
