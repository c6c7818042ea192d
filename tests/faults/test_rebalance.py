"""A second worker joins mid-stream, then the first leaves: partitions move twice.

The worker giving a partition up forgets its state; the one taking it rebuilds the open
windows from the committed offset. Every KPI must still equal the independent recount.
"""

from __future__ import annotations

import random
import time

import pytest

from core.settings import Settings
from tests.faults.harness import paced_replay

pytestmark = pytest.mark.integration
SEED = 20140802


def test_worker_joins_then_leaves_mid_stream(settings: Settings) -> None:
    rng = random.Random(SEED)
    with paced_replay(settings, speed=360.0) as run:  # ~30 s
        time.sleep(rng.uniform(4.0, 8.0))
        run.pipeline.start("processor2")  # joins: the group splits the partitions
        time.sleep(rng.uniform(6.0, 10.0))
        assert run.pipeline.processor_stats("processor2")["batches"] > 0, "worker 2 idle"
        run.pipeline.services.pop("processor").stop()  # leaves cleanly: worker 2 takes all
        run.finish_and_verify(settings)


def test_second_worker_joins_while_the_first_races_through_a_backlog(
    settings: Settings,
) -> None:
    """A day of readings waits in Kafka; a second worker joins while the first is busy."""
    from citystream.pipeline import Pipeline, wait_settled
    from citystream.verify import stored_kpis
    from connectors.sources.aarhus import AarhusReplaySource
    from families.registry import ensure_topics, register_schemas
    from oracles.aarhus_traffic import recompute
    from oracles.compare import compare
    from tests.faults.harness import METADATA, REPO

    day = REPO / "data/aarhus/traffic_2014-08-02.csv.gz"
    settings = settings.model_copy(update={"source_batch_size": 10})  # a longer backlog
    ensure_topics(settings)
    register_schemas(settings)
    source = AarhusReplaySource(settings, day, METADATA)
    source.setup()
    source.run()
    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start("processor", "sink")
        while pipeline.processor_stats()["accepted"] < 5_000:
            time.sleep(0.05)
        pipeline.start("processor2")
        assert pipeline.processor_stats()["accepted"] < 100_000, "joined too late to matter"
        wait_settled(pipeline, timeout=300)
        result = compare(recompute(day, METADATA, settings.partitions), stored_kpis(settings))
        assert result.ok, result.summary()
    finally:
        pipeline.stop()
