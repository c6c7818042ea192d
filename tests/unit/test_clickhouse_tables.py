"""The kpi table contract on real embedded chDB (no Kafka): migrations, dedup, queries.

chDB hosts one database directory per process, so every test closes what it opened.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from citystream.query import QueryError, format_result, run_query
from connectors.sinks.clickhouse.backend import connect
from connectors.sinks.clickhouse.endpoint import RejectedQuery, read_only_statement
from connectors.sinks.clickhouse.schema import (
    KPI_COLUMNS,
    LOCAL_DAYS_VERSION,
    MIGRATIONS,
    Retention,
    apply_day_zone,
    apply_retention,
    current_day_zone,
    migrate,
)
from connectors.sinks.clickhouse.sink import ClickHouseSink, InvalidKpiRecord, check_record
from core.settings import Settings
from families.registry import KPIS
from tests.conftest import free_port

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
REPO = Path(__file__).resolve().parents[2]


def kpi(entity: str = "seg-1", revision: int = 0, value: float = 10.0, **extra: Any) -> dict:
    record = {
        "kpi": "traffic.vehicle_count",
        "scope": "segment",
        "entity_id": entity,
        "window_start": T0,
        "window_end": T0 + WINDOW,
        "value": value,
        "samples": 3,
        "revision": revision,
        "computed_at": T0 + WINDOW + timedelta(seconds=revision),
    }
    record.update(extra)
    return record


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return Settings().model_copy(
        update={"data_dir": tmp_path / "data", "clickhouse_url": None, "query_port": free_port()}
    )


@pytest.fixture
def sink(local_settings: Settings) -> Iterator[ClickHouseSink]:
    with ClickHouseSink(local_settings) as sink:
        sink.setup()
        yield sink


def rows(sink: ClickHouseSink, sql: str) -> list[list[Any]]:
    return sink.query(sql).rows


def test_setup_is_idempotent(local_settings: Settings) -> None:
    with ClickHouseSink(local_settings) as first:
        assert first.setup() == [m.version for m in MIGRATIONS]
        assert first.setup() == []
    with ClickHouseSink(local_settings) as second:  # a restart finds everything in place
        assert second.setup() == []
        applied = rows(second, "SELECT version FROM schema_migrations ORDER BY version")
        assert applied == [[m.version] for m in MIGRATIONS]
        tables = rows(second, "SHOW TABLES")
        assert sorted(t[0] for t in tables) == [
            "audit_log",
            "kpi",
            "kpi_daily",
            "kpi_equity",
            "kpi_latest",
            "kpi_series_latest",
            "kpi_series_latest_mv",
            "kpi_trace_links",
            "kpi_window_state",
            "kpi_window_state_mv",
            "schema_migrations",
        ]


def test_kpi_table_has_the_contracted_columns(sink: ClickHouseSink) -> None:
    described = rows(sink, "DESCRIBE TABLE kpi")
    assert [(r[0], r[1]) for r in described if r[2] != "MATERIALIZED"] == list(KPI_COLUMNS)
    assert [r[0] for r in described if r[2] == "MATERIALIZED"] == ["version"]
    create = rows(sink, "SHOW CREATE TABLE kpi")[0][0]
    assert "ReplacingMergeTree(version)" in create
    assert "PARTITION BY toYYYYMM(window_start)" in create
    assert "ORDER BY (kpi, scope, entity_id, window_start)" in create


def test_select_star_returns_exactly_the_contract_columns(sink: ClickHouseSink) -> None:
    sink.write([kpi(value=1.0)])
    assert sink.query("SELECT * FROM kpi LIMIT 1").columns == [name for name, _ in KPI_COLUMNS]


def test_more_complete_window_wins_over_a_higher_revision(sink: ClickHouseSink) -> None:
    """A processor restarted mid-window re-emits from revision 0; the fuller row stays."""
    sink.write([kpi(value=40.0, samples=9, revision=0)])  # rebuilt after a crash
    sink.write([kpi(value=30.0, samples=6, revision=2)])  # stale row from before it
    assert rows(sink, "SELECT value, samples FROM kpi FINAL") == [[40.0, 9]]


def test_same_record_twice_counts_once(sink: ClickHouseSink) -> None:
    record = kpi(value=7.5)
    sink.write([record])
    sink.write([record])  # redelivery after a crash between insert and commit
    assert rows(sink, "SELECT count(), sum(value) FROM kpi FINAL") == [[1, 7.5]]
    assert rows(sink, "SELECT count(), sum(value) FROM kpi_latest") == [[1, 7.5]]
    assert sink.rows_inserted == 2
    assert sink.batches_inserted == 2


def test_higher_revision_wins_whatever_the_arrival_order(sink: ClickHouseSink) -> None:
    sink.write([kpi(revision=2, value=30.0)])
    sink.write([kpi(revision=0, value=10.0), kpi(revision=1, value=20.0)])
    latest = rows(sink, "SELECT revision, value FROM kpi FINAL")
    assert latest == [[2, 30.0]]


def test_kpi_latest_has_one_row_per_key_at_its_highest_revision(sink: ClickHouseSink) -> None:
    batch = [
        kpi("seg-1", 0, 1.0),
        kpi("seg-1", 1, 2.0),
        kpi("seg-2", 0, 5.0),
        kpi("seg-1", 0, 1.0, window_start=T0 + WINDOW, window_end=T0 + 2 * WINDOW),
        kpi("north", 0, 6.0, scope="district"),
    ]
    sink.write(batch)
    sink.write(batch[:2])  # replay of part of the stream
    result = sink.query(
        "SELECT scope, entity_id, window_start, revision, value FROM kpi_latest"
        " ORDER BY scope, entity_id, window_start"
    )
    assert result.columns == ["scope", "entity_id", "window_start", "revision", "value"]
    assert result.rows == [
        ["district", "north", "2024-05-01T08:00:00+00:00", 0, 6.0],
        ["segment", "seg-1", "2024-05-01T08:00:00+00:00", 1, 2.0],
        ["segment", "seg-1", "2024-05-01T08:15:00+00:00", 0, 1.0],
        ["segment", "seg-2", "2024-05-01T08:00:00+00:00", 0, 5.0],
    ]


def test_epoch_millis_and_datetimes_land_identically(sink: ClickHouseSink) -> None:
    as_millis = {
        k: int(v.timestamp() * 1000) if isinstance(v, datetime) else v for k, v in kpi().items()
    }
    sink.write([kpi()])
    sink.write([as_millis])
    assert rows(sink, "SELECT count() FROM kpi FINAL") == [[1]]
    assert rows(sink, "SELECT count(DISTINCT window_start, window_end, computed_at) FROM kpi") == [
        [1]
    ]


def test_millisecond_precision_survives(sink: ClickHouseSink) -> None:
    computed = T0 + timedelta(milliseconds=1234)
    sink.write([kpi(computed_at=computed)])
    assert rows(sink, "SELECT computed_at FROM kpi") == [["2024-05-01T08:00:01.234000+00:00"]]


def test_query_endpoint_serves_json_safe_read_only_queries(
    sink: ClickHouseSink, local_settings: Settings
) -> None:
    sink.write([kpi(value=4.0)])
    sink.start_query_endpoint()
    columns, result = run_query(local_settings, "SELECT entity_id, window_start, value FROM kpi")
    assert columns == ["entity_id", "window_start", "value"]
    assert result == [["seg-1", "2024-05-01T08:00:00+00:00", 4.0]]

    columns, result = run_query(local_settings, "SELECT entity_id FROM kpi WHERE value > 100")
    assert (columns, result) == (["entity_id"], [])

    # kpi_series_latest.version is a UInt128: integers beyond 64 bits come back as text
    wide = "SELECT version, toInt256(-1) * version AS negative FROM kpi_series_latest"
    columns, result = run_query(local_settings, wide)
    assert isinstance(result[0][0], str) and int(result[0][0]) >= 2**64, result
    assert result[0][1] == "-" + result[0][0]

    with pytest.raises(QueryError, match=r"readonly|READONLY"):
        run_query(local_settings, "SELECT 1 SETTINGS readonly = 0")
    with pytest.raises(QueryError, match=r"UNKNOWN_TABLE|does not exist"):
        run_query(local_settings, "SELECT * FROM nope")
    with pytest.raises(QueryError, match="read-only statements"):
        run_query(local_settings, "DROP TABLE kpi")
    assert rows(sink, "SELECT count() FROM kpi") == [[1]]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_query_endpoint_refuses_writes_itself(sink: ClickHouseSink) -> None:
    """A client that skips run_query's check still cannot write: the session is readonly."""
    url = sink.start_query_endpoint().url
    status, body = post(url, b"INSERT INTO kpi (kpi) VALUES ('x')")
    assert status == 400 and "read-only statements" in body["error"]
    status, body = post(url, b"WITH 1 AS x SELECT x; ")
    assert (status, body["rows"]) == (200, [[1]])
    status, body = post(url, b"SELECT 1 FORMAT JSON")
    assert status == 400 and "Syntax error" in body["error"]
    status, body = post(url, b"SELECT '" + b"x" * 70_000 + b"'")
    assert status == 413
    status, body = post(url, b"/* comment */ (SELECT 2)")
    assert (status, body["rows"]) == (200, [[2]])


def test_run_query_opens_the_directory_when_no_sink_runs(local_settings: Settings) -> None:
    with ClickHouseSink(local_settings) as sink:
        sink.setup()
        sink.write([kpi(value=3.0)])
    columns, result = run_query(local_settings, "SELECT count(), sum(value) FROM kpi_latest")
    assert (columns, result) == (["count()", "sum(value)"], [[1, 3.0]])


def test_run_query_without_data_says_so(local_settings: Settings) -> None:
    with pytest.raises(QueryError, match="has the ClickHouse sink run"):
        run_query(local_settings, "SELECT 1")


def test_connect_defaults_to_the_sink_database(sink: ClickHouseSink, local_settings: Settings):
    client = connect(local_settings, readonly=True)
    try:
        assert client.command("SELECT currentDatabase()") == local_settings.clickhouse_database
    finally:
        client.close()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select 1;",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SHOW TABLES",
        "DESCRIBE kpi",
        "desc kpi",
        "EXPLAIN SELECT 1",
        "-- latest\nSELECT 1",
        "/* a */ ((SELECT 1))",
    ],
)
def test_read_only_statements_pass(sql: str) -> None:
    assert read_only_statement(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "INSERT INTO kpi SELECT * FROM kpi",
        "DROP TABLE kpi",
        "ALTER TABLE kpi DELETE WHERE 1",
        "OPTIMIZE TABLE kpi FINAL",
        "-- SELECT\nTRUNCATE kpi",
        "SET readonly = 0",
    ],
)
def test_other_statements_are_rejected(sql: str) -> None:
    with pytest.raises(RejectedQuery):
        read_only_statement(sql)


def test_format_result() -> None:
    columns = ["entity_id", "value", "tags"]
    result: list[list[Any]] = [["seg-1", 2.5, ["a", "b"]], ["seg-10", None, []]]
    assert format_result(columns, result, "table").splitlines() == [
        "entity_id | value | tags",
        "----------+-------+----------",
        'seg-1     |   2.5 | ["a","b"]',
        "seg-10    |  NULL | []",
        "(2 rows)",
    ]
    assert format_result(columns, result, "csv") == (
        'entity_id,value,tags\nseg-1,2.5,"[""a"",""b""]"\nseg-10,,[]\n'
    )
    assert orjson.loads(format_result(columns, result, "json")) == [
        {"entity_id": "seg-1", "value": 2.5, "tags": ["a", "b"]},
        {"entity_id": "seg-10", "value": None, "tags": []},
    ]
    with pytest.raises(ValueError, match="unknown output format"):
        format_result(columns, result, "xml")


# --- daily rollup, equity view, retention ---------------------------------------------------

DAY2 = T0 + timedelta(days=1)


def at(start: datetime, **extra: Any) -> dict:
    return kpi(window_start=start, window_end=start + WINDOW, **extra)


def test_daily_rollup_counts_each_window_once_across_revisions(sink: ClickHouseSink) -> None:
    """Three windows on day 1, one on day 2; revisions, a restart's re-emission and a
    redelivery all arrive as separate inserts, as they do from the processor."""
    sink.write([at(T0, value=10.0, samples=2), at(T0 + WINDOW, value=4.0, samples=1)])
    sink.write([at(T0, value=12.0, samples=3, revision=1)])  # late reading within grace
    sink.write([at(T0 + WINDOW, value=6.0, samples=2, revision=1), at(DAY2, value=7.0)])
    sink.write([at(T0 + 2 * WINDOW, value=20.0, samples=5)])
    sink.write([at(T0, value=10.0, samples=2)])  # redelivered stale revision 0: loses
    sink.write([at(T0 + WINDOW, value=6.0, samples=2, revision=0)])  # restart renumbered: ties
    daily = rows(
        sink,
        "SELECT day, windows, sum_value, avg_value, min_value, max_value, samples FROM kpi_daily"
        " WHERE kpi = 'traffic.vehicle_count' AND entity_id = 'seg-1' ORDER BY day",
    )
    # Winning values day 1: 12 (3 samples), 6 (2), 20 (5); day 2: 7 (3).
    assert daily == [
        ["2024-05-01", 3, 38.0, 38.0 / 3, 6.0, 20.0, 10],
        ["2024-05-02", 1, 7.0, 7.0, 7.0, 7.0, 3],
    ]
    # The rollup agrees with the same aggregation over kpi FINAL.
    direct = rows(
        sink,
        "SELECT toDate(window_start, 'Europe/Copenhagen') AS day, count(), sum(value),"
        " avg(value), min(value), max(value), sum(samples) FROM kpi FINAL GROUP BY day"
        " ORDER BY day",
    )
    assert direct == daily


def test_rollup_backfills_rows_written_before_it_existed(local_settings: Settings) -> None:
    with ClickHouseSink(local_settings) as old:
        client = connect(local_settings)
        try:
            migrate(client, local_settings.clickhouse_database, Retention(), MIGRATIONS[:2])
        finally:
            client.close()
        old._client = connect(local_settings)  # write() without the later migrations
        old.write([at(T0, value=5.0), at(T0, value=9.0, revision=1)])
    with ClickHouseSink(local_settings) as upgraded:
        assert upgraded.setup() == [m.version for m in MIGRATIONS[2:]]
        upgraded.write([at(T0, value=11.0, revision=2), at(T0 + WINDOW, value=1.0)])
        assert rows(upgraded, "SELECT windows, max_value, samples FROM kpi_daily") == [[2, 11.0, 6]]


# --- the city's local days ------------------------------------------------------------------

LATE = datetime(2014, 8, 1, 23, 30, tzinfo=UTC)  # 01:30 on 2014-08-02 in Copenhagen (UTC+2)


def daily(sink: ClickHouseSink) -> list[list[Any]]:
    return rows(sink, "SELECT day, windows, sum_value FROM kpi_daily ORDER BY day")


def test_without_a_pack_days_are_copenhagen_days_by_default(local_settings: Settings) -> None:
    assert local_settings.city is None and local_settings.timezone == "Europe/Copenhagen"
    with ClickHouseSink(local_settings) as sink:
        sink.setup()
        before_midnight = datetime(2014, 8, 1, 21, 45, tzinfo=UTC)  # 23:45 local
        sink.write([at(LATE, value=2.0), at(before_midnight, value=5.0)])
        assert daily(sink) == [["2014-08-01", 1, 5.0], ["2014-08-02", 1, 2.0]]


def test_the_timezone_setting_sets_the_days_without_a_pack(local_settings: Settings) -> None:
    settings = local_settings.model_copy(update={"timezone": "America/New_York"})
    with ClickHouseSink(settings) as sink:
        sink.setup()
        sink.write([at(LATE, value=2.0)])  # 19:30 EDT on 2014-08-01
        assert daily(sink) == [["2014-08-01", 1, 2.0]]


def test_the_city_pack_s_timezone_wins_over_the_setting(local_settings: Settings) -> None:
    """Boston (America/New_York, UTC-5 in winter, UTC-4 in summer): a window at 03:00 UTC
    starts on the previous local day; the setting's zone does not count with a pack."""
    settings = local_settings.model_copy(
        update={"city": REPO / "cities" / "boston", "timezone": "Asia/Tokyo"}
    )
    with ClickHouseSink(settings) as sink:
        sink.setup()
        sink.write(
            [
                at(datetime(2015, 3, 2, 3, 0, tzinfo=UTC), value=1.0),  # 22:00 EST, Mar 1
                at(datetime(2015, 3, 2, 4, 45, tzinfo=UTC), value=2.0),  # 23:45 EST, Mar 1
                at(datetime(2015, 3, 2, 5, 0, tzinfo=UTC), value=4.0),  # 00:00 EST, Mar 2
                at(datetime(2015, 6, 1, 3, 45, tzinfo=UTC), value=8.0),  # 23:45 EDT, May 31
                at(datetime(2015, 6, 1, 4, 0, tzinfo=UTC), value=16.0),  # 00:00 EDT, Jun 1
            ]
        )
        assert daily(sink) == [
            ["2015-03-01", 2, 3.0],
            ["2015-03-02", 1, 4.0],
            ["2015-05-31", 1, 8.0],
            ["2015-06-01", 1, 16.0],
        ]


def test_copenhagen_pack_counts_a_late_utc_window_on_the_next_local_day(
    local_settings: Settings,
) -> None:
    settings = local_settings.model_copy(
        update={"city": REPO / "cities" / "aarhus", "timezone": "America/New_York"}
    )
    with ClickHouseSink(settings) as sink:
        sink.setup()
        sink.write([at(LATE, value=2.0), at(LATE + WINDOW, value=3.0)])
        assert daily(sink) == [["2014-08-02", 2, 5.0]]


def test_a_database_of_the_previous_migrations_recounts_in_local_days(
    local_settings: Settings,
) -> None:
    """Migrations 1-6 counted UTC days; migration 7 moves the day boundaries of every
    window already in the rollup, and a later change of zone moves them again."""
    previous = [m for m in MIGRATIONS if m.version < LOCAL_DAYS_VERSION]
    database = local_settings.clickhouse_database
    noon = datetime(2014, 8, 1, 12, 0, tzinfo=UTC)
    with ClickHouseSink(local_settings) as old:
        client = connect(local_settings)
        try:
            migrate(client, database, Retention(), previous)
        finally:
            client.close()
        old._client = connect(local_settings)  # write() without migration 7
        old.write([at(noon, value=1.0), at(LATE, value=2.0), at(LATE, value=6.0, revision=1)])
        assert daily(old) == [["2014-08-01", 2, 7.0]]  # UTC days
    with ClickHouseSink(local_settings) as upgraded:
        later = [m.version for m in MIGRATIONS if m.version >= LOCAL_DAYS_VERSION]
        assert upgraded.setup() == later  # 7, and the audit_log table (8)
        assert daily(upgraded) == [["2014-08-01", 1, 1.0], ["2014-08-02", 1, 6.0]]
    boston = local_settings.model_copy(update={"city": REPO / "cities" / "boston"})
    with ClickHouseSink(boston) as moved:
        assert moved.setup() == []  # no migration, but the view follows the pack's zone
        assert daily(moved) == [["2014-08-01", 2, 7.0]]  # 08:00 and 19:30 EDT
    client = connect(boston)
    try:
        assert current_day_zone(client, database) == "America/New_York"
        assert apply_day_zone(client, database, "America/New_York") is False  # as it is
        assert apply_day_zone(client, database, "Europe/Copenhagen") is True
        assert current_day_zone(client, database) == "Europe/Copenhagen"
    finally:
        client.close()


def test_one_sink_for_two_cities_gives_each_database_its_city_s_days(
    local_settings: Settings,
) -> None:
    cities = [
        local_settings.model_copy(
            update={
                "city": REPO / "cities" / name,
                "topic_prefix": f"{name}.",
                "clickhouse_database": f"citystream_{name}",
            }
        )
        for name in ("aarhus", "boston")
    ]
    with ClickHouseSink(local_settings, cities) as sink:
        sink.setup()
        for city in cities:
            sink.write([at(LATE, value=2.0)], database=city.clickhouse_database)
        days = {
            city.clickhouse_database: rows(
                sink, f"SELECT day, windows FROM {city.clickhouse_database}.kpi_daily"
            )
            for city in cities
        }
    # 01:30 on Aug 2 in Copenhagen, 19:30 on Aug 1 in Boston
    assert days == {
        "citystream_aarhus": [["2014-08-02", 1]],
        "citystream_boston": [["2014-08-01", 1]],
    }


def test_an_unknown_time_zone_is_refused_before_any_ddl(local_settings: Settings) -> None:
    settings = local_settings.model_copy(update={"timezone": "Mars/Olympus_Mons"})
    with ClickHouseSink(settings) as sink, pytest.raises(ValueError, match="Mars/Olympus_Mons"):
        sink.setup()


def district(name: str, value: float, start: datetime = T0, **extra: Any) -> dict:
    return at(start, scope="district", entity_id=name, value=value, **extra)


def test_equity_view_puts_each_district_beside_the_city_median(sink: ClickHouseSink) -> None:
    sink.write([district("8000", 10.0), district("8200", 20.0), district("8210", 30.0)])
    sink.write([district("8220", 50.0), district("unknown", 1000.0)])  # not a district
    sink.write([district("8000", 40.0, revision=1)])  # revised: 40, 20, 30, 50
    sink.write([district("8000", 0.0, T0 + WINDOW), district("8200", 0.0, T0 + WINDOW)])
    sink.write([at(T0, scope="city", entity_id="aarhus", value=1.0)])  # other scopes: out
    result = rows(
        sink,
        "SELECT district, window_start, value, city_median, gap, relative_gap, districts"
        " FROM kpi_equity ORDER BY window_start, district",
    )
    # Window 1: median of 20, 30, 40, 50 = 35. Window 2: median 0, relative gap undefined.
    start1, start2 = "2024-05-01T08:00:00+00:00", "2024-05-01T08:15:00+00:00"
    assert result == [
        ["8000", start1, 40.0, 35.0, 5.0, 5.0 / 35.0, 4],
        ["8200", start1, 20.0, 35.0, -15.0, -15.0 / 35.0, 4],
        ["8210", start1, 30.0, 35.0, -5.0, -5.0 / 35.0, 4],
        ["8220", start1, 50.0, 35.0, 15.0, 15.0 / 35.0, 4],
        ["8000", start2, 0.0, 0.0, 0.0, None, 2],
        ["8200", start2, 0.0, 0.0, 0.0, None, 2],
    ]


def ttls(settings: Settings) -> dict[str, str]:
    with ClickHouseSink(settings) as sink:
        sink.setup()
        return {
            table: sink.query(f"SELECT engine_full FROM system.tables WHERE name = '{table}'"
                              " AND database = currentDatabase()").rows[0][0]
            for table in ("kpi", "kpi_window_state")
        }  # fmt: skip


def test_retention_follows_the_settings_on_every_migrate(local_settings: Settings) -> None:
    ttl = "TTL toDateTime(window_start) + toIntervalDay({})"
    first = ttls(local_settings.model_copy(update={"clickhouse_kpi_ttl_days": 30}))
    assert ttl.format(30) in first["kpi"] and "TTL" not in first["kpi_window_state"]
    changed = local_settings.model_copy(
        update={"clickhouse_kpi_ttl_days": 7, "clickhouse_rollup_ttl_days": 400}
    )
    second = ttls(changed)
    assert ttl.format(7) in second["kpi"] and ttl.format(400) in second["kpi_window_state"]
    client = connect(changed)
    try:  # already as configured: nothing to alter
        assert apply_retention(client, changed.clickhouse_database, Retention(7, 400)) == {}
    finally:
        client.close()
    third = ttls(local_settings)  # back to 0: kept forever
    assert "TTL" not in third["kpi"] and "TTL" not in third["kpi_window_state"]


def test_expired_rows_leave_kpi_while_the_rollup_keeps_them(local_settings: Settings) -> None:
    recent = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    settings = local_settings.model_copy(update={"clickhouse_kpi_ttl_days": 30})
    with ClickHouseSink(settings) as sink:
        sink.setup()
        sink.write([at(T0, value=3.0), at(recent, value=4.0)])
        client = connect(settings)
        try:
            client.command("OPTIMIZE TABLE kpi FINAL")  # apply the TTL now, not at some merge
        finally:
            client.close()
        assert rows(sink, "SELECT value FROM kpi") == [[4.0]]
        assert rows(sink, "SELECT day, max_value FROM kpi_daily ORDER BY day") == [
            ["2024-05-01", 3.0],
            [recent.astimezone(ZoneInfo("Europe/Copenhagen")).date().isoformat(), 4.0],
        ]


def test_the_sink_accepts_every_catalogue_scope_and_nothing_else() -> None:
    for definition in KPIS.values():
        for scope in definition.scopes:
            check_record(kpi(kpi=definition.name, scope=scope))
    with pytest.raises(InvalidKpiRecord, match="scope 'galaxy'"):
        check_record(kpi(scope="galaxy"))
    with pytest.raises(InvalidKpiRecord, match="negative"):
        check_record(kpi(samples=-1))


def test_traced_rows_land_in_kpi_trace_links_and_freshness_is_seeded(
    sink: ClickHouseSink,
) -> None:
    """telemetry: the link rows go in with the batch; a new sink starts from the table."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from core import telemetry

    telemetry.setup("citystream-sink", span_exporter=InMemorySpanExporter(),
                    metrics_port=free_port(), env={})  # fmt: skip
    try:
        traces = telemetry.KpiTraces()
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        later = kpi("seg-2", window_start=T0 + WINDOW, window_end=T0 + 2 * WINDOW)
        traces.add([("traceparent", parent.encode()), ("citystream-input-traces", b"r1")],
                   [kpi(), later])  # fmt: skip
        sink.write([kpi(), later], traces)
        assert sink.freshness.snapshot() == {"traffic": int((T0 + 2 * WINDOW).timestamp() * 1000)}
        sql = (
            "SELECT entity_id, kpi_trace_id, input_trace_ids, length(insert_trace_id) "
            "FROM kpi_trace_links ORDER BY entity_id"
        )
        links = rows(sink, sql)
        assert links == [
            ["seg-1", "0af7651916cd43dd8448eb211c80319c", ["r1"], 32],
            ["seg-2", "0af7651916cd43dd8448eb211c80319c", ["r1"], 32],
        ]
        sink.write([kpi("seg-3")])  # untraced rows: no link rows
        assert rows(sink, "SELECT count() FROM kpi_trace_links") == [[2]]
        sink.freshness = telemetry.Freshness()  # as a restarted sink
        sink.seed_freshness()
        assert sink.freshness.snapshot() == {"traffic": int((T0 + 2 * WINDOW).timestamp() * 1000)}
    finally:
        telemetry.shutdown()
