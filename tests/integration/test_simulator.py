"""The city simulator on the real stack: what it generates is exactly what Kafka holds."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from datetime import datetime
from typing import Any

import pytest

from citystream.cli import main
from citystream.verify import (
    expected_for_simulation,
    published_events,
    read_topic,
    simulated_events,
)
from connectors.publishing import ENERGY, SERVICE, WASTE
from connectors.sinks.clickhouse import ClickHouseSink
from connectors.sources.simulator import (
    CATEGORIES_TOPIC,
    COMPONENT,
    DISTRICTS_TOPIC,
    CitySimulatorSource,
    SimEvent,
    SimulationConfig,
    load_reference,
    simulate,
    validate_event,
)
from core.kafka import end_offsets, partition_for
from core.settings import Settings
from families.registry import ensure_topics
from oracles.simulated import millis, recompute
from tests.integration.test_traffic_pipeline import read_dead_letters

pytestmark = pytest.mark.integration
START = 1_407_132_000_000  # 2014-08-04T06:00Z, a Monday morning
STREAMS = (ENERGY, WASTE, SERVICE)


def as_published(record: dict[str, Any]) -> dict[str, Any]:
    """A record as a consumer decodes it: schema fields only, timestamps as epoch ms.

    The privacy fields of service requests (``cell``, ``subject``) are optional and unset
    for the simulator, which has no coordinates or resident ids: decoded, they are None.
    """
    return {
        k: millis(v) if isinstance(v, datetime) else v
        for k, v in record.items()
        if k not in ("event_time_ms", "opened_at_ms")
        and not (k in UNSET_PRIVACY_FIELDS and v is None)
    }


UNSET_PRIVACY_FIELDS = ("cell", "subject")


def in_partition_order(events: list[SimEvent], partitions: int) -> dict[str, list[dict]]:
    """Per topic, the records as read back partition by partition (each in send order)."""
    out: dict[str, list[dict]] = {}
    for stream in STREAMS:
        mine = [e for e in events if e.topic == stream.topic and e.fault != "malformed"]

        def partition(e: SimEvent, key: str = stream.key) -> int:
            return partition_for(str(e.record[key]).encode(), partitions)

        out[stream.topic] = [as_published(e.record) for e in sorted(mine, key=partition)]
    return out


def test_simulation_lands_in_kafka_exactly_as_generated(settings: Settings) -> None:
    ensure_topics(settings)
    config = SimulationConfig(
        seed=11, start_ms=START, hours=3, meters=60, bins=40, requests_per_hour=80,
        duplicate_fraction=0.02, late_fraction=0.02, malformed_fraction=0.03,
    )  # fmt: skip
    source = CitySimulatorSource(settings, config)
    source.setup()
    report = source.run()
    generated = list(simulate(config, load_reference()))
    faults = Counter(e.fault for e in generated if e.fault)
    malformed = [e for e in generated if e.fault == "malformed"]
    assert min(faults.values()) > 5 and len(faults) == 3
    assert report.rows_read == len(generated) and report.faults == faults
    assert report.dead_lettered == {"invalid_event": len(malformed)}

    # every per-event topic holds the generated records, each partition in send order
    expected = in_partition_order(generated, settings.partitions)
    for stream in STREAMS:
        actual = [as_published(r) for r in read_topic(settings, stream.topic)]
        assert len(actual) == len(expected[stream.topic]) == report.per_topic[stream.topic]
        assert actual == expected[stream.topic], stream.topic
        assert {r["source"] for r in actual} == {COMPONENT}

    # the batch topics carry the same events, column-wise, on the same partitions
    for stream in STREAMS:
        batches = read_topic(settings, stream.batch_topic)
        rows = [
            {c: b[c][i] for c in (*stream.columns, "origin")}
            for b in batches
            for i in range(len(b["origin"]))
        ]
        sent = [e for e in generated if e.topic == stream.topic and e.fault != "malformed"]
        assert Counter(r["origin"] for r in rows) == Counter(e.origin for e in sent)
        by_origin = {e.origin: e.record for e in sent}
        for row in rows:
            assert all(row[c] == by_origin[row["origin"]][c] for c in stream.columns)
        ends = end_offsets(settings, settings.topic(stream.batch_topic))
        assert sum(ends.values()) == len(batches)

    # reference data first, as in the CSVs
    reference = load_reference()
    districts = read_topic(settings, DISTRICTS_TOPIC)
    assert sorted(d["district"] for d in districts) == sorted(
        d.district for d in reference.districts
    )
    assert {d["district"]: d["grid_emission_kg_per_kwh"] for d in districts} == (
        reference.emission_factors()
    )
    categories = read_topic(settings, CATEGORIES_TOPIC)
    assert {c["category"]: c["sla_minutes"] for c in categories} == reference.sla_minutes()

    # malformed copies are dead-lettered with their reason, origin and the record as JSON
    letters = [d for d in read_dead_letters(settings) if d["component"] == COMPONENT]
    assert len(letters) == len(malformed)
    by_origin = {d["origin"]: d for d in letters}
    for event in malformed:
        letter = by_origin[event.origin]
        assert letter["reason"] == "invalid_event"
        assert letter["detail"] == validate_event(event.topic, event.record)
        payload = json.loads(letter["payload"])
        assert payload["event_id"] == event.record["event_id"]
        for name, value in event.record.items():
            nan = isinstance(value, float) and math.isnan(value) and math.isnan(payload[name])
            same = value == payload[name] or nan
            assert same, (name, value, payload[name])

    # the oracle gives the same KPIs from Kafka as from the regenerated events
    reread = recompute(published_events(settings), reference.emission_factors(),
                       reference.sla_minutes())  # fmt: skip
    regenerated = recompute(simulated_events(config, reference), reference.emission_factors(),
                            reference.sla_minutes())  # fmt: skip
    assert reread == regenerated
    assert {k[0] for k in reread} == {
        "energy.kwh", "energy.co2e_kg", "waste.bins_over_80pct", "service.requests_opened",
        "service.response_minutes_p50", "service.response_minutes_p90", "service.sla_met_pct",
    }  # fmt: skip


def test_simulate_command_caps_the_event_rate(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--seed", "5", "--start", "2014-08-04T08:00", "--hours", "1",
            "--meters", "200", "--bins", "0", "--requests-per-hour", "0", "--max-rate", "1000",
            "--topic-prefix", settings.topic_prefix,
            "--bootstrap-servers", settings.kafka_bootstrap_servers,
            "--registry-url", settings.schema_registry_url]  # fmt: skip
    started = time.monotonic()
    assert main(args) == 0
    elapsed = time.monotonic() - started
    assert "simulated 800 events" in capsys.readouterr().out  # 200 meters × 4 readings
    assert elapsed >= 0.75  # 800 events at <= 1,000/s
    assert sum(end_offsets(settings, settings.topic(ENERGY.topic)).values()) == 800


def test_verify_simulator_compares_clickhouse_with_the_recomputation(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    config = SimulationConfig(seed=3, start_ms=START, hours=1, meters=5, bins=5,
                              requests_per_hour=30, late_fraction=0.05)  # fmt: skip
    expected = expected_for_simulation(config, load_reference(), settings)
    window = settings.window_minutes * 60_000
    rows = [
        {"kpi": k, "scope": s, "entity_id": e, "window_start": w, "window_end": w + window,
         "value": v, "samples": n, "revision": 0, "computed_at": w + window}
        for (k, s, e, w), (v, n) in sorted(expected.items())
    ]  # fmt: skip
    rows[0] = {**rows[0], "value": rows[0]["value"] + 1}
    args = ["verify", "simulator", "--seed", "3", "--start", "2014-08-04T06:00", "--hours", "1",
            "--meters", "5", "--bins", "5", "--requests-per-hour", "30", "--late", "0.05",
            "--data-dir", str(settings.data_dir)]  # fmt: skip
    with ClickHouseSink(settings) as sink:
        sink.setup()
        sink.write(rows)
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"matched {len(rows) - 1:,}" in out and "different 1" in out
    with ClickHouseSink(settings) as sink:  # the corrected row as a later revision
        sink.setup()
        sink.write([{**rows[0], "value": rows[0]["value"] - 1, "revision": 1}])
    assert main(args) == 0
    assert f"matched {len(rows):,}  missing 0  extra 0  different 0" in capsys.readouterr().out
