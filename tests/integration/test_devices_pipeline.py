"""Device uptime end to end: traffic and air replayed, uptime in ClickHouse = the oracle.

Real data has silent sensors: known segments without a reading in an hour must show 0 %.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import Any

import pytest

from citystream.pipeline import Pipeline
from citystream.replay import AarhusFiles, run_replays, wait_processed
from citystream.verify import stored_kpis
from connectors.sources.aarhus import AarhusReplaySource, CsvReplay
from connectors.sources.aarhus_air import AarhusAirReplay
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.compare import compare
from oracles.devices import recompute_devices
from tests.integration.test_air_parking_replay import AIR_FIXTURE
from tests.oracle import REPO

pytestmark = pytest.mark.integration
TRAFFIC_FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
SHIPPED = AarhusFiles.shipped()


def silence(source: Path, target: Path, hour_prefix: str) -> str:
    """The file without one sensor's readings in one local hour; returns that sensor."""
    with gzip.open(source, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    quiet = rows[0]["REPORT_ID"]
    kept = [
        r for r in rows if not (r["REPORT_ID"] == quiet and r["TIMESTAMP"].startswith(hour_prefix))
    ]
    assert len(kept) < len(rows)
    with gzip.open(target, "wt", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    return quiet


def test_uptime_per_sensor_district_and_city_matches_the_oracle(
    settings: Settings, tmp_path: Path
) -> None:
    traffic = tmp_path / "traffic.csv.gz"
    quiet = silence(TRAFFIC_FIXTURE, traffic, "2014-08-02T07:")
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings, processors=("traffic", "air", "devices"))
    try:
        pipeline.start()
        sources: dict[str, CsvReplay[Any]] = {
            "traffic": AarhusReplaySource(settings, traffic, SHIPPED.metadata),
            "air": AarhusAirReplay(settings, AIR_FIXTURE, SHIPPED.metadata),
        }
        for source in sources.values():
            source.setup()
        reports = run_replays(sources, paced=False, announce=lambda _: None)
        published = {n: r.published for n, r in reports.items()}
        wait_processed(pipeline, {**published, "devices": sum(published.values())})
        expected = recompute_devices(traffic, AIR_FIXTURE, SHIPPED.metadata, settings.partitions)
        silent = [k for k, v in expected.items() if k[2] == f"traffic:{quiet}" and v == (0.0, 0)]
        assert len(silent) == 1, silent  # its hour without readings shows 0 %
        result = compare(expected, stored_kpis(settings, "devices."))
        assert result.ok and result.matched == len(expected), result.summary()
    finally:
        pipeline.stop()
