"""What every route of the read API is given: settings, cities, a KPI reader, an audit recorder.

The interfaces colleagues code against (routers plug into ``api.app.create_app``):

- :class:`Role` (StrEnum, least privilege first): ``public`` < ``analyst`` < ``auditor`` <
  ``operator``; ``role.at_least(Role.analyst)`` compares them.
- :class:`City`: one configured city (``id``, ``name``, ``timezone``, ``database``,
  ``topic_prefix``, and ``pack``: its :class:`core.city.CityPack`, which holds the district
  polygons and the road-segment / car-park reference files the maps draw).
- :class:`KpiReader` (protocol): ``read(sql, parameters, *, database) -> QueryResult``; the
  SQL uses ClickHouse's bound placeholders ``{name:Type}`` filled from ``parameters``
  (never paste user input into SQL), runs read-only with a time limit; raises
  ``connectors.sinks.clickhouse.endpoint.QueryError`` when it cannot run.
- :class:`AccessRecord` and :class:`AuditRecorder` (protocol): ``record(access)`` is called
  after every data access with the rows returned; it raises when the write fails, and
  the request then fails (503 problem+json).
- :class:`Caller`: who asks (``key_id``, ``role``; ``key_id`` is None for the public).
- :class:`ApiContext` (dataclass): ``settings``, ``cities`` (by id; ``city(id_or_None)``
  resolves the ``city`` query parameter, default the first), ``reader``, ``audit``
  (optional), ``api_keys`` (key -> :class:`Caller`), ``suppression`` (k per KPI),
  ``live`` (the Kafka feed of alerts and new KPI windows, :class:`api.stream.LiveFeed`,
  started with the app).
- FastAPI dependencies: :func:`get_context` (``Depends(get_context)``), :func:`current_caller`
  and :func:`current_role` (the key from ``Authorization: Bearer <key>`` or ``X-API-Key``;
  no key means ``public``; an unknown key is 401). :func:`current_caller` also opens the
  request's audit scope (``core.audit_append``), so the sink's query endpoint records each
  read with the caller's key id, role, route and parameters.
- Annotated shorthands for route signatures: ``Context``, ``CurrentCaller``, ``CurrentRole``
  (``def route(context: Context, caller: CurrentCaller): ...``).
- :func:`record_access`: the audit call every data route makes (``context.audit`` may be None);
  the access carries the leaf indexes of the records the query endpoint already wrote for
  the request (``AccessRecord.audited_leaves``), so the recorder does not write it twice.

Errors are raised as ``api.problems.Problem`` (``bad_parameter``, ``not_found``, ...).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request

from api.problems import Problem, not_found, unavailable
from api.queries import Suppression
from connectors.sinks.clickhouse.endpoint import QueryResult
from core.audit_append import CallerContext, action_of, current_scope, enter_scope
from core.city import CityPack
from core.settings import Settings

if TYPE_CHECKING:
    from api.stream import LiveFeed

__all__ = [
    "AccessRecord",
    "ApiContext",
    "AuditRecorder",
    "Caller",
    "City",
    "Context",
    "CurrentCaller",
    "CurrentRole",
    "KpiReader",
    "QueryResult",
    "Role",
    "current_caller",
    "current_role",
    "get_context",
    "record_access",
]


class Role(StrEnum):
    """What a caller may see, least privilege first (the order is the rank)."""

    public = "public"  # residents, apps: small cells suppressed
    analyst = "analyst"  # every value in full
    auditor = "auditor"  # + the audit log
    operator = "operator"  # + operational detail

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


@dataclass(frozen=True)
class Caller:
    """Who makes a request: the API key's id (never the key itself) and its role."""

    key_id: str | None
    role: Role


PUBLIC = Caller(None, Role.public)


@dataclass(frozen=True)
class City:
    """One city the API serves: its identity, where its KPIs and topics live, its pack."""

    id: str  # the city scope's entity_id, e.g. "aarhus"
    name: str
    timezone: str  # IANA zone of the city's local days (resolution=1d, kpi_daily)
    database: str  # ClickHouse database holding its kpi tables
    topic_prefix: str  # its Kafka namespace: topics are f"{topic_prefix}city.kpi.v1"
    pack: CityPack | None = None  # reference data and district polygons for the maps

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


class KpiReader(Protocol):
    """Read-only, parameterised, time-limited SQL on a city's database."""

    def read(self, sql: str, parameters: dict[str, Any], *, database: str) -> QueryResult: ...


@dataclass(frozen=True)
class AccessRecord:
    """One data access, as the audit log keeps it."""

    key_id: str | None
    role: str
    endpoint: str  # the route's path template, e.g. "/v1/kpis/{kpi}/series"
    parameters: dict[str, Any]
    sql: str | None
    rows: int
    at: datetime
    # records the sink's query endpoint appended for this request (it ran its SQL there)
    audited_leaves: tuple[int, ...] = ()


class AuditRecorder(Protocol):
    """Appends access records; raises when the record could not be written. An access
    with ``audited_leaves`` is already in the log: a log recorder appends nothing more."""

    def record(self, access: AccessRecord) -> None: ...


@dataclass
class ApiContext:
    """Everything the routes share; built once by ``citystream serve`` (or a test)."""

    settings: Settings
    cities: dict[str, City]
    reader: KpiReader
    audit: AuditRecorder | None = None
    api_keys: Mapping[str, Caller] = field(default_factory=dict)  # key -> caller
    suppression: Suppression = field(default_factory=lambda: Suppression(5, {}))
    live: LiveFeed | None = None  # Kafka: alerts and /v1/stream; started by create_app

    def city(self, city_id: str | None = None) -> City:
        """The city named by the ``city`` parameter, or the first configured one."""
        if not self.cities:
            raise Problem(500, "no city configured")
        if city_id is None:
            return next(iter(self.cities.values()))
        try:
            return self.cities[city_id]
        except KeyError:
            known = ", ".join(self.cities)
            raise not_found(f"no city {city_id!r} (cities: {known})", "city") from None

    def caller_for(self, key: str) -> Caller | None:
        """The caller an API key stands for (constant-time comparison), or None."""
        found = None
        for known, caller in self.api_keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                found = caller
        return found


def get_context(request: Request) -> ApiContext:
    """FastAPI dependency: the app's context (set by ``create_app``)."""
    context: ApiContext = request.app.state.context
    return context


def presented_key(request: Request) -> str | None:
    """The API key of the request: ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem(
                401,
                "Authorization must be 'Bearer <key>'",
                parameter="Authorization",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return token.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


async def current_caller(request: Request) -> Caller:
    """FastAPI dependency: who asks; no key is the public, an unknown key is 401.

    Also opens the request's audit scope. Async on purpose: it runs in the request's own
    task, so the scope it sets is seen by the route and the worker thread it runs in (a
    sync dependency runs in a copied context and its scope would be lost). It does no I/O.
    """
    key = presented_key(request)
    caller = PUBLIC if key is None else get_context(request).caller_for(key)
    if caller is None:
        challenge = {"WWW-Authenticate": "Bearer"}
        raise Problem(401, "unknown API key", parameter="Authorization", headers=challenge)
    enter_scope(caller_context(request, caller))
    return caller


async def current_role(request: Request) -> Role:
    """FastAPI dependency: the caller's role (``public`` without a key)."""
    return (await current_caller(request)).role


def caller_context(request: Request, caller: Caller) -> CallerContext:
    """What the query endpoint records of a request: key id, role, route, parameters."""
    route = request.scope.get("route")
    endpoint = str(getattr(route, "path", request.url.path))
    parameters: dict[str, Any] = {**request.path_params, **request.query_params}
    action = action_of(endpoint, parameters)
    return CallerContext(caller.key_id, caller.role.value, endpoint, parameters, action)


Context = Annotated[ApiContext, Depends(get_context)]
CurrentCaller = Annotated[Caller, Depends(current_caller)]
CurrentRole = Annotated[Role, Depends(current_role)]


def record_access(
    context: ApiContext,
    caller: Caller,
    endpoint: str,
    parameters: dict[str, Any],
    sql: str | None,
    rows: int,
) -> None:
    """Audit one data access after it ran; a failed write fails the request with 503."""
    if context.audit is None:
        return
    access = AccessRecord(
        key_id=caller.key_id,
        role=caller.role.value,
        endpoint=endpoint,
        parameters=parameters,
        sql=sql,
        rows=rows,
        at=datetime.now(UTC),
        audited_leaves=tuple(scope.leaves) if (scope := current_scope()) else (),
    )
    try:
        context.audit.record(access)
    except Exception as exc:
        raise unavailable(f"the access could not be audited ({exc}); nothing was returned") from exc
