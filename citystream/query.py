"""Ad-hoc read-only SQL over the KPI tables, for analysts and the CLI.

Where the query goes is the backend's business (``connectors/sinks/clickhouse/backend.py``):
straight to a ClickHouse server, or with embedded chDB to the running sink's endpoint and,
when no sink runs, to the directory opened here. Every path returns the same JSON-safe
values (datetimes as ISO 8601 strings).

``citystream query`` is audited (#17) exactly once: :func:`run_audited_query` sends its
caller context (``local:<user>``, operator) with the read, so the sink's query endpoint
records it with the SQL; when the read did not go through the endpoint (a ClickHouse
server, or the chDB directory opened here because no sink runs), it appends the record
itself.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Literal

import orjson

from connectors.sinks.clickhouse.backend import backend_for
from connectors.sinks.clickhouse.endpoint import QueryError as QueryError
from core.audit_append import CallerContext, audit_scope, local_caller, record_command
from core.settings import Settings

COMMAND = "citystream query"

OutputFormat = Literal["table", "csv", "json"]
FORMATS: tuple[OutputFormat, ...] = ("table", "csv", "json")


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows of one read-only statement; :class:`QueryError` says why not."""
    result = backend_for(settings).read(sql)
    return result.columns, result.rows


def run_audited_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """:func:`run_query` with its one audit record (see the module docstring). Raises
    :class:`QueryError` (also when the endpoint could not audit it) or
    :class:`core.audit_append.AuditWriteError`: then nothing may be shown."""
    caller = CallerContext(local_caller(), "operator", COMMAND, {}, action="query")
    with audit_scope(caller) as scope:
        columns, rows = run_query(settings, sql)
    if not scope.leaves:  # not through the sink's endpoint: nobody recorded it yet
        record_command(settings, "query", COMMAND, {}, sql=sql, rows=len(rows))
    return columns, rows


# --- output ---------------------------------------------------------------------------------


def format_result(columns: list[str], rows: list[list[Any]], fmt: str = "table") -> str:
    """Render a result as an aligned text table, CSV with a header, or a JSON array."""
    if fmt == "table":
        return _table(columns, rows)
    if fmt == "csv":
        return _csv(columns, rows)
    if fmt == "json":
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        return orjson.dumps(records, option=orjson.OPT_INDENT_2).decode()
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    numeric = [
        bool(rows)
        and all(
            isinstance(r[i], int | float) and not isinstance(r[i], bool)
            for r in rows
            if r[i] is not None
        )
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        parts = (
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        )
        return " | ".join(parts).rstrip()

    out = [line(columns), "-+-".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _csv(columns: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _cell(v) for v in row])
    return buf.getvalue()
