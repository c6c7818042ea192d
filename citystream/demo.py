"""`citystream demo`: one day of real Aarhus traffic, air quality and parking, end to end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from citystream.kafka import ensure_topics, register_schemas
from citystream.pipeline import Pipeline
from citystream.query import format_result, run_query
from citystream.replay import (
    AarhusFiles,
    aarhus_sources,
    dead_lettered_rows,
    run_replays,
    summary,
    wait_processed,
)
from citystream.settings import Settings
from connectors.sources.aarhus import ReplayReport

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


def run_demo(settings: Settings, files: AarhusFiles, keep_stack: bool) -> int:
    # A fresh namespace per run, so the replay is not judged late against an earlier one.
    run = time.strftime("demo%Y%m%d%H%M%S.")
    settings = settings.model_copy(update={"topic_prefix": settings.topic_prefix + run})
    step("1/6 starting Kafka (KRaft) and Apicurio Registry")
    with local_stack(settings, keep_stack):
        step(f"2/6 creating topics and registering schemas (prefix {run})")
        ensure_topics(settings)
        for topic, schema_id in register_schemas(settings).items():
            print(f"    {topic}-value: schema id {schema_id}")
        pipeline = Pipeline(settings)
        try:
            step("3/6 starting the processors (Faust) and the ClickHouse sink")
            pipeline.start()
            step("4/6 replaying traffic, air quality and parking as fast as possible")
            sources = aarhus_sources(settings, files)
            for source in sources.values():
                source.setup()
            reports = run_replays(sources, paced=False, announce=lambda text: print(f"    {text}"))
            print(summary(reports))
            step("5/6 waiting for the processors and the sink to catch up")
            stats = wait_processed(pipeline, {n: r.published for n, r in reports.items()})
            step("6/6 KPIs queried from ClickHouse while the sink runs")
            for title, sql in SUMMARY_QUERIES.items():
                print(f"\n{title}")
                print(format_result(*run_query(settings, sql), "table"))
            print()
            failed = [n for n, r in reports.items() if not print_reconciliation(n, r, stats[n])]
            return 1 if failed else 0
        finally:
            pipeline.stop()


def print_reconciliation(name: str, report: ReplayReport, stats: dict[str, int]) -> bool:
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
