"""The `citystream` command. Entry points build Settings; nothing else reads the environment."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from citystream.audit_cli import add_audit_parser, cmd_audit
from citystream.city_cli import add_city_parser, cmd_city
from citystream.governance import add_governance_parser, cmd_governance
from citystream.rights_cli import add_rights_parser, cmd_rights
from citystream.serve_cli import add_serve_parser, cmd_serve
from citystream.statement_cli import add_statement_parser, cmd_statement
from core.settings import Settings
from core.startup import ServiceUnavailable, wait_for_services

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "aarhus"


def _add_common(parser: argparse.ArgumentParser, city: bool = True) -> None:
    g = parser.add_argument_group("settings (override CITYSTREAM_* variables)")
    if city:  # the sink takes --city repeatedly (several cities), so it declares its own
        g.add_argument(
            "--city",
            dest="city",
            type=Path,
            metavar="DIR",
            help="the city pack (env CITYSTREAM_CITY): its topic prefix and database",
        )
    g.add_argument("--bootstrap-servers", dest="kafka_bootstrap_servers")
    g.add_argument("--registry-url", dest="schema_registry_url")
    g.add_argument("--clickhouse-url", dest="clickhouse_url")
    g.add_argument("--data-dir", dest="data_dir", type=Path)
    g.add_argument("--topic-prefix", dest="topic_prefix")
    g.add_argument("--log-level", default="INFO", dest="log_level")


SETTING_FLAGS = (
    "city",
    "kafka_bootstrap_servers",
    "schema_registry_url",
    "clickhouse_url",
    "data_dir",
    "topic_prefix",
)


def _add_aarhus_files(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("input files (default: the files shipped in data/aarhus)")
    files.add_argument("--traffic", type=Path, help="traffic counts (CSV, optionally .gz)")
    files.add_argument("--metadata", type=Path, help="road segments (traffic_metadata.csv)")
    files.add_argument("--air", type=Path, help="air-quality readings (pollution CSV)")
    files.add_argument("--parking", type=Path, help="car park occupancy (parking CSV)")
    files.add_argument("--car-parks", type=Path, dest="car_parks", help="car park reference CSV")
    files.add_argument(
        "--full",
        action="store_true",
        help="the full recordings in CITYSTREAM_AARHUS_DIR (a week of traffic and air)",
    )


def aarhus_files(args: argparse.Namespace, settings: Settings) -> Any:
    """The replay's input files, or None after saying on stderr which ones are missing."""
    from citystream.replay import AarhusFiles

    base = AarhusFiles.full(settings.aarhus_dir) if args.full else AarhusFiles.shipped()
    files = base.with_overrides(
        traffic=args.traffic,
        metadata=args.metadata,
        air=args.air,
        parking=args.parking,
        car_parks=args.car_parks,
    )
    if missing := files.missing():
        where = f" (--full reads CITYSTREAM_AARHUS_DIR={settings.aarhus_dir})" if args.full else ""
        print(f"citystream {args.command}: input files not found{where}:", file=sys.stderr)
        print("\n".join(f"  {m}" for m in missing), file=sys.stderr)
        return None
    return files


def build_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    """The command's settings: flags over CITYSTREAM_* variables, in the city's namespace."""
    return city_namespace(flag_settings(args, **extra))


def flag_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return Settings(**overrides)


class NoCityPack(ValueError):
    """CITYSTREAM_CITY or --city names no valid city pack."""


def city_namespace(settings: Settings, city: Path | None = None) -> Settings:
    """``settings`` for the city pack ``city`` (default: ``settings.city``): the city gets
    its own topic prefix ``<id>.`` (topics, consumer groups, schema subjects) and database
    ``citystream_<id>``, each unless set explicitly, so that cities sharing one Kafka and
    one ClickHouse do not mix. Without a pack the settings are as they were."""
    from core.city import CityPackError, city_id

    city = city or settings.city
    if city is None:
        return settings
    try:
        name = city_id(city)
    except CityPackError as exc:
        raise NoCityPack(f"city pack {city}: {exc}") from exc
    update: dict[str, Any] = {"city": city}
    if "topic_prefix" not in settings.model_fields_set:
        update["topic_prefix"] = f"{name}."
    if "clickhouse_database" not in settings.model_fields_set:
        update["clickhouse_database"] = f"citystream_{name.replace('-', '_')}"
    return settings.model_copy(update=update)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="citystream", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="local Kafka + schema registry (no Docker)")
    stack.add_argument("action", choices=["up", "down", "status", "fetch", "reset"])
    stack.add_argument(
        "--format",
        choices=["table", "json"],
        default="table",
        help="status output: a table for people, JSON for scripts (exit 3 unless all ready)",
    )
    _add_common(stack)

    init = sub.add_parser("init", help="create topics and register schemas (idempotent)")
    _add_common(init)

    migrate = sub.add_parser("migrate", help="apply pending ClickHouse migrations (idempotent)")
    _add_common(migrate)

    replay = sub.add_parser(
        "replay", help="replay recorded city data (traffic, air quality, parking) into Kafka"
    )
    replay.add_argument(
        "dataset",
        choices=["aarhus", "city"],
        help="aarhus: the shipped Aarhus files; city: the sources of the city pack "
        "(--city or CITYSTREAM_CITY)",
    )
    _add_aarhus_files(replay)
    replay.add_argument("--speed", type=float, help="N× real time (default: as fast as possible)")
    city_files = replay.add_argument_group("city: the pack's sources")
    city_files.add_argument("--source", help="only this source of the pack")
    city_files.add_argument("--file", type=Path, help="this file instead of the source's")
    _add_common(replay)

    simulate = sub.add_parser(
        "simulate", help="seeded city simulator (energy, waste, service requests) into Kafka"
    )
    _add_simulate_args(simulate)
    _add_common(simulate)

    process = sub.add_parser("process", help="run the Faust stream processors")
    process.add_argument(
        "processors", nargs="*", metavar="NAME", help="processors to run (default: all)"
    )
    process.add_argument("--web-port", type=int, dest="processor_web_port")
    process.add_argument("--metrics-port", type=int, dest="processor_metrics_port")
    _add_common(process)

    sink = sub.add_parser("sink", help="run a sink")
    sink.add_argument("target", choices=["clickhouse"])
    sink.add_argument("--query-port", type=int, dest="query_port")
    sink.add_argument(
        "--city",
        dest="cities",
        action="append",
        type=Path,
        metavar="DIR",
        help="serve this city pack's namespace (repeat for several cities in one ClickHouse)",
    )
    _add_common(sink, city=False)

    query = sub.add_parser("query", help="query the KPI tables (works while the sink runs)")
    query.add_argument("sql")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    _add_common(query)

    demo = sub.add_parser(
        "demo", help="the whole pipeline on one day of Aarhus traffic, air quality and parking"
    )
    _add_aarhus_files(demo)
    demo.add_argument("--keep-stack", action="store_true", help="leave Kafka and registry up")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then keep the read API and the dashboard up on the demo's KPIs until Ctrl-C",
    )
    _add_common(demo)

    ingest = sub.add_parser(
        "ingest", help="ingest over open standards (MQTT, HTTP and oneM2M, OPC UA) into Kafka"
    )
    ingest.add_argument("protocol", choices=["mqtt", "http", "opcua"])
    ingest.add_argument(
        "--config", type=Path, dest="ingest_config", help="ingest config and mapping file (TOML)"
    )
    ingest.add_argument("--port", type=int, dest="ingest_http_port", help="HTTP port (http)")
    _add_common(ingest)

    verify = sub.add_parser(
        "verify",
        help="recompute KPIs from the source files, the raw topics or a simulation; compare",
    )
    verify.add_argument("dataset", choices=["aarhus", "topics", "simulator"])
    verify.add_argument(
        "--from", dest="since", help="topics: only windows starting at or after (ISO; UTC)"
    )
    verify.add_argument("--to", dest="until", help="topics: only windows starting before (ISO)")
    _add_aarhus_files(verify)
    verify.add_argument(
        "--domains",
        default="traffic,air,parking,devices",
        help="aarhus: the KPI families to check (comma-separated)",
    )
    sim = verify.add_argument_group("simulator (the same flags as the simulate run)")
    _add_simulation_args(sim)
    _add_common(verify)

    catalog = sub.add_parser(
        "catalog", help="the KPI catalogue, settings table and topic catalogue, from the code"
    )
    catalog.add_argument("what", choices=["kpis", "config", "period-rules", "asyncapi"])
    catalog.add_argument(
        "--write",
        action="store_true",
        help="kpis, config: update the generated block of docs/catalogue.md or "
        "docs/configuration.md instead of printing it",
    )
    catalog.add_argument(
        "--output",
        type=Path,
        help="asyncapi: where to write (default docs/asyncapi.yaml; '-' prints it)",
    )
    soak = sub.add_parser("soak", help="looped real traffic, faults every M s, then verify")
    soak.add_argument("--minutes", type=float, default=10.0)
    soak.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    soak.add_argument("--rate", type=float, default=5000.0, help="readings per second")
    soak.add_argument("--seed", type=int, default=20140802)
    soak.add_argument(
        "--sim-rate", type=float, default=2000.0, help="simulator events/s beside it (0: none)"
    )
    soak.add_argument(
        "--traffic", type=Path, default=None, help="default: the 7-day file, else the shipped day"
    )
    soak.add_argument("--metadata", type=Path, default=DATA_DIR / "traffic_metadata.csv")
    _add_common(soak)
    status = sub.add_parser("status", help="one screen for an SRE: services, lag, rates, DLQ")
    status.add_argument("--interval", type=float, default=1.0, help="seconds to measure rates")
    _add_common(status)

    bench = sub.add_parser("bench", help="throughput and latency on the real stack")
    bench.add_argument("--traffic", type=Path, help="default: the 7-day Aarhus file")
    bench.add_argument("--metadata", type=Path, default=DATA_DIR / "traffic_metadata.csv")
    bench.add_argument("--rows", type=int, help="only the first ROWS rows of the file (a slice)")
    bench.add_argument(
        "--stages",
        default="all",
        help="comma-separated stages after source and processor (default all: "
        "dirty,tracing,sink,scaling,latency,domains,ingest,statements)",
    )
    _add_common(bench)
    add_city_parser(sub, _add_common)
    add_rights_parser(sub, _add_common)
    add_statement_parser(sub, _add_common)
    add_audit_parser(sub, _add_common)
    add_serve_parser(sub, _add_common)
    add_governance_parser(sub)
    return root


def _utc_ms(text: str) -> int:
    """ISO 8601 time as epoch ms; a time without offset is UTC. ``now``: this minute."""
    from datetime import UTC, datetime

    if text == "now":  # the one wall-clock read: everything after follows from it
        return int(time.time()) // 60 * 60_000
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp() * 1000)


def _add_simulate_args(p: argparse.ArgumentParser) -> None:
    _add_simulation_args(p)
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, help="N× real time (default: as fast as possible)")
    pace.add_argument("--max-rate", type=float, help="at most this many events/s (load test)")


def _add_simulation_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """What decides the simulated events: shared by simulate and verify simulator."""
    p.add_argument("--seed", type=int, dest="simulator_seed", help="same seed, same events")
    p.add_argument(
        "--start",
        type=_utc_ms,
        default=_utc_ms("2014-08-04T00:00:00+00:00"),
        dest="start_ms",
        help="simulated start, ISO 8601 (no offset = UTC) or now",
    )
    p.add_argument("--hours", type=float, default=24.0, help="simulated span")
    p.add_argument("--meters", type=int, dest="simulator_meters")
    p.add_argument("--bins", type=int, dest="simulator_bins")
    p.add_argument("--requests-per-hour", type=float, dest="simulator_requests_per_hour")
    p.add_argument("--interval-minutes", type=int, default=15, help="meter and bin readings")
    p.add_argument("--duplicates", type=float, default=0.0, help="fraction sent twice")
    p.add_argument("--late", type=float, default=0.0, help="fraction sent an hour late")
    p.add_argument("--malformed", type=float, default=0.0, help="fraction with a bad copy")


# Long-running services log JSON lines (with trace and span ids) and export telemetry;
# the interactive commands keep human-readable logs.
SERVICES = {
    "process": "citystream-processor",
    "alerts": "citystream-alerts",
    "sink": "citystream-sink",
    "replay": "citystream-source",
    "ingest": "citystream-ingest",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    level = getattr(args, "log_level", "INFO")
    if args.command in SERVICES:
        from core import telemetry

        telemetry.setup_json_logging(SERVICES[args.command], level)
    else:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )
    # The registry client logs every HTTP request at INFO: noise on every screen.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except ServiceUnavailable as exc:
        print(f"citystream {args.command}: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    except NoCityPack as exc:
        print(f"citystream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if args.command in SERVICES:
            from core import telemetry

            telemetry.shutdown()  # export the spans still buffered


def _telemetry(settings: Settings, command: str, metrics_port: int) -> None:
    """Tracing from OTEL_*, and /metrics on ``metrics_port`` (0: none) for this service."""
    from core import telemetry

    telemetry.setup(
        SERVICES[command], metrics_host=settings.metrics_host, metrics_port=metrics_port
    )


def cmd_stack(args: argparse.Namespace) -> int:
    from infra import stack

    settings = build_settings(args)
    cfg = stack_config(settings)
    if args.action == "status":
        return stack.print_status(cfg, as_json=args.format == "json")
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
        scram_port=settings.kafka_scram_port,
        tls_port=settings.kafka_tls_port,
    )


def cmd_init(args: argparse.Namespace) -> int:
    from citystream.audit_governance import record_topic_changes
    from families.registry import register_schemas, setup_topics

    settings = build_settings(args)
    created, altered = setup_topics(settings)
    print(f"topics created: {', '.join(created) or 'none (all existed)'}")
    if record_topic_changes(settings, altered):  # governance changes are audited (#17)
        print(f"topic configs aligned with their contracts: {', '.join(sorted(altered))}")
    for subject, schema_id in register_schemas(settings).items():
        print(f"schema {subject}-value -> id {schema_id}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from citystream.audit_governance import record_ttl_changes
    from connectors.sinks.clickhouse import ClickHouseSink

    settings = build_settings(args)
    with ClickHouseSink(settings) as sink:
        applied = sink.setup()
    print(f"migrations applied: {', '.join(map(str, applied)) or 'none (up to date)'}")
    if record_ttl_changes(settings, sink.ttl_changes):  # governance changes are audited (#17)
        print(f"TTLs changed: {', '.join(sorted(sink.ttl_changes))}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from citystream.replay import aarhus_sources, reconciles, run_replays, summary
    from families.registry import ensure_topics

    if args.dataset == "city":
        return _replay_city(args)
    settings = build_settings(args)
    files = aarhus_files(args, settings)
    if files is None:
        return 2
    wait_for_services(settings)
    ensure_topics(settings)
    _telemetry(settings, "replay", settings.source_metrics_port)
    sources = aarhus_sources(settings, files, args.speed)
    for source in sources.values():
        source.setup()

    def stop(*_: object) -> None:
        for source in sources.values():
            source.stop()

    signal.signal(signal.SIGTERM, stop)
    reports = run_replays(sources, paced=args.speed is not None)
    print(summary(reports))
    # An empty input is not an error (the summary says so); a row unaccounted for is.
    return 0 if all(reconciles(r) for r in reports.values()) else 1


def _replay_city(args: argparse.Namespace) -> int:
    """`citystream replay city`: the same as `citystream city replay` for the selected pack."""
    from citystream import city_cli

    settings = build_settings(args)
    if settings.city is None:
        print("citystream replay city: select a city pack with --city DIR or CITYSTREAM_CITY")
        return 2
    # city_cli.replay's load step waits for Kafka and the registry and creates the topics
    _telemetry(settings, "replay", settings.source_metrics_port)
    return city_cli.replay(settings, settings.city, args.source, args.file, args.speed)


def _simulation(args: argparse.Namespace) -> tuple[Settings, Any]:
    """Settings with the simulator flags applied, and the SimulationConfig they describe
    (SimulationConfigError if they describe none)."""
    from connectors.sources.simulator import SimulationConfig

    settings = build_settings(
        args,
        simulator_seed=args.simulator_seed,
        simulator_meters=args.simulator_meters,
        simulator_bins=args.simulator_bins,
        simulator_requests_per_hour=args.simulator_requests_per_hour,
    )
    config = SimulationConfig(
        seed=settings.simulator_seed,
        start_ms=args.start_ms,
        hours=args.hours,
        meters=settings.simulator_meters,
        bins=settings.simulator_bins,
        requests_per_hour=settings.simulator_requests_per_hour,
        interval_minutes=args.interval_minutes,
        duplicate_fraction=args.duplicates,
        late_fraction=args.late,
        malformed_fraction=args.malformed,
    )
    return settings, config


def cmd_simulate(args: argparse.Namespace) -> int:
    from citystream.progress import print_simulation_progress
    from connectors.sources.simulator import CitySimulatorSource, SimulationConfigError
    from families.registry import ensure_topics

    try:
        settings, config = _simulation(args)
        source = CitySimulatorSource(settings, config, args.speed, args.max_rate)
    except SimulationConfigError as exc:
        print(f"citystream simulate: {exc}", file=sys.stderr)
        return 2
    wait_for_services(settings)
    ensure_topics(settings)
    _telemetry(settings, "replay", settings.source_metrics_port)
    source.setup()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:  # stop, then flush what was generated
        signal.signal(sig, lambda *_: source.stop())
    try:
        report = source.run(print_simulation_progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(
        f"simulated {report.rows_read:,} events: published {dict(report.per_topic)}, "
        f"faults {dict(report.faults)}, dead-lettered {dict(report.dead_lettered)}"
    )
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from core import telemetry
    from streams import worker

    if "alerts" in args.processors:
        return _process_alerts(args)
    settings = build_settings(
        args,
        processor_web_port=args.processor_web_port,
        processor_metrics_port=args.processor_metrics_port,
    )
    unknown = sorted(set(args.processors) - set(worker.PROCESSORS))
    if unknown:
        print(f"error: unknown processor(s) {unknown}; known: {sorted(worker.PROCESSORS)}")
        return 2
    wait_for_services(settings)
    _telemetry(settings, "process", settings.processor_metrics_port)
    inputs = worker.input_topics(args.processors)
    group = settings.group(worker.app_id(settings, args.processors))
    telemetry.observe_group_lag(settings, group, [settings.topic(t) for t in inputs])
    # Faust parses sys.argv itself; hand it a clean command line.
    sys.argv = [sys.argv[0], "worker"]
    worker.run(settings, args.processors, loglevel=args.log_level)
    return 0


def _process_alerts(args: argparse.Namespace) -> int:
    """The alerts processor runs alone: its own Faust app, consumer group and web port."""
    from core import telemetry
    from families.registry import ensure_topics
    from streams.alerts import agents

    if args.processors != ["alerts"]:
        print("error: alerts runs alone: citystream process alerts", file=sys.stderr)
        return 2
    settings = build_settings(
        args,
        alerts_web_port=args.processor_web_port,
        alerts_metrics_port=args.processor_metrics_port,
    )
    wait_for_services(settings)
    ensure_topics(settings)  # city.alerts.v1 is read back before anything is produced
    _telemetry(settings, "alerts", settings.alerts_metrics_port)
    group = settings.group(settings.alerts_processor_id)
    inputs = [settings.topic(t) for t in ("city.kpi.batches.v1", "city.service_requests.v1")]
    telemetry.observe_group_lag(settings, group, inputs)
    sys.argv = [sys.argv[0], "worker"]
    agents.run(settings, loglevel=args.log_level)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    import threading

    from connectors.sinks.clickhouse import ClickHouseSink

    # --city (repeatable): one sink for these cities, each in its own namespace
    settings = flag_settings(args, query_port=args.query_port)
    cities = [city_namespace(settings, city) for city in args.cities or ()]
    if not cities:
        settings = city_namespace(settings)
    try:
        sink = ClickHouseSink(settings, cities)
    except ValueError as exc:  # two cities in one namespace
        print(f"citystream sink: {exc}", file=sys.stderr)
        return 2
    wait_for_services(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    sink.setup()
    _telemetry(settings, "sink", settings.sink_metrics_port)
    _observe_sink(settings, sink)
    from connectors.sinks.clickhouse.audit import run_beside, serve_audited_queries
    from core.audit_append import ensure_audit_topics

    ensure_audit_topics(settings)
    serve_audited_queries(sink)  # chDB: every statement of the query endpoint audited
    audit_sink, audit_thread = run_beside(sink, stop)  # audit topic -> audit_log
    try:
        sink.run(stop)
    finally:
        audit_sink.stop()
        audit_thread.join(timeout=60)
        sink.stop()
    return 0


def _observe_sink(settings: Settings, sink: Any) -> None:
    from connectors.sinks.clickhouse import KPI_TOPIC
    from core import telemetry

    group = settings.group(settings.sink_group_id)
    topics = [city.topic(KPI_TOPIC) for city in sink.namespaces()]
    telemetry.observe_group_lag(settings, group, topics)
    sink.seed_freshness()
    telemetry.observe_freshness(sink.freshness.snapshot)


def cmd_query(args: argparse.Namespace) -> int:
    from citystream.query import QueryError, format_result, run_audited_query
    from core.audit_append import AuditWriteError  # the audit log (#17)

    settings = build_settings(args)
    try:
        columns, rows = run_audited_query(settings, args.sql)
    except QueryError as exc:
        print(f"citystream query: {exc}", file=sys.stderr)
        return 1
    except AuditWriteError as exc:
        print(f"citystream query: not audited, so not shown: {exc}", file=sys.stderr)
        return 1
    print(format_result(columns, rows, args.format))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from citystream.demo import run_demo

    settings = build_settings(args)
    files = aarhus_files(args, settings)
    return 2 if files is None else run_demo(settings, files, args.keep_stack, args.serve)


def cmd_verify(args: argparse.Namespace) -> int:
    from citystream.verify import run_verify_topics

    if args.dataset == "topics":
        return run_verify_topics(build_settings(args), args.since, args.until)
    if args.dataset == "simulator":
        return _verify_simulation(args)
    return _verify_aarhus(args)


def _verify_aarhus(args: argparse.Namespace) -> int:
    from citystream.audit import AARHUS_DOMAINS, audit, expected_aarhus

    settings = build_settings(args)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    if unknown := sorted(set(domains) - set(AARHUS_DOMAINS)):
        print(f"citystream verify: unknown domains {unknown}; known: {AARHUS_DOMAINS}")
        return 2
    files = aarhus_files(args, settings)
    if files is None:
        return 2
    failed = audit(settings, expected_aarhus(settings, files, domains))
    print("verify: DIFFERENCES FOUND" if failed else "verify: OK")
    return 1 if failed else 0


def _verify_simulation(args: argparse.Namespace) -> int:
    from citystream.verify import run_verify_simulation
    from connectors.sources.simulator import SimulationConfigError

    try:
        settings, config = _simulation(args)
    except SimulationConfigError as exc:
        print(f"citystream verify: {exc}", file=sys.stderr)
        return 2
    return run_verify_simulation(settings, config)


def cmd_catalog(args: argparse.Namespace) -> int:
    from citystream import catalog

    block = catalog.BLOCKS.get(args.what)
    if block is not None:
        if not args.write:
            print(block.render(), end="")
            return 0
        changed = block.update()
        print(f"{block.page}: {'updated' if changed else 'up to date'}")
        return 0
    text = catalog.asyncapi_yaml()
    if str(args.output) == "-":
        print(text, end="")
        return 0
    output = args.output or catalog.ASYNCAPI_FILE
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"{output}: {len(catalog.public_topics())} topics")
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from citystream.soak import AarhusLoop, run_soak

    settings = build_settings(args)
    week = settings.aarhus_dir / "traffic_2014-08-01_07.csv.gz"
    traffic = args.traffic or (week if week.is_file() else DATA_DIR / "traffic_2014-08-02.csv.gz")
    source = AarhusLoop(traffic, args.metadata)
    return run_soak(
        settings, source, args.minutes, args.fault_every, args.rate, args.seed,
        stack_config(settings), args.sim_rate,
    )  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> int:
    from citystream.bench import STAGES, run_bench

    settings = build_settings(args)
    traffic = args.traffic or settings.aarhus_dir / "traffic_2014-08-01_07.csv.gz"
    stages = STAGES if args.stages == "all" else tuple(args.stages.split(","))
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"bench: unknown stages {', '.join(unknown)}; known: {', '.join(STAGES)}")
        return 2
    return run_bench(settings, traffic, args.metadata, args.rows, stages)


def cmd_status(args: argparse.Namespace) -> int:
    from citystream.status import collect, render

    status = collect(build_settings(args), args.interval)
    print(render(status))
    return 0 if status.healthy else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from connectors.sources.ingest_common import load_config
    from families.registry import ensure_topics

    settings = build_settings(
        args, ingest_config=args.ingest_config, ingest_http_port=args.ingest_http_port
    )
    if args.protocol == "opcua":  # its own mapping file (connectors/sources/opcua.py)
        return _ingest_opcua(settings)
    config = load_config(settings.ingest_config) if settings.ingest_config else None
    from connectors.sources.wot import with_things  # the pack's WoT TDs add Datastreams

    config = with_things(config, settings.city)
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


def _ingest_opcua(settings: Settings) -> int:
    from connectors.sources import opcua
    from families.registry import ensure_topics

    if settings.ingest_config is None:
        print("error: ingest opcua needs --config FILE (an OPC UA mapping)", file=sys.stderr)
        return 2
    wait_for_services(settings)
    ensure_topics(settings)
    _telemetry(settings, "ingest", settings.ingest_metrics_port)
    return opcua.main(settings, settings.ingest_config)


def _ingest_mqtt(settings: Settings, config: Any) -> int:
    from connectors.sources.mqtt import MqttSource, ProgressLog

    source = MqttSource(settings, config)
    source.setup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: source.stop())
    source.run(ProgressLog())
    print(f"mqtt ingest stopped: {source.counters.as_dict()}, {source.messages} messages")
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
    "rights": cmd_rights,
    "stack": cmd_stack,
    "init": cmd_init,
    "migrate": cmd_migrate,
    "replay": cmd_replay,
    "simulate": cmd_simulate,
    "process": cmd_process,
    "sink": cmd_sink,
    "query": cmd_query,
    "demo": cmd_demo,
    "verify": cmd_verify,
    "soak": cmd_soak,
    "bench": cmd_bench,
    "catalog": cmd_catalog,
    "ingest": cmd_ingest,
    "status": cmd_status,
    "city": cmd_city,
    "statement": cmd_statement,
    "audit": cmd_audit,
    "serve": cmd_serve,
    "governance": cmd_governance,
}

if __name__ == "__main__":
    sys.exit(main())
