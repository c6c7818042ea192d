"""The sink's query endpoint audits every statement it runs, once (#17).

A real ``citystream sink`` process (chDB, its endpoint on the test's port) on the real dev
Kafka: a raw POST to the endpoint lands in the audit log with its SQL as an anonymous
loopback caller; a read API request and a ``citystream query`` each append exactly one
record, carrying the caller's context marked as claimed; ``citystream audit verify``
passes afterwards. An endpoint whose audit log is unreachable refuses the query.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.config import build_context
from citystream.cli import main
from citystream.pipeline import Pipeline, settings_env
from connectors.sinks.clickhouse import ClickHouseSink
from connectors.sinks.clickhouse.endpoint import QueryEndpoint
from core.audit_append import AuditAppender, ensure_audit_topics
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.conftest import free_port
from trust.audit.log import read_log
from trust.audit.recorder import LogRecorder

pytestmark = pytest.mark.integration

STATUS_SQL_START = "SELECT splitByChar('.', kpi)[1] AS domain"


def post(port: int, body: bytes, content_type: str = "text/plain") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query",
        data=body,
        method="POST",
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def records(settings: Settings) -> list[dict[str, Any]]:
    out = []
    for entry in read_log(settings):
        assert entry.record is not None, entry.error
        out.append(entry.record)
    return out


@pytest.fixture
def sink(settings: Settings) -> Iterator[Settings]:
    """A ``citystream sink`` process serving the test's namespace; its settings."""
    keys = {"ana": {"key": "k-analyst", "role": "analyst"}}
    configured = settings.model_copy(update={"api_keys": SecretStr(json.dumps(keys))})
    ensure_topics(configured)
    register_schemas(configured)
    ensure_audit_topics(configured)
    pipeline = Pipeline(configured)
    try:
        pipeline.start("sink")
        yield configured
    finally:
        pipeline.stop()


def test_every_statement_of_the_endpoint_is_audited_once(sink: Settings) -> None:
    settings = sink
    port = settings.query_port

    # a raw POST, no caller context: an anonymous loopback caller, with its SQL
    status, body = post(port, b"SELECT number FROM system.numbers LIMIT 3")
    assert status == 200 and body["rows"] == [[0], [1], [2]]
    [raw] = records(settings)
    assert body["audit"] == {"leaf_index": 0}
    assert (raw["key_id"], raw["role"], raw["action"]) == ("loopback", "loopback", "query")
    assert raw["sql"] == "SELECT number FROM system.numbers LIMIT 3" and raw["rows"] == 3
    assert json.loads(raw["parameters"])["query_endpoint"]["identity"] == "anonymous"

    # a claimed caller context cannot overwrite what the endpoint itself saw
    claim = {
        "sql": "SELECT {n:UInt8} AS n",
        "parameters": {"n": 7},
        "caller": {
            "key_id": "mallory", "role": "operator", "endpoint": "/v1/anything",
            "parameters": {"query_endpoint": "forged"},
        },
    }  # fmt: skip
    status, body = post(port, orjson.dumps(claim), "application/json")
    assert status == 200 and body["rows"] == [[7]]
    claimed = records(settings)[-1]
    assert (claimed["key_id"], claimed["endpoint"]) == ("mallory", "/v1/anything")
    facts = json.loads(claimed["parameters"])["query_endpoint"]
    assert facts == {"identity": "claimed", "database": None, "parameters": {"n": 7}}

    # a read API request whose SQL runs on the endpoint: exactly one record, the API's context
    recorder = LogRecorder(settings)
    context = build_context(settings, audit=recorder, live_feed=False)
    try:
        with TestClient(create_app(context)) as client:
            before = len(records(settings))
            answer = client.get("/v1/status", headers={"Authorization": "Bearer k-analyst"})
            assert answer.status_code == 200, answer.text
            added = records(settings)[before:]
            # and a route without SQL (the catalogue) is recorded by the API itself, once
            assert client.get("/v1/kpis").status_code == 200
            catalogue = records(settings)[before + 1 :]
    finally:
        recorder.close()
    assert len(added) == 1, added
    [api] = added
    assert (api["key_id"], api["role"], api["action"]) == ("ana", "analyst", "read")
    assert api["endpoint"] == "/v1/status" and api["sql"].startswith(STATUS_SQL_START)
    assert json.loads(api["parameters"])["query_endpoint"]["identity"] == "claimed"
    assert [(r["endpoint"], r["key_id"], r["sql"]) for r in catalogue] == [("/v1/kpis", None, None)]

    # citystream query, a process of its own: exactly one record, as the local user
    before = len(records(settings))
    done = subprocess.run(
        [sys.executable, "-m", "citystream.cli", "query", "SELECT 40 + 2 AS answer"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    added = records(settings)[before:]
    assert len(added) == 1, added
    [query] = added
    assert query["key_id"].startswith("local:") and query["role"] == "operator"
    assert (query["endpoint"], query["action"]) == ("citystream query", "query")
    assert query["sql"] == "SELECT 40 + 2 AS answer" and query["rows"] == 1
    assert json.loads(query["parameters"])["query_endpoint"]["identity"] == "claimed"

    args = ["--topic-prefix", settings.topic_prefix, "--data-dir", str(settings.data_dir)]
    assert main(["audit", "checkpoint", *args]) == 0
    assert main(["audit", "verify", *args]) == 0


def test_an_endpoint_without_its_audit_log_refuses_the_query(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "audit_write_timeout_s": 1}
    )
    with ClickHouseSink(settings) as kpi_sink:
        kpi_sink.setup()
        endpoint = QueryEndpoint(kpi_sink.query, free_port(), audit=AuditAppender(dead))
        endpoint.start()
        try:
            status, body = post(endpoint.port, b"SELECT 1 AS one")
        finally:
            endpoint.stop()
    assert status == 503 and "rows" not in body
    assert "could not be audited" in body["error"]
