"""Read-only SQL over HTTP, served by the sink while it owns an embedded chDB directory.

chDB lets only one process open a database directory, so while the sink runs, analysts
cannot open it themselves. The sink therefore answers queries on 127.0.0.1 through this
endpoint, on a client set to ``readonly=1``, serialised with its inserts by a shared lock.

Protocol: ``POST /query`` with the SQL as the body; 200 with
``{"columns": [...], "types": [...], "rows": [[...], ...]}``, 400 with ``{"error": ...}``
for rejected statements and ClickHouse errors. ``GET /health`` answers ``{"status": "ok"}``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
# Applied in this order; readonly last, because after it no setting may change.
READ_ONLY_SETTINGS: dict[str, Any] = {"max_execution_time": 60, "readonly": 1}

_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")


class RejectedQuery(ValueError):
    """A statement the read-only query path refuses before it reaches ClickHouse."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


def read_only_statement(sql: str) -> str:
    """The statement without trailing semicolons, or :class:`RejectedQuery`.

    ``readonly=1`` is what actually protects the data; this check only gives a clear
    message instead of a ClickHouse error for the obvious cases.
    """
    statement = sql.strip().rstrip(";").rstrip()
    keyword = _keyword(statement)
    if keyword not in READ_ONLY_KEYWORDS:
        allowed = ", ".join(sorted(READ_ONLY_KEYWORDS))
        raise RejectedQuery(f"only read-only statements ({allowed}) are allowed, got {keyword!r}")
    return statement


def _keyword(statement: str) -> str:
    noise = _LEADING_NOISE.match(statement)
    word = _FIRST_WORD.match(statement, noise.end() if noise else 0)
    return word.group(0).upper() if word else ""


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)  # Decimal, IP addresses, ...: their text form is what analysts expect


def json_safe(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as plain JSON values (datetimes as ISO 8601), identical on every query path."""
    encoded = orjson.dumps(rows, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    result: list[list[Any]] = orjson.loads(encoded)
    return result


def execute_read_only(client: Client, sql: str) -> QueryResult:
    """Run one read-only statement; ``client`` should be connected with READ_ONLY_SETTINGS."""
    statement = read_only_statement(sql)
    result = client.query(statement)
    columns = list(result.column_names)
    types = [t.name for t in result.column_types]
    if not columns and _keyword(statement) in {"SELECT", "WITH"}:
        columns, types = _describe(client, statement)
    return QueryResult(columns, types, json_safe(result.result_rows))


def _describe(client: Client, statement: str) -> tuple[list[str], list[str]]:
    """Column names of an empty result: chDB sends no header block when no rows match."""
    described = client.query(f"DESCRIBE ({statement})")
    return [str(r[0]) for r in described.result_rows], [str(r[1]) for r in described.result_rows]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], run: Callable[[str], QueryResult]) -> None:
        super().__init__(address, _Handler)
        self.run = run


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/health":
            self._reply(200, {"status": "ok"})
        else:
            self._reply(404, {"error": f"no such path {self.path}; POST SQL to /query"})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/query":
            self._reply(404, {"error": f"no such path {self.path}; POST SQL to /query"})
            return
        sql = self._read_body()
        if sql is None:
            return
        try:
            result = self.server.run(sql)
        except (RejectedQuery, ClickHouseError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        except Exception as exc:
            log.exception("query endpoint failed on %r", sql[:200])
            self._reply(500, {"error": f"internal error: {exc!r}"})
            return
        self._reply(200, {"columns": result.columns, "types": result.types, "rows": result.rows})

    def _read_body(self) -> str | None:
        """The SQL text, or None after replying with the reason it was refused."""
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._reply(411, {"error": "Content-Length required"})
            return None
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": f"query longer than {MAX_BODY_BYTES} bytes"})
            return None
        try:
            return self.rfile.read(length).decode("utf-8")
        except UnicodeDecodeError:
            self._reply(400, {"error": "query is not UTF-8"})
            return None

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        payload = orjson.dumps(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status >= 400:  # the request body may be unread: do not reuse the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class QueryEndpoint:
    """The HTTP server in a background thread; nothing is bound until :meth:`start`."""

    def __init__(self, run: Callable[[str], QueryResult], port: int, host: str = "127.0.0.1"):
        self._run = run
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server = _Server(self._address, self._run)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"query endpoint cannot listen on {self._address[0]}:{self._address[1]}"
                f" ({exc.strerror}); set CITYSTREAM_QUERY_PORT to a free port",
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="citystream-query-endpoint", daemon=True
        )
        self._thread.start()
        log.info("read-only query endpoint on %s", self.url)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("query endpoint not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}/query"

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
