"""Simulated energy, waste and service events end to end: simulator → Kafka → processors →
ClickHouse, checked row for row against the independent recomputation."""

from __future__ import annotations

import time

import pytest

from citystream.pipeline import Pipeline, wait_settled
from citystream.verify import expected_for_simulation, stored_kpis
from connectors.publishing import ENERGY, SERVICE, WASTE
from connectors.sources.simulator import CitySimulatorSource, SimulationConfig, load_reference
from core.settings import Settings
from families.registry import KPIS, ensure_topics
from oracles.compare import compare
from tests.integration.test_traffic_pipeline import read_dead_letters

pytestmark = pytest.mark.integration
START = 1_407_132_000_000  # 2014-08-04T06:00Z, a Monday morning
DOMAINS = {"energy": ENERGY, "waste": WASTE, "service": SERVICE}


def domain_stats(pipeline: Pipeline, domain: str) -> dict[str, int]:
    try:
        return pipeline.processor_stats(domain=domain)
    except KeyError:
        pytest.fail(f"the worker runs no {domain} processor (streams/worker.py PROCESSORS)")


def wait_processed(pipeline: Pipeline, published: dict[str, int], timeout: float = 300) -> None:
    """Until each domain's processor has accepted, de-duplicated or dropped as late all."""
    deadline = time.monotonic() + timeout
    for domain, stream in DOMAINS.items():
        while True:
            stats = domain_stats(pipeline, domain)
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= published[stream.topic]:
                break
            assert time.monotonic() < deadline, f"{domain}: {stats} of {published}"
            time.sleep(0.3)


def test_simulated_domains_match_the_recomputation_row_for_row(settings: Settings) -> None:
    ensure_topics(settings)
    config = SimulationConfig(
        seed=5, start_ms=START, hours=4, meters=50, bins=40, requests_per_hour=120,
        duplicate_fraction=0.02, late_fraction=0.03, malformed_fraction=0.02,
    )  # fmt: skip
    pipeline = Pipeline(settings, processors=("energy", "waste", "service"))
    try:
        pipeline.start()
        source = CitySimulatorSource(settings, config)
        source.setup()
        report = source.run()
        wait_processed(pipeline, report.per_topic)
        wait_settled(pipeline, timeout=300)

        late = 0
        for domain, stream in DOMAINS.items():  # reconciliation per domain
            stats = domain_stats(pipeline, domain)
            counted = stats["accepted"] + stats["duplicates"] + stats["late"]
            assert counted == report.per_topic[stream.topic], (domain, stats)
            assert stats["duplicates"] > 0 and stats["late"] > 0, (domain, stats)
            late += stats["late"]
        letters = read_dead_letters(settings)
        assert sum(d["reason"] == "late" for d in letters) == late
        assert sum(d["reason"] == "invalid_event" for d in letters) == report.faults["malformed"]

        expected = expected_for_simulation(config, load_reference(), settings)
        stored = {}
        for domain in DOMAINS:
            stored.update(stored_kpis(settings, f"{domain}."))
        result = compare(expected, stored)
        assert result.ok and result.matched == len(expected), result.summary()
        emitted = {(kpi, scope) for kpi, scope, _, _ in expected}
        for name, kpi in KPIS.items():
            if kpi.domain in DOMAINS:
                assert {(name, scope) for scope in kpi.scopes} <= emitted, name
    finally:
        pipeline.stop()
