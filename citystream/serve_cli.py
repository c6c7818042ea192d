"""`citystream serve [--port N] [--city DIR ...]`: the read API and dashboard under uvicorn.

Reads the settings once, builds the :class:`api.context.ApiContext` (cities, the reader
through the sink's backend, API keys, suppression, the Kafka live feed) with every data
access audited to the tamper-evident log (``trust.audit.recorder.LogRecorder``), and
serves ``api.app.create_app`` on ``api_host:api_port`` (default 127.0.0.1:8095).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings


def add_serve_parser(sub: Any, add_common: Callable[..., None]) -> None:
    serve = sub.add_parser("serve", help="the read API and dashboard (HTTP, OpenAPI 3.1)")
    serve.add_argument("--port", type=int, dest="api_port", help="default: api_port (8095)")
    serve.add_argument("--host", dest="api_host", help="default: api_host (127.0.0.1)")
    serve.add_argument(
        "--city",
        dest="cities",
        action="append",
        type=Path,
        metavar="DIR",
        help="serve this city pack (repeat for several; default: CITYSTREAM_CITY or Aarhus)",
    )
    serve.add_argument(
        "--no-audit",
        action="store_true",
        help="do not write accesses to the audit log (local trials only)",
    )
    add_common(serve, city=False)


def cmd_serve(args: argparse.Namespace) -> int:
    from citystream.cli import city_namespace, flag_settings

    settings = flag_settings(args, api_port=args.api_port, api_host=args.api_host)
    cities = [city_namespace(settings, city) for city in args.cities or ()]
    if not cities:
        settings = city_namespace(settings)
    try:
        app = build_app(settings, cities or [settings], audited=not args.no_audit)
    except ValueError as exc:  # malformed keys or suppression settings: say which
        print(f"citystream serve: {exc}", file=sys.stderr)
        return 2
    serve_until_stopped(app, settings, audited=not args.no_audit)
    return 0


def serve_until_stopped(app: Any, settings: Settings, *, audited: bool) -> None:
    """``app`` under uvicorn until Ctrl-C; an audited app also signs audit checkpoints every
    ``audit_checkpoint_interval_s`` meanwhile, so the accesses it logs are sealed as it
    runs. ``citystream serve`` and ``citystream demo --serve`` both serve through here."""
    timer = None
    if audited:
        from trust.audit.checkpoint import CheckpointTimer

        timer = CheckpointTimer(settings)
        timer.start()
    try:
        serve(app, settings)
    finally:
        if timer is not None:
            timer.stop()


def build_app(settings: Settings, cities: list[Settings], *, audited: bool) -> Any:
    """The FastAPI app over ``cities``, audited to the log unless ``audited`` is False."""
    from api.app import create_app
    from api.config import build_context

    audit = None
    if audited:
        from trust.audit.recorder import LogRecorder

        audit = LogRecorder(settings)
    return create_app(build_context(settings, cities, audit=audit))


def serve(app: Any, settings: Settings) -> None:
    import uvicorn

    print(f"citystream serve: http://{settings.api_host}:{settings.api_port}/", flush=True)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
