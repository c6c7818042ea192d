"""The audit topic into ClickHouse: ``city.audit.v1`` -> the ``audit_log`` table, in batches.

The topic is the evidence (``citystream audit verify`` holds it to the signed checkpoints);
the table is where auditors look things up with SQL ("every export by key X last month").
Each row carries its leaf index (the record's offset in the one-partition topic) and its
RFC 9162 leaf hash in hex, so a row found by SQL leads straight to its inclusion proof
(``GET /v1/audit/proof?leaf=<leaf_index>``).

It runs beside the KPI sink in the same process (``citystream sink clickhouse``) and writes
through the KPI sink's session and lock: embedded chDB lets only one process, and one
caller at a time, open the directory. Batching, retries, dead letters and
commit-after-write are :class:`~connectors.sinks.base.BatchingSink`'s, as for KPIs.
With several cities (``--city``) the rows go to the first city's database.

:func:`serve_audited_queries` starts the sink's query endpoint (chDB) with an audit
appender, so every statement it runs is in the log (``endpoint`` module docstring).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError
from confluent_kafka import Message

from connectors.sinks.base import BatchingSink, Row
from connectors.sinks.clickhouse.endpoint import QueryEndpoint
from connectors.sinks.clickhouse.schema import AUDIT_COLUMNS, AUDIT_TABLE
from connectors.sinks.clickhouse.sink import ClickHouseSink
from core import telemetry
from core.audit_append import AUDIT_TOPIC, AuditAppender, leaf_bytes

log = logging.getLogger(__name__)

AUDIT_COLUMN_NAMES = tuple(name for name, _ in AUDIT_COLUMNS)
AUDIT_COLUMN_TYPES = tuple(type_ for _, type_ in AUDIT_COLUMNS)


def audit_row(record: dict[str, Any], offset: int) -> dict[str, Any]:
    """The table row of a decoded audit record at ``offset``."""
    leaf = hashlib.sha256(b"\x00" + leaf_bytes(record)).hexdigest()
    return {
        "leaf_index": offset,
        "at": int(record["at_ms"]),
        "key_id": record["key_id"],
        "role": record["role"],
        "action": record["action"],
        "endpoint": record["endpoint"],
        "parameters": record["parameters"],
        "sql": record["sql"],
        "rows": int(record["rows"]),
        "leaf_hash": leaf,
    }


class AuditLogSink(BatchingSink):
    """Writes the audit topic to ``audit_log`` through ``kpi_sink``'s session (set up first)."""

    component = "audit-log-sink"
    topic = AUDIT_TOPIC
    retryable = (ClickHouseError, OSError)

    def __init__(self, kpi_sink: ClickHouseSink) -> None:
        super().__init__(kpi_sink.settings)
        self.kpi_sink = kpi_sink
        cities = kpi_sink.cities
        self.database = (cities[0] if cities else kpi_sink.settings).clickhouse_database
        self.rows_inserted = 0

    def group(self) -> str:
        return self.settings.group("citystream-audit-sink")

    def rows(self, record: Any) -> list[Row]:
        return [record]  # made a row with its offset in _accept_rows

    def _accept_rows(self, msg: Message, rows: list[Row]) -> None:
        # the leaf index is the message's offset: only the message knows it
        super()._accept_rows(msg, [audit_row(r, msg.offset() or 0) for r in rows])

    def write(self, rows: Sequence[Row], traces: telemetry.KpiTraces | None = None) -> None:
        """Insert ``rows`` as one batch; raises if the insert fails."""
        if not rows:
            return
        client = self.kpi_sink._client
        if client is None:
            raise RuntimeError("the KPI sink's setup() must run before the audit sink writes")
        columns = [[row[name] for row in rows] for name in AUDIT_COLUMN_NAMES]
        with self.kpi_sink._db_lock:
            client.insert(
                AUDIT_TABLE,
                columns,
                column_names=AUDIT_COLUMN_NAMES,
                column_type_names=AUDIT_COLUMN_TYPES,
                column_oriented=True,
                database=self.database,
            )
        self.rows_inserted += len(rows)


def run_beside(
    kpi_sink: ClickHouseSink, stop: threading.Event
) -> tuple[AuditLogSink, threading.Thread]:
    """Start the audit sink in a thread beside ``kpi_sink`` (set up already). If it fails,
    ``stop`` is set, so the whole sink exits and is restarted rather than running on
    without writing the audit table."""
    audit = AuditLogSink(kpi_sink)

    def target() -> None:
        try:
            audit.run(stop)
        except Exception:
            log.exception("audit log sink failed; stopping the sink")
            stop.set()

    thread = threading.Thread(target=target, name="citystream-audit-sink", daemon=True)
    thread.start()
    return audit, thread


def serve_audited_queries(
    kpi_sink: ClickHouseSink, port: int | None = None
) -> QueryEndpoint | None:
    """chDB: start ``kpi_sink``'s query endpoint now, appending every statement it runs to
    the audit log (``kpi_sink``'s settings say where), and return it; a ClickHouse server
    needs no endpoint (None). The sink's own ``running()`` then finds it started and stops
    it (closing the appender) when the sink stops."""
    if not kpi_sink.backend.exclusive:
        return None
    if kpi_sink.endpoint is not None:
        raise RuntimeError("the sink's query endpoint already runs, unaudited")
    settings = kpi_sink.settings
    endpoint = QueryEndpoint(
        kpi_sink.query,
        settings.query_port if port is None else port,
        audit=AuditAppender(settings),
    )
    endpoint.start()
    kpi_sink.endpoint = endpoint
    return endpoint
