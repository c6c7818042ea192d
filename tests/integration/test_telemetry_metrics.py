"""`/metrics` of the source, processor and sink, scraped while a replay runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from citystream.pipeline import Pipeline, http_get
from citystream.status import collect, render
from connectors.sources.aarhus import AarhusReplaySource
from connectors.sources.base import Report
from core import telemetry
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.oracle import METADATA

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """Every sample of a /metrics page, by name and labels (scope labels left out)."""
    text = http_get(f"http://127.0.0.1:{port}/metrics")
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_"))
            out[(s.name, labels)] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def by_partition(samples: Samples, name: str, topic: str) -> dict[str, float]:
    return {
        dict(ls)["partition"]: v
        for (n, ls), v in samples.items()
        if n == name and dict(ls).get("topic") == topic
    }


@pytest.fixture
def source_metrics(settings: Settings) -> Iterator[int]:
    telemetry.setup(telemetry.SOURCE, metrics_port=settings.source_metrics_port)
    yield settings.source_metrics_port
    telemetry.shutdown()


def test_metrics_show_rates_during_a_replay_and_lag_back_to_zero(
    settings: Settings, source_metrics: int
) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    batches = settings.topic("city.traffic.batches.v1")
    kpi_batches = settings.topic("city.kpi.batches.v1")
    pipeline = Pipeline(settings, processors=("traffic",))  # the traffic figures alone
    report: list[Report] = []
    try:
        pipeline.start()
        processor_port, sink_port = settings.processor_metrics_port, settings.sink_metrics_port
        source = AarhusReplaySource(settings, FIXTURE, METADATA, speed=800.0)  # 3 h in 13.5 s
        source.setup()
        replay = threading.Thread(target=lambda: report.append(source.run()))
        replay.start()
        during: list[tuple[Samples, Samples, Samples]] = []
        while replay.is_alive():
            during.append((scrape(source_metrics), scrape(processor_port), scrape(sink_port)))
            time.sleep(0.5)
        replay.join()
        pipeline.wait_caught_up(report[0].published, timeout=300)
        time.sleep(1.0)
        after_processor, after_sink = scrape(processor_port), scrape(sink_port)
        screen = collect(settings, interval=0.5)  # `citystream status`, while it all runs
    finally:
        pipeline.stop()

    assert len(during) >= 4, "the replay ended before /metrics could be scraped"
    # rates: the counters grow while the replay runs
    sent = [total(s, "citystream_events_out_total", topic=batches) for s, _, _ in during]
    seen = [
        total(p, "citystream_events_in_total", topic=batches, consumer="traffic")
        for _, p, _ in during
    ]
    assert any(b > a > 0 for a, b in pairwise(sent)), sent
    assert any(b > a > 0 for a, b in pairwise(seen)), seen
    published = report[0].published
    assert (
        total(after_processor, "citystream_events_in_total", topic=batches, consumer="traffic")
        == published
    )
    assert total(after_processor, "citystream_processing_duration_seconds_count") > 0
    written = total(after_sink, "citystream_events_in_total", topic=kpi_batches)
    assert written > 0
    assert total(after_sink, "citystream_sink_batch_rows_sum") == written
    assert total(after_sink, "citystream_sink_insert_duration_seconds_count") > 0
    freshness = total(after_sink, "citystream_kpi_freshness_seconds", domain="traffic")
    assert freshness > 0  # 2014 data: years old, but present
    # lag: per partition; the processor holds input back while windows are open, the
    # sink's returns to 0 once it has written everything
    lags = [by_partition(p, "citystream_consumer_lag", batches) for _, p, _ in during]
    assert all(len(lag) == settings.partitions for lag in lags if lag)
    assert any(sum(lag.values()) > 0 for lag in lags)
    sink_lag = by_partition(after_sink, "citystream_consumer_lag", kpi_batches)
    assert sink_lag and set(sink_lag.values()) == {0.0}

    # the SRE's screen agrees
    assert screen.healthy, render(screen)
    assert set(screen.services) == {"kafka", "registry", "processor", "sink"}
    sink_group = (settings.group(settings.sink_group_id), kpi_batches)
    assert set(screen.lag[sink_group].values()) == {0}
    assert set(screen.lag[(settings.group("traffic"), batches)]) == set(range(settings.partitions))
    [(domain, newest, rows)] = screen.freshest
    assert domain == "traffic" and rows > 0
    assert newest.isoformat() == "2014-08-02T07:00:00+00:00"  # 09:00 in Aarhus
    assert "freshest KPI window per domain" in render(screen)
