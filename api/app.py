"""The read API's application: ``create_app(context)`` returns the FastAPI app.

FastAPI, because it derives an OpenAPI 3.1 document from typed routes (a test validates
it) and serves both the JSON API and the dashboard's static files from one process.

Every error leaves as RFC 9457 problem+json (``api.problems``): a ``Problem`` raised in a
route, FastAPI's request validation (400, naming the parameter), unknown paths (404),
wrong methods (405) and anything unexpected (500, logged). Routers reach the shared state
with ``Depends(api.context.get_context)``; the context is ``app.state.context``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.context import ApiContext
from api.problems import PROBLEM_JSON, Problem, bad_parameter

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(context: ApiContext) -> FastAPI:
    """The API over ``context``; no I/O happens until a request comes."""
    app = FastAPI(
        lifespan=_lifespan,
        title="citystream read API",
        version=API_VERSION,
        description="Open KPIs of the city: catalogue, series, maps, equity, alerts, status "
        "and live updates, NGSI-LD and DCAT. Errors are application/problem+json (RFC 9457).",
        openapi_url="/openapi.json",
    )
    app.state.context = context
    _problem_handlers(app)
    _include_routers(app)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The live feed (Kafka) runs while the app serves."""
    feed = app.state.context.live
    if feed is not None:
        feed.start()
    try:
        yield
    finally:
        if feed is not None:
            feed.stop()


def _include_routers(app: FastAPI) -> None:
    """Every router of the API. Imported here, so that importing ``api.app`` stays cheap."""
    # --- api-core routers (KPIs, series, map, equity, alerts, status, stream) -----------
    from api import routes_kpis, routes_live, routes_map

    app.include_router(routes_kpis.router)
    app.include_router(routes_map.router)
    app.include_router(routes_live.router)
    app.add_api_route("/health", _health, include_in_schema=False)
    # --- colleagues' routers: add one `app.include_router(...)` line each, below --------
    # (api.ngsi_ld, api.dcat, api.dashboard, api.audit_routes, api.things)
    from api import dcat, ngsi_ld  # open-data: NGSI-LD entities and the DCAT catalogue

    app.include_router(ngsi_ld.router)
    app.include_router(dcat.router)
    from api import dashboard  # the dashboard: / and /static/ (strict CSP)

    app.include_router(dashboard.router)
    from api import audit_routes  # the audit log: checkpoint and proofs

    app.include_router(audit_routes.router)
    from api import things  # WoT Thing Descriptions of the sensors (#18)

    app.include_router(things.router)
    # --- end of colleagues' routers ------------------------------------------------------


async def _health() -> dict[str, str]:
    """Liveness for probes: the process answers (no data is read, nothing is audited)."""
    return {"status": "ok"}


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    return JSONResponse(
        problem.body(instance=request.url.path),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def _validation_problem(exc: RequestValidationError) -> Problem:
    """FastAPI's first validation error as a 400 naming the parameter."""
    errors: list[dict[str, Any]] = list(exc.errors())
    if not errors:
        return bad_parameter("request", "invalid request")
    first = errors[0]
    location = [str(part) for part in first.get("loc", ())]
    name = location[-1] if len(location) > 1 else (location[0] if location else "request")
    where = location[0] if location else "request"
    return bad_parameter(name, f"{where} parameter {name!r}: {first.get('msg', 'invalid')}")


def _problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(_validation_problem(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path {request.url.path}"
        problem = Problem(exc.status_code, detail, headers=dict(exc.headers or {}))
        return problem_response(problem, request)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(Problem(500, f"internal error: {type(exc).__name__}"), request)
