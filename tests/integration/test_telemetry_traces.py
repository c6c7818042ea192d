"""One reading, traced from the source to its ClickHouse rows on the real stack.

The source runs in this process with an in-memory span exporter; the processor and the
sink are the real `citystream process` / `citystream sink clickhouse` commands, exporting
with the standard console exporter (``OTEL_TRACES_EXPORTER=console``: one JSON span per
line of their output). Together the spans must form one connected graph: the source's
batch span → the processor's ``process`` span (same trace) → ``emit kpi`` (links) → the
merge stage (same trace as the emission) → ``emit kpi`` → the sink's ``insert kpi``
(links); and ``kpi_trace_links`` must lead from the reading's trace id to its KPI rows.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from citystream.pipeline import Pipeline
from citystream.query import run_query
from connectors.sources.aarhus import AarhusReplaySource
from core import telemetry
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.oracle import METADATA

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"


@dataclass(frozen=True)
class Span:
    name: str
    service: str
    trace_id: str
    span_id: str
    parent_id: str | None
    links: tuple[tuple[str, str], ...]
    attributes: dict[str, Any]


def _hex(value: str) -> str:
    return value.removeprefix("0x")


def parse_console_span(line: str) -> Span | None:
    """A span as ConsoleSpanExporter writes it (``ReadableSpan.to_json``), else None."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or "context" not in data:
        return None
    return Span(
        data["name"],
        data["resource"]["attributes"]["service.name"],
        _hex(data["context"]["trace_id"]),
        _hex(data["context"]["span_id"]),
        _hex(data["parent_id"]) if data.get("parent_id") else None,
        tuple(
            (_hex(link["context"]["trace_id"]), _hex(link["context"]["span_id"]))
            for link in data.get("links", [])
        ),
        data.get("attributes", {}),
    )


def _ids(ctx: Any) -> tuple[str, str]:
    return telemetry.format_trace_id(ctx.trace_id), telemetry.format_span_id(ctx.span_id)


def from_sdk(span: Any) -> Span:
    ctx = span.get_span_context()
    return Span(
        span.name,
        span.resource.attributes["service.name"],
        telemetry.format_trace_id(ctx.trace_id),
        telemetry.format_span_id(ctx.span_id),
        telemetry.format_span_id(span.parent.span_id) if span.parent else None,
        tuple(_ids(link.context) for link in span.links),
        dict(span.attributes),
    )


@pytest.fixture
def source_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.setup(telemetry.SOURCE, span_exporter=exporter)
    yield exporter
    telemetry.shutdown()


def one_reading_file(tmp_path: Path) -> Path:
    with gzip.open(FIXTURE, "rt") as handle:
        header, first = handle.readline(), handle.readline()
    path = tmp_path / "one_reading.csv"
    path.write_text(header + first)
    return path


def logged_spans(pipeline: Pipeline) -> list[Span]:
    spans = []
    for service in pipeline.services.values():
        for line in service.log_path.read_text(errors="replace").splitlines():
            span = parse_console_span(line)
            if span is not None:
                spans.append(span)
    return spans


def wait_for_spans(pipeline: Pipeline, names: set[str], timeout: float = 60.0) -> list[Span]:
    deadline = time.monotonic() + timeout
    while True:
        spans = logged_spans(pipeline)
        if names <= {s.name for s in spans}:
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"spans {names} not all exported; got {[s.name for s in spans]}")
        time.sleep(0.3)


def per_event_traceparent(settings: Settings) -> str:
    topic = settings.topic("city.traffic.v1")
    consumer = Consumer(settings.kafka_config(**{"group.id": "trace-reader"}))
    consumer.assign(
        [TopicPartition(topic, p, 0) for p, end in end_offsets(settings, topic).items() if end]
    )
    try:
        for _ in range(50):
            for msg in consumer.consume(10, timeout=0.2):
                assert msg.error() is None
                return dict(msg.headers() or [])["traceparent"].decode()
        raise AssertionError(f"no message on {topic}")
    finally:
        consumer.close()


def test_one_reading_is_one_connected_trace_from_source_to_clickhouse(
    settings: Settings,
    tmp_path: Path,
    source_spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # the children's exporter
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    ensure_topics(settings)
    register_schemas(settings)
    batches = settings.topic("city.traffic.batches.v1")
    partials = settings.topic("city.traffic.partials.v2")
    pipeline = Pipeline(settings, processors=("traffic",))  # one processor: one trace to follow
    try:
        pipeline.start()
        source = AarhusReplaySource(settings, one_reading_file(tmp_path), METADATA)
        source.setup()
        report = source.run()
        assert report.published == 1
        pipeline.wait_caught_up(1, timeout=120)
        logged = wait_for_spans(pipeline, {f"process {batches}", f"process {partials}", "emit kpi",
                                           "insert kpi"})  # fmt: skip
        kpi_rows = run_query(settings, "SELECT count() FROM kpi")[1][0][0]
        links_sql = (
            "SELECT kpi, scope, kpi_trace_id, kpi_span_id, input_trace_ids, insert_trace_id "
            "FROM kpi_trace_links ORDER BY kpi, scope"
        )
        link_rows = run_query(settings, links_sql)[1]
    finally:
        pipeline.stop()

    # the source: one span for the one batch message, the reading's origin on it
    sent = [from_sdk(s) for s in source_spans.get_finished_spans()]
    assert [s.name for s in sent] == [f"send {batches}"]
    source = sent[0]
    assert source.service == "citystream-source" and source.parent_id is None
    assert source.attributes["citystream.origin.first"] == "one_reading.csv:2"
    reading_trace = source.trace_id
    # the per-event message carries the same context
    assert per_event_traceparent(settings).split("-")[1:3] == [reading_trace, source.span_id]

    spans = logged + sent
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    # the processor continues the source's trace
    (processed,) = [s for s in logged if s.name == f"process {batches}"]
    assert processed.service == "citystream-processor"
    assert (processed.trace_id, processed.parent_id) == (reading_trace, source.span_id)
    # stage 1 emits: a new trace, linked to the batch that fed the window
    emits = [s for s in logged if s.name == "emit kpi"]
    (stage1,) = [e for e in emits if (processed.trace_id, processed.span_id) in e.links]
    assert stage1.trace_id != reading_trace and stage1.parent_id is None
    # the merge stage continues the emission's trace, and its emission links to that
    merged = [
        s for s in logged if s.name == f"process {partials}" and s.trace_id == stage1.trace_id
    ]
    assert merged and all(m.parent_id == stage1.span_id for m in merged)
    merged_ids = {(m.trace_id, m.span_id) for m in merged}
    city = [e for e in emits if merged_ids & set(e.links)]
    assert city, "no merge-stage emission links to the partial"
    # the sink's inserts link to both emissions, and every link resolves to a span we saw
    inserts = [s for s in logged if s.name == "insert kpi"]
    assert all(s.service == "citystream-sink" for s in inserts)
    linked = {link for s in inserts for link in s.links}
    assert (stage1.trace_id, stage1.span_id) in linked
    assert any((e.trace_id, e.span_id) in linked for e in city)
    assert all(link in by_id for s in [*emits, *inserts] for link in s.links)

    # the services log JSON lines, Faust's own loggers included
    processor_log = pipeline.services["processor"].log_path.read_text().splitlines()
    entries = [json.loads(line) for line in processor_log if line.startswith('{"time"')]
    assert {e["service"] for e in entries} == {"citystream-processor"}
    assert any(e["logger"].startswith(("faust", "mode")) for e in entries)
    assert any(e["logger"] == "streams.engine.processor" for e in entries)

    # ClickHouse: every KPI row of the reading is found from its trace id, and back
    assert kpi_rows >= 3 and len(link_rows) == kpi_rows
    emit_ids = {(e.trace_id, e.span_id) for e in emits}
    insert_traces = {s.trace_id for s in inserts}
    for _kpi, _scope, kpi_trace, kpi_span, inputs, insert_trace in link_rows:
        assert inputs == [reading_trace]
        assert (kpi_trace, kpi_span) in emit_ids
        assert insert_trace in insert_traces
    scopes = {row[1] for row in link_rows}
    assert scopes == {"segment", "district", "city"}
