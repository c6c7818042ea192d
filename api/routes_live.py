"""Live state: ``/v1/alerts``, ``/v1/status`` and ``/v1/stream`` (server-sent events).

Alerts and the stream come from the process's :class:`api.stream.LiveFeed` (Kafka);
freshness from ClickHouse; verification results from ``citystream verify``'s store
(:mod:`api.verification`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from api.context import ApiContext, Caller, Context, CurrentCaller, Role, record_access
from api.problems import bad_parameter, unavailable
from api.queries import shown
from api.stream import LiveFeed, Subscription
from api.verification import latest_results
from families.registry import KPIS

router = APIRouter(prefix="/v1", tags=["live"])

CATCH_UP_WAIT_S = 10.0  # how long /v1/alerts waits for the feed's first read of the topic
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing the stream


def running_feed(context: ApiContext) -> LiveFeed:
    feed = context.live
    if feed is None:
        raise unavailable("the live feed (Kafka) is not configured in this API")
    if feed.error is not None:
        raise unavailable(f"the live feed stopped: {feed.error}")
    return feed


@router.get("/alerts", summary="Active alerts and their history (from city.alerts.v1)")
def alerts(
    context: Context,
    caller: CurrentCaller,
    city: str | None = None,
    type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> dict[str, Any]:
    place = context.city(city)
    feed = running_feed(context)
    if not feed.caught_up.wait(CATCH_UP_WAIT_S):
        raise unavailable("the alerts topic is still being read; try again shortly")
    active = [a for a in feed.active_alerts(place.id) if type is None or a["type"] == type]
    history = [a for a in feed.alert_history(place.id) if type is None or a["type"] == type]
    active.sort(key=lambda a: str(a["since"]))
    record_access(
        context, caller, "/v1/alerts", {"city": place.id, "type": type, "limit": limit}, None,
        len(active) + min(limit, len(history)),
    )  # fmt: skip
    return {"city": place.id, "active": active, "history": history[:limit]}


FRESHNESS_SQL = """SELECT splitByChar('.', kpi)[1] AS domain, max(window_end) AS newest,
    toUInt64(count()) AS windows
FROM kpi GROUP BY domain ORDER BY domain"""


@router.get("/status", summary="Freshness per domain and the latest verification results")
def status(context: Context, caller: CurrentCaller, city: str | None = None) -> dict[str, Any]:
    place = context.city(city)
    result = context.reader.read(FRESHNESS_SQL, {}, database=place.database)
    freshness = {
        str(domain): {"newest_window_end": newest, "windows": int(windows)}
        for domain, newest, windows in result.rows
    }
    verification = latest_results(context.settings.data_dir, place.database)
    feed = context.live
    live = {
        "configured": feed is not None,
        "caught_up": bool(feed and feed.caught_up.is_set()),
        "error": feed.error if feed else None,
        "subscribers": feed.subscribers if feed else 0,
    }
    record_access(
        context, caller, "/v1/status", {"city": place.id}, FRESHNESS_SQL, len(result.rows)
    )
    return {"city": place.id, "freshness": freshness, "verification": verification, "live": live}


# --- server-sent events -----------------------------------------------------------------------


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def visible(event: dict[str, Any], caller: Caller, context: ApiContext) -> dict[str, Any]:
    """A KPI event as the caller may see it (small cells suppressed for the public)."""
    if event["type"] != "kpi":
        return event["data"]
    data = dict(event["data"])
    value, suppressed = shown(
        data["value"], int(data["samples"]), context.suppression.k(data["kpi"]),
        caller.role.at_least(Role.analyst),
    )  # fmt: skip
    return data | {"value": value, "suppressed": suppressed}


def wanted(event: dict[str, Any], cities: set[str], kpis: set[str], types: set[str]) -> bool:
    data = event["data"]
    if event["type"] not in types or data["city"] not in cities:
        return False
    return event["type"] != "kpi" or not kpis or data["kpi"] in kpis


async def events(
    request: Request,
    feed: LiveFeed,
    subscription: Subscription,
    accept: tuple[set[str], set[str], set[str]],
    caller: Caller,
    context: ApiContext,
) -> AsyncIterator[bytes]:
    """The client's events, a keep-alive comment when idle, until it disconnects."""
    try:
        yield b"retry: 3000\n: connected\n\n"
        while not await request.is_disconnected():
            try:
                event = await asyncio.wait_for(subscription.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if subscription.dropped:
                yield sse("dropped", {"events": subscription.dropped})
                subscription.dropped = 0
            if wanted(event, *accept):
                yield sse(event["type"], visible(event, caller, context))
    finally:
        feed.unsubscribe(subscription)


@router.get(
    "/stream",
    summary="Server-sent events: new KPI windows (event: kpi) and alert transitions (alert)",
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    context: Context,
    caller: CurrentCaller,
    city: str | None = None,
    kpi: Annotated[str | None, Query(description="comma-separated KPI names")] = None,
    types: Annotated[str, Query(description="kpi, alert or both")] = "kpi,alert",
) -> StreamingResponse:
    feed = running_feed(context)
    cities = {context.city(city).id} if city else set(context.cities)
    kpis = {k.strip() for k in (kpi or "").split(",") if k.strip()}
    if unknown := sorted(kpis - set(KPIS)):
        raise bad_parameter("kpi", f"unknown KPIs {unknown}")
    kinds = {t.strip() for t in types.split(",") if t.strip()}
    if not kinds or kinds - {"kpi", "alert"}:
        raise bad_parameter("types", "types is kpi, alert or kpi,alert")
    parameters = {"city": city, "kpi": sorted(kpis), "types": sorted(kinds)}
    await run_in_threadpool(record_access, context, caller, "/v1/stream", parameters, None, 0)
    subscription = feed.subscribe()
    return StreamingResponse(
        events(request, feed, subscription, (cities, kpis, kinds), caller, context),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
