"""``/v1/kpis``: the KPI catalogue, and each KPI's time series.

A series is bounded before it runs: ``from``/``to`` default to the day before the entity's
newest window, their span may not exceed ``api_max_span_days``, and a page holds at most
``api_page_size`` points; the rest comes page by page with an opaque ``cursor`` (keyset
on the bucket start, bound to the query it came from). Every value reaches ClickHouse as a
bound parameter.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Query, Request, Response

from api.context import ApiContext, Caller, City, Context, CurrentCaller, Role, record_access
from api.problems import bad_parameter, not_found
from api.queries import AGGREGATES, bucket_sql, clickhouse_time, parse_instant, shown
from core.kpis import Kpi
from families.registry import KPIS

router = APIRouter(prefix="/v1", tags=["KPIs"])

DEFAULT_SPAN = timedelta(days=1)
CSV_COLUMNS = ("start", "end", "value", "samples", "windows", "suppressed")


def kpi_entry(kpi: Kpi) -> dict[str, Any]:
    return {
        "name": kpi.name,
        "domain": kpi.domain,
        "unit": kpi.unit,
        "formula": kpi.formula,
        "window": kpi.window,
        "scopes": list(kpi.scopes),
    }


def known_kpi(name: str, parameter: str = "kpi") -> Kpi:
    """The catalogue entry of ``name``, or 404."""
    definition = KPIS.get(name)
    if definition is None:
        raise not_found(f"no KPI {name!r}; GET /v1/kpis lists them", parameter)
    return definition


@router.get("/kpis", summary="The KPI catalogue: name, unit, formula, window, scopes")
def catalogue(context: Context, caller: CurrentCaller, city: str | None = None) -> dict[str, Any]:
    """Every city computes the same KPIs; ``city`` is checked like everywhere else (404 when
    unknown), so a client that names its city on every request learns of a wrong one here."""
    place = context.city(city)
    kpis = [kpi_entry(kpi) for kpi in KPIS.values()]
    record_access(context, caller, "/v1/kpis", {"city": place.id}, None, len(kpis))
    return {"city": place.id, "kpis": kpis}


# --- the series ---------------------------------------------------------------------------

SERIES_SQL = """SELECT {start} AS start, {end} AS end, {agg}(value) AS value,
    toUInt64(sum(samples)) AS samples, count() AS windows
FROM kpi FINAL
WHERE kpi = {{kpi:String}} AND scope = {{scope:String}} AND entity_id = {{entity:String}}
  AND window_start >= {{from:DateTime64(3, 'UTC')}} AND window_start < {{to:DateTime64(3, 'UTC')}}
GROUP BY start, end
{having}ORDER BY start
LIMIT {{limit:UInt32}}"""

NEWEST_SQL = """SELECT max(window_start) AS newest, count() AS windows FROM kpi
WHERE kpi = {kpi:String} AND scope = {scope:String} AND entity_id = {entity:String}"""


def series_sql(resolution: str, agg: str, after: bool) -> str:
    start, end = bucket_sql(resolution)
    having = "HAVING start > {after:DateTime64(3, 'UTC')}\n" if after else ""
    return SERIES_SQL.format(start=start, end=end, agg=AGGREGATES[agg], having=having)


def newest_window(context: ApiContext, city: City, key: dict[str, str]) -> datetime:
    """Start of the entity's newest window, or 404 when the KPI has no such entity."""
    result = context.reader.read(NEWEST_SQL, key, database=city.database)
    [[newest, windows]] = result.rows
    if not windows:
        raise not_found(
            f"no {key['kpi']} series for {key['scope']} {key['entity']!r} in {city.id}", "entity"
        )
    return parse_instant(str(newest), "entity")


def period(
    context: ApiContext,
    city: City,
    key: dict[str, str],
    start: str | None,
    end: str | None,
) -> tuple[datetime, datetime]:
    """[from, to): as given, else a day ending after the newest window; bounded."""
    frm = parse_instant(start, "from") if start else None
    to = parse_instant(end, "to") if end else None
    if frm is None and to is None:
        to = newest_window(context, city, key) + timedelta(minutes=15)
    if frm is None:
        assert to is not None
        frm = to - DEFAULT_SPAN
    if to is None:
        to = frm + DEFAULT_SPAN
    if to <= frm:
        raise bad_parameter("to", "to must be later than from")
    longest = timedelta(days=context.settings.api_max_span_days)
    if to - frm > longest:
        raise bad_parameter(
            "to", f"from..to spans more than {longest.days} days; ask for less, page by page"
        )
    return frm, to


def query_fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def encode_cursor(after: str, fingerprint: str) -> str:
    raw = orjson.dumps({"after": after, "q": fingerprint})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> datetime:
    """The bucket start a cursor continues after; 400 if it is not one of this query's."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        body = orjson.loads(raw)
        after, query = str(body["after"]), body["q"]
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise bad_parameter("cursor", "cursor is not one this API gave out") from None
    if query != fingerprint:
        raise bad_parameter("cursor", "cursor belongs to another query (parameters changed)")
    return parse_instant(after, "cursor")


def wants_csv(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and "application/json" not in accept


def cache_headers(context: ApiContext, caller: Caller, etag: str) -> dict[str, str]:
    """ETag and Cache-Control; answers for keys are private (they may hold small cells)."""
    visibility = "public" if caller.role is Role.public else "private"
    return {
        "ETag": etag,
        "Cache-Control": f"{visibility}, max-age={context.settings.api_cache_max_age_s}",
        "Vary": "Accept, Authorization, X-API-Key",
    }


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def not_modified(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match")
    if given is None:
        return False
    return given.strip() == "*" or etag in [tag.strip() for tag in given.split(",")]


def render_csv(points: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in points:
        value = "" if p["value"] is None else repr(float(p["value"]))
        writer.writerow([p["start"], p["end"], value, p["samples"], p["windows"], p["suppressed"]])
    return out.getvalue().encode()


@router.get(
    "/kpis/{kpi}/series",
    summary="A KPI's time series for one entity (JSON, or CSV with Accept: text/csv)",
    responses={
        200: {"content": {"text/csv": {}}, "description": "Points, oldest first"},
        304: {"description": "Not modified (If-None-Match)"},
    },
)
def series(
    kpi: str,
    request: Request,
    context: Context,
    caller: CurrentCaller,
    scope: str = "city",
    entity: str | None = None,
    start: Annotated[str | None, Query(alias="from", description="ISO 8601, inclusive")] = None,
    to: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    resolution: Literal["15m", "1h", "1d"] = "15m",
    agg: Literal["avg", "sum", "min", "max"] = "avg",
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    city: str | None = None,
) -> Response:
    definition = known_kpi(kpi)
    if scope not in definition.scopes:
        raise bad_parameter("scope", f"{kpi} has scopes {', '.join(definition.scopes)}")
    place = context.city(city)
    if entity is None:
        if scope != "city":
            raise bad_parameter("entity", f"entity is required for scope {scope}")
        entity = place.id
    page = context.settings.api_page_size
    if limit is not None and limit > page:
        raise bad_parameter("limit", f"limit may be at most {page}")
    key = {"kpi": kpi, "scope": scope, "entity": entity}
    frm, until = period(context, place, key, start, to)
    fingerprint = query_fingerprint(
        {**key, "city": place.id, "from": frm.isoformat(), "to": until.isoformat(),
         "resolution": resolution, "agg": agg}
    )  # fmt: skip
    after = decode_cursor(cursor, fingerprint) if cursor else None
    size = limit or page
    parameters: dict[str, Any] = {
        **key,
        "from": clickhouse_time(frm),
        "to": clickhouse_time(until),
        "limit": size + 1,
        "zone": place.timezone,
    }
    if after is not None:
        parameters["after"] = clickhouse_time(after)
    sql = series_sql(resolution, agg, after is not None)
    result = context.reader.read(sql, parameters, database=place.database)
    rows = result.rows
    if not rows and after is None and start is not None:
        newest_window(context, place, key)  # 404 when the entity has no series at all
    more = len(rows) > size
    rows = rows[:size]
    full = caller.role.at_least(Role.analyst)
    k = context.suppression.k(kpi)
    points = []
    for bucket_start, bucket_end, value, samples, windows in rows:
        value_shown, suppressed = shown(value, int(samples), k, full)
        points.append(
            {"start": bucket_start, "end": bucket_end, "value": value_shown,
             "samples": int(samples), "windows": int(windows), "suppressed": suppressed}
        )  # fmt: skip
    next_cursor = encode_cursor(str(rows[-1][0]), fingerprint) if more and rows else None
    csv_wanted = wants_csv(request)
    record_access(
        context,
        caller,
        "/v1/kpis/{kpi}/series",
        {**key, "city": place.id, "from": frm.isoformat(), "to": until.isoformat(),
         "resolution": resolution, "agg": agg, "cursor": cursor, "limit": size,
         "format": "csv" if csv_wanted else "json"},
        sql,
        len(points),
    )  # fmt: skip
    body = {
        "kpi": kpi,
        "unit": definition.unit,
        "city": place.id,
        "scope": scope,
        "entity": entity,
        "from": frm.isoformat().replace("+00:00", "Z"),
        "to": until.isoformat().replace("+00:00", "Z"),
        "resolution": resolution,
        "agg": agg,
        "suppression_k": k,
        "points": points,
        "next_cursor": next_cursor,
    }
    payload = render_csv(points) if csv_wanted else orjson.dumps(body)
    etag = etag_of(payload + (b"csv" if csv_wanted else b"json"))
    headers = cache_headers(context, caller, etag)
    if next_cursor is not None:
        query = dict(request.query_params) | {"cursor": next_cursor}
        headers["Link"] = f'<{request.url.path}?{urlencode(query)}>; rel="next"'
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    media = "text/csv; charset=utf-8" if csv_wanted else "application/json"
    return Response(payload, media_type=media, headers=headers)
