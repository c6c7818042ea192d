"""The ClickHouse sink end to end: real Kafka, real registry, real embedded chDB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from citystream.query import run_query
from connectors.sinks.clickhouse import (
    KPI_COLUMN_NAMES,
    KPI_TOPIC,
    ClickHouseSink,
    connect,
)
from core.kafka import Publisher
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from schemas.registry import SchemaRegistry
from tests.conftest import free_port
from tests.integration import sink_harness
from tests.integration.sink_harness import dead_letters, running, wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=15)
GARBAGE = b"this is not Confluent-framed Avro"


def kpi_records() -> list[dict[str, Any]]:
    """40 keys over 3 scopes and 2 windows; every third key also has a revision 1."""
    records = []
    for i in range(40):
        scope = ("segment", "district", "city")[i % 3]
        start = T0 + WINDOW * (i % 2)
        base = {
            "kpi": "traffic.vehicle_count",
            "scope": scope,
            "entity_id": f"{scope}-{i}",
            "window_start": start,
            "window_end": start + WINDOW,
            "samples": i + 1,
            "computed_at": start + WINDOW + timedelta(milliseconds=i),
        }
        records.append({**base, "value": float(i), "revision": 0})
        if i % 3 == 0:
            records.append({**base, "value": i + 0.5, "revision": 1})
    return records


def expected_latest(records: list[dict[str, Any]]) -> list[list[Any]]:
    latest: dict[tuple[str, str, str, datetime], dict[str, Any]] = {}
    for r in records:
        key = (r["kpi"], r["scope"], r["entity_id"], r["window_start"])
        if key not in latest or r["revision"] >= latest[key]["revision"]:
            latest[key] = r
    return [
        [
            r["kpi"], r["scope"], r["entity_id"], r["window_start"].isoformat(),
            r["window_end"].isoformat(), r["value"], r["samples"], r["revision"],
            r["computed_at"].isoformat(),
        ]
        for _, r in sorted(latest.items())
    ]  # fmt: skip


LATEST_SQL = (
    "SELECT kpi, scope, entity_id, window_start, window_end, value, samples, revision,"
    " computed_at FROM kpi FINAL ORDER BY kpi, scope, entity_id, window_start"
)


def produce(settings: Settings, records: list[dict[str, Any]]) -> None:
    serde = SchemaRegistry(settings.registry_config()).serde(settings.topic(KPI_TOPIC), KPI_TOPIC)
    publisher = Publisher.create(settings)
    topic = settings.topic(KPI_TOPIC)
    for start in range(0, len(records), 7):  # several column-wise batches, as processors send
        chunk = records[start : start + 7]
        batch = {name: [_plain(r[name]) for r in chunk] for name in KPI_COLUMN_NAMES}
        publisher.send(topic, b"batch", serde.encode(batch))
    publisher.send(topic, b"garbage", GARBAGE)
    publisher.flush()


def _plain(value: Any) -> Any:
    """Datetimes as epoch milliseconds, as on the wire."""
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else value


def committed_and_end(settings: Settings) -> tuple[list[int], list[int]]:
    group = settings.group(settings.sink_group_id)
    return sink_harness.committed_and_end(settings, settings.topic(KPI_TOPIC), group)


def query_in_subprocess(settings: Settings, port: int, sql: str) -> subprocess.CompletedProcess:
    """Another process, as an analyst's `citystream query` would be."""
    code = (
        "import json, sys\n"
        "from core.settings import Settings\n"
        "from citystream.query import run_query\n"
        "print(json.dumps(run_query(Settings(), sys.argv[1])))\n"
    )
    env = {
        **os.environ,
        "CITYSTREAM_DATA_DIR": str(settings.data_dir),
        "CITYSTREAM_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "CITYSTREAM_QUERY_PORT": str(port),
    }
    env.pop("CITYSTREAM_CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "-c", code, sql], env=env, capture_output=True, text=True, timeout=120
    )


def test_sink_inserts_dead_letters_commits_and_replays_idempotently(settings: Settings) -> None:
    settings = settings.model_copy(update={"query_port": free_port()})
    ensure_topics(settings)
    register_schemas(settings)
    records = kpi_records()
    produce(settings, records)
    expected = expected_latest(records)

    sink = ClickHouseSink(settings)
    with running(sink) as errors:
        wait_for(lambda: sink.rows_inserted >= len(records), "rows to land", errors)
        wait_for(lambda: sink.dead_lettered >= 1, "the garbage to be dead-lettered", errors)

        columns, rows = run_query(settings, LATEST_SQL)  # in-process, through the endpoint
        assert rows == expected
        assert columns[:3] == ["kpi", "scope", "entity_id"]

        other = query_in_subprocess(settings, settings.query_port, "SELECT count() FROM kpi FINAL")
        assert other.returncode == 0, other.stderr
        assert json.loads(other.stdout) == [["count()"], [[len(expected)]]]

        locked = query_in_subprocess(settings, free_port(), "SELECT 1")
        assert locked.returncode != 0
        assert f"is locked by process {os.getpid()}" in locked.stderr

    assert sink.rows_inserted == len(records)
    assert sink.dead_lettered == 1
    assert sink.batches_inserted >= 1

    committed, ends = committed_and_end(settings)
    assert [c for c, e in zip(committed, ends, strict=True) if e] == [e for e in ends if e]
    assert sum(ends) == -(-len(records) // 7) + 1  # the batches and the garbage message

    letters = dead_letters(settings)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["reason"] == "undecodable"
    assert letter["payload"] == GARBAGE
    assert letter["component"] == "clickhouse-sink"
    topic, partition, offset = letter["origin"].rsplit("/", 2)
    assert topic == settings.topic(KPI_TOPIC) and int(partition) >= 0 and int(offset) >= 0

    # Replay everything under a new group: the table must not change.
    replay = ClickHouseSink(settings.model_copy(update={"sink_group_id": "sink-replay"}))
    with running(replay) as errors:
        wait_for(lambda: replay.rows_inserted >= len(records), "the replay to land", errors)
        columns, rows = run_query(settings, LATEST_SQL)
        assert rows == expected
        counted = run_query(settings, "SELECT count(), sum(value) FROM kpi FINAL")[1]
        assert counted == [[len(expected), sum(r[5] for r in expected)]]
        assert run_query(settings, "SELECT count() FROM kpi_latest")[1] == [[len(expected)]]


def test_failed_insert_is_retried_and_holds_back_the_commit(settings: Settings) -> None:
    """The kpi table disappears under the running sink: nothing is committed or dropped."""
    settings = settings.model_copy(update={"query_port": free_port()})
    ensure_topics(settings)
    register_schemas(settings)
    records = kpi_records()
    sink = ClickHouseSink(settings)
    with running(sink) as errors:
        wait_for(lambda: sink.endpoint is not None, "the sink to start", errors)
        admin = connect(settings)  # a second session on the sink's engine, as an operator would
        try:
            admin.command("RENAME TABLE kpi TO kpi_parked")
            produce(settings, records)
            wait_for(lambda: sink.write_failures >= 2, "the insert to fail twice", errors)
            assert sink.rows_inserted == 0
            committed, _ = committed_and_end(settings)
            assert all(offset < 0 for offset in committed), committed  # nothing committed
            admin.command("RENAME TABLE kpi_parked TO kpi")
        finally:
            admin.close()
        wait_for(lambda: sink.rows_inserted == len(records), "the retried insert", errors)
        assert run_query(settings, LATEST_SQL)[1] == expected_latest(records)
    committed, ends = committed_and_end(settings)
    assert [c for c, e in zip(committed, ends, strict=True) if e] == [e for e in ends if e]
