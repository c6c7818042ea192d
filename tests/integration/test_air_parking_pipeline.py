"""Air and parking end to end on the real stack: replay → Kafka → Faust → city.kpi.v1.

The processors' KPIs must equal, key for key, value for value and sample for sample, what
oracles/aarhus_air_parking.py computes from the same files with code that shares nothing
with the sources or the processors. They are read from city.kpi.v1 (the latest, most
complete record per window, as ClickHouse keeps it) and from ClickHouse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from citystream.pipeline import Pipeline
from citystream.replay import AarhusFiles, run_replays, wait_processed
from citystream.verify import stored_kpis
from connectors.sources.aarhus import CsvReplay
from connectors.sources.aarhus_air import AarhusAirReplay
from connectors.sources.aarhus_parking import AarhusParkingReplay
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.aarhus_air_parking import recompute_air, recompute_parking
from oracles.compare import Key, Value, compare
from tests.integration.test_air_parking_replay import (
    AIR_FIXTURE,
    BAD_AIR,
    PARKING_DUPLICATE,
    PARKING_EXTRA,
    PARKING_FIXTURE,
    consume,
    with_rows,
)

pytestmark = pytest.mark.integration
SHIPPED = AarhusFiles.shipped()


def published_kpis(settings: Settings) -> dict[Key, Value]:
    """city.kpi.v1 reduced as the kpi table does: per window the most samples, then revision."""
    best: dict[Key, tuple[int, int, float]] = {}
    for _, _, r in consume(settings, "city.kpi.v1"):
        key = (r["kpi"], r["scope"], r["entity_id"], int(r["window_start"].timestamp() * 1000))
        version = (r["samples"], r["revision"], r["value"])
        best[key] = max(best.get(key, version), version)
    return {key: (value, samples) for key, (samples, _, value) in best.items()}


def test_air_and_parking_kpis_match_the_independent_recomputation(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    air_file, parking_file = tmp_path / "air_test.csv.gz", tmp_path / "parking_test.csv.gz"
    with_rows(AIR_FIXTURE, air_file, list(BAD_AIR), duplicate=10)
    with_rows(PARKING_FIXTURE, parking_file, PARKING_EXTRA, duplicate=PARKING_DUPLICATE)
    pipeline = Pipeline(settings, processors=("air", "parking"))
    try:
        pipeline.start()
        sources: dict[str, CsvReplay[Any]] = {
            "air": AarhusAirReplay(settings, air_file, SHIPPED.metadata),
            "parking": AarhusParkingReplay(settings, parking_file, SHIPPED.car_parks),
        }
        for source in sources.values():
            source.setup()
        reports = run_replays(sources, paced=False, announce=lambda _: None)
        stats = wait_processed(pipeline, {n: r.published for n, r in reports.items()})

        for domain, late in (("air", 0), ("parking", 1)):
            counts = stats[domain]
            assert (counts["duplicates"], counts["late"]) == (1, late), (domain, counts)
            assert counts["accepted"] + 1 + late == reports[domain].published, (domain, counts)

        air = recompute_air(air_file, SHIPPED.metadata, settings.partitions)
        parking = recompute_parking(parking_file, SHIPPED.car_parks, settings.partitions)
        published = published_kpis(settings)
        result = compare(air, {k: v for k, v in published.items() if k[0].startswith("air.")})
        assert result.ok and result.matched == len(air), result.summary()
        stored = compare(air, stored_kpis(settings, "air."))
        assert stored.ok and stored.matched == len(air), stored.summary()
        assert {k[1] for k in parking} == {"car_park", "district", "city"}
        assert ("parking.occupancy_pct", "district", "unknown") in {k[:3] for k in parking}
        result = compare(parking, {k: v for k, v in published.items() if k[0].startswith("park")})
        assert result.ok and result.matched == len(parking), result.summary()
        stored = compare(parking, stored_kpis(settings, "parking."))
        assert stored.ok and stored.matched == len(parking), stored.summary()
    finally:
        pipeline.stop()
