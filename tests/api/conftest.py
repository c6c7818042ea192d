"""Fixtures for the read API's tests: the real KPIs of the shipped Aarhus day, served.

- ``aarhus_day`` (session, i.e. once per xdist worker): ``data/aarhus`` (2014-08-02
  traffic, air quality, parking) replayed through the real processors (traffic, air,
  parking, devices), the alerts processor and the ClickHouse sink (chDB), about a minute;
  its settings (topic prefix, data dir) are returned, its processes stopped.
- ``api_stack`` (module): an :class:`ApiStack`: a copy of those tables served by a sink of
  the module's own (own topic prefix with the day's alerts copied onto it, own chDB
  directory and query port), an ``ApiContext`` over it (one API key per role, an
  in-memory audit recorder), ``create_app`` and a ``TestClient``. What a module
  publishes (KPI windows on ``stack.settings.topic("city.kpi.batches.v1")``, alerts)
  reaches only its own tables and topics.
- ``api_server`` (module): the same app under a real uvicorn on a free port
  (``api_server.url``), for browsers and SSE clients.

Usage::

    def test_something(api_stack: ApiStack) -> None:
        answer = api_stack.client.get("/v1/kpis", headers=api_stack.headers(Role.analyst))
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.config import build_context
from api.context import AccessRecord, ApiContext, Role
from core.settings import Settings
from tests.api.aarhus_stack import ServedCopy, build_aarhus_day, isolated, serve_copy
from tests.api.uvicorn_thread import served

KEYS = {role: f"test-key-{role.value}" for role in Role if role is not Role.public}
API_KEYS_JSON = json.dumps({f"{r.value}-key": {"key": k, "role": r.value} for r, k in KEYS.items()})


@dataclass
class MemoryAudit:
    """An AuditRecorder keeping records in a list; ``fail`` makes the next writes raise."""

    records: list[AccessRecord] = field(default_factory=list)
    fail: bool = False

    def record(self, access: AccessRecord) -> None:
        if self.fail:
            raise OSError("audit log unavailable")
        self.records.append(access)


@dataclass
class ApiStack:
    """A module's served copy of the Aarhus day and the API over it."""

    settings: Settings  # the module's namespace: topic prefix, chDB dir, query port, keys
    served: ServedCopy
    context: ApiContext
    app: FastAPI
    client: TestClient
    audit: MemoryAudit

    @staticmethod
    def headers(role: Role) -> dict[str, str]:
        """Request headers of a caller with ``role`` (none for the public)."""
        return {} if role is Role.public else {"Authorization": f"Bearer {KEYS[role]}"}


@pytest.fixture(scope="session")
def aarhus_day(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The shipped Aarhus day through the real pipeline, once per worker; its settings."""
    settings = isolated(stack, tmp_path_factory.mktemp("aarhus-day"))
    try:
        build_aarhus_day(settings)
    except OSError:  # a stats page that timed out on a loaded machine: once more, afresh
        settings = isolated(stack, tmp_path_factory.mktemp("aarhus-day"))
        build_aarhus_day(settings)
    return settings


@pytest.fixture(scope="module")
def api_stack(aarhus_day: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiStack]:
    """The module's own sink over a copy of the day, and the API over that sink."""
    with serve_copy(aarhus_day, tmp_path_factory.mktemp("api-copy")) as served:
        settings = served.settings.model_copy(update={"api_keys": SecretStr(API_KEYS_JSON)})
        audit = MemoryAudit()
        context = build_context(settings, audit=audit)
        app = create_app(context)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield ApiStack(settings, served, context, app, client, audit)


@dataclass
class ApiServer:
    url: str  # http://127.0.0.1:<port>
    stack: ApiStack


@pytest.fixture(scope="module")
def api_server(api_stack: ApiStack) -> Iterator[ApiServer]:
    """``api_stack``'s app under a real uvicorn on a free port, stopped after the module."""
    # lifespan off: the TestClient of api_stack started the feed
    with served(api_stack.app, "api-under-test", lifespan=False) as url:
        yield ApiServer(url, api_stack)
