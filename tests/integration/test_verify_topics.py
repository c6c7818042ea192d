"""`citystream verify topics`: the KPIs recomputed from city.traffic.v1 on the real stack,
for all windows and for a time range, and a tampered KPI caught."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from citystream.cli import main
from citystream.pipeline import Pipeline, settings_env
from connectors.sinks.clickhouse import connect
from connectors.sources.aarhus import AarhusReplaySource
from core.kafka import Publisher
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.aarhus_traffic import in_range, parse_instant, recompute
from tests.oracle import METADATA, REPO

pytestmark = pytest.mark.integration
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
FROM, TO = "2014-08-02T05:00:00+00:00", "2014-08-02T05:45:00Z"  # 07:00–07:45 in Aarhus


def verify_topics(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    *args: str,
) -> tuple[int, str]:  # fmt: skip
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    code = main(["verify", "topics", *args])
    return code, capsys.readouterr().out


def test_verify_topics_over_all_windows_and_a_range_then_catches_a_tampered_row(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    garbage = Publisher.create(settings)  # a subscriber-topic poison message is skipped
    garbage.send(settings.topic("city.traffic.v1"), b"x", b"not avro", 0)
    garbage.flush()
    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, FIXTURE, METADATA)
        source.setup()
        report = source.run()
        pipeline.wait_caught_up(report.published, timeout=300)
    finally:
        pipeline.stop()  # chDB is single-process: stopped sink, verify opens the directory

    from_file = recompute(FIXTURE, METADATA, settings.partitions)
    code, out = verify_topics(settings, capsys, monkeypatch)
    assert code == 0, out
    assert f"matched {len(from_file):,}  missing 0  extra 0  different 0" in out
    assert f"read {report.published:,} readings" in out and "(1 undecodable, skipped)" in out

    window = in_range(from_file, parse_instant(FROM), parse_instant(TO))
    assert 0 < len(window) < len(from_file) / 2
    code, out = verify_topics(settings, capsys, monkeypatch, "--from", FROM, "--to", TO)
    assert code == 0 and f"matched {len(window):,}  missing 0" in out, out

    # One KPI in the range altered in ClickHouse (a fuller row wins under FINAL): caught.
    key = min(k for k in window if k[0] == "traffic.vehicle_count" and k[1] == "city")
    client = connect(settings)
    start = datetime.fromtimestamp(key[3] / 1000, UTC)
    client.insert(
        "kpi",
        [[key[0], key[1], key[2], start, start, 1.0, window[key][1] + 1, 0, start]],
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
    client.close()
    code, out = verify_topics(settings, capsys, monkeypatch, "--from", FROM, "--to", TO)
    assert code == 1 and "different 1" in out and "DIFFERENCES FOUND" in out, out
    code, out = verify_topics(settings, capsys, monkeypatch, "--from", TO)  # not in range
    assert code == 0, out
