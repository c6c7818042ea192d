"""OpenTelemetry for every citystream process: traces, metrics, JSON logs.

Everything telemetry lives here, so sources, processors and sinks need only a few call
sites (each marked ``# telemetry`` in the code).

**Traces.** A source opens one span per outgoing batch message (``send <topic>``) and puts
its W3C context (``traceparent``, ``tracestate``) in the Kafka headers of the batch message
and of every per-event message that went into it. The processor continues that trace for
each batch (``process <topic>``), records which windows the batch fed, and opens one
``emit kpi`` span per emission whose *links* point at the batches behind the emitted
windows; its context goes into the headers of the KPI, KPI batch and partial messages,
together with ``citystream-input-traces`` (the trace ids of the source batches behind
them). The sink's ``insert kpi`` span links to the ``emit kpi`` spans it wrote, and the
sink writes one ``kpi_trace_links`` row per KPI row in the same batch
(docs/observability.md). Faust reads through aiokafka internals no instrumentation wraps, so
context is extracted from ``event.message.headers`` explicitly.

**Configuration** is the standard ``OTEL_*`` environment, read once by :func:`setup` in
an entry point. Tracing is on when ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``) or an
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set and ``OTEL_SDK_DISABLED`` is not true.
When it is off, the tracer is the no-op one and no header is built: off costs nothing.

**Metrics** go to a Prometheus ``/metrics`` endpoint (OTel metrics through
opentelemetry-exporter-prometheus) when the process has a metrics port.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

SOURCE = "citystream-source"
PROCESSOR = "citystream-processor"
ALERTS = "citystream-alerts"

INPUT_TRACES_HEADER = "citystream-input-traces"  # comma-separated source trace ids
# Per window, at most this many input messages are remembered for links, and this many
# source trace ids are forwarded: a window fed by many tiny batches (live ingest) keeps a
# bounded sample instead of growing headers and memory (the SDK keeps 128 links anyway).
MAX_LINKS = 128
MAX_INPUT_TRACES = 128
Headers = list[tuple[str, str | bytes | None]]  # what confluent-kafka produce() takes
_PROPAGATOR = TraceContextTextMapPropagator()
_TRUE = {"true", "1", "yes"}


# --- setup -----------------------------------------------------------------------------------


@dataclass
class _State:
    tracing: bool = False
    tracer: Tracer = field(default_factory=trace.NoOpTracer)
    provider: TracerProvider | None = None
    meter: Meter = field(default_factory=lambda: NoOpMeterProvider().get_meter("citystream"))
    meter_provider: Any = None
    metrics_server: Any = None
    metrics_reader: Any = None
    instruments: Instruments | None = None
    service: str = ""


_state = _State()


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """The standard variables ask for traces (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _span_exporter(env: Mapping[str, str]) -> SpanExporter:
    """``OTEL_TRACES_EXPORTER`` and ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``; the exporters
    read their endpoint, headers, timeout and TLS settings from the environment themselves."""
    name = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if name == "console":  # one compact JSON object per line on stdout (logs go to stderr)
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: citystream supports otlp, console, none")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"  # the specification's default
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(f"OTLP protocol {protocol!r}: citystream supports grpc and http/protobuf")


def resource(service: str) -> Resource:
    """``OTEL_RESOURCE_ATTRIBUTES`` plus ours; the service name is always the process's own
    (children of one pipeline share an environment, so ``OTEL_SERVICE_NAME`` cannot tell
    them apart)."""
    from core import __version__

    return Resource.create(
        {
            "service.name": service,
            "service.namespace": "citystream",
            "service.version": __version__,
            "service.instance.id": f"{os.uname().nodename}-{os.getpid()}",
        }
    )


def setup(
    service: str,
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = None,
    span_exporter: SpanExporter | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Tracing from ``OTEL_*`` (or ``span_exporter``, for tests) and, with a port, the
    Prometheus endpoint. Called by entry points only; calling it again replaces the setup."""
    shutdown()
    env = os.environ if env is None else env
    state = _State(service=service)
    if span_exporter is not None or tracing_wanted(env):
        exporter = span_exporter or _span_exporter(env)
        provider = TracerProvider(resource=resource(service))
        if span_exporter is not None:  # tests read spans right after the code under test
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        state.tracing, state.provider = True, provider
        state.tracer = provider.get_tracer("citystream")
        log.info("tracing on: service %s, exporter %s", service, type(exporter).__name__)
    if metrics_port:
        _start_metrics(state, service, metrics_host, metrics_port)
    global _state
    _state = state


def _start_metrics(state: _State, service: str, host: str, port: int) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=resource(service))
    server, _thread = start_http_server(port, addr=host)
    state.meter_provider, state.metrics_reader, state.metrics_server = provider, reader, server
    state.meter = provider.get_meter("citystream")
    log.info("metrics at http://%s:%d/metrics", host, port)


def shutdown() -> None:
    """Export the spans still buffered and stop the metrics endpoint."""
    global _state
    state = _state
    if state.provider is not None:
        state.provider.shutdown()
    if state.metrics_server is not None:
        state.metrics_server.shutdown()
        state.metrics_server.server_close()
    if state.meter_provider is not None:
        state.meter_provider.shutdown()
    _state = _State()  # off again: no-op tracer and meter


def tracing() -> bool:
    return _state.tracing


def tracer() -> Tracer:
    return _state.tracer


# --- headers -----------------------------------------------------------------------------------


def headers_for(span: trace.Span, input_traces: Iterable[str] = ()) -> Headers:
    """W3C trace context of ``span`` (and the source traces behind it) as Kafka headers."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    headers: Headers = [(k, v.encode()) for k, v in carrier.items()]
    inputs = ",".join(sorted(set(input_traces)))
    if inputs:
        headers.append((INPUT_TRACES_HEADER, inputs.encode()))
    return headers


def _header_map(headers: Any) -> dict[str, str]:
    """Kafka headers in any client's shape (list of pairs, mapping, None) as strings."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out = {}
    for key, value in pairs:
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in ("traceparent", "tracestate", INPUT_TRACES_HEADER) and value is not None:
            out[name] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def extract(headers: Any) -> tuple[otel_context.Context, tuple[str, ...]]:
    """The parent context in ``headers`` and the source trace ids behind the message."""
    carrier = _header_map(headers)
    ctx = _PROPAGATOR.extract(carrier)
    inputs = carrier.get(INPUT_TRACES_HEADER)
    if inputs:
        return ctx, tuple(inputs.split(","))
    parent = trace.get_current_span(ctx).get_span_context()
    return ctx, ((format_trace_id(parent.trace_id),) if parent.is_valid else ())


def format_trace_id(trace_id: int) -> str:
    return f"{trace_id:032x}"


def format_span_id(span_id: int) -> str:
    return f"{span_id:016x}"


# --- source: one span per batch message -------------------------------------------------------


class BatchTrace:
    """The span of one outgoing batch message, from its first event until it is sent."""

    __slots__ = ("headers", "span")

    def __init__(self, span: trace.Span | None, headers: Headers | None) -> None:
        self.span = span
        self.headers = headers

    def end(self, events: int, first_origin: str = "", last_origin: str = "") -> None:
        if self.span is None:
            return
        self.span.set_attribute("messaging.batch.message_count", events)
        self.span.set_attribute("citystream.origin.first", first_origin)
        self.span.set_attribute("citystream.origin.last", last_origin)
        self.span.end()


NO_TRACE = BatchTrace(None, None)


def start_batch(topic: str, partition: int, component: str) -> BatchTrace:
    """``NO_TRACE`` when tracing is off, so the caller's hot path does no header work."""
    if not _state.tracing:
        return NO_TRACE
    span = _state.tracer.start_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "send",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "citystream.component": component,
        },
    )
    return BatchTrace(span, headers_for(span))


# --- processor: consume, remember which windows a batch fed, emit with links --------------------


# The source traces behind the message being processed (per asyncio task, like the span).
_CURRENT_INPUTS: ContextVar[tuple[str, ...]] = ContextVar("citystream_inputs", default=())


@contextmanager
def consumed(
    headers: Any, topic: str, partition: int, offset: int, events: int, consumer: str = ""
) -> Iterator[None]:
    """Around the processing of one input message: continues its trace, counts and times it.

    ``consumer`` names the processor when several in one worker read the same topic.
    """
    started = time.perf_counter()
    if not _state.tracing:
        yield
    else:
        parent, inputs = extract(headers)
        with _state.tracer.start_as_current_span(
            f"process {topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.offset": offset,
                "messaging.batch.message_count": events,
            },
        ):
            token = _CURRENT_INPUTS.set(inputs)
            try:
                yield
            finally:
                _CURRENT_INPUTS.reset(token)
    labels = {"topic": topic, "consumer": consumer} if consumer else {"topic": topic}
    metrics().processing.record(time.perf_counter() - started, labels)
    metrics().events_in.add(events, labels)


@dataclass
class _Fed:
    links: dict[tuple[int, int], SpanContext] = field(default_factory=dict)
    inputs: set[str] = field(default_factory=set)


class WindowLineage:
    """Which input messages fed which window, for the links of the KPIs they produce.

    Keyed by (stage key, window start): the stage key is whatever names the per-partition
    state (the input partition, or (input, partition)) and a constant for the merge stage.
    Windows are given as their start (ms) or as a (start, end) key. Windows older than
    ``horizon_ms`` behind the newest one are forgotten (they are final by then).
    """

    def __init__(self, horizon_ms: int) -> None:
        self.horizon_ms = horizon_ms
        self._windows: dict[Any, dict[int, _Fed]] = {}

    def fed(self, key: Any, windows: Iterable[int | tuple[int, int]]) -> None:
        """The message being processed (the current span) went into these windows."""
        if not _state.tracing:
            return
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return
        fed_windows = self._windows.setdefault(key, {})
        inputs = _CURRENT_INPUTS.get()
        for window in windows:
            start = window if isinstance(window, int) else window[0]
            fed = fed_windows.get(start)
            if fed is None:
                fed = fed_windows[start] = _Fed()
            if len(fed.links) < MAX_LINKS:
                fed.links[(ctx.trace_id, ctx.span_id)] = ctx
            if len(fed.inputs) < MAX_INPUT_TRACES:
                fed.inputs.update(inputs)
        if fed_windows:
            oldest_kept = max(fed_windows) - self.horizon_ms
            for start in [s for s in fed_windows if s < oldest_kept]:
                del fed_windows[start]

    def forget(self, keep: Callable[[Any], bool]) -> None:
        """Drop the stage keys this worker no longer owns (after a rebalance)."""
        for key in [k for k in self._windows if not keep(k)]:
            del self._windows[key]

    @contextmanager
    def emit(
        self, key: Any, kpis: Sequence[Mapping[str, Any]], partial: Mapping[str, Any] | None
    ) -> Iterator[Headers | None]:
        """One ``emit kpi`` span linked to the inputs of the emitted windows; yields the
        headers for the messages it sends (None when tracing is off or nothing is sent)."""
        if not _state.tracing or not (kpis or partial):
            yield None
            return
        windows = self._windows.get(key, {})
        starts = {int(r["window_start"]) for r in kpis}
        if partial is not None:
            starts.update(int(w["window_start_ms"]) for w in partial.get("windows", ()))
        links: dict[tuple[int, int], SpanContext] = {}
        inputs: set[str] = set()
        for start in starts:
            fed = windows.get(start)
            if fed is not None and len(links) < MAX_LINKS:
                links.update(fed.links)
            if fed is not None and len(inputs) < MAX_INPUT_TRACES:
                inputs.update(fed.inputs)
        span = _state.tracer.start_span(
            "emit kpi",
            context=otel_context.Context(),  # a new trace: an emission has many parents
            kind=SpanKind.PRODUCER,
            links=[Link(c) for c in links.values()],
            attributes={
                "citystream.stage": str(key),
                "citystream.kpi.records": len(kpis),
                "citystream.kpi.windows": len(starts),
                "citystream.input_traces": len(inputs),
            },
        )
        try:
            yield headers_for(span, inputs)
        finally:
            span.end()


def window_emitted(kpis: Sequence[Mapping[str, Any]], now_ms: int) -> None:
    """Window emit delay: wall clock at emission − window end (meaningful on live data)."""
    if not _state.metrics_server or not kpis:
        return
    histogram = metrics().emit_delay
    for end in {int(r["window_end"]) for r in kpis}:
        histogram.record(max(0.0, (now_ms - end) / 1000.0))


# --- sink: the insert span and the kpi_trace_links rows -------------------------------------------


@dataclass
class KpiTraces:
    """The trace context of the KPI messages of one sink batch, for its links and rows."""

    links: dict[tuple[int, int], SpanContext] = field(default_factory=dict)
    # one entry per KPI row: (row, kpi trace id, kpi span id, input trace ids)
    rows: list[tuple[Mapping[str, Any], str, str, tuple[str, ...]]] = field(default_factory=list)

    def add(self, headers: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        if not _state.tracing or not headers:
            return
        parent, inputs = extract(headers)
        ctx = trace.get_current_span(parent).get_span_context()
        if not ctx.is_valid:
            return
        self.links[(ctx.trace_id, ctx.span_id)] = ctx
        trace_id, span_id = format_trace_id(ctx.trace_id), format_span_id(ctx.span_id)
        self.rows.extend((row, trace_id, span_id, inputs) for row in rows)


TRACE_LINK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kpi", "LowCardinality(String)"),
    ("scope", "LowCardinality(String)"),
    ("entity_id", "String"),
    ("window_start", "DateTime64(3, 'UTC')"),
    ("revision", "UInt32"),
    ("kpi_trace_id", "String"),
    ("kpi_span_id", "String"),
    ("input_trace_ids", "Array(String)"),
    ("insert_trace_id", "String"),
    ("written_at", "DateTime64(3, 'UTC')"),
)


def trace_link_columns(traces: KpiTraces, insert_trace_id: str) -> list[list[Any]]:
    """Column-wise ``kpi_trace_links`` rows for one insert (window_start as epoch ms)."""
    rows = traces.rows
    now = datetime.now(UTC)
    return [
        [r["kpi"] for r, *_ in rows],
        [r["scope"] for r, *_ in rows],
        [r["entity_id"] for r, *_ in rows],
        [_millis(r["window_start"]) for r, *_ in rows],
        [r["revision"] for r, *_ in rows],
        [t for _, t, _, _ in rows],
        [s for _, _, s, _ in rows],
        [list(i) for _, _, _, i in rows],
        [insert_trace_id] * len(rows),
        [now] * len(rows),
    ]


def _millis(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


@contextmanager
def insert_span(table: str, rows: int, traces: KpiTraces | None) -> Iterator[str]:
    """The sink's insert, linked to the KPI emissions it writes; yields its trace id."""
    if not _state.tracing:
        yield ""
        return
    links = [Link(c) for c in traces.links.values()] if traces else []
    with _state.tracer.start_as_current_span(
        f"insert {table}",
        context=otel_context.Context(),
        kind=SpanKind.CLIENT,
        links=links,
        attributes={"db.system.name": "clickhouse", "db.collection.name": table,
                    "db.operation.name": "INSERT", "db.operation.batch.size": rows},
    ) as span:  # fmt: skip
        yield format_trace_id(span.get_span_context().trace_id)


# --- metrics ------------------------------------------------------------------------------------


_FAST_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
_DELAY_SECONDS = [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600]
_ROWS = [1, 10, 100, 1000, 5000, 10_000, 50_000, 100_000, 500_000]


class Instruments:
    """The pipeline's OTel instruments (Prometheus names in docs/observability.md)."""

    def __init__(self, meter: Meter) -> None:
        self.events_in = meter.create_counter(
            "citystream.events.in", unit="{event}", description="Events consumed, per topic"
        )
        self.events_out = meter.create_counter(
            "citystream.events.out", unit="{event}", description="Events produced, per topic"
        )
        self.dead_letters = meter.create_counter(
            "citystream.dead_letters", unit="{event}", description="Dead letters, per reason"
        )
        self.processing = meter.create_histogram(
            "citystream.processing.duration",
            unit="s",
            description="Time to process one input message",
            explicit_bucket_boundaries_advisory=_FAST_SECONDS,
        )
        self.emit_delay = meter.create_histogram(
            "citystream.window.emit_delay",
            unit="s",
            description="Window end to KPI emitted (wall clock)",
            explicit_bucket_boundaries_advisory=_DELAY_SECONDS,
        )
        self.batch_rows = meter.create_histogram(
            "citystream.sink.batch.rows",
            unit="{row}",
            description="Rows per sink insert",
            explicit_bucket_boundaries_advisory=_ROWS,
        )
        self.insert_duration = meter.create_histogram(
            "citystream.sink.insert.duration",
            unit="s",
            description="Sink insert latency",
            explicit_bucket_boundaries_advisory=_FAST_SECONDS,
        )
        self.insert_errors = meter.create_counter(
            "citystream.sink.insert.errors", unit="{error}", description="Failed sink inserts"
        )


def metrics() -> Instruments:
    if _state.instruments is None:
        _state.instruments = Instruments(_state.meter)
    return _state.instruments


def metrics_on() -> bool:
    return _state.metrics_server is not None


def count_out(topic: str, events: int) -> None:
    if _state.metrics_server is not None:
        metrics().events_out.add(events, {"topic": topic})


def count_in(topic: str, events: int) -> None:
    if _state.metrics_server is not None:
        metrics().events_in.add(events, {"topic": topic})


def dead_lettered(component: str, reason: str) -> None:
    if _state.metrics_server is not None:
        metrics().dead_letters.add(1, {"component": component, "reason": reason})


def sink_inserted(rows: int, seconds: float) -> None:
    if _state.metrics_server is not None:
        metrics().batch_rows.record(rows)
        metrics().insert_duration.record(seconds)


def sink_insert_failed() -> None:
    if _state.metrics_server is not None:
        metrics().insert_errors.add(1)


class Freshness:
    """The newest window_end written per domain (the KPI name before its first dot).

    Trend KPIs (``_1h``) do not count: their hourly windows reach past the data they hold.
    """

    def __init__(self) -> None:
        self.newest: dict[str, int] = {}

    def update(self, kpis: Sequence[str], window_ends_ms: Sequence[int]) -> None:
        if _state.metrics_server is None:
            return
        newest = self.newest
        for kpi, end in zip(kpis, window_ends_ms, strict=True):
            if kpi.endswith("_1h"):
                continue
            domain = kpi.split(".", 1)[0]
            if end > newest.get(domain, -1):
                newest[domain] = end

    def snapshot(self) -> dict[str, int]:
        return dict(self.newest)


def observe_group_lag(settings: Any, group: str, topics: Sequence[str]) -> None:
    """Consumer lag of ``group`` per topic and partition, as a gauge read at scrape time."""
    from core.kafka import partition_lag

    def lag() -> dict[tuple[str, str, int], int]:
        return {
            (group, topic, p): n
            for topic in topics
            for p, n in partition_lag(settings, group, topic).items()
        }

    observe_consumer_lag(lag)


def observe_consumer_lag(lag: Callable[[], Mapping[tuple[str, str, int], int]]) -> None:
    """A gauge per (group, topic, partition), computed when Prometheus scrapes."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        try:
            current = lag()
        except Exception as exc:  # a scrape must not kill the process; the gap shows
            log.warning("consumer lag unavailable: %s", exc)
            return []
        return [
            Observation(n, {"group": g, "topic": t, "partition": str(p)})
            for (g, t, p), n in current.items()
        ]

    _state.meter.create_observable_gauge(
        "citystream.consumer.lag", [observe], unit="{message}", description="Uncommitted messages"
    )


def observe_freshness(newest_window_end_ms: Callable[[], Mapping[str, int]]) -> None:
    """KPI freshness per domain: now − the newest window_end written to ClickHouse."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        now = time.time()
        return [
            Observation(now - end / 1000.0, {"domain": domain})
            for domain, end in newest_window_end_ms().items()
        ]

    _state.meter.create_observable_gauge(
        "citystream.kpi.freshness", [observe], unit="s", description="Now - newest window_end"
    )


# --- logs ---------------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the current trace and span ids when there is a span."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            entry["trace_id"] = format_trace_id(ctx.trace_id)
            entry["span_id"] = format_span_id(ctx.span_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def json_log_handler(service: str) -> logging.Handler:
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service))
    return handler


def logging_config(service: str, level: str | int = "INFO") -> dict[str, Any]:
    """The same JSON handler as a dictConfig, for frameworks that configure logging (Faust)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonLogFormatter, "service": service}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def setup_json_logging(service: str, level: str | int = "INFO") -> None:
    """Replace the root handlers with one JSON handler on stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(json_log_handler(service))
    root.setLevel(level)
