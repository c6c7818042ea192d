"""ClickHouse sink: KPI records from ``city.kpi.v1`` into the ``kpi`` table.

Delivery is at-least-once (offsets are committed only after the insert succeeded) and
the table makes it effectively exactly-once for readers: ``kpi`` is a
ReplacingMergeTree keyed by (kpi, scope, entity_id, window_start) whose version is
(samples, revision), so a replayed or redelivered record collapses into the row it
duplicates and ``kpi FINAL`` / ``kpi_latest`` show one row per key: the most complete,
even when a restarted processor numbers its revisions from 0 again.

The same code runs against embedded chDB (``chdb:///abs/path``) and a ClickHouse server
(``http(s)://host:port``). In chDB mode the sink also serves the read-only query
endpoint, because no other process can open the directory while the sink holds it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import clickhouse_connect
import orjson
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from connectors.sinks.query_endpoint import (
    READ_ONLY_SETTINGS,
    QueryEndpoint,
    QueryResult,
    execute_read_only,
)
from core import telemetry
from core.kafka import Publisher
from core.kpis import KPIS
from core.settings import Settings
from schemas.deadletter import dead_letter
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde, SerdeError

log = logging.getLogger(__name__)

COMPONENT = "clickhouse-sink"
# The sink reads the column-wise copy of city.kpi.v1 that the processors write for it:
# decoding one batch costs about what decoding one record does.
KPI_TOPIC = "city.kpi.batches.v1"
DLQ_TOPIC = "city.dlq.v1"
KPI_TABLE = "kpi"
TRACE_LINKS_TABLE = "kpi_trace_links"  # telemetry: KPI row <-> traces (docs/observability.md)
ROLLUP_STATE_TABLE = "kpi_window_state"
# Every scope some KPI of the catalogue has (segment, district, city, car_park, sensor, …):
# a row with another scope is dead-lettered.
SCOPES = frozenset(scope for kpi in KPIS.values() for scope in kpi.scopes)

# The analysts' contract: names and types of the kpi table, in insert order.
KPI_COLUMNS: tuple[tuple[str, str], ...] = (
    ("kpi", "LowCardinality(String)"),
    ("scope", "LowCardinality(String)"),
    ("entity_id", "String"),
    ("window_start", "DateTime64(3, 'UTC')"),
    ("window_end", "DateTime64(3, 'UTC')"),
    ("value", "Float64"),
    ("samples", "UInt32"),
    ("revision", "UInt32"),
    ("computed_at", "DateTime64(3, 'UTC')"),
)
KPI_COLUMN_NAMES = tuple(name for name, _ in KPI_COLUMNS)
KPI_COLUMN_TYPES = tuple(type_ for _, type_ in KPI_COLUMNS)
_TIMESTAMP_COLUMNS = frozenset({"window_start", "window_end", "computed_at"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

MAX_CONSUME = 100  # messages per consume call
MAX_BACKOFF_SECONDS = 30.0
RETRYABLE_INSERT_ERRORS: tuple[type[BaseException], ...] = (ClickHouseError, OSError)


# --- migrations ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One numbered schema change; ``{db}`` in a statement is the quoted database."""

    version: int
    name: str
    statements: tuple[str, ...]


_KPI_COLUMNS_DDL = ",\n    ".join(f"{name} {type_}" for name, type_ in KPI_COLUMNS)
_TRACE_LINKS_DDL = ",\n    ".join(f"{n} {t}" for n, t in telemetry.TRACE_LINK_COLUMNS)

# One row per window in the rollup's state: the value and samples of the version that wins
# in ``kpi`` (argMax by the same ``version``), so a revised or re-inserted window replaces
# its earlier rows instead of adding to them. argMax states merge idempotently, so the
# backfill may overlap rows the view already saw.
_WINDOW_STATE_SELECT = """SELECT kpi, scope, entity_id, window_start,
    argMaxState(value, version) AS value,
    argMaxState(samples, version) AS samples
FROM {db}.kpi
GROUP BY kpi, scope, entity_id, window_start"""

# Districts that are not one (readings of segments missing from the reference data).
UNKNOWN_DISTRICT = "unknown"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create kpi",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.kpi (
    {_KPI_COLUMNS_DDL},
    version UInt64 MATERIALIZED bitShiftLeft(toUInt64(samples), 32) + revision
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, scope, entity_id, window_start)""",
        ),
    ),
    Migration(
        2,
        "create kpi_latest",
        (
            f"""CREATE VIEW IF NOT EXISTS {{db}}.kpi_latest AS
SELECT {", ".join(KPI_COLUMN_NAMES)} FROM {{db}}.kpi FINAL""",
        ),
    ),
    Migration(
        3,
        "create kpi_window_state, its materialized view and backfill",
        (
            """CREATE TABLE IF NOT EXISTS {db}.kpi_window_state (
    kpi LowCardinality(String),
    scope LowCardinality(String),
    entity_id String,
    window_start DateTime64(3, 'UTC'),
    value AggregateFunction(argMax, Float64, UInt64),
    samples AggregateFunction(argMax, UInt32, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, scope, entity_id, window_start)""",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kpi_window_state_mv "
            "TO {db}.kpi_window_state AS\n" + _WINDOW_STATE_SELECT,
            "INSERT INTO {db}.kpi_window_state\n" + _WINDOW_STATE_SELECT,
        ),
    ),
    Migration(
        4,
        "create kpi_daily",
        (
            """CREATE VIEW IF NOT EXISTS {db}.kpi_daily AS
SELECT kpi, scope, entity_id, toDate(window_start) AS day,
    count() AS windows,
    sum(value) AS sum_value,
    avg(value) AS avg_value,
    min(value) AS min_value,
    max(value) AS max_value,
    sum(samples) AS samples
FROM (
    SELECT kpi, scope, entity_id, window_start,
        argMaxMerge(value) AS value,
        argMaxMerge(samples) AS samples
    FROM {db}.kpi_window_state
    GROUP BY kpi, scope, entity_id, window_start
)
GROUP BY kpi, scope, entity_id, day""",
        ),
    ),
    Migration(
        5,
        "create kpi_equity",
        (
            f"""CREATE VIEW IF NOT EXISTS {{db}}.kpi_equity AS
SELECT kpi, entity_id AS district, window_start, window_end, value,
    quantileExactInclusive(0.5)(value) OVER per_window AS city_median,
    value - city_median AS gap,
    if(city_median = 0, NULL, (value - city_median) / abs(city_median)) AS relative_gap,
    count() OVER per_window AS districts
FROM {{db}}.kpi FINAL
WHERE scope = 'district' AND entity_id != '{UNKNOWN_DISTRICT}'
WINDOW per_window AS (PARTITION BY kpi, window_start)""",
        ),
    ),
    Migration(
        6,
        "create kpi_trace_links",
        (
            f"""CREATE TABLE IF NOT EXISTS {{db}}.{TRACE_LINKS_TABLE} (
    {_TRACE_LINKS_DDL},
    INDEX input_traces input_trace_ids TYPE bloom_filter GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (kpi, scope, entity_id, window_start, revision)
TTL toDateTime(written_at) + INTERVAL 30 DAY""",
        ),
    ),
)

_MIGRATIONS_DDL = """CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version"""


def connect(settings: Settings, *, readonly: bool = False) -> Client:
    """A client for ``settings.resolved_clickhouse_url`` with the sink's database as default.

    The database is not checked here (setup creates it), so the same call serves the
    sink and read-only queries; ``readonly`` applies READ_ONLY_SETTINGS to the session.
    """
    kwargs: dict[str, Any] = {}
    if not settings.embedded_clickhouse:
        kwargs["username"] = settings.clickhouse_username
        if settings.clickhouse_password is not None:
            kwargs["password"] = settings.clickhouse_password.get_secret_value()
    client = clickhouse_connect.get_client(
        dsn=settings.resolved_clickhouse_url,
        tz_mode="aware",
        settings=dict(READ_ONLY_SETTINGS) if readonly else {},
        **kwargs,
    )
    client.database = settings.clickhouse_database
    return client


@dataclass(frozen=True)
class Retention:
    """Days each table keeps a window after its start (0 = forever); a TTL, so ClickHouse
    drops expired rows in the background. ``kpi`` and the rollup's state expire apart, so
    daily figures can outlive the 15-minute rows they came from."""

    kpi_days: int = 0
    rollup_days: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(settings.clickhouse_kpi_ttl_days, settings.clickhouse_rollup_ttl_days)

    def by_table(self) -> dict[str, int]:
        return {KPI_TABLE: self.kpi_days, ROLLUP_STATE_TABLE: self.rollup_days}


def ttl_expression(days: int) -> str | None:
    """The TTL as ClickHouse prints it back in ``engine_full``, so it compares as text."""
    return f"toDateTime(window_start) + toIntervalDay({days})" if days > 0 else None


def current_ttl(client: Client, database: str, table: str) -> str | None:
    engine = client.command(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": database, "t": table},
        use_database=False,
    )
    found = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", str(engine))
    return found.group(1) if found else None


def apply_retention(client: Client, database: str, retention: Retention) -> dict[str, str | None]:
    """Make each table's TTL follow ``retention``; returns the tables changed and their TTL.

    Only a differing TTL is altered: MODIFY TTL rewrites the parts holding expired rows, which
    a restart of the sink should not repeat.
    """
    changed: dict[str, str | None] = {}
    for table, days in retention.by_table().items():
        wanted = ttl_expression(days)
        if current_ttl(client, database, table) == wanted:
            continue
        name = f"{quote_identifier(database)}.{quote_identifier(table)}"
        alter = f"MODIFY TTL {wanted}" if wanted else "REMOVE TTL"
        client.command(f"ALTER TABLE {name} {alter}", use_database=False)
        log.info("ClickHouse table %s: TTL now %s", table, wanted or "none (kept forever)")
        changed[table] = wanted
    return changed


def _applied(client: Client, db: str) -> set[int]:
    if str(client.command(f"EXISTS TABLE {db}.schema_migrations", use_database=False)) != "1":
        return set()
    rows = client.query(f"SELECT version FROM {db}.schema_migrations FINAL").result_rows
    return {int(row[0]) for row in rows}


def migrate(
    client: Client,
    database: str,
    retention: Retention,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> list[int]:
    """Create the database, apply pending ``migrations`` and the retention; returns the
    migration versions applied now. Tests pass a prefix of MIGRATIONS to stage upgrades.

    When every migration is applied and the TTLs are as set, it runs no DDL at all, so the
    sink can start as a user that may only insert KPIs (infra/clickhouse/users.sql).
    """
    db = quote_identifier(database)
    if {m.version for m in migrations} <= _applied(client, db):
        apply_retention(client, database, retention)
        return []
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}", use_database=False)
    client.command(_MIGRATIONS_DDL.format(db=db), use_database=False)
    done = _applied(client, db)
    applied = []
    for migration in migrations:
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.command(statement.format(db=db), use_database=False)
        client.insert(
            "schema_migrations",
            [[migration.version, migration.name, datetime.now(UTC)]],
            column_names=["version", "name", "applied_at"],
            database=database,
        )
        log.info("applied ClickHouse migration %d (%s)", migration.version, migration.name)
        applied.append(migration.version)
    apply_retention(client, database, retention)
    return applied


# --- decoding -------------------------------------------------------------------------------


class InvalidKpiRecord(ValueError):
    """Decodes, but cannot go into the kpi table (it would fail every later insert)."""

    reason = "invalid_row"


def kpi_serde(registry: SchemaRegistry, settings: Settings) -> AvroSerde:
    """Decoder for the sink's input; other writer schema ids resolve through the registry."""
    return registry.serde(settings.topic(KPI_TOPIC), KPI_TOPIC)


def batch_rows(batch: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """A column-wise KpiBatch as KPI records."""
    return [dict(zip(KPI_COLUMN_NAMES, values, strict=True)) for values in zip(
        *(batch[name] for name in KPI_COLUMN_NAMES), strict=True
    )]  # fmt: skip


def check_record(record: Mapping[str, Any]) -> None:
    if record["scope"] not in SCOPES:
        raise InvalidKpiRecord(f"scope {record['scope']!r} is not one of {sorted(SCOPES)}")
    if record["samples"] < 0 or record["revision"] < 0:
        raise InvalidKpiRecord("samples and revision must not be negative")


def _to_millis(value: Any) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # naive means UTC, like everywhere in citystream
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _MILLISECOND
    return int(value)


def kpi_columns(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """Column-oriented insert data; timestamps as epoch millis (datetimes are converted)."""
    columns = []
    for name in KPI_COLUMN_NAMES:
        column = [row[name] for row in rows]
        if name in _TIMESTAMP_COLUMNS and set(map(type, column)) != {int}:
            column = [_to_millis(v) for v in column]
        columns.append(column)
    return columns


# --- the sink -------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Rows waiting for the next insert and the offsets that insert will allow to commit."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    since: float | None = None
    messages: int = 0
    traces: telemetry.KpiTraces = field(default_factory=telemetry.KpiTraces)  # telemetry

    def tracked(self, messages: int) -> None:
        self.messages += messages
        if messages and self.since is None:
            self.since = time.monotonic()

    def age(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since


class ClickHouseSink:
    """Consumes KPI records and inserts them in batches; see the module docstring.

    Counters (read them from any thread): ``rows_inserted``, ``batches_inserted``,
    ``dead_lettered``, ``insert_failures``, ``last_insert_seconds``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rows_inserted = 0
        self.batches_inserted = 0
        self.dead_lettered = 0
        self.insert_failures = 0
        self.last_insert_seconds = 0.0
        self.freshness = telemetry.Freshness()  # telemetry: newest window_end per domain
        # Called after each successful insert with its rows (the benchmark times KPI delay).
        self.on_written: Callable[[Sequence[Mapping[str, Any]]], None] | None = None
        self.endpoint: QueryEndpoint | None = None
        self._client: Client | None = None
        self._query_client: Client | None = None
        self._db_lock = threading.Lock()  # one chDB caller at a time: inserts and queries
        self._stopping = threading.Event()
        self._running = threading.Event()
        self._run_stop: threading.Event | None = None
        self._batch = _Batch()
        self._publisher: Publisher | None = None
        self._dlq_serde: AvroSerde | None = None

    # --- database ---------------------------------------------------------------------------

    def setup(self) -> list[int]:
        """Connect and apply pending migrations (idempotent); returns versions applied now."""
        if self._client is None:
            self._client = connect(self.settings)
        with self._db_lock:
            retention = Retention.from_settings(self.settings)
            return migrate(self._client, self.settings.clickhouse_database, retention)

    def write(
        self, rows: Sequence[Mapping[str, Any]], traces: telemetry.KpiTraces | None = None
    ) -> None:
        """Insert ``rows`` (KPI record dicts) as one batch; raises if the insert fails.

        ``traces`` (the trace context of the KPI messages, when tracing is on) become the
        insert span's links and, in the same batch, rows of ``kpi_trace_links``.
        """
        if not rows:
            return
        if self._client is None:
            raise RuntimeError("ClickHouseSink.setup() must run before write()")
        columns = kpi_columns(rows)
        started = time.perf_counter()
        # telemetry: the insert's span, linked to the KPI emissions it writes
        with telemetry.insert_span(KPI_TABLE, len(rows), traces) as insert_trace_id, self._db_lock:
            self._client.insert(
                KPI_TABLE,
                columns,
                column_names=KPI_COLUMN_NAMES,
                column_type_names=KPI_COLUMN_TYPES,
                column_oriented=True,
                database=self.settings.clickhouse_database,
            )
            if traces is not None and traces.rows:  # telemetry
                self._insert_trace_links(traces, insert_trace_id)
        self.last_insert_seconds = time.perf_counter() - started
        telemetry.sink_inserted(len(rows), self.last_insert_seconds)  # telemetry
        self.freshness.update(columns[0], columns[4])  # telemetry: kpi, window_end
        self.rows_inserted += len(rows)
        self.batches_inserted += 1
        if self.on_written is not None:
            self.on_written(rows)

    def _insert_trace_links(self, traces: telemetry.KpiTraces, insert_trace_id: str) -> None:
        """telemetry: one kpi_trace_links row per traced KPI row, one insert per batch."""
        assert self._client is not None
        self._client.insert(
            TRACE_LINKS_TABLE,
            telemetry.trace_link_columns(traces, insert_trace_id),
            column_names=[n for n, _ in telemetry.TRACE_LINK_COLUMNS],
            column_type_names=[t for _, t in telemetry.TRACE_LINK_COLUMNS],
            column_oriented=True,
            database=self.settings.clickhouse_database,
        )

    def seed_freshness(self) -> None:
        """telemetry: start KPI freshness from what ClickHouse holds, so a restarted sink
        reports a stale pipeline at once instead of no value until its first insert."""
        if not telemetry.metrics_on():
            return
        result = self.query(
            f"SELECT splitByChar('.', kpi)[1], toUnixTimestamp64Milli(max(window_end)) "
            f"FROM {KPI_TABLE} WHERE NOT endsWith(kpi, '_1h') GROUP BY 1"
        )
        for domain, newest_ms in result.rows:
            self.freshness.newest[str(domain)] = int(newest_ms)

    def query(self, sql: str) -> QueryResult:
        """Run a read-only statement on the sink's read-only session, between inserts."""
        with self._db_lock:
            if self._query_client is None:  # under the lock: endpoint threads race here
                self._query_client = connect(self.settings, readonly=True)
            return execute_read_only(self._query_client, sql)

    def start_query_endpoint(self, port: int | None = None) -> QueryEndpoint:
        """Serve :meth:`query` on 127.0.0.1 (``settings.query_port`` unless given)."""
        if self.endpoint is None:
            endpoint = QueryEndpoint(self.query, self.settings.query_port if port is None else port)
            endpoint.start()
            self.endpoint = endpoint
        return self.endpoint

    def stop_query_endpoint(self) -> None:
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`run` flush what it can and return, then release the database.

        Safe from any thread and after run returned (then it just closes).
        """
        self._stopping.set()
        if not self._running.is_set():
            self.close()

    def close(self) -> None:
        """Release the database; in chDB mode this frees the directory for other processes."""
        self.stop_query_endpoint()
        for client in (self._query_client, self._client):
            if client is not None:
                client.close()
        self._client = self._query_client = None

    def __enter__(self) -> ClickHouseSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- consume loop -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set or :meth:`stop` is called; runs :meth:`setup` first.

        After :meth:`stop` the database is released on return; after ``stop.set()`` it
        stays open (for queries) until :meth:`close` or :meth:`stop`.
        """
        self._run_stop = stop
        self._running.set()
        try:
            self._consume()
        finally:
            self._running.clear()
            if self._stopping.is_set():
                self.close()

    def _consume(self) -> None:
        self.setup()
        registry = SchemaRegistry(self.settings.registry_config())
        serde = kpi_serde(registry, self.settings)
        self._dlq_serde = registry.serde(self.settings.topic(DLQ_TOPIC), DLQ_TOPIC)
        publisher = self._publisher = Publisher.create(self.settings)
        if self.settings.embedded_clickhouse:
            self.start_query_endpoint()
        consumer = Consumer(self._consumer_config())
        try:
            consumer.subscribe(
                [self.settings.topic(KPI_TOPIC)], on_revoke=self._on_revoke, on_lost=self._on_lost
            )
            self._loop(consumer, serde)
            self._flush(consumer)
        finally:
            self._discard("the sink is stopping")
            consumer.close()
            self.stop_query_endpoint()
            publisher.flush()

    def _consumer_config(self) -> dict[str, Any]:
        return self.settings.kafka_config(
            **{
                "group.id": self.settings.group(self.settings.sink_group_id),
                "client.id": COMPONENT,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )

    def _should_stop(self) -> bool:
        return self._stopping.is_set() or (self._run_stop is not None and self._run_stop.is_set())

    def _loop(self, consumer: Consumer, serde: AvroSerde) -> None:
        batch_rows, batch_seconds = self.settings.sink_batch_rows, self.settings.sink_batch_seconds
        while not self._should_stop():
            # A message holds up to thousands of rows: take a few at a time.
            wanted = max(1, min(MAX_CONSUME, (batch_rows - len(self._batch.rows)) // 500))
            timeout = 0.5 if self._batch.since is None else batch_seconds - self._batch.age()
            messages = consumer.consume(num_messages=wanted, timeout=min(0.5, max(0.01, timeout)))
            self._accept(messages, serde)
            if len(self._batch.rows) >= batch_rows or (
                self._batch.since is not None and self._batch.age() >= batch_seconds
            ):
                self._flush(consumer)

    def _accept(self, messages: list[Message], serde: AvroSerde) -> None:
        """Decode into the batch; the hot path, hence the local names."""
        batch = self._batch
        tracked = 0
        for msg in messages:
            if msg.error() is not None:
                self._consumer_error(msg)
                continue
            try:
                rows = batch_rows(serde.decode(msg.value()))
            except (SerdeError, KeyError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, SerdeError) else "invalid_row"
                self._dead_letter(msg, reason, str(exc), msg.value() or b"")
            else:
                self._accept_rows(msg, rows)
            # topic, partition and offset are always set on a message without error
            batch.offsets[(msg.topic(), msg.partition())] = msg.offset() + 1  # type: ignore[index,operator]
            tracked += 1
        batch.tracked(tracked)

    def _accept_rows(self, msg: Message, rows: list[dict[str, Any]]) -> None:
        """Valid rows join the batch; an invalid one is dead-lettered on its own."""
        first = len(self._batch.rows)
        for index, row in enumerate(rows):
            try:
                check_record(row)
            except InvalidKpiRecord as exc:
                payload = orjson.dumps(row)
                self._dead_letter(msg, exc.reason, f"row {index}: {exc}", payload)
            else:
                self._batch.rows.append(row)
        if telemetry.tracing():  # telemetry: the KPI message's context, for links and rows
            self._batch.traces.add(msg.headers(), self._batch.rows[first:])
        telemetry.count_in(msg.topic() or KPI_TOPIC, len(rows))  # telemetry

    def _consumer_error(self, msg: Message) -> None:
        err = msg.error()
        if err is not None and err.fatal():
            raise KafkaException(err)
        log.warning("consumer error: %s", err)

    def _dead_letter(self, msg: Message, reason: str, detail: str, payload: bytes) -> None:
        assert self._publisher is not None and self._dlq_serde is not None
        origin = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        letter = dead_letter(
            reason=reason,
            detail=detail,
            component=COMPONENT,
            origin=origin,
            payload=payload,
        )
        self._publisher.send(
            self.settings.topic(DLQ_TOPIC), reason.encode(), self._dlq_serde.encode(letter)
        )
        self.dead_lettered += 1
        telemetry.dead_lettered(COMPONENT, reason)  # telemetry
        log.warning("dead-lettered %s: %s (%s)", origin, reason, detail)

    def _flush(self, consumer: Consumer) -> bool:
        """Insert, make dead letters durable, then commit; False if the insert gave up."""
        batch = self._batch
        if not batch.messages:
            return True
        if batch.rows and not self._insert_with_retry(batch.rows, batch.traces):
            return False
        assert self._publisher is not None
        self._publisher.flush()  # dead letters durable before their offsets are committed
        self._commit(consumer, batch.offsets)
        self._batch = _Batch()
        return True

    def _insert_with_retry(
        self, rows: list[dict[str, Any]], traces: telemetry.KpiTraces | None = None
    ) -> bool:
        """Retry with exponential backoff until it works; False only when asked to stop."""
        attempt = 0
        while True:
            try:
                self.write(rows, traces)
                return True
            except RETRYABLE_INSERT_ERRORS as exc:
                attempt += 1
                self.insert_failures += 1
                telemetry.sink_insert_failed()  # telemetry
                delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (attempt - 1))
                log.error(
                    "insert of %d rows failed (attempt %d), retrying in %.1fs: %s",
                    len(rows),
                    attempt,
                    delay,
                    exc,
                )
                if self._wait_unless_stopping(delay):
                    return False

    def _wait_unless_stopping(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self._should_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._stopping.wait(min(0.2, remaining))
        return True

    def _commit(self, consumer: Consumer, offsets: dict[tuple[str, int], int]) -> None:
        """Synchronous commit; a failure is logged, not raised: the rows are already in
        ClickHouse, and re-consuming them after a rebalance cannot double count."""
        wanted = [TopicPartition(topic, part, offset) for (topic, part), offset in offsets.items()]
        try:
            committed = consumer.commit(offsets=wanted, asynchronous=False) or []
        except KafkaException as exc:
            log.error("offset commit failed, records will be re-consumed: %s", exc)
            return
        for tp in committed:
            if tp.error is not None:
                log.error("offset commit failed for %s[%d]: %s", tp.topic, tp.partition, tp.error)

    def _discard(self, why: str) -> None:
        """Drop the uncommitted batch; Kafka redelivers it from the committed offsets."""
        if self._batch.messages:
            log.warning(
                "%s: %d rows (%d messages) not inserted/committed, they will be re-consumed",
                why,
                len(self._batch.rows),
                self._batch.messages,
            )
        self._batch = _Batch()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._flush(consumer):
            self._discard("partitions revoked while the insert was failing")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._discard("partitions lost")


__all__ = [
    "KPI_COLUMNS",
    "MIGRATIONS",
    "ClickHouseSink",
    "InvalidKpiRecord",
    "Retention",
    "apply_retention",
    "batch_rows",
    "check_record",
    "connect",
    "kpi_columns",
    "kpi_serde",
    "migrate",
]
