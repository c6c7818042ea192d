"""`citystream demo`: one day of real Aarhus traffic, air quality and parking, end to end."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from citystream.audit import audit, expected_aarhus
from citystream.pipeline import Pipeline
from citystream.query import format_result, run_query
from citystream.replay import (
    AarhusFiles,
    aarhus_sources,
    dead_lettered_rows,
    reconciles,
    run_replays,
    summary,
    wait_processed,
)
from citystream.statement_cli import demo_statement
from citystream.verify import expected_for_simulation
from connectors.publishing import ENERGY, SERVICE, WASTE
from connectors.sources.base import Report
from connectors.sources.city_files import city_replay, describe, publish_reference
from connectors.sources.simulator import CitySimulatorSource, SimulationConfig, load_reference
from core.city import load_pack
from core.kafka import read_topic
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.boston_311 import expected_for_pack

SUMMARY_QUERIES = {
    "Vehicles per district per hour (busiest hours first, top 12)": """
        SELECT entity_id AS district, toStartOfHour(window_start) AS hour_utc,
               toUInt64(sum(value)) AS vehicles
        FROM kpi_latest
        WHERE kpi = 'traffic.vehicle_count' AND scope = 'district'
        GROUP BY district, hour_utc ORDER BY vehicles DESC, district LIMIT 12""",
    "Vehicles and mean speed per district over the day": """
        SELECT entity_id AS district,
               toUInt64(sumIf(value, kpi = 'traffic.vehicle_count')) AS vehicles,
               round(avgIf(value, kpi = 'traffic.avg_speed_kmh'), 1) AS mean_speed_kmh
        FROM kpi_latest WHERE scope = 'district'
        GROUP BY district ORDER BY vehicles DESC""",
    "Ten most congested segments (mean congestion index over windows with traffic)": """
        SELECT entity_id AS segment, round(avg(value), 3) AS congestion_index,
               count() AS windows
        FROM kpi_latest
        WHERE kpi = 'traffic.congestion_index' AND scope = 'segment'
        GROUP BY segment HAVING windows >= 8
        ORDER BY congestion_index DESC, segment LIMIT 10""",
    "City totals": """
        SELECT count() AS windows, toUInt64(sum(value)) AS vehicles,
               min(window_start) AS first_window, max(window_end) AS last_window_end
        FROM kpi_latest WHERE kpi = 'traffic.vehicle_count' AND scope = 'city'""",
    "Air quality index per district on 2014-08-02 (mean and worst 15-minute window)": """
        SELECT entity_id AS district, round(avg(value), 1) AS mean_aqi,
               round(max(value), 1) AS worst_aqi, count() AS windows
        FROM kpi_latest
        WHERE kpi = 'air.aqi' AND scope = 'district'
          AND toDate(window_start, 'Europe/Copenhagen') = '2014-08-02'
        GROUP BY district ORDER BY mean_aqi DESC""",
    "Least available sensors (device uptime over the day, hours at 0 %)": """
        SELECT entity_id AS sensor, round(avg(value), 1) AS uptime_pct,
               countIf(value = 0) AS silent_hours
        FROM kpi_latest WHERE kpi = 'devices.uptime_pct' AND scope = 'sensor'
        GROUP BY sensor ORDER BY uptime_pct, sensor LIMIT 8""",
    "Energy and CO2e per district (simulated meters, seed 7)": """
        SELECT entity_id AS district,
               round(sumIf(value, kpi = 'energy.kwh')) AS kwh,
               round(sumIf(value, kpi = 'energy.co2e_kg')) AS co2e_kg
        FROM kpi_latest WHERE scope = 'district' AND startsWith(kpi, 'energy.')
        GROUP BY district ORDER BY kwh DESC""",
    "Service requests per category (simulated): opened, median response, SLA met": """
        SELECT entity_id AS category,
               toUInt64(sumIf(value, kpi = 'service.requests_opened')) AS opened,
               round(avgIf(value, kpi = 'service.response_minutes_p50')) AS p50_minutes,
               round(avgIf(value, kpi = 'service.sla_met_pct'), 1) AS sla_met_pct
        FROM kpi_latest WHERE scope = 'category' AND startsWith(kpi, 'service.')
        GROUP BY category ORDER BY opened DESC""",
    "Equity: districts furthest above the city median AQI (kpi_equity, mean gap)": """
        SELECT district, round(avg(value), 1) AS aqi, round(avg(city_median), 1) AS median,
               round(avg(gap), 1) AS mean_gap
        FROM kpi_equity WHERE kpi = 'air.aqi'
        GROUP BY district ORDER BY mean_gap DESC LIMIT 5""",
    "Car park occupancy on 2014-08-02 (mean and peak of the 15-minute windows)": """
        SELECT entity_id AS car_park, round(avg(value), 1) AS mean_pct,
               round(max(value), 1) AS peak_pct, count() AS windows
        FROM kpi_latest
        WHERE kpi = 'parking.occupancy_pct' AND scope = 'car_park'
          AND toDate(window_start, 'Europe/Copenhagen') = '2014-08-02'
        GROUP BY car_park ORDER BY mean_pct DESC""",
}


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


@contextmanager
def local_stack(settings: Settings, keep: bool) -> Iterator[None]:
    """Start Kafka and the registry unless they already run; stop what we started."""
    from citystream.cli import stack_config
    from infra import stack

    cfg = stack_config(settings)
    already = all(s.ready for s in stack.status(cfg).values())
    if not already:
        stack.up(cfg)
    try:
        yield
    finally:
        if not already and not keep:
            step("stopping Kafka and the schema registry")
            stack.down(cfg)


def run_demo(settings: Settings, files: AarhusFiles, keep_stack: bool, serve: bool = False) -> int:
    # A fresh namespace per run, so the replay is not judged late against an earlier one,
    # and fresh tables, so the audit compares this run's KPIs only.
    run = time.strftime("demo%Y%m%d%H%M%S.")
    settings = demo_namespace(settings, run)
    step("1/9 starting Kafka (KRaft) and Apicurio Registry")
    with local_stack(settings, keep_stack):
        step(f"2/9 creating topics and registering schemas (prefix {run})")
        ensure_topics(settings)
        for topic, schema_id in register_schemas(settings).items():
            print(f"    {topic}-value: schema id {schema_id}")
        failed = aarhus_day(settings, files)
        failed += boston_month(settings)
        if serve:
            serve_dashboard(settings)
        else:
            print_dashboard(settings)
        return 1 if failed else 0


def demo_namespace(settings: Settings, run: str) -> Settings:
    """The run's Aarhus namespace: topics under ``<prefix><run>``, and fresh tables (with
    chDB a directory of the run's own, else a database of the run's own)."""
    update: dict[str, object] = {"topic_prefix": settings.topic_prefix + run}
    if settings.embedded_clickhouse and not settings.clickhouse_url:
        tables = (settings.data_dir / "demo" / run.rstrip(".") / "clickhouse").resolve()
        update["clickhouse_url"] = f"chdb://{tables}"
    else:
        update["clickhouse_database"] = f"{settings.clickhouse_database}_{run.rstrip('.')}"
    return settings.model_copy(update=update)


def boston_namespace(settings: Settings) -> Settings:
    """Boston's namespace beside the run's Aarhus one (``settings``): its pack, topics under
    ``<prefix>boston.`` and a database of its own in the same ClickHouse (with chDB, the
    same directory), so that one sink's endpoint answers reads of both cities."""
    return settings.model_copy(
        update={
            "topic_prefix": settings.topic_prefix + "boston.",
            "city": BOSTON_PACK,
            "clickhouse_database": f"{settings.clickhouse_database}_boston",
        }
    )


def dashboard_url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}/"


def print_dashboard(settings: Settings) -> None:
    step(f"dashboard: {dashboard_url(settings)}")
    print(
        "`citystream demo --serve` runs this demo and keeps the read API and the dashboard up"
        " on its Aarhus and Boston KPIs until Ctrl-C; `citystream serve --city DIR ...` serves"
        " a deployment's cities beside its running sink (docs/api.md)"
    )


def dashboard_app(settings: Settings) -> Any:
    """The read API over both cities of the run (Aarhus, ``settings``, first), built as
    ``citystream serve`` builds it: every access audited to the run's audit log."""
    from citystream.serve_cli import build_app

    return build_app(settings, [settings, boston_namespace(settings)], audited=True)


def serve_dashboard(settings: Settings) -> None:
    """The read API and the dashboard on this run's Aarhus and Boston KPIs until Ctrl-C (#15).

    A sink runs on Aarhus's tables again: with chDB it owns the directory, where Boston's
    database lies too, and answers the API's reads of both on its query endpoint; it stores
    what still arrives for Aarhus. The live stream reads both cities' topics, so the stack
    stays up while this serves; audit checkpoints are signed as under ``citystream serve``.
    """
    from citystream.serve_cli import serve_until_stopped

    pipeline = Pipeline(settings)
    try:
        pipeline.start("sink")
        app = dashboard_app(settings)
        step(f"dashboard: {dashboard_url(settings)} (Aarhus and Boston; Ctrl-C stops it)")
        serve_until_stopped(app, settings, audited=True)
    finally:
        pipeline.stop()


def aarhus_day(settings: Settings, files: AarhusFiles) -> list[str]:
    """Steps 3-7: the Aarhus day through every processor, its KPIs and their audit."""
    pipeline = Pipeline(settings)
    try:
        step("3/9 starting the processors (Faust), the alerts processor and the ClickHouse sink")
        pipeline.start("processor", "alerts", "sink")
        step("4/9 replaying traffic, air quality and parking; simulating the same day's city")
        reports = replay_day(settings, files)
        print(summary(reports))
        simulated = simulate_day(settings)
        step("5/9 waiting for the processors and the sink to catch up")
        published = {n: r.published for n, r in reports.items()}
        published["devices"] = published["traffic"] + published["air"]
        published.update(simulated)
        stats = wait_processed(pipeline, published)
        step("6/9 KPIs queried from ClickHouse while the sink runs")
        for title, sql in SUMMARY_QUERIES.items():
            print(f"\n{title}")
            print(format_result(*run_query(settings, sql), "table"))
        print(f"\nAlerts on city.alerts.v1: {alert_counts(settings)}\n")
        failed = [n for n, r in reports.items() if not print_reconciliation(n, r, stats[n])]
        step("7/9 audit: every KPI recomputed from the inputs, independently of the processors")
        expected = expected_aarhus(settings, files)
        expected["simulated"] = expected_for_simulation(SIMULATED_DAY, load_reference(), settings)
        failed += audit(settings, expected)
        failed += demo_statement(settings, "aarhus-sensor-uptime", "2014-W31")  # #17
        print_tables(settings)
        return failed
    finally:
        pipeline.stop()


def print_tables(settings: Settings) -> None:
    where = settings.clickhouse_url or settings.resolved_clickhouse_url
    print(f"\nThis run's tables: {where} (database {settings.clickhouse_database});")
    print('query them with CITYSTREAM_CLICKHOUSE_URL=<that> citystream query "SQL"')


BOSTON_PACK = Path(__file__).resolve().parent.parent / "cities" / "boston"
BOSTON_QUERIES = {
    "Boston 311, January 2015: requests opened, mean of the windows' median response (hours) "
    "and SLA met per neighbourhood "
    "(top 10 by requests)": """
        SELECT entity_id AS neighbourhood,
               toUInt64(sumIf(value, kpi = 'service.requests_opened')) AS opened,
               round(avgIf(value, kpi = 'service.response_minutes_p50') / 60, 1) AS window_p50_h,
               round(avgIf(value, kpi = 'service.sla_met_pct'), 1) AS sla_met_pct
        FROM kpi_latest WHERE scope = 'district' AND startsWith(kpi, 'service.')
        GROUP BY neighbourhood ORDER BY opened DESC LIMIT 10""",
    "Boston 311: the city (entity boston) per week of January": """
        SELECT toMonday(window_start, 'America/New_York') AS week,
               toUInt64(sumIf(value, kpi = 'service.requests_opened')) AS opened,
               round(avgIf(value, kpi = 'service.sla_met_pct'), 1) AS sla_met_pct
        FROM kpi_latest WHERE scope = 'city' AND entity_id = 'boston'
          AND toStartOfMonth(window_start, 'America/New_York') = '2015-01-01'
        GROUP BY week ORDER BY week""",
}


def boston_month(settings: Settings) -> list[str]:
    """Steps 8-9: the second city, from its city pack: a month of real 311 requests through
    the service processor into tables of its own, its KPIs, and their audit."""
    step("8/9 Boston (city pack cities/boston): a month of real 311 requests")
    boston = boston_namespace(settings)
    ensure_topics(boston)
    register_schemas(boston)
    pipeline = Pipeline(boston, processors=("service",))
    try:
        pipeline.start("processor", "sink")
        report = replay_city(boston, BOSTON_PACK, "requests")
        ok = "OK" if reconciles(report) else "MISMATCH"
        print(f"boston   {describe(report)}  [{ok}]  (events: each request's opened and closed)")
        stats = wait_processed(pipeline, {"service": report.published})["service"]
        for title, sql in BOSTON_QUERIES.items():
            print(f"\n{title}")
            print(format_result(*run_query(boston, sql), "table"))
        counted = stats["accepted"] + stats["duplicates"] + stats["late"]
        ok = counted == report.published
        print(
            f"\nboston   reconciliation: events published {report.published:,} (opened and"
            f" closed) = accepted {stats['accepted']:,} + duplicates {stats['duplicates']:,}"
            f" + late {stats['late']:,}  [{'OK' if ok else 'MISMATCH'}]"
        )
        failed = [] if ok else ["boston"]
        step("9/9 audit: Boston's KPIs recomputed by an independent oracle (oracles/boston_311.py)")
        failed += audit(boston, {"boston": expected_for_pack(BOSTON_PACK)})
        failed += demo_statement(boston, "boston-311-service", "2015-01")  # #17
        print_tables(boston)
        return failed
    finally:
        pipeline.stop()


def replay_city(settings: Settings, pack_dir: Path, source_name: str) -> Report:
    """A city pack's reference data and one of its sources, published; producers end here."""
    pack = load_pack(pack_dir)
    publish_reference(settings, pack)
    source = city_replay(settings, pack, pack.source(source_name))
    source.setup()
    return source.run()


def replay_day(settings: Settings, files: AarhusFiles) -> dict[str, Report]:
    """The Aarhus replays; their Kafka producers end with this call.

    Done in a function of its own so that no producer outlives the replay: one still
    alive when the demo stops the broker fills the last screen with connection errors.
    """
    sources = aarhus_sources(settings, files)
    for source in sources.values():
        source.setup()
    return run_replays(sources, paced=False, announce=lambda text: print(f"    {text}"))


def print_reconciliation(name: str, report: Report, stats: dict[str, int]) -> bool:
    """rows read = accepted + duplicates + late + dead-lettered, for one replayed file."""
    dead = dead_lettered_rows(report)
    total = stats["accepted"] + stats["duplicates"] + stats["late"] + dead
    ok = total == report.rows_read
    print(
        f"{name:8} reconciliation: rows read {report.rows_read:,} = accepted"
        f" {stats['accepted']:,} + duplicates {stats['duplicates']:,} + late {stats['late']:,}"
        f" + dead-lettered {dead:,}  [{'OK' if ok else 'MISMATCH'}]"
        f"  (accepted without reference data: {stats['unknown_reference']})"
    )
    return ok


SIMULATED_DAY = SimulationConfig(
    seed=7, start_ms=1_406_930_400_000, hours=24, meters=200, bins=100, requests_per_hour=30
)  # 2014-08-02 00:00 in Aarhus, the replayed day
SIMULATED = {"energy": ENERGY.topic, "waste": WASTE.topic, "service": SERVICE.topic}


def simulate_day(settings: Settings) -> dict[str, int]:
    """Energy, waste and service requests for the replayed day; events published per domain."""
    source = CitySimulatorSource(settings, SIMULATED_DAY)
    source.setup()
    report = source.run()
    print(f"    simulator (seed {SIMULATED_DAY.seed}): {report.rows_read:,} events")
    return {domain: report.per_topic[topic] for domain, topic in SIMULATED.items()}


def alert_counts(settings: Settings) -> str:
    """Raised and cleared alerts by type, read back from the topic subscribers use."""
    from schemas.registry import SchemaRegistry

    topic = settings.topic("city.alerts.v1")
    serde = SchemaRegistry(settings.registry_config()).serde(topic, "city.alerts.v1")
    counts: Counter[str] = Counter()
    for value in read_topic(settings, topic):
        alert = serde.decode(value)
        counts[f"{alert['type']} {alert['state']}"] += 1
    return ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())) or "none"
