"""A sensor-uptime statement on the real stack: Aarhus traffic and air readings (three
hours of the shipped day, one sensor silenced for an hour) through the traffic, air and
devices processors and the sink; the Aarhus contract's week issued, verified against the
topics and the independent oracle, and a revised uptime row in the KPI table named."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citystream.pipeline import Pipeline
from citystream.replay import AarhusFiles, run_replays, wait_processed
from connectors.sinks.clickhouse.backend import connect
from connectors.sources.aarhus import AarhusReplaySource, CsvReplay
from connectors.sources.aarhus_air import AarhusAirReplay
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.devices import recompute_devices
from tests.integration.test_air_parking_replay import AIR_FIXTURE
from tests.integration.test_devices_pipeline import TRAFFIC_FIXTURE, silence
from trust.statements.contract import load_contract
from trust.statements.statement import issue, verify

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "contracts" / "aarhus-sensor-uptime.toml"
SHIPPED = AarhusFiles.shipped()


def test_aarhus_uptime_statement_verifies_and_names_a_revised_row(
    settings: Settings, tmp_path: Path
) -> None:
    traffic = tmp_path / "traffic.csv.gz"
    silence(TRAFFIC_FIXTURE, traffic, "2014-08-02T07:")
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
    finally:
        pipeline.stop()

    key = Ed25519PrivateKey.generate()
    contract = load_contract(CONTRACT)
    statement = issue(settings, contract, "2014-W31", "aarhus", "Europe/Copenhagen", key)
    [target] = statement["targets"]
    expected = recompute_devices(traffic, AIR_FIXTURE, SHIPPED.metadata, settings.partitions)
    sensors = [v for k, v in expected.items() if k[1] == "sensor"]
    assert target["rows"]["count"] == len(sensors) > 1000
    received = sum(n for _, n in sensors)
    assert target["value"] == pytest.approx(received * 100 / (12 * len(sensors)), rel=1e-12)
    assert 98 < target["value"] < 100 and target["met"]  # one sensor-hour silent
    assert target["tier"] == {"name": "full", "payment": "100 % of the weekly maintenance fee"}
    names = {r["name"] for r in statement["input"]["ranges"]}
    assert names == {"city.traffic.batches.v1", "city.air.batches.v1", "city.road_segments.v1"}

    verdict = verify(settings, statement, key.public_key())
    assert verdict.ok, verdict.problems
    assert any(c.startswith("target uptime-city: value") for c in verdict.checked)

    revised = revise_a_silent_hour(settings)
    problems = verify(settings, copy.deepcopy(statement), key.public_key()).problems
    assert any(f"KPI table row (devices.uptime_pct, sensor, {revised}" in p for p in problems), (
        problems
    )
    assert not any(p.startswith("target uptime-city: value stated") for p in problems)
    assert any(p.startswith("target uptime-city: the KPI table's") for p in problems), problems


def revise_a_silent_hour(settings: Settings) -> str:
    """A revision that says one silent sensor-hour had all its readings; returns the sensor."""
    session = connect(settings)
    try:
        [(sensor, window, end, revision)] = session.query(
            "SELECT entity_id, window_start, window_end, revision FROM kpi FINAL "
            "WHERE kpi = 'devices.uptime_pct' AND scope = 'sensor' AND samples = 0 "
            "ORDER BY entity_id, window_start LIMIT 1"
        ).result_rows
        session.insert(
            "kpi",
            [
                [
                    "devices.uptime_pct",
                    "sensor",
                    sensor,
                    window,
                    end,
                    100.0,
                    12,
                    revision + 1,
                    window,
                ]
            ],
            column_names=[
                "kpi",
                "scope",
                "entity_id",
                "window_start",
                "window_end",
                "value",
                "samples",
                "revision",
                "computed_at",
            ],
        )
    finally:
        session.close()
    return str(sensor)
