"""`citystream demo`: one day of real Aarhus traffic through the whole pipeline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from citystream.kafka import ensure_topics, register_schemas
from citystream.pipeline import Pipeline
from citystream.progress import print_replay_progress
from citystream.query import format_result, run_query
from citystream.settings import Settings
from connectors.sources.aarhus import AarhusReplaySource, ReplayReport

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


def run_demo(settings: Settings, traffic: Path, metadata: Path, keep_stack: bool) -> int:
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
            step("3/6 starting the traffic processor (Faust) and the ClickHouse sink")
            pipeline.start()
            step(f"4/6 replaying {traffic.name} as fast as possible")
            source = AarhusReplaySource(settings, traffic, metadata)
            source.setup()
            report = source.run(print_replay_progress)
            step("5/6 waiting for the processor and the sink to catch up")
            stats = pipeline.wait_caught_up(report.published)
            step("6/6 KPIs queried from ClickHouse while the sink runs")
            for title, sql in SUMMARY_QUERIES.items():
                print(f"\n{title}")
                print(format_result(*run_query(settings, sql), "table"))
            return print_reconciliation(report, stats)
        finally:
            pipeline.stop()


def print_reconciliation(report: ReplayReport, stats: dict[str, int]) -> int:
    dead = sum(report.dead_lettered.values())
    total = stats["accepted"] + stats["duplicates"] + stats["late"] + dead
    ok = total == report.rows_read
    print(
        f"\nReconciliation: rows read {report.rows_read:,} = accepted {stats['accepted']:,}"
        f" + duplicates {stats['duplicates']:,} + late {stats['late']:,}"
        f" + dead-lettered {dead:,}  [{'OK' if ok else 'MISMATCH'}]"
    )
    print(f"  (accepted readings on segments without reference data: {stats['unknown_reference']})")
    return 0 if ok else 1
