"""BatchingSink's guarantees on real Kafka and a real registry, through a real sink whose
destination is a list: commit only after a successful write, retries of a failing write
with nothing committed meanwhile, dead letters with their reason, and a bounded wait for
an input topic that does not exist yet."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from connectors.sinks.base import BatchingSink, InvalidRecord, Row
from core import telemetry
from core.kafka import Publisher
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from schemas.registry import SchemaRegistry
from tests.integration import sink_harness
from tests.integration.sink_harness import dead_letters, running, wait_for

pytestmark = pytest.mark.integration

TOPIC = "city.kpi.v1"
T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
GARBAGE = b"not Confluent-framed Avro"


class ListSink(BatchingSink):
    """Writes each batch to a list; while ``broken`` is set its destination is unreachable."""

    component = "list-sink"
    topic = TOPIC

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.batches: list[list[Row]] = []
        self.broken = threading.Event()
        self.fail_with: BaseException | None = None

    def check(self, row: Row) -> None:
        if row["value"] < 0:
            raise InvalidRecord("value must not be negative")

    def write(self, rows: Sequence[Row], traces: telemetry.KpiTraces | None = None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.broken.is_set():
            raise ConnectionRefusedError("the list is unreachable")
        self.batches.append(list(rows))

    def written(self) -> list[str]:
        return sorted(row["entity_id"] for batch in self.batches for row in batch)


def record(entity: str, value: float = 1.0) -> dict[str, Any]:
    return {
        "kpi": "traffic.vehicle_count",
        "scope": "segment",
        "entity_id": entity,
        "window_start": T0,
        "window_end": T0 + timedelta(minutes=15),
        "value": value,
        "samples": 1,
        "revision": 0,
        "computed_at": T0 + timedelta(minutes=15),
    }


GOOD = [record(f"seg-{i:02}") for i in range(12)]
NEGATIVE = record("seg-negative", -1.0)


def produce(settings: Settings, payloads: list[bytes]) -> None:
    publisher = Publisher.create(settings)
    for payload in payloads:
        publisher.send(settings.topic(TOPIC), b"k", payload)
    publisher.flush()


def encoded(settings: Settings, records: list[dict[str, Any]]) -> list[bytes]:
    serde = SchemaRegistry(settings.registry_config()).serde(settings.topic(TOPIC), TOPIC)
    return [serde.encode(r) for r in records]


def prepared(settings: Settings) -> Settings:
    ensure_topics(settings)
    register_schemas(settings)
    return settings


def committed_and_end(settings: Settings) -> tuple[list[int], list[int]]:
    return sink_harness.committed_and_end(
        settings, settings.topic(TOPIC), settings.group(ListSink.component)
    )


def all_committed(settings: Settings) -> bool:
    committed, ends = committed_and_end(settings)
    return all(c == e for c, e in zip(committed, ends, strict=True) if e)


def test_a_failing_write_is_retried_and_nothing_is_committed_until_it_succeeds(
    settings: Settings,
) -> None:
    settings = prepared(settings)
    sink = ListSink(settings)
    sink.broken.set()
    with running(sink) as errors:
        produce(settings, encoded(settings, GOOD))
        wait_for(lambda: sink.write_failures >= 2, "the write to fail twice", errors)
        assert sink.batches == []
        committed, ends = committed_and_end(settings)
        assert sum(ends) == len(GOOD)
        assert all(offset < 0 for offset in committed), committed  # nothing committed

        sink.broken.clear()
        wait_for(lambda: len(sink.written()) == len(GOOD), "the retried write", errors)
        wait_for(lambda: all_committed(settings), "the commit after the write", errors)
    assert sink.written() == [r["entity_id"] for r in GOOD]  # each row once, none lost


def test_bad_messages_and_rows_are_dead_lettered_with_their_reason(settings: Settings) -> None:
    settings = prepared(settings)
    sink = ListSink(settings)
    with running(sink) as errors:
        produce(settings, [*encoded(settings, [GOOD[0], NEGATIVE, GOOD[1]]), GARBAGE])
        wait_for(lambda: sink.dead_lettered == 2 and len(sink.written()) == 2, "2 + 2", errors)
        wait_for(lambda: all_committed(settings), "the commit", errors)
    assert sink.written() == ["seg-00", "seg-01"]

    letters = sorted(dead_letters(settings, 2), key=lambda letter: letter["reason"])
    assert [(x["reason"], x["component"]) for x in letters] == [
        ("invalid_row", "list-sink"),
        ("undecodable", "list-sink"),
    ]
    invalid, undecodable = letters
    assert invalid["detail"] == "row 0: value must not be negative"
    assert orjson.loads(invalid["payload"])["entity_id"] == "seg-negative"
    assert undecodable["payload"] == GARBAGE
    topic, partition, offset = undecodable["origin"].rsplit("/", 2)
    assert topic == settings.topic(TOPIC) and int(partition) >= 0 and int(offset) >= 0


def test_a_write_error_that_is_not_retryable_ends_the_run_uncommitted(
    settings: Settings,
) -> None:
    settings = prepared(settings)
    sink = ListSink(settings)
    sink.fail_with = RuntimeError("a bug in the sink")
    with running(sink, may_fail=True) as errors:
        produce(settings, encoded(settings, GOOD[:3]))
        wait_for(lambda: bool(errors), "the run to end", [])
    assert [str(e) for e in errors] == ["a bug in the sink"]
    committed, _ = committed_and_end(settings)
    assert all(offset < 0 for offset in committed), committed


def test_the_sink_waits_for_an_input_topic_created_after_it_started(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Started before `citystream init`: it says what it waits for and goes on once the
    topic is there, instead of failing on UNKNOWN_TOPIC_OR_PART or waiting silently."""
    caplog.set_level(logging.INFO, logger="core.kafka")
    sink = ListSink(settings)
    with running(sink) as errors:
        waiting = f"for topic {settings.topic(TOPIC)}"
        wait_for(lambda: waiting in caplog.text, "the sink to say it waits", errors)
        prepared(settings)
        produce(settings, encoded(settings, GOOD[:3]))
        wait_for(lambda: len(sink.written()) == 3, "the rows", errors)


def test_a_sink_asked_to_stop_while_it_waits_for_its_topic_stops_without_error(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """`running` fails the test if the run raised (TopicUnavailable once the wait ran out)."""
    caplog.set_level(logging.INFO, logger="core.kafka")
    sink = ListSink(settings)
    with running(sink) as errors:
        waiting = f"for topic {settings.topic(TOPIC)}"
        wait_for(lambda: waiting in caplog.text, "the sink to say it waits", errors)
