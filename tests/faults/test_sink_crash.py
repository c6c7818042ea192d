"""The ClickHouse sink SIGKILLed mid-stream (between inserts and commits), restarted.

The sink commits offsets only after its insert returned, so a kill between the two
re-inserts records on restart; the table's version collapses them. Every KPI must equal
the independent recount, none counted twice.
"""

from __future__ import annotations

import random
import time

import pytest

from citystream.query import run_query
from core.settings import Settings
from tests.faults.harness import paced_replay

pytestmark = pytest.mark.integration
SEED = 20140803


def test_sink_killed_mid_stream_counts_nothing_twice(settings: Settings) -> None:
    rng = random.Random(SEED)
    settings = settings.model_copy(update={"sink_batch_seconds": 0.2})
    with paced_replay(settings, speed=540.0) as run:  # ~20 s
        for _ in range(3):
            time.sleep(rng.uniform(2.0, 5.0))
            run.pipeline.kill("sink")
            run.pipeline.start("sink")
        matched = run.finish_and_verify(settings)
        sql = "SELECT count() FROM kpi FINAL WHERE startsWith(kpi, 'traffic.')"
        _, rows = run_query(settings, sql)
        assert int(rows[0][0]) == matched  # one row per key, nothing doubled
