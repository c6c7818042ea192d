"""ClickHouse sink: KPI records from ``city.kpi.batches.v1`` into the ``kpi`` table.

The consume loop, dead letters, retries and commit-after-write are
:class:`~connectors.sinks.base.BatchingSink`'s; this sink decodes KPI batches, checks
each row and inserts them. Delivery is at-least-once and the table makes it effectively
exactly-once for readers (see :mod:`connectors.sinks.clickhouse.schema`).

In chDB mode the sink also serves the read-only query endpoint while it runs, because no
other process can open the directory while the sink holds it (see ``backend``). Reads run
on sessions of their own (:class:`ReadSessions`), beside each other and beside inserts:
chDB runs queries of different connections in parallel, and a dashboard's first load asks
for about a dozen reads at once (docs/benchmark.md).

One sink can serve several cities on one ClickHouse (``cities``: each city's settings, with
its own topic prefix and database): one consumer reads every city's KPI batches and each
city's rows go to its own database, migrated at setup. The sink's own database (from
``settings``) is then created empty, as the default of every session, so queries name the
city's database (``citystream_boston.kpi_latest``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.exceptions import ClickHouseError

from connectors.sinks.base import BatchingSink, InvalidRecord, Row, TopicRows
from connectors.sinks.clickhouse.backend import Session, backend_for, execute_request
from connectors.sinks.clickhouse.endpoint import QueryEndpoint, QueryRequest, QueryResult
from connectors.sinks.clickhouse.schema import (
    KPI_COLUMN_NAMES,
    KPI_COLUMN_TYPES,
    KPI_TABLE,
    TRACE_LINKS_TABLE,
    Retention,
    day_zone,
    migrate,
)
from core import telemetry
from core.settings import Settings
from families.registry import KPIS

# The sink reads the column-wise copy of city.kpi.v1 that the processors write for it:
# decoding one batch costs about what decoding one record does.
KPI_TOPIC = "city.kpi.batches.v1"
# Every scope some KPI of the catalogue has (segment, district, city, car_park, sensor, …):
# a row with another scope is dead-lettered.
SCOPES = frozenset(scope for kpi in KPIS.values() for scope in kpi.scopes)

_TIMESTAMP_COLUMNS = frozenset({"window_start", "window_end", "computed_at"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


# --- decoding -------------------------------------------------------------------------------


class InvalidKpiRecord(InvalidRecord):
    """Decodes, but cannot go into the kpi table (it would fail every later insert)."""


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


# --- read sessions --------------------------------------------------------------------------

# Reads in flight at once on the query endpoint. Each query may use every core already, so
# more would only share them; enough for a dashboard's first load (five reads at once).
READ_SESSIONS = 4


class ReadSessions:
    """Read-only sessions, each used by one read at a time, at most ``size`` reads at once.

    A readonly session cannot change its max_execution_time, so sessions are kept per time
    limit; one is opened when no idle one has the limit asked for. Inserts have a session of
    their own, so a read never waits for an insert, nor an insert for a read.
    """

    def __init__(self, open_session: Callable[[float | None], Session], size: int) -> None:
        self._open = open_session
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()  # guards _idle and _all
        self._idle: dict[float | None, list[Session]] = {}
        self._all: list[Session] = []
        self.size = size

    @property
    def opened(self) -> int:
        """Sessions opened so far (and not closed)."""
        return len(self._all)

    @contextmanager
    def session(self, time_limit_s: float | None) -> Iterator[Session]:
        """An idle session with ``time_limit_s`` (opened if none is idle), once one of the
        ``size`` slots is free; back to the idle ones afterwards."""
        with self._slots:
            with self._lock:
                idle = self._idle.setdefault(time_limit_s, [])
                client = idle.pop() if idle else None
            if client is None:
                client = self._open(time_limit_s)
                with self._lock:
                    self._all.append(client)
            try:
                yield client
            finally:
                self._give_back(client, time_limit_s)

    def _give_back(self, client: Session, time_limit_s: float | None) -> None:
        """Keep ``client`` for the next read with its limit, unless sessions for many
        different limits have piled up (a caller may ask for any): then close it."""
        with self._lock:
            keep = len(self._all) <= 2 * self.size
            if keep:
                self._idle[time_limit_s].append(client)
            else:
                self._all.remove(client)
        if not keep:
            client.close()

    def close(self, drain_s: float = 30.0) -> None:
        """Close every session, after the reads in flight end (waiting ``drain_s`` at most:
        each read stops at its time limit anyway)."""
        taken = [self._slots.acquire(timeout=drain_s) for _ in range(self.size)]
        with self._lock:
            clients, self._all, self._idle = self._all, [], {}
        for client in clients:
            client.close()
        for got in taken:
            if got:
                self._slots.release()


# --- the sink -------------------------------------------------------------------------------


class ClickHouseSink(BatchingSink):
    """Inserts KPI batches into ClickHouse; see the module docstring.

    Counters (read them from any thread), besides the base's: ``rows_inserted``,
    ``batches_inserted``, ``last_insert_seconds``.
    """

    component = "clickhouse-sink"
    topic = KPI_TOPIC
    retryable = (ClickHouseError, OSError)
    rows_per_message = 500

    def __init__(self, settings: Settings, cities: Sequence[Settings] = ()) -> None:
        """``cities``: serve these cities' namespaces (topic prefix and database) instead of
        ``settings``' own; ``settings`` still say where ClickHouse, Kafka and the group are."""
        super().__init__(settings)
        self.cities = list(cities)
        databases = [city.clickhouse_database for city in self.cities]
        if len(set(databases)) < len(databases):
            raise ValueError(f"two cities share a ClickHouse database: {databases}")
        # topic of each city's KPI batches: the database its rows go to
        self.databases = {c.topic(KPI_TOPIC): c.clickhouse_database for c in self.cities}
        if len(self.databases) < len(self.cities):
            raise ValueError(f"two cities share the topic prefix of {sorted(self.databases)}")
        if settings.clickhouse_database in databases:
            raise ValueError(f"a city's database is the sink's own: {settings.clickhouse_database}")
        self.backend = backend_for(settings)
        self.rows_inserted = 0
        self.batches_inserted = 0
        self.last_insert_seconds = 0.0
        self.freshness = telemetry.Freshness()  # telemetry: newest window_end per domain
        self.endpoint: QueryEndpoint | None = None
        self._client: Session | None = None
        self._readers = ReadSessions(self._open_reader, READ_SESSIONS)
        self._db_lock = threading.Lock()  # one caller at a time on the write session
        # tables whose TTL setup() altered (database.table: new TTL), for the migrate audit
        self.ttl_changes: dict[str, str | None] = {}

    def group(self) -> str:
        return self.settings.group(self.settings.sink_group_id)

    def namespaces(self) -> Sequence[Settings]:
        return self.cities or [self.settings]

    def rows(self, record: Any) -> list[Row]:
        return batch_rows(record)

    def check(self, row: Row) -> None:
        check_record(row)

    # --- database ---------------------------------------------------------------------------

    def setup(self) -> list[int]:
        """Connect and apply pending migrations (idempotent); returns versions applied now."""
        if self._client is None:
            self._client = self.backend.connect()
        with self._db_lock:
            retention = Retention.from_settings(self.settings)
            if not self.cities:
                zone = day_zone(self.settings)  # the local days of kpi_daily
                return migrate(
                    self._client,
                    self.settings.clickhouse_database,
                    retention,
                    zone=zone,
                    ttl_changes=self.ttl_changes,
                )
            own = quote_identifier(self.settings.clickhouse_database)
            if str(self._client.command(f"EXISTS DATABASE {own}", use_database=False)) != "1":
                # every session's default database: it must exist, and stays empty
                self._client.command(f"CREATE DATABASE {own}", use_database=False)
            applied: list[int] = []
            for city in self.cities:  # each city's rollup counts its own local days
                database = city.clickhouse_database
                applied += migrate(
                    self._client,
                    database,
                    retention,
                    zone=day_zone(city),
                    ttl_changes=self.ttl_changes,
                )
            return applied

    def write_topics(self, batch: Mapping[str, TopicRows]) -> None:
        """Each city's rows into its own database (one insert per city)."""
        if not self.cities:
            super().write_topics(batch)
            return
        for topic, part in batch.items():
            self.write(part.rows, part.traces, database=self.databases[topic])

    def write(
        self,
        rows: Sequence[Mapping[str, Any]],
        traces: telemetry.KpiTraces | None = None,
        *,
        database: str | None = None,
    ) -> None:
        """Insert ``rows`` (KPI record dicts) as one batch into ``database`` (default: the
        settings'); raises if the insert fails.

        ``traces`` (the trace context of the KPI messages, when tracing is on) become the
        insert span's links and, in the same batch, rows of ``kpi_trace_links``.
        """
        if not rows:
            return
        database = database or self.settings.clickhouse_database
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
                database=database,
            )
            if traces is not None and traces.rows:  # telemetry
                self._insert_trace_links(self._client, traces, insert_trace_id, database)
        self.last_insert_seconds = time.perf_counter() - started
        telemetry.sink_inserted(len(rows), self.last_insert_seconds)  # telemetry
        self.freshness.update(columns[0], columns[4])  # telemetry: kpi, window_end
        self.rows_inserted += len(rows)
        self.batches_inserted += 1

    def _insert_trace_links(
        self, client: Session, traces: telemetry.KpiTraces, insert_trace_id: str, database: str
    ) -> None:
        """telemetry: one kpi_trace_links row per traced KPI row, one insert per batch."""
        client.insert(
            TRACE_LINKS_TABLE,
            telemetry.trace_link_columns(traces, insert_trace_id),
            column_names=[n for n, _ in telemetry.TRACE_LINK_COLUMNS],
            column_type_names=[t for _, t in telemetry.TRACE_LINK_COLUMNS],
            column_oriented=True,
            database=database,
        )

    def seed_freshness(self) -> None:
        """telemetry: start KPI freshness from what ClickHouse holds, so a restarted sink
        reports a stale pipeline at once instead of no value until its first insert."""
        if not telemetry.metrics_on():
            return
        for database in self.databases.values() or [self.settings.clickhouse_database]:
            result = self.query(
                f"SELECT splitByChar('.', kpi)[1], toUnixTimestamp64Milli(max(window_end)) "
                f"FROM {quote_identifier(database)}.{KPI_TABLE} "
                "WHERE NOT endsWith(kpi, '_1h') GROUP BY 1"
            )
            for domain, newest_ms in result.rows:
                newest = self.freshness.newest.get(str(domain), 0)
                self.freshness.newest[str(domain)] = max(newest, int(newest_ms))

    def query(self, sql: str | QueryRequest) -> QueryResult:
        """Run a read-only statement on a read-only session of its own (see
        :class:`ReadSessions`), beside other reads and inserts, on the sink's database unless
        the request names another."""
        request = sql if isinstance(sql, QueryRequest) else QueryRequest(sql)
        with self._readers.session(request.time_limit_s) as client:
            client.database = request.database or self.settings.clickhouse_database  # type: ignore[attr-defined]
            return execute_request(client, request)

    def _open_reader(self, time_limit_s: float | None) -> Session:
        return self.backend.connect(readonly=True, time_limit_s=time_limit_s)

    # --- the query endpoint -------------------------------------------------------------------

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

    @contextmanager
    def running(self) -> Iterator[None]:
        """While consuming, serve readers that cannot open the data themselves (chDB)."""
        if self.backend.exclusive:
            self.start_query_endpoint()
        try:
            yield
        finally:
            self.stop_query_endpoint()

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the database; in chDB mode this frees the directory for other processes."""
        self.stop_query_endpoint()
        self._readers.close()
        if self._client is not None:
            self._client.close()
        self._client = None

    def __enter__(self) -> ClickHouseSink:
        return self
