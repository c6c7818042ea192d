"""Telemetry's pure parts: env switches, header round trips, window lineage, JSON logs."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from citystream.status import Status, render
from core import telemetry

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    telemetry.setup("citystream-test", span_exporter=exporter, env={})
    yield exporter
    telemetry.shutdown()


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_follows_the_standard_variables(env: dict[str, str], wanted: bool) -> None:
    assert telemetry.tracing_wanted(env) is wanted


def test_unknown_exporter_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        telemetry.setup("x", env={"OTEL_TRACES_EXPORTER": "zipkin"})


def test_off_means_no_span_and_no_headers() -> None:
    telemetry.setup("x", env={})
    assert not telemetry.tracing()
    assert telemetry.start_batch("t", 0, "c") is telemetry.NO_TRACE
    assert telemetry.NO_TRACE.headers is None
    lineage = telemetry.WindowLineage(10)
    lineage.fed(0, {0})
    with lineage.emit(0, [{"window_start": 0}], None) as headers:
        assert headers is None


def test_extract_reads_w3c_headers_in_any_client_shape() -> None:
    for headers in (
        [("traceparent", TRACEPARENT.encode())],
        {"traceparent": TRACEPARENT},
        [(b"traceparent", TRACEPARENT.encode()), ("other", b"x")],
    ):
        _ctx, inputs = telemetry.extract(headers)
        assert inputs == ("0af7651916cd43dd8448eb211c80319c",)
    assert telemetry.extract(None)[1] == ()
    headers = [("traceparent", TRACEPARENT.encode()), ("citystream-input-traces", b"a,b")]
    assert telemetry.extract(headers)[1] == ("a", "b")


def test_batch_span_headers_continue_in_the_consumer(spans: InMemorySpanExporter) -> None:
    batch = telemetry.start_batch("city.traffic.batches.v1", 3, "replay")
    assert batch.headers is not None
    batch.end(2, "f.csv:2", "f.csv:3")
    with telemetry.consumed(batch.headers, "city.traffic.batches.v1", 3, 42, 2):
        pass
    sent, processed = spans.get_finished_spans()
    assert sent.name == "send city.traffic.batches.v1"
    assert sent.attributes["citystream.origin.last"] == "f.csv:3"
    assert processed.context.trace_id == sent.context.trace_id
    assert processed.parent.span_id == sent.context.span_id
    assert processed.attributes["messaging.kafka.offset"] == 42


def test_emission_links_exactly_the_inputs_of_its_windows(spans: InMemorySpanExporter) -> None:
    lineage = telemetry.WindowLineage(horizon_ms=1000)
    inputs = {}
    for name, windows in (("a", {0}), ("b", {0, 100}), ("c", {200})):
        batch = telemetry.start_batch(name, 0, "t")
        batch.end(1)
        inputs[name] = batch.span.get_span_context().trace_id  # type: ignore[union-attr]
        with telemetry.consumed(batch.headers, name, 0, 0, 1):
            lineage.fed(0, windows)
    with lineage.emit(0, [{"window_start": 0}, {"window_start": 100}], None) as headers:
        assert headers is not None
    emit = spans.get_finished_spans()[-1]
    linked = {link.context.trace_id for link in emit.links}
    assert linked == {inputs["a"], inputs["b"]}
    assert emit.parent is None  # its own trace: an emission has many parents
    forwarded = dict(headers)["citystream-input-traces"].decode().split(",")  # type: ignore[union-attr]
    assert sorted(forwarded) == sorted(telemetry.format_trace_id(inputs[n]) for n in "ab")


def test_lineage_forgets_windows_behind_the_horizon(spans: InMemorySpanExporter) -> None:
    lineage = telemetry.WindowLineage(horizon_ms=100)
    with telemetry.consumed([("traceparent", TRACEPARENT.encode())], "t", 0, 0, 1):
        lineage.fed(0, {0, 50})
        lineage.fed(0, {200})
    assert set(lineage._windows[0]) == {200}
    lineage.forget(lambda key: key != 0)
    assert lineage._windows == {}


def test_kpi_traces_become_link_rows(spans: InMemorySpanExporter) -> None:
    traces = telemetry.KpiTraces()
    headers = [("traceparent", TRACEPARENT.encode()), ("citystream-input-traces", b"r1,r2")]
    row = {"kpi": "traffic.vehicle_count", "scope": "city", "entity_id": "aarhus",
           "window_start": 900_000, "revision": 1}  # fmt: skip
    traces.add(headers, [row])
    traces.add(None, [row])  # an untraced message adds nothing
    columns = telemetry.trace_link_columns(traces, "f" * 32)
    assert [c[0] for c in columns[:8]] == [
        "traffic.vehicle_count", "city", "aarhus", 900_000, 1,
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", ["r1", "r2"],
    ]  # fmt: skip
    assert len(columns) == len(telemetry.TRACE_LINK_COLUMNS) and len(columns[0]) == 1


def test_json_logs_carry_trace_and_span_ids(spans: InMemorySpanExporter) -> None:
    formatter = telemetry.JsonLogFormatter("citystream-test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    assert "trace_id" not in json.loads(formatter.format(record))
    with telemetry.consumed([("traceparent", TRACEPARENT.encode())], "t", 0, 0, 1):
        entry = json.loads(formatter.format(record))
    assert entry["message"] == "hello world" and entry["service"] == "citystream-test"
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert len(entry["span_id"]) == 16


def test_freshness_keeps_the_newest_window_per_domain() -> None:
    telemetry.setup("x", env={})
    fresh = telemetry.Freshness()
    fresh.update(["traffic.a"], [5])
    assert fresh.snapshot() == {}  # metrics off: nothing tracked


def test_status_screen_shows_every_section() -> None:
    status = Status(
        services={"kafka": "up (6 partitions)", "sink": "DOWN: refused"},
        lag={("g", "t"): {0: 3, 1: 0}},
        throughput={"city.traffic.v1": 12.5},
        dead_letters=Counter({"late": 2, "invalid_row": 5}),
        freshest=[("traffic", datetime(2026, 1, 1, 0, 15, tzinfo=UTC), 7)],
    )
    screen = render(status, now=datetime(2026, 1, 1, 0, 16, tzinfo=UTC))
    assert "g / t: 3 [p0=3 p1=0]" in screen
    assert screen.index("invalid_row") < screen.index("late")
    assert "(60 s ago, 7 rows)" in screen
    assert "dead letters by reason (7 in all)" in screen
    assert not status.healthy


def test_lineage_takes_window_keys_as_start_end_pairs(spans: InMemorySpanExporter) -> None:
    """The window engine keys windows by (start, end); stage keys may be tuples too."""
    lineage = telemetry.WindowLineage(horizon_ms=10_000)
    with telemetry.consumed([("traceparent", TRACEPARENT.encode())], "t", 0, 0, 1):
        lineage.fed((0, 3), {(900, 1800)})
    with lineage.emit((0, 3), [{"window_start": 900}], None) as headers:
        assert headers is not None
    (emit,) = [s for s in spans.get_finished_spans() if s.name == "emit kpi"]
    assert [f"{link.context.trace_id:032x}" for link in emit.links] == [TRACEPARENT[3:35]]
