"""A second worker joins mid-stream, then the first leaves: partitions move twice.

The worker giving a partition up forgets its state; the one taking it rebuilds the open
windows from the committed offset. Every KPI must still equal the independent recount.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from citystream.kafka import ensure_topics, register_schemas
from citystream.pipeline import Pipeline, wait_settled
from citystream.settings import Settings
from citystream.verify import compare, recompute, stored_kpis
from connectors.sources.aarhus import AarhusReplaySource, ReplayReport
from tests.oracle import METADATA, REPO

pytestmark = pytest.mark.integration
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
SEED = 20140802


def test_worker_joins_then_leaves_mid_stream(settings: Settings) -> None:
    rng = random.Random(SEED)
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings)
    report: list[ReplayReport] = []
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, FIXTURE, METADATA, speed=360.0)  # ~30 s
        source.setup()
        replay = threading.Thread(target=lambda: report.append(source.run()))
        replay.start()
        time.sleep(rng.uniform(4.0, 8.0))
        pipeline.start("processor2")  # joins: the group splits the partitions
        time.sleep(rng.uniform(6.0, 10.0))
        assert pipeline.processor_stats("processor2")["batches"] > 0, "worker 2 got no work"
        pipeline.services.pop("processor").stop()  # leaves cleanly: worker 2 takes all
        replay.join(120)
        assert report, "the replay did not finish"
        wait_settled(pipeline, timeout=300)

        result = compare(recompute(FIXTURE, METADATA, settings.partitions), stored_kpis(settings))
        assert result.ok, result.summary()
        assert result.matched > 10_000
    finally:
        pipeline.stop()
