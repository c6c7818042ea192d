"""Read-only SQL: which statements pass, and the HTTP endpoint the chDB sink serves them on.

chDB lets only one process open a database directory, so while the sink runs, analysts
cannot open it themselves. The sink therefore answers queries on 127.0.0.1 through this
endpoint, on read-only sessions of their own (``readonly=1``; the sink runs a few reads
at once, beside its inserts, which keep their own session and lock); :func:`ask_endpoint`
is the other side, used by ``citystream query`` (through the backend).

Protocol: ``POST /query`` with the SQL as the body, or (``Content-Type:
application/json``) a :class:`QueryRequest` as ``{"sql": ..., "parameters": {...},
"database": ..., "time_limit_s": ...}``: ClickHouse binds the ``{name:Type}`` placeholders
of the SQL from ``parameters`` server-side, so callers (the read API) never paste values
into SQL; ``time_limit_s`` lowers the default ``max_execution_time``. 200 with
``{"columns": [...], "types": [...], "rows": [[...], ...]}``, 400 with ``{"error": ...}``
for rejected statements and ClickHouse errors. ``GET /health`` answers ``{"status": "ok"}``.

**Audit** (``citystream sink`` serves it with an :class:`~core.audit_append.AuditAppender`):
every statement that ran appends one record to the audit log before its rows are sent:
the SQL, its bound parameters and database, the rows returned, and who asked. A JSON body
may carry ``"caller": {"key_id", "role", "action", "endpoint", "parameters"}``
(:class:`~core.audit_append.CallerContext`): the read API and ``citystream query`` send
theirs, and the record carries it, marked as claimed (anything on loopback may claim any
identity); without it the record names an anonymous loopback caller. The answer then
carries ``"audit": {"leaf_index": N}``, so the caller does not record the access again. A
record that cannot be written fails the statement: 503 with ``{"error": ...}``, no rows.
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError

from core.audit_append import (
    AuditAppender,
    AuditEntry,
    AuditWriteError,
    CallerContext,
    current_scope,
)

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
    caller: CallerContext | None = None  # who asks, as the caller claims it (audit)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "sql": self.sql,
            "parameters": self.parameters,
            "database": self.database,
            "time_limit_s": self.time_limit_s,
        }
        if self.caller is not None:
            body["caller"] = self.caller.to_json()
        return orjson.dumps(body, default=str)

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
        try:
            caller = None if body.get("caller") is None else CallerContext.from_json(body["caller"])
        except ValueError as exc:
            raise RejectedQuery(str(exc)) from exc
        seconds = None if limit is None else float(limit)
        return cls(body["sql"], parameters, database, seconds, caller)


class RejectedQuery(ValueError):
    """A statement the read-only query path refuses before it reaches ClickHouse."""


class QueryError(RuntimeError):
    """The query could not run; the message says why (ClickHouse's text where it has one)."""


class EndpointUnavailable(QueryError):
    """Nothing listens on the sink's query port."""


class AuditRefused(QueryError):
    """The statement ran but its audit record could not be written: nothing is returned."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    audit_leaf: int | None = None  # the endpoint's audit record of this read, if it wrote one


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


ANONYMOUS = "loopback"  # key id and role of a caller that sent no caller context
ENDPOINT_NAME = "sink query endpoint"


def audit_entry(request: QueryRequest, result: QueryResult) -> AuditEntry:
    """The audit record of a statement that ran: the caller's context (claimed) or an
    anonymous loopback caller, and under ``query_endpoint`` what the endpoint itself saw:
    the bound parameters, the database (null: the sink's own) and whether the identity
    was claimed. A caller cannot overwrite that member: the endpoint's facts win."""
    caller = request.caller
    facts = {
        "identity": "anonymous" if caller is None else "claimed",
        "database": request.database,
        "parameters": request.parameters,
    }
    if caller is None:
        return AuditEntry(
            role=ANONYMOUS,
            action="query",
            endpoint=ENDPOINT_NAME,
            parameters={"query_endpoint": facts},
            key_id=ANONYMOUS,
            sql=request.sql,
            rows=len(result.rows),
        )
    return AuditEntry(
        role=caller.role,
        action=caller.action,
        endpoint=caller.endpoint,
        parameters={**caller.parameters, "query_endpoint": facts},
        key_id=caller.key_id,
        sql=request.sql,
        rows=len(result.rows),
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        run: Callable[[QueryRequest], QueryResult],
        audit: AuditAppender | None,
    ) -> None:
        super().__init__(address, _Handler)
        self.run = run
        self.audit = audit

    def audited(self, request: QueryRequest) -> tuple[QueryResult, int | None]:
        """Run ``request`` and append its audit record (AuditWriteError: not written)."""
        result = self.run(request)
        if self.audit is None:
            return result, None
        return result, self.audit.append(audit_entry(request, result))


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
            result, leaf = self.server.audited(request)
        except UnicodeDecodeError:
            self._reply(400, {"error": "query is not UTF-8"})
            return
        except (RejectedQuery, ClickHouseError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        except AuditWriteError as exc:
            log.error("query endpoint: statement not audited, so not answered: %s", exc)
            error = f"the query could not be audited ({exc}); nothing was returned"
            self._reply(503, {"error": error})
            return
        except Exception as exc:
            log.exception("query endpoint failed on %r", body[:200])
            self._reply(500, {"error": f"internal error: {exc!r}"})
            return
        answer: dict[str, Any] = {
            "columns": result.columns, "types": result.types, "rows": result.rows
        }  # fmt: skip
        if leaf is not None:
            answer["audit"] = {"leaf_index": leaf}
        self._reply(200, answer)

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
    """The HTTP server in a background thread; nothing is bound until :meth:`start`.

    ``audit``: every statement that ran is appended to the audit log with it (``citystream
    sink`` always passes one; the endpoint closes it on :meth:`stop`). Without it nothing is
    recorded: for tests and embedding that hold no audit log.
    """

    def __init__(
        self,
        run: Callable[[QueryRequest], QueryResult],
        port: int,
        host: str = "127.0.0.1",
        audit: AuditAppender | None = None,
    ):
        self._run = run
        self._audit = audit
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server = _Server(self._address, self._run, self._audit)
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
        if self._audit is not None:
            threading.Thread(target=self._connect_audit, name="audit-connect", daemon=True).start()
        log.info("read-only query endpoint on %s", self.url)

    def _connect_audit(self) -> None:
        """Connect the audit log now, so the first reads do not all wait on its set-up.

        A failure here is logged, not raised: each statement's own append tries again and
        fails that statement (503) while the log stays unreachable.
        """
        assert self._audit is not None
        try:
            self._audit.open()
        except Exception as exc:  # the append path reports it per statement
            log.warning("audit log not reachable yet (%s); statements will retry it", exc)

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
        if self._audit is not None:
            self._audit.close()

    @property
    def audited(self) -> bool:
        return self._audit is not None


def endpoint_url(port: int, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{port}/query"


def ask_endpoint(port: int, sql: str | QueryRequest) -> QueryResult:
    """Ask the running sink; :class:`EndpointUnavailable` if no sink serves the port.

    Inside an :func:`~core.audit_append.audit_scope` the request carries the scope's caller
    context (unless it has one), and the leaf index of the endpoint's audit record is noted
    in the scope: the caller's access is then recorded, once.
    """
    request = sql if isinstance(sql, QueryRequest) else QueryRequest(sql)
    scope = current_scope()
    if scope is not None and request.caller is None:
        request = replace(request, caller=scope.caller)
    url = endpoint_url(port)
    limit = request.time_limit_s or float(READ_ONLY_SETTINGS["max_execution_time"])
    if isinstance(sql, str) and request.caller is None:
        data, content_type = sql.encode(), "text/plain; charset=utf-8"
    else:
        data, content_type = request.to_json(), "application/json"
    http_request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": content_type}
    )
    timeout = limit + 10
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            body = orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            raise AuditRefused(_error_text(exc)) from exc
        raise QueryError(_error_text(exc)) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise EndpointUnavailable(f"nothing listens on {url}") from exc
        raise QueryError(f"query endpoint {url}: {exc.reason}") from exc
    leaf = (body.get("audit") or {}).get("leaf_index")
    if leaf is not None and scope is not None:
        scope.leaves.append(int(leaf))
    return QueryResult(body["columns"], body["types"], body["rows"], leaf)


def _error_text(exc: urllib.error.HTTPError) -> str:
    raw = exc.read()
    try:
        return str(orjson.loads(raw)["error"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"query endpoint answered HTTP {exc.code}: {raw[:500]!r}"
