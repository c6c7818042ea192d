"""The dashboard: one static page at ``/`` and its files under ``/static/``.

Everything the page loads comes from this package (api/static/, the libraries vendored from
npm into api/static/vendor/ by ``make vendor``), so it works on a network with no route to
a CDN. The strict Content-Security-Policy (``default-src 'self'``) makes that a property
the browser enforces, not a promise: a script, stylesheet, image or connection to another
origin is refused. The one exception is an optional map tile server: when a tile URL is
configured its origin is allowed for images only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request, Response

from api.context import ApiContext, get_context

STATIC = Path(__file__).resolve().parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def tile_url(context: ApiContext) -> str | None:
    """The optional base-map tile URL template (setting ``api_map_tile_url``)."""
    return context.settings.api_map_tile_url or None


def content_security_policy(tiles: str | None) -> str:
    """``default-src 'self'`` plus the lock-down directives default-src does not cover.

    A tile server's origin (only its scheme and host) is added to img-src, nothing else.
    """
    images = "'self'"
    if tiles:
        parts = urlsplit(tiles)
        if parts.scheme in ("http", "https") and parts.netloc:
            images += f" {parts.scheme}://{parts.netloc.replace('{s}', '*')}"
    return (
        f"default-src 'self'; img-src {images}; object-src 'none'; base-uri 'self'; "
        "form-action 'self'; frame-ancestors 'none'"
    )


def static_file(relative: str) -> Path:
    """The file under api/static/ named by ``relative``; 404 for anything outside it."""
    path = (STATIC / relative).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no static file {relative!r}")
    if path.suffix not in CONTENT_TYPES:
        raise HTTPException(status_code=404, detail=f"no static file {relative!r}")
    return path


def file_response(request: Request, body: bytes, content_type: str, csp: str) -> Response:
    """``body`` with an ETag (a refresh costs a 304) and the page's security headers."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type=content_type, headers=headers)


def page_settings(context: ApiContext) -> bytes:
    """What the page needs from the deployment: the cities (a selector when several) and
    the optional tile layer; served as /static/config.json."""
    cities = [{"id": city.id, "name": city.name} for city in context.cities.values()]
    return json.dumps({"cities": cities, "tile_url": tile_url(context)}).encode()


router = APIRouter(include_in_schema=False)


@router.get("/")
def index(request: Request) -> Response:
    context = get_context(request)
    body = (STATIC / "index.html").read_bytes()
    return file_response(request, body, CONTENT_TYPES[".html"], csp_of(context))


@router.get("/static/config.json")
def page_config(request: Request) -> Response:
    context = get_context(request)
    return file_response(request, page_settings(context), CONTENT_TYPES[".json"], csp_of(context))


@router.get("/static/{relative:path}")
def static(relative: str, request: Request) -> Response:
    context = get_context(request)
    path = static_file(relative)
    return file_response(request, path.read_bytes(), CONTENT_TYPES[path.suffix], csp_of(context))


def csp_of(context: ApiContext) -> str:
    return content_security_policy(tile_url(context))
