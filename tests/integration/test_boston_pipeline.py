"""Boston, the second city, on the real stack: the shipped 311 month replayed from its city
pack through the service processor and the ClickHouse sink, compared row for row with the
independent oracle (oracles/boston_311.py); and `citystream city load`, which writes the
pack's reference data and nothing else."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from citystream.city_cli import load
from citystream.pipeline import Pipeline, wait_settled
from citystream.replay import reconciles
from citystream.verify import read_topic, stored_kpis
from connectors.sources.city_files import city_replay, publish_reference
from core.city import load_pack
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import TOPICS, ensure_topics
from oracles.boston_311 import expected_for_pack
from oracles.compare import compare
from tests.integration.test_simulated_domains import domain_stats

pytestmark = pytest.mark.integration
BOSTON = Path(__file__).resolve().parents[2] / "cities" / "boston"


def test_boston_month_matches_the_oracle_row_for_row(settings: Settings) -> None:
    settings = settings.model_copy(update={"city": BOSTON})  # the city scope is "boston"
    ensure_topics(settings)
    pipeline = Pipeline(settings, processors=("service",))
    try:
        pipeline.start()
        pack = load_pack(BOSTON)
        assert publish_reference(settings, pack).published == {"districts": 26}
        source = city_replay(settings, pack, pack.source("requests"))
        source.setup()
        report = source.run()
        assert reconciles(report) and report.published == 7528 + 6078
        deadline = time.monotonic() + 300
        while True:  # every event accepted, de-duplicated or refused as late
            stats = domain_stats(pipeline, "service")
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= report.published:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.3)
        wait_settled(pipeline, timeout=300)
        stats = domain_stats(pipeline, "service")
        assert (stats["accepted"], stats["duplicates"], stats["late"]) == (report.published, 0, 0)

        expected = expected_for_pack(BOSTON, window_minutes=settings.window_minutes)
        stored = stored_kpis(settings, "service.")
        result = compare(expected, stored)
        assert result.ok and result.matched == len(expected), result.summary()
        cities = {entity for _, scope, entity, _ in stored if scope == "city"}
        assert cities == {"boston"}
        districts = {entity for _, scope, entity, _ in stored if scope == "district"}
        assert "unknown" in districts and "Beacon Hill" in districts and len(districts) == 26
    finally:
        pipeline.stop()


def test_city_load_publishes_the_reference_data_and_nothing_else(settings: Settings) -> None:
    ensure_topics(settings)
    assert load(settings, BOSTON) == 0
    written = {name: sum(end_offsets(settings, settings.topic(name)).values()) for name in TOPICS}
    assert {name: n for name, n in written.items() if n} == {"city.districts.v1": 26}
    districts = read_topic(settings, "city.districts.v1")
    layer = load_pack(BOSTON).layer
    assert layer is not None and {d["district"] for d in districts} == set(layer.district_names())
    assert {d["grid_emission_kg_per_kwh"] for d in districts} == {None}
