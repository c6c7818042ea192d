"""Ad-hoc read-only SQL over the KPI tables, for analysts and the CLI.

With a ClickHouse server the query goes straight to it. With embedded chDB only one
process may open the directory, so the query first goes to the running sink's endpoint
(``127.0.0.1:<query_port>``) and only when nothing listens there opens the directory
itself. Every path returns the same JSON-safe values (datetimes as ISO 8601 strings).
"""

from __future__ import annotations

import csv
import io
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from connectors.sinks.clickhouse import connect
from connectors.sinks.query_endpoint import (
    READ_ONLY_SETTINGS,
    QueryResult,
    RejectedQuery,
    execute_read_only,
    read_only_statement,
)
from core.settings import Settings

OutputFormat = Literal["table", "csv", "json"]
FORMATS: tuple[OutputFormat, ...] = ("table", "csv", "json")


class QueryError(RuntimeError):
    """The query could not run; the message says why (ClickHouse's text where it has one)."""


class EndpointUnavailable(QueryError):
    """Nothing listens on the sink's query port."""


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows of one read-only statement."""
    try:
        read_only_statement(sql)
    except RejectedQuery as exc:
        raise QueryError(str(exc)) from exc
    if not settings.embedded_clickhouse:
        result = _query_client(settings, sql)
    else:
        try:
            result = query_endpoint(settings, sql)
        except EndpointUnavailable:
            result = _query_directory(settings, sql)
    return result.columns, result.rows


def endpoint_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.query_port}/query"


def query_endpoint(settings: Settings, sql: str) -> QueryResult:
    """Ask the running sink; :class:`EndpointUnavailable` if no sink serves the port."""
    timeout = float(READ_ONLY_SETTINGS["max_execution_time"]) + 10
    request = urllib.request.Request(
        endpoint_url(settings),
        data=sql.encode(),
        method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(_error_text(exc)) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise EndpointUnavailable(f"nothing listens on {endpoint_url(settings)}") from exc
        raise QueryError(f"query endpoint {endpoint_url(settings)}: {exc.reason}") from exc
    return QueryResult(body["columns"], body["types"], body["rows"])


def _error_text(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return str(orjson.loads(raw)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"query endpoint answered HTTP {exc.code}: {raw[:500]!r}"


def _query_client(settings: Settings, sql: str) -> QueryResult:
    return _run_and_close(connect(settings, readonly=True), sql)


def _run_and_close(client: Client, sql: str) -> QueryResult:
    try:
        return execute_read_only(client, sql)
    except ClickHouseError as exc:
        raise QueryError(str(exc)) from exc
    finally:
        client.close()


def _query_directory(settings: Settings, sql: str) -> QueryResult:
    """Open the chDB directory in this process; only possible while no sink holds it."""
    path = Path(urlparse(settings.resolved_clickhouse_url).path)
    if not path.is_dir():
        raise QueryError(f"no chDB data at {path}: has the ClickHouse sink run yet?")
    try:
        client = connect(settings, readonly=True)
    except ClickHouseError as exc:
        holder = lock_holder(path)
        if holder is None:
            raise QueryError(f"cannot open chDB directory {path}: {exc}") from exc
        raise QueryError(
            f"chDB directory {path} is locked by {holder}, and nothing answers on "
            f"{endpoint_url(settings)}: the sink's query endpoint is off or on another port "
            "(CITYSTREAM_QUERY_PORT must match the sink's)"
        ) from exc
    return _run_and_close(client, sql)


def lock_holder(path: Path) -> str | None:
    """Who holds the chDB directory, from the status file the engine keeps while open."""
    try:
        status = (path / "status").read_text()
    except FileNotFoundError:
        return None
    pid_match = re.search(r"^PID:\s*(\d+)", status, re.M)
    if pid_match is None:
        return None
    pid = int(pid_match.group(1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale status file: the engine did not stop cleanly
    except PermissionError:
        pass  # alive, owned by someone else
    started = re.search(r"^Started at:\s*(.+)$", status, re.M)
    since = f", started {started.group(1).strip()}" if started else ""
    return f"process {pid}{_command_line(pid)}{since}"


def _command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return f" ({command[:200]})"


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
