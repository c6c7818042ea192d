"""What every fault test does around its fault: a live pipeline, a paced replay of real
Aarhus data, settling, and `citystream verify` against ClickHouse at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from citystream.pipeline import Pipeline, wait_settled
from citystream.verify import stored_kpis
from connectors.sources.aarhus import AarhusReplaySource
from connectors.sources.base import Report
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.aarhus_traffic import recompute
from oracles.compare import compare
from tests.oracle import METADATA, REPO

FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
FIXTURE_ROWS = 16_164


@dataclass
class Run:
    pipeline: Pipeline
    thread: threading.Thread
    reports: list[Report] = field(default_factory=list)

    def finish_and_verify(self, settings: Settings, source: Path = FIXTURE) -> int:
        """Replay done, pipeline settled, every KPI equal to the recount; rows matched."""
        self.thread.join(120)
        assert self.reports, "the replay did not finish"
        wait_settled(self.pipeline, timeout=300)
        result = compare(recompute(source, METADATA, settings.partitions), stored_kpis(settings))
        assert result.ok, result.summary()
        assert result.matched > 10_000
        return result.matched

    def reconcile(self, source: Path = FIXTURE) -> dict[str, int]:
        """read = accepted + duplicates + late + dead-lettered, exactly, for a processor that
        ran throughout; accepted also equals the independent recount's city-scope samples."""
        report = self.reports[0]
        stats = self.pipeline.processor_stats()
        dead = sum(report.dead_lettered.values())
        counted = stats["accepted"] + stats["duplicates"] + stats["late"] + dead
        assert counted == report.rows_read, (report, stats)
        expected = recompute(source, METADATA, 1)
        accepted = sum(
            n
            for (kpi, scope, _, _), (_, n) in expected.items()
            if kpi == "traffic.vehicle_count" and scope == "city"
        )
        assert stats["accepted"] == accepted, (stats, accepted)
        return {
            "read": report.rows_read,
            "accepted": stats["accepted"],
            "duplicates": stats["duplicates"],
            "late": stats["late"],
            "dead_lettered": dead,
        }


def wait_until_accepted(pipeline: Pipeline, at_least: int, timeout: float = 120) -> None:
    """Until the running processor has accepted ``at_least`` readings since it started."""
    deadline = time.monotonic() + timeout
    while pipeline.processor_stats()["accepted"] < at_least:
        assert time.monotonic() < deadline, "processor made no progress"
        time.sleep(0.1)


@contextmanager
def paced_replay(settings: Settings, speed: float, source: Path = FIXTURE) -> Iterator[Run]:
    """Processor and sink running, the 3-hour fixture replayed at ``speed``× real time."""
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(
        settings, processors=("traffic",)
    )  # faults on the engine, checked on traffic
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, source, METADATA, speed=speed)
        source.setup()
        run = Run(pipeline, threading.Thread(target=lambda: run.reports.append(source.run())))
        run.thread.start()
        yield run
    finally:
        pipeline.stop()
