"""The ClickHouse sink SIGKILLed mid-stream (between inserts and commits), restarted.

The sink commits offsets only after its insert returned, so a kill between the two
re-inserts records on restart; the table's version collapses them. Every KPI must equal
the independent recount, none counted twice.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from citystream.kafka import ensure_topics, register_schemas
from citystream.pipeline import Pipeline, wait_settled
from citystream.query import run_query
from citystream.settings import Settings
from citystream.verify import compare, recompute, stored_kpis
from connectors.sources.aarhus import AarhusReplaySource, ReplayReport
from tests.oracle import METADATA, REPO

pytestmark = pytest.mark.integration
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
SEED = 20140803


def test_sink_killed_mid_stream_counts_nothing_twice(settings: Settings) -> None:
    rng = random.Random(SEED)
    settings = settings.model_copy(update={"sink_batch_seconds": 0.2})
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings)
    report: list[ReplayReport] = []
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, FIXTURE, METADATA, speed=540.0)  # ~20 s
        source.setup()
        replay = threading.Thread(target=lambda: report.append(source.run()))
        replay.start()
        for _ in range(3):
            time.sleep(rng.uniform(2.0, 5.0))
            pipeline.kill("sink")
            pipeline.start("sink")
        replay.join(120)
        assert report, "the replay did not finish"
        wait_settled(pipeline, timeout=300)

        result = compare(recompute(FIXTURE, METADATA, settings.partitions), stored_kpis(settings))
        assert result.ok, result.summary()
        _, rows = run_query(settings, "SELECT count() FROM kpi FINAL")
        assert int(rows[0][0]) == result.matched  # one row per key, nothing doubled
    finally:
        pipeline.stop()
