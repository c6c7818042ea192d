"""What every fault test does around its fault: a live pipeline, a paced replay of real
Aarhus data, settling, and `citystream verify` against ClickHouse at the end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from citystream.kafka import ensure_topics, register_schemas
from citystream.pipeline import Pipeline, wait_settled
from citystream.settings import Settings
from citystream.verify import compare, recompute, stored_kpis
from connectors.sources.aarhus import AarhusReplaySource, ReplayReport
from tests.oracle import METADATA, REPO

FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
FIXTURE_ROWS = 16_164


@dataclass
class Run:
    pipeline: Pipeline
    thread: threading.Thread
    reports: list[ReplayReport] = field(default_factory=list)

    def finish_and_verify(self, settings: Settings) -> int:
        """Replay done, pipeline settled, every KPI equal to the recount; rows matched."""
        self.thread.join(120)
        assert self.reports, "the replay did not finish"
        wait_settled(self.pipeline, timeout=300)
        result = compare(recompute(FIXTURE, METADATA, settings.partitions), stored_kpis(settings))
        assert result.ok, result.summary()
        assert result.matched > 10_000
        return result.matched


@contextmanager
def paced_replay(settings: Settings, speed: float) -> Iterator[Run]:
    """Processor and sink running, the 3-hour fixture replayed at ``speed``× real time."""
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings)
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, FIXTURE, METADATA, speed=speed)
        source.setup()
        run = Run(pipeline, threading.Thread(target=lambda: run.reports.append(source.run())))
        run.thread.start()
        yield run
    finally:
        pipeline.stop()
