"""The `citystream` command. Entry points build Settings; nothing else reads the environment."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from citystream.settings import Settings
from citystream.startup import ServiceUnavailable, wait_for_services

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "aarhus"


def _add_common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("settings (override CITYSTREAM_* variables)")
    g.add_argument("--bootstrap-servers", dest="kafka_bootstrap_servers")
    g.add_argument("--registry-url", dest="schema_registry_url")
    g.add_argument("--clickhouse-url", dest="clickhouse_url")
    g.add_argument("--data-dir", dest="data_dir", type=Path)
    g.add_argument("--topic-prefix", dest="topic_prefix")
    g.add_argument("--log-level", default="INFO", dest="log_level")


SETTING_FLAGS = (
    "kafka_bootstrap_servers",
    "schema_registry_url",
    "clickhouse_url",
    "data_dir",
    "topic_prefix",
)


def build_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return Settings(**overrides)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="citystream", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local Kafka + schema registry (no Docker)")
    stack.add_argument("action", choices=["up", "down", "status", "fetch", "reset"])
    _add_common(stack)

    init = sub.add_parser("init", help="create topics and register schemas (idempotent)")
    _add_common(init)

    migrate = sub.add_parser("migrate", help="apply pending ClickHouse migrations (idempotent)")
    _add_common(migrate)

    replay = sub.add_parser("replay", help="replay recorded city data into Kafka")
    replay.add_argument("dataset", choices=["aarhus"])
    replay.add_argument("--traffic", type=Path, default=DATA_DIR / "traffic_2014-08-02.csv.gz")
    replay.add_argument("--metadata", type=Path, default=DATA_DIR / "traffic_metadata.csv")
    replay.add_argument("--speed", type=float, help="N× real time (default: as fast as possible)")
    _add_common(replay)

    process = sub.add_parser("process", help="run the Faust stream processors")
    process.add_argument("--web-port", type=int, dest="processor_web_port")
    process.add_argument("--metrics-port", type=int, dest="processor_metrics_port")
    _add_common(process)

    sink = sub.add_parser("sink", help="run a sink")
    sink.add_argument("target", choices=["clickhouse"])
    sink.add_argument("--query-port", type=int, dest="query_port")
    _add_common(sink)

    query = sub.add_parser("query", help="query the KPI tables (works while the sink runs)")
    query.add_argument("sql")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    _add_common(query)

    demo = sub.add_parser("demo", help="the whole pipeline on one day of Aarhus traffic")
    demo.add_argument("--traffic", type=Path, default=DATA_DIR / "traffic_2014-08-02.csv.gz")
    demo.add_argument("--metadata", type=Path, default=DATA_DIR / "traffic_metadata.csv")
    demo.add_argument("--keep-stack", action="store_true", help="leave Kafka and registry up")
    _add_common(demo)

    ingest = sub.add_parser("ingest", help="ingest over open standards (MQTT, HTTP) into Kafka")
    ingest.add_argument("protocol", choices=["mqtt", "http"])
    ingest.add_argument(
        "--config", type=Path, dest="ingest_config", help="ingest config and mapping file (TOML)"
    )
    ingest.add_argument("--port", type=int, dest="ingest_http_port", help="HTTP port (http)")
    _add_common(ingest)

    verify = sub.add_parser("verify", help="recompute KPIs from the source files, compare")
    verify.add_argument("dataset", choices=["aarhus"])
    verify.add_argument("--traffic", type=Path, default=DATA_DIR / "traffic_2014-08-02.csv.gz")
    verify.add_argument("--metadata", type=Path, default=DATA_DIR / "traffic_metadata.csv")
    _add_common(verify)

    status = sub.add_parser("status", help="one screen for an SRE: services, lag, rates, DLQ")
    status.add_argument("--interval", type=float, default=1.0, help="seconds to measure rates")
    _add_common(status)

    bench = sub.add_parser("bench", help="throughput and latency on the real stack")
    bench.add_argument("--traffic", type=Path, help="default: the 7-day Aarhus file")
    bench.add_argument("--metadata", type=Path, default=DATA_DIR / "traffic_metadata.csv")
    _add_common(bench)
    return root


# Long-running services log JSON lines (with trace and span ids) and export telemetry;
# the interactive commands keep human-readable logs.
SERVICES = {
    "process": "citystream-processor",
    "sink": "citystream-sink",
    "replay": "citystream-source",
    "ingest": "citystream-ingest",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = getattr(args, "log_level", "INFO")
    if args.command in SERVICES:
        from citystream import telemetry

        telemetry.setup_json_logging(SERVICES[args.command], level)
    else:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except ServiceUnavailable as exc:
        print(f"citystream {args.command}: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    finally:
        if args.command in SERVICES:
            from citystream import telemetry

            telemetry.shutdown()  # export the spans still buffered


def _telemetry(settings: Settings, command: str, metrics_port: int) -> None:
    """Tracing from OTEL_*, and /metrics on ``metrics_port`` (0: none) for this service."""
    from citystream import telemetry

    telemetry.setup(
        SERVICES[command], metrics_host=settings.metrics_host, metrics_port=metrics_port
    )


def cmd_stack(args: argparse.Namespace) -> int:
    from infra import stack

    settings = build_settings(args)
    cfg = stack_config(settings)
    if args.action == "status":
        for name, status in stack.status(cfg).items():
            print(f"{name:10} {status}")
        return 0
    getattr(stack, args.action)(cfg)
    return 0


def stack_config(settings: Settings) -> Any:
    from infra.stack import StackConfig, registry_version_for

    return StackConfig(
        data_dir=settings.data_dir,
        cache_dir=settings.cache_dir,
        kafka_port=settings.kafka_port,
        controller_port=settings.controller_port,
        registry_port=settings.registry_port,
        registry_version=registry_version_for(None),
        mosquitto_port=settings.mqtt_port,
    )


def cmd_init(args: argparse.Namespace) -> int:
    from citystream.kafka import ensure_topics, register_schemas

    settings = build_settings(args)
    created = ensure_topics(settings)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    for subject, schema_id in register_schemas(settings).items():
        print(f"schema {subject}-value -> id {schema_id}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from connectors.sinks.clickhouse import ClickHouseSink

    settings = build_settings(args)
    with ClickHouseSink(settings) as sink:
        applied = sink.setup()
    print(f"migrations applied: {', '.join(map(str, applied)) or 'none (up to date)'}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from citystream.kafka import ensure_topics
    from citystream.progress import print_replay_progress
    from connectors.sources.aarhus import AarhusReplaySource

    settings = build_settings(args)
    wait_for_services(settings)
    ensure_topics(settings)
    _telemetry(settings, "replay", settings.source_metrics_port)
    source = AarhusReplaySource(settings, args.traffic, args.metadata, args.speed)
    source.setup()
    signal.signal(signal.SIGTERM, lambda *_: source.stop())
    report = source.run(print_replay_progress)
    return 0 if report.rows_read else 1


def cmd_process(args: argparse.Namespace) -> int:
    from citystream import telemetry
    from streams import worker

    settings = build_settings(
        args,
        processor_web_port=args.processor_web_port,
        processor_metrics_port=args.processor_metrics_port,
    )
    wait_for_services(settings)
    _telemetry(settings, "process", settings.processor_metrics_port)
    inputs = ("city.traffic.batches.v1", "city.traffic.partials.v1")
    group = settings.group(settings.processor_id)
    telemetry.observe_group_lag(settings, group, [settings.topic(t) for t in inputs])
    # Faust parses sys.argv itself; hand it a clean command line.
    sys.argv = [sys.argv[0], "worker"]
    worker.run(settings, loglevel=args.log_level)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    import threading

    from connectors.sinks.clickhouse import ClickHouseSink

    settings = build_settings(args, query_port=args.query_port)
    wait_for_services(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sink = ClickHouseSink(settings)
    sink.setup()
    _telemetry(settings, "sink", settings.sink_metrics_port)
    _observe_sink(settings, sink)
    try:
        sink.run(stop)
    finally:
        sink.stop()
    return 0


def _observe_sink(settings: Settings, sink: Any) -> None:
    from citystream import telemetry
    from connectors.sinks.clickhouse import KPI_TOPIC

    group = settings.group(settings.sink_group_id)
    telemetry.observe_group_lag(settings, group, [settings.topic(KPI_TOPIC)])
    sink.seed_freshness()
    telemetry.observe_freshness(sink.freshness.snapshot)


def cmd_query(args: argparse.Namespace) -> int:
    from citystream.query import QueryError, format_result, run_query

    settings = build_settings(args)
    try:
        columns, rows = run_query(settings, args.sql)
    except QueryError as exc:
        print(f"citystream query: {exc}", file=sys.stderr)
        return 1
    print(format_result(columns, rows, args.format))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from citystream.demo import run_demo

    return run_demo(build_settings(args), args.traffic, args.metadata, args.keep_stack)


def cmd_verify(args: argparse.Namespace) -> int:
    from citystream.verify import run_verify

    return run_verify(build_settings(args), args.traffic, args.metadata)


def cmd_bench(args: argparse.Namespace) -> int:
    from citystream.bench import run_bench

    settings = build_settings(args)
    traffic = args.traffic or settings.aarhus_dir / "traffic_2014-08-01_07.csv.gz"
    return run_bench(settings, traffic, args.metadata)


def cmd_status(args: argparse.Namespace) -> int:
    from citystream.status import collect, render

    status = collect(build_settings(args), args.interval)
    print(render(status))
    return 0 if status.healthy else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from citystream.kafka import ensure_topics
    from connectors.sources.ingest_common import load_config

    settings = build_settings(
        args, ingest_config=args.ingest_config, ingest_http_port=args.ingest_http_port
    )
    config = load_config(settings.ingest_config) if settings.ingest_config else None
    wait_for_services(settings)
    ensure_topics(settings)
    _telemetry(settings, "ingest", settings.ingest_metrics_port)
    if args.protocol == "http":
        return _ingest_http(settings, config)
    if config is None:
        print(
            "error: ingest mqtt needs --config FILE (or CITYSTREAM_INGEST_CONFIG)", file=sys.stderr
        )
        return 2
    return _ingest_mqtt(settings, config)


def _ingest_mqtt(settings: Settings, config: Any) -> int:
    from connectors.sources.mqtt import MqttSource, ProgressLog

    source = MqttSource(settings, config)
    source.setup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: source.stop())
    report = source.run(ProgressLog())
    print(f"mqtt ingest stopped: {report.counters.as_dict()}, {report.messages} messages")
    return 0


def _ingest_http(settings: Settings, config: Any) -> int:
    import asyncio

    from connectors.sources.http_ingest import build_service, serve

    service = build_service(settings, config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(service, settings.ingest_http_host, settings.ingest_http_port, stop)

    asyncio.run(main())
    print(f"http ingest stopped: {service.counters_dict()}")
    return 0


COMMANDS = {
    "stack": cmd_stack,
    "init": cmd_init,
    "migrate": cmd_migrate,
    "replay": cmd_replay,
    "process": cmd_process,
    "sink": cmd_sink,
    "query": cmd_query,
    "demo": cmd_demo,
    "verify": cmd_verify,
    "bench": cmd_bench,
    "ingest": cmd_ingest,
    "status": cmd_status,
}

if __name__ == "__main__":
    sys.exit(main())
