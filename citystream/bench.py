"""`citystream bench` (make bench): throughput of each stage and KPI delay, measured.

Each stage runs alone on the real stack so its number is its own: the source into an
empty namespace, then the processor over everything the source wrote, then the sink over
every KPI the processor wrote. A last run with all stages live measures how long after a
window closes its KPIs are queryable.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from citystream.dirty_input import UNKNOWN_ONLY, Dirt, head_rows, make_dirty
from citystream.pipeline import Pipeline
from citystream.progress import print_replay_progress
from connectors.sinks.clickhouse import ClickHouseSink
from connectors.sources.aarhus import AarhusReplaySource
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import ensure_topics, register_schemas


def _fresh(settings: Settings, name: str) -> Settings:
    run = time.strftime(f"bench-{name}-%H%M%S.")
    data = settings.data_dir / "bench" / run.rstrip(".")
    return settings.model_copy(
        update={
            "topic_prefix": run,
            "clickhouse_url": f"chdb://{(data / 'clickhouse').resolve()}",
            "idle_timeout_s": 2.0,
        }
    )


# Stages that may be left out (--stages); the source and the processor always run.
STAGES: tuple[str, ...] = (
    "dirty", "tracing", "sink", "scaling", "latency", "domains", "ingest", "statements", "privacy",
    "api",
)  # fmt: skip
STAGES = (*STAGES, "dashboard")  # #15: the dashboard's first render in headless chromium
# The realistic inputs, each beside the clean rate: one kind of dirt at a time, then all.
DIRTY_INPUTS = (
    ("unknown sensors", UNKNOWN_ONLY),
    ("disorder", Dirt(unknown_share=0.0, duplicate_share=0.0, hours_late_share=0.0)),
    ("duplicates", Dirt(unknown_share=0.0, disorder_s=0.0, hours_late_share=0.0)),
    ("hours-late", Dirt(unknown_share=0.0, disorder_s=0.0, duplicate_share=0.0,
                        hours_late_share=0.001)),
    ("all at once", Dirt()),
)  # fmt: skip
STAGES = (*STAGES, "audit")  # #17: the audit write per request (citystream/bench_audit.py)


def run_bench(
    settings: Settings,
    traffic: Path,
    metadata: Path,
    rows: int | None = None,
    stages: tuple[str, ...] = STAGES,
) -> int:
    """Every stage in ``stages`` (besides source and processor) on ``traffic``'s first
    ``rows`` rows (default: all)."""
    if not traffic.is_file():
        print(
            f"bench: {traffic} not found. The 7-day Aarhus file is not shipped in the repo;\n"
            "set CITYSTREAM_AARHUS_DIR to the folder holding traffic_2014-08-01_07.csv.gz\n"
            "or pass --traffic FILE (the shipped one-day file works too: "
            "data/aarhus/traffic_2014-08-02.csv.gz)."
        )
        return 2
    if rows is not None:
        traffic = head_rows(traffic, settings.data_dir / "bench" / f"slice-{rows}.csv.gz", rows)
        print(f"bench: on the first {rows:,} rows of the file only ({traffic})")
    s = _fresh(settings, "throughput")
    ensure_topics(s)
    register_schemas(s)
    results = _Results()

    print(f"== source: replaying {traffic.name} alone")
    source = AarhusReplaySource(s, traffic, metadata)
    source.setup()
    report = source.run(print_replay_progress)
    results["source"] = f"{report.rows_per_second:>10,.0f} rows/s  ({report.rows_read:,} rows)"

    print("== processor: consuming everything the source wrote")
    rate, kpi_rows, cpu = _measure_processor(s, report.published)
    results["processor"] = (
        f"{rate:>10,.0f} readings/s  ({kpi_rows:,} KPI records out; {cpu:.1f} µs CPU/reading)"
    )
    if "dirty" in stages:
        for name, dirt in DIRTY_INPUTS:
            print(f"== processor, dirty input ({name}): {dirt.describe()}")
            results[f"processor, {name}"] = _dirty_run(settings, traffic, metadata, dirt, rate)
    _optional_stages(settings, s, traffic, metadata, stages, results, rate, cpu, kpi_rows)
    _privacy_stage(stages, results)
    if "audit" in stages:  # #17: the audit write cost per request, checkpoint and verify
        from citystream.bench_audit import run_audit_bench

        results.update(run_audit_bench(_fresh(settings, "audit")))

    print(f"\nResults ({os.cpu_count()} cores; each throughput stage alone on the real stack)")
    for name, text in results.items():
        print(f"  {name:26} {text}")
    return 0


def _optional_stages(
    settings: Settings,
    s: Settings,
    traffic: Path,
    metadata: Path,
    stages: tuple[str, ...],
    results: _Results,
    rate: float,
    cpu: float,
    kpi_rows: int,
) -> None:
    """The stages after the processor's: each measured on its own namespace but ``sink``
    (which inserts what the processor stage wrote to ``s``)."""
    if "tracing" in stages:
        _tracing_stage(settings, traffic, metadata, results, rate, cpu)
    if "sink" in stages:
        print("== sink: inserting every KPI record into chDB")
        sink_rate = _measure_sink(s, kpi_rows)
        results["sink"] = f"{sink_rate:>10,.0f} KPI rows/s"
    if "scaling" in stages:
        rate2, verdict = _measure_two_workers(_fresh(settings, "scaling"), traffic, metadata)
        results["processor, 2 workers"] = f"{rate2:>10,.0f} readings/s  (verify: {verdict})"
    if "latency" in stages:
        print("== latency: window close -> KPI queryable, all stages live")
        p50, p99, n = _measure_latency(_fresh(settings, "latency"), traffic, metadata)
        results["window close -> queryable"] = f"p50 {p50:,.0f} ms  p99 {p99:,.0f} ms  ({n:,} rows)"
    if "domains" in stages:
        print("== every domain at once: a week of Aarhus data and the simulator, 7 processors")
        for name, text in _measure_all_domains(_fresh(settings, "domains"), traffic, metadata):
            results[name] = text
    if "ingest" in stages:
        print("== ingest: HTTP (batched) and MQTT into Kafka")
        from citystream.bench_ingest import run_ingest_bench

        ingest = run_ingest_bench(settings)
        results["ingest HTTP (batches of 1000)"] = (
            f"{ingest['ingest_http_events_per_s']:>10} events/s"
        )
        results["ingest MQTT (QoS 1)"] = f"{ingest['ingest_mqtt_events_per_s']:>10} events/s"
        from citystream.bench_opcua import run_opcua_bench  # #18

        opcua = run_opcua_bench(settings)["ingest_opcua_changes_per_s"]
        results["ingest OPC UA (500 variables)"] = f"{opcua:>10} data changes/s"
    if "api" in stages:  # #15: read API latency on the bench's traffic, SSE delay
        print("== read API: series and district map over HTTP, SSE delay")
        from citystream.bench_api import run_api_bench

        for name, text in run_api_bench(_fresh(settings, "api"), traffic, metadata).items():
            results[name] = text
    if "statements" in stages:  # #17: the time to verify a month of KPI statements
        from citystream.bench_statements import run_statements_bench

        for name, text in run_statements_bench(_fresh(settings, "statements")).items():
            results[name] = text
    if "dashboard" in stages:  # #15: in the browser, on the Aarhus day's KPIs
        print("== dashboard: first render in headless chromium")
        from citystream.bench_dashboard import run_dashboard_bench

        render = run_dashboard_bench(_fresh(settings, "dashboard"))
        results["dashboard first render"] = (
            f"p50 {render['p50_ms']:,.0f} ms  max {render['max_ms']:,.0f} ms"
            f"  ({render['loads']:.0f} loads, fresh profile each)"
        )


def _privacy_stage(stages: tuple[str, ...], results: _Results) -> None:
    if "privacy" in stages:  # #16: in-process, on Boston's 311 month
        print("== privacy: pseudonyms and subject encryption per event")
        from citystream.bench_privacy import run_privacy_bench

        for name, text in run_privacy_bench().items():
            results[name] = text


def _tracing_stage(
    settings: Settings, traffic: Path, metadata: Path, results: _Results, rate: float, cpu: float
) -> None:
    print("== tracing: the same, with OpenTelemetry tracing on (source and processor)")
    traced, _, traced_cpu = _measure_traced_processor(
        _fresh(settings, "tracing"), traffic, metadata
    )
    results["processor, tracing on"] = (
        f"{traced:>10,.0f} readings/s  (throughput {100 * (rate - traced) / rate:+.1f} % lower; "
        f"{traced_cpu:.1f} µs CPU/reading, {100 * (traced_cpu - cpu) / cpu:+.1f} %)"
    )


class _Results(dict[str, str]):
    """Each figure is printed as soon as it is measured, so a failed later stage loses none."""

    def __setitem__(self, name: str, text: str) -> None:
        print(f"  -> {name}: {text.strip()}", flush=True)
        super().__setitem__(name, text)


TRAFFIC = ("traffic",)  # the spine's stages measure the traffic processor alone


# Spans go to the console exporter, i.e. the processor's log file: every span is built,
# batched and serialized as it would be for OTLP, with no receiver needed.
TRACING_ON = {"OTEL_TRACES_EXPORTER": "console"}


def _measure_traced_processor(
    s: Settings, traffic: Path, metadata: Path
) -> tuple[float, int, float]:
    """The processor's rate over input that carries trace context, tracing on."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from core import telemetry

    ensure_topics(s)
    register_schemas(s)
    with open(os.devnull, "w") as devnull:
        telemetry.setup(telemetry.SOURCE, span_exporter=ConsoleSpanExporter(out=devnull))
        try:
            source = AarhusReplaySource(s, traffic, metadata)
            source.setup()
            published = source.run(print_replay_progress).published
        finally:
            telemetry.shutdown()
    return _measure_processor(s, published, TRACING_ON)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux): steadier than wall time on a shared box."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _dirty_run(settings: Settings, traffic: Path, metadata: Path, dirt: Dirt, clean: float) -> str:
    """The processor's rate on a dirty variant of ``traffic``, beside the clean rate."""
    s = _fresh(settings, "dirty")
    made = make_dirty(traffic, s.data_dir / "dirty.csv.gz", dirt)
    ensure_topics(s)
    register_schemas(s)
    source = AarhusReplaySource(s, s.data_dir / "dirty.csv.gz", metadata)
    source.setup()
    report = source.run(print_replay_progress)
    stats: dict[str, Any] = {}
    rate, _, cpu = _measure_processor(s, report.published, final=stats)
    notes = [f"clean {clean:,.0f}: {100 * (rate - clean) / clean:+.1f} %",
             f"{cpu:.1f} µs CPU/reading"]  # fmt: skip
    if made.unknown:
        notes.append(
            f"{stats['unknown_reference']:,} readings of {made.unknown_segments} unknown "
            f"segments, {stats['reference_waits']} reference waits in "
            f"{stats['reference_wait_ms']:.0f} ms"
        )
    notes += [f"{stats[k]:,} {k}" for k in ("duplicates", "late") if stats[k]]
    return f"{rate:>10,.0f} readings/s  ({'; '.join(notes)})"


def _measure_processor(
    s: Settings,
    published: int,
    env: dict[str, str] | None = None,
    final: dict[str, Any] | None = None,
) -> tuple[float, int, float]:
    """Readings/s, KPI records out, and CPU µs per reading of one processor worker.

    ``final`` receives the processor's last stats (its reconciliation counters).
    """
    pipeline = Pipeline(s, processors=TRAFFIC, env=env or {"OTEL_SDK_DISABLED": "true"})
    try:
        pipeline.start("processor")
        pid = pipeline.services["processor"].process.pid
        first_at, first_count, first_cpu = None, 0, 0.0
        while True:
            pipeline.check_alive()
            stats = pipeline.processor_stats()
            seen = stats["accepted"] + stats["duplicates"] + stats["late"]
            if first_at is None and seen > 0:
                first_at, first_count, first_cpu = time.monotonic(), seen, _cpu_seconds(pid)
            if seen >= published:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - (first_at or time.monotonic())
        rate = (published - first_count) / elapsed if elapsed > 0 else float("nan")
        cpu = 1e6 * (_cpu_seconds(pid) - first_cpu) / max(1, published - first_count)
        time.sleep(2 * s.idle_timeout_s + 2)  # idle windows flushed
        if final is not None:
            final.update(pipeline.processor_stats())
        return rate, sum(end_offsets(s, s.topic("city.kpi.v1")).values()), cpu
    finally:
        pipeline.stop()


def _measure_sink(s: Settings, kpi_rows: int) -> float:
    sink = ClickHouseSink(s)
    sink.setup()
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    first_at, first_rows = 0.0, 0  # steady state: from the first insert on
    try:
        while sink.rows_inserted < kpi_rows:
            if not thread.is_alive():
                raise RuntimeError("sink stopped before inserting every KPI row")
            if not first_rows and sink.rows_inserted:
                first_at, first_rows = time.monotonic(), sink.rows_inserted
            time.sleep(0.005)
        return (kpi_rows - first_rows) / (time.monotonic() - first_at)
    finally:
        stop.set()
        thread.join(60)
        sink.close()


def _measure_two_workers(s: Settings, traffic: Path, metadata: Path) -> tuple[float, str]:
    """Both workers start together on a filled topic; the group splits the partitions."""
    from citystream.pipeline import wait_settled
    from citystream.verify import stored_kpis
    from oracles.aarhus_traffic import recompute
    from oracles.compare import compare

    ensure_topics(s)
    register_schemas(s)
    partitions = len(end_offsets(s, s.topic("city.traffic.batches.v1")))
    print(f"== scaling: 2 processor workers sharing the {partitions} partitions, then verify")
    source = AarhusReplaySource(s, traffic, metadata)
    source.setup()
    published = source.run(print_replay_progress).published
    pipeline = Pipeline(s, processors=TRAFFIC)
    try:
        pipeline.start("processor", "processor2")
        first_at = None
        while True:
            pipeline.check_alive()
            stats = [pipeline.processor_stats(n) for n in ("processor", "processor2")]
            seen = sum(x["accepted"] + x["duplicates"] + x["late"] for x in stats)
            if first_at is None and seen:
                first_at = time.monotonic()
            idle = min(x["idle_seconds"] for x in stats)
            if seen >= published and idle >= 1.0:  # re-reads after the rebalance are done too
                break
            time.sleep(0.05)
        rate = published / (time.monotonic() - idle - (first_at or time.monotonic()))
        pipeline.start("sink")
        wait_settled(pipeline)
        result = compare(recompute(traffic, metadata, s.partitions), stored_kpis(s))
    finally:
        pipeline.stop()
    print(result.summary())
    verdict = f"{result.matched:,} KPI rows match" if result.ok else "DIFFERENCES"
    return rate, verdict


def _measure_latency(s: Settings, traffic: Path, metadata: Path) -> tuple[float, float, int]:
    """Replays at 1440x (a simulated day per minute) so windows close steadily.

    Delay of a KPI row = when its insert returned (queryable) - when the window closed,
    i.e. when the first partition's stream time passed the window's end (the earliest
    revision-0 segment KPI of the window).
    """
    ensure_topics(s)
    register_schemas(s)
    written: list[tuple[float, int, int, int]] = []  # at_ms, window, revision, computed_at

    def record(rows: Any) -> None:
        now = time.time() * 1000
        written.extend((now, _ms(r["window_start"]), r["revision"], _ms(r["computed_at"]))
                       for r in rows)  # fmt: skip

    sink = ClickHouseSink(s)
    sink.on_written = record
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    pipeline = Pipeline(s, processors=TRAFFIC)
    try:
        pipeline.start("processor")
        thread.start()
        source = AarhusReplaySource(s, traffic, metadata, speed=1440.0)
        source.setup()
        limit = threading.Timer(60.0, source.stop)  # one simulated day is enough
        limit.start()
        report = source.run(print_replay_progress)
        limit.cancel()
        pipeline.wait_processed(report.published)
        time.sleep(2 * s.idle_timeout_s + 3)
    finally:
        pipeline.stop()
        stop.set()
        thread.join(60)
        sink.close()
    closed: dict[int, int] = {}
    for _, window, revision, computed in written:
        if revision == 0:
            closed[window] = min(closed.get(window, computed), computed)
    delays = sorted(at - closed[w] for at, w, rev, _ in written if rev == 0)
    if not delays:
        return float("nan"), float("nan"), 0
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return statistics.median(delays), p99, len(delays)


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000) if hasattr(value, "timestamp") else int(value)


# Two worker processes on two cores: the traffic hot path alone, every other processor in
# the other (each worker is its own consumer group, as two Deployments would be).
WORKERS = (("traffic",), ("air", "parking", "devices", "energy", "waste", "service"))


def _measure_all_domains(s: Settings, traffic: Path, metadata: Path) -> list[tuple[str, str]]:
    """Per-processor throughput with every processor running at once on filled topics."""
    published = _fill_every_domain(s, traffic, metadata)
    pipelines = _start_workers(s)
    try:
        rates = _processor_rates(pipelines, published)
    finally:
        for pipeline in pipelines.values():
            pipeline.stop()
    return [
        (f"  {name}", f"{rate:>10,.0f} events/s  ({published[name]:,} events)")
        for name, rate in rates.items()
    ]


def _fill_every_domain(s: Settings, traffic: Path, metadata: Path) -> dict[str, int]:
    """Readings of every domain in their topics: the week's files, a week of simulation."""
    from citystream.replay import AarhusFiles, aarhus_sources, run_replays
    from connectors.sources.simulator import CitySimulatorSource, SimulationConfig

    ensure_topics(s)
    register_schemas(s)
    full = AarhusFiles.full(s.aarhus_dir)
    files = full if not full.missing() else AarhusFiles.shipped()
    files = files.with_overrides(traffic=traffic, metadata=metadata)
    sources = aarhus_sources(s, files)
    for source in sources.values():
        source.setup()
    reports = run_replays(sources, paced=False, announce=print)
    published = {name: report.published for name, report in reports.items()}
    published["devices"] = published["traffic"] + published["air"]
    config = SimulationConfig(seed=1, start_ms=1_406_851_200_000, hours=7 * 24, meters=1000,
                              bins=400, requests_per_hour=120)  # fmt: skip
    simulator = CitySimulatorSource(s, config)  # as fast as it goes: the load generator
    simulator.setup()
    report = simulator.run()
    print(f"simulator: {report.rows_read:,} events")
    for name, topic in (("energy", "city.energy.v1"), ("waste", "city.waste.v1"),
                        ("service", "city.service_requests.v1")):  # fmt: skip
        published[name] = report.per_topic[topic]
    return published


def _start_workers(s: Settings) -> dict[tuple[str, ...], Pipeline]:
    pipelines = {}
    for n, names in enumerate(WORKERS):
        worker = s.model_copy(update={
            "processor_id": f"bench-worker-{n}",
            "processor_web_port": s.processor_web_port + 10 + n,
            "processor_metrics_port": 0,
        })  # fmt: skip
        pipeline = Pipeline(worker, processors=names, env={"OTEL_SDK_DISABLED": "true"})
        pipeline.start("processor")
        pipelines[names] = pipeline
    return pipelines


def _processor_rates(
    pipelines: dict[tuple[str, ...], Pipeline], published: dict[str, int], timeout: float = 900
) -> dict[str, float]:
    """Events/s of each processor from its first event to its last, all running at once."""
    first: dict[str, tuple[float, int]] = {}  # when each was first seen busy, and its count
    rates: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(rates) < len(published):
        if time.monotonic() > deadline:
            raise TimeoutError(f"processors did not finish in {timeout}s: done {sorted(rates)}")
        for names, pipeline in pipelines.items():
            pipeline.check_alive()
            for name in names:
                if name in rates:
                    continue
                stats = pipeline.processor_stats(domain=name)
                seen = stats["accepted"] + stats["duplicates"] + stats["late"]
                if seen and name not in first:
                    first[name] = (time.monotonic(), seen)
                if seen >= published[name]:
                    since, counted = first[name]
                    elapsed = max(1e-3, time.monotonic() - since)
                    rates[name] = (published[name] - counted) / elapsed
        time.sleep(0.05)
    return rates
