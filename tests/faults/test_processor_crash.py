"""Processor SIGKILLed mid-replay, several times: the KPIs still match the oracle exactly.

Open windows live in memory; the processor acks an input message only once every window
it fed is final, so after a crash the worker re-reads from the oldest open window and
rebuilds it, resuming stream time from the watermark it last published.
"""

from __future__ import annotations

import gzip
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
SEED = 20141026


def wait_until_accepted(pipeline: Pipeline, at_least: int, timeout: float = 120) -> None:
    """Until the running processor has accepted ``at_least`` readings since it started."""
    deadline = time.monotonic() + timeout
    while pipeline.processor_stats()["accepted"] < at_least:
        assert time.monotonic() < deadline, "processor made no progress"
        time.sleep(0.1)


def test_processor_killed_mid_replay_loses_and_doubles_nothing(settings: Settings) -> None:
    rng = random.Random(SEED)
    ensure_topics(settings)
    register_schemas(settings)
    with gzip.open(FIXTURE, "rt") as handle:
        rows = [line.split(",") for line in handle.read().splitlines()[1:]]
    pipeline = Pipeline(settings)
    report: list[ReplayReport] = []
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, FIXTURE, METADATA, speed=360.0)  # ~30 s
        source.setup()
        replay = threading.Thread(target=lambda: report.append(source.run()))
        replay.start()
        # Two kills at seeded points in the stream, each while a worker is mid-window.
        for low, high in ((0.15, 0.35), (0.20, 0.35)):
            wait_until_accepted(pipeline, int(len(rows) * rng.uniform(low, high)))
            time.sleep(rng.uniform(0.0, 1.5))  # land anywhere inside a window
            pipeline.kill("processor")
            pipeline.start("processor")
        replay.join(120)
        assert report, "the replay did not finish"
        wait_settled(pipeline, timeout=300)

        result = compare(recompute(FIXTURE, METADATA, settings.partitions), stored_kpis(settings))
        assert result.ok, result.summary()
        assert result.matched > 10_000
    finally:
        pipeline.stop()
