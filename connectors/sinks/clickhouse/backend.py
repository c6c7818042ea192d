"""Where the KPI tables live: embedded chDB or a ClickHouse server, behind one seam.

clickhouse-connect already puts both behind one client (``chdb:///abs/path`` and
``http(s)://host:port``), and a :class:`Session` is the part of it citystream uses: query,
insert, command. What still differs is who may open the data, and this module is the only
place that knows it (:func:`backend_for` picks by the URL):

- a **server** takes any number of sessions, with the configured user, from any process;
- **chDB** lets one process open its directory. That process (the running sink) serves
  the others through its read-only endpoint; without a sink, a reader opens the
  directory itself.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import urlparse

import clickhouse_connect
import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.query import QueryResult as ClickHouseResult
from clickhouse_connect.driver.summary import QuerySummary

from connectors.sinks.clickhouse.endpoint import (
    READ_ONLY_SETTINGS,
    EndpointUnavailable,
    QueryError,
    QueryRequest,
    QueryResult,
    RejectedQuery,
    ask_endpoint,
    endpoint_url,
    first_keyword,
    read_only_statement,
)
from core.settings import Settings


class Session(Protocol):
    """The calls citystream makes on ClickHouse; clickhouse-connect's clients have them."""

    def query(
        self, query: str | None = None, parameters: Sequence[Any] | dict[str, Any] | None = None
    ) -> ClickHouseResult: ...

    def command(
        self,
        cmd: str,
        parameters: Sequence[Any] | dict[str, Any] | None = None,
        *,
        use_database: bool = True,
    ) -> str | int | Sequence[str] | QuerySummary: ...

    def insert(
        self,
        table: str | None = None,
        data: Sequence[Sequence[Any]] | None = None,
        *,
        column_names: str | Sequence[str] | None = "*",
        database: str | None = None,
        column_type_names: Sequence[str] | None = None,
        column_oriented: bool = False,
    ) -> QuerySummary: ...

    def close(self) -> None: ...


class Backend(ABC):
    """How this process and others reach the tables at ``settings``' ClickHouse URL."""

    # Only one process may open the data: that one (the sink) must serve the others' reads.
    exclusive: ClassVar[bool]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def url(self) -> str:
        return self.settings.resolved_clickhouse_url

    def connect(self, *, readonly: bool = False, time_limit_s: float | None = None) -> Session:
        """A session with the sink's database as default (not checked: setup creates it);
        ``readonly`` applies READ_ONLY_SETTINGS to it, ``time_limit_s`` a lower
        max_execution_time (a readonly session cannot change it per query)."""
        client = clickhouse_connect.get_client(
            dsn=self.url,
            tz_mode="aware",
            settings=read_only_settings(time_limit_s) if readonly else {},
            **self._credentials(),
        )
        client.database = self.settings.clickhouse_database
        return client

    def read(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        *,
        database: str | None = None,
        time_limit_s: float | None = None,
    ) -> QueryResult:
        """One read-only statement, from a process that is not the sink (``citystream query``,
        the read API): ``{name:Type}`` placeholders bound from ``parameters`` by ClickHouse,
        on ``database`` (default: the configured one), within ``time_limit_s``."""
        try:
            read_only_statement(sql)
        except RejectedQuery as exc:
            raise QueryError(str(exc)) from exc
        return self._read(QueryRequest(sql, dict(parameters or {}), database, time_limit_s))

    def _credentials(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def _read(self, request: QueryRequest) -> QueryResult: ...

    def _read_with(self, session: Session, request: QueryRequest) -> QueryResult:
        try:
            return execute_request(session, request)
        except ClickHouseError as exc:
            raise QueryError(str(exc)) from exc
        finally:
            session.close()


class ServerBackend(Backend):
    """A ClickHouse server over HTTP(S): sessions as the configured user, from anywhere."""

    exclusive = False

    def _credentials(self) -> dict[str, Any]:
        credentials: dict[str, Any] = {"username": self.settings.clickhouse_username}
        if self.settings.clickhouse_password is not None:
            credentials["password"] = self.settings.clickhouse_password.get_secret_value()
        return credentials

    def _read(self, request: QueryRequest) -> QueryResult:
        try:
            session = self.connect(readonly=True, time_limit_s=request.time_limit_s)
        except ClickHouseError as exc:
            raise QueryError(f"cannot connect to ClickHouse at {self.url}: {exc}") from exc
        return self._read_with(session, request)


class ChdbBackend(Backend):
    """Embedded chDB: a directory only one process may open at a time."""

    exclusive = True

    @property
    def directory(self) -> Path:
        return Path(urlparse(self.url).path)

    def _read(self, request: QueryRequest) -> QueryResult:
        """The running sink's endpoint, else the directory opened in this process."""
        try:
            return ask_endpoint(self.settings.query_port, request)
        except EndpointUnavailable:
            return self._read_with(self._open_directory(request.time_limit_s), request)

    def _open_directory(self, time_limit_s: float | None = None) -> Session:
        path = self.directory
        if not path.is_dir():
            raise QueryError(f"no chDB data at {path}: has the ClickHouse sink run yet?")
        try:
            return self.connect(readonly=True, time_limit_s=time_limit_s)
        except ClickHouseError as exc:
            holder = lock_holder(path)
            if holder is None:
                raise QueryError(f"cannot open chDB directory {path}: {exc}") from exc
            raise QueryError(
                f"chDB directory {path} is locked by {holder}, and nothing answers on "
                f"{endpoint_url(self.settings.query_port)}: the sink's query endpoint is off or"
                " on another port (CITYSTREAM_QUERY_PORT must match the sink's)"
            ) from exc


def backend_for(settings: Settings) -> Backend:
    """The one place that tells chDB from a server (by the URL's scheme)."""
    return ChdbBackend(settings) if settings.embedded_clickhouse else ServerBackend(settings)


def connect(settings: Settings, *, readonly: bool = False) -> Session:
    """A session on ``settings``' ClickHouse (see :meth:`Backend.connect`)."""
    return backend_for(settings).connect(readonly=readonly)


# --- read-only statements ----------------------------------------------------------------


def read_only_settings(time_limit_s: float | None = None) -> dict[str, Any]:
    """READ_ONLY_SETTINGS, with max_execution_time lowered to ``time_limit_s`` if given."""
    settings = dict(READ_ONLY_SETTINGS)
    if time_limit_s is not None:
        settings["max_execution_time"] = min(float(settings["max_execution_time"]), time_limit_s)
    settings["readonly"] = settings.pop("readonly")  # last: after it nothing may change
    return settings


def execute_read_only(
    session: Session, sql: str, parameters: dict[str, Any] | None = None
) -> QueryResult:
    """Run one read-only statement; ``session`` should be connected with ``readonly``.
    ``parameters`` fill the statement's ``{name:Type}`` placeholders (bound by ClickHouse)."""
    statement = read_only_statement(sql)
    result = session.query(statement, parameters=parameters or None)
    columns = list(result.column_names)
    types = [t.name for t in result.column_types]
    if not columns and first_keyword(statement) in {"SELECT", "WITH"}:
        columns, types = _describe(session, statement, parameters)
    return QueryResult(columns, types, json_safe(result.result_rows))


def execute_request(session: Session, request: QueryRequest) -> QueryResult:
    """:func:`execute_read_only` on ``request.database`` (when given) of ``session``."""
    if request.database is not None:
        session.database = request.database  # type: ignore[attr-defined]
    return execute_read_only(session, request.sql, request.parameters)


def _describe(
    session: Session, statement: str, parameters: dict[str, Any] | None = None
) -> tuple[list[str], list[str]]:
    """Column names of an empty result: chDB sends no header block when no rows match."""
    described = session.query(f"DESCRIBE ({statement})", parameters=parameters or None).result_rows
    return [str(r[0]) for r in described], [str(r[1]) for r in described]


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)  # Decimal, IP addresses, ...: their text form is what analysts expect


def json_safe(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as plain JSON values (datetimes as ISO 8601), identical on every query path.

    Integers beyond 64 bits (UInt128, Int256 columns such as ``kpi_series_latest.version``)
    become their decimal text, as ClickHouse's own JSON formats quote them: orjson refuses
    them, and a JSON reader would lose their precision anyway.
    """
    try:
        encoded = orjson.dumps(rows, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # "Integer exceeds 64-bit range"; anything else fails again below
        wide = _wide_integers_as_text(rows)
        encoded = orjson.dumps(wide, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    result: list[list[Any]] = orjson.loads(encoded)
    return result


def _wide_integers_as_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, list | tuple):
        return [_wide_integers_as_text(item) for item in value]
    if isinstance(value, dict):
        return {key: _wide_integers_as_text(item) for key, item in value.items()}
    return value


# --- who holds a chDB directory ----------------------------------------------------------


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
