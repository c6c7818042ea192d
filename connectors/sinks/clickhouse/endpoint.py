"""Read-only SQL: which statements pass, and the HTTP endpoint the chDB sink serves them on.

chDB lets only one process open a database directory, so while the sink runs, analysts
cannot open it themselves. The sink therefore answers queries on 127.0.0.1 through this
endpoint, on a session set to ``readonly=1``, serialised with its inserts by a shared lock;
:func:`ask_endpoint` is the other side, used by ``citystream query`` (through the backend).

Protocol: ``POST /query`` with the SQL as the body, or (``Content-Type:
application/json``) a :class:`QueryRequest` as ``{"sql": ..., "parameters": {...},
"database": ..., "time_limit_s": ...}``: ClickHouse binds the ``{name:Type}`` placeholders
of the SQL from ``parameters`` server-side, so callers (the read API) never paste values
into SQL; ``time_limit_s`` lowers the default ``max_execution_time``. 200 with
``{"columns": [...], "types": [...], "rows": [[...], ...]}``, 400 with ``{"error": ...}``
for rejected statements and ClickHouse errors. ``GET /health`` answers ``{"status": "ok"}``.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
READ_ONLY_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN"})
# Applied in this order; readonly last, because after it no setting may change.
READ_ONLY_SETTINGS: dict[str, Any] = {"max_execution_time": 60, "readonly": 1}

_LEADING_NOISE = re.compile(r"(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/|\()*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class QueryRequest:
    """One read: the SQL, its bound parameters, the database (default: the sink's) and
    the time limit in seconds (default: READ_ONLY_SETTINGS' max_execution_time)."""

    sql: str
    parameters: dict[str, Any] = field(default_factory=dict)
    database: str | None = None
    time_limit_s: float | None = None

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "sql": self.sql,
                "parameters": self.parameters,
                "database": self.database,
                "time_limit_s": self.time_limit_s,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> QueryRequest:
        """The request of a JSON body, or :class:`RejectedQuery` saying what is wrong."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RejectedQuery(f"JSON body: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise RejectedQuery('JSON body must be {"sql": "...", "parameters": {...}}')
        parameters = body.get("parameters") or {}
        database, limit = body.get("database"), body.get("time_limit_s")
        if not isinstance(parameters, dict):
            raise RejectedQuery("parameters must be a JSON object")
        if database is not None and not isinstance(database, str):
            raise RejectedQuery("database must be a string")
        if limit is not None and (not isinstance(limit, int | float) or not 0 < limit <= 600):
            raise RejectedQuery("time_limit_s must be a number of seconds in (0, 600]")
        return cls(body["sql"], parameters, database, None if limit is None else float(limit))


class RejectedQuery(ValueError):
    """A statement the read-only query path refuses before it reaches ClickHouse."""


class QueryError(RuntimeError):
    """The query could not run; the message says why (ClickHouse's text where it has one)."""


class EndpointUnavailable(QueryError):
    """Nothing listens on the sink's query port."""


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
    keyword = first_keyword(statement)
    if keyword not in READ_ONLY_KEYWORDS:
        allowed = ", ".join(sorted(READ_ONLY_KEYWORDS))
        raise RejectedQuery(f"only read-only statements ({allowed}) are allowed, got {keyword!r}")
    return statement


def first_keyword(statement: str) -> str:
    """The statement's first word in upper case, past comments and parentheses."""
    noise = _LEADING_NOISE.match(statement)
    word = _FIRST_WORD.match(statement, noise.end() if noise else 0)
    return word.group(0).upper() if word else ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], run: Callable[[QueryRequest], QueryResult]
    ) -> None:
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
        body = self._read_body()
        if body is None:
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        try:
            if content_type == "application/json":
                request = QueryRequest.from_json(body)
            else:
                request = QueryRequest(body.decode("utf-8"))
            result = self.server.run(request)
        except UnicodeDecodeError:
            self._reply(400, {"error": "query is not UTF-8"})
            return
        except (RejectedQuery, ClickHouseError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        except Exception as exc:
            log.exception("query endpoint failed on %r", body[:200])
            self._reply(500, {"error": f"internal error: {exc!r}"})
            return
        self._reply(200, {"columns": result.columns, "types": result.types, "rows": result.rows})

    def _read_body(self) -> bytes | None:
        """The request body, or None after replying with the reason it was refused."""
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._reply(411, {"error": "Content-Length required"})
            return None
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self._reply(413, {"error": f"query longer than {MAX_BODY_BYTES} bytes"})
            return None
        return self.rfile.read(length)

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

    def __init__(
        self, run: Callable[[QueryRequest], QueryResult], port: int, host: str = "127.0.0.1"
    ):
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
        return endpoint_url(self.port, self._address[0])

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


def endpoint_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/query"


def ask_endpoint(port: int, sql: str | QueryRequest) -> QueryResult:
    """Ask the running sink; :class:`EndpointUnavailable` if no sink serves the port."""
    url = endpoint_url(port)
    if isinstance(sql, QueryRequest):
        limit = sql.time_limit_s or float(READ_ONLY_SETTINGS["max_execution_time"])
        data, content_type = sql.to_json(), "application/json"
    else:
        limit = float(READ_ONLY_SETTINGS["max_execution_time"])
        data, content_type = sql.encode(), "text/plain; charset=utf-8"
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": content_type}
    )
    timeout = limit + 10
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise QueryError(_error_text(exc)) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise EndpointUnavailable(f"nothing listens on {url}") from exc
        raise QueryError(f"query endpoint {url}: {exc.reason}") from exc
    return QueryResult(body["columns"], body["types"], body["rows"])


def _error_text(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return str(orjson.loads(raw)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"query endpoint answered HTTP {exc.code}: {raw[:500]!r}"
