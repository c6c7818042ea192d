"""Parameterised, time-limited, read-only reads: the sink's endpoint (JSON bodies), the
sink's own query, and Backend.read opening a chDB directory itself (the path a ClickHouse
server takes too: one session per read, the same execute_request)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from connectors.sinks.clickhouse import ClickHouseSink
from connectors.sinks.clickhouse.backend import backend_for
from connectors.sinks.clickhouse.endpoint import QueryError, QueryRequest, ask_endpoint
from core.settings import Settings
from tests.conftest import free_port

PROBE = (
    "SELECT {text:String} AS text, {n:UInt32} + 1 AS next, currentDatabase() AS db,"
    " getSetting('max_execution_time') AS limit, getSetting('readonly') AS readonly"
)


@pytest.fixture
def local(tmp_path: Path) -> Settings:
    return Settings().model_copy(
        update={"data_dir": tmp_path / "data", "clickhouse_url": None, "query_port": free_port()}
    )


@pytest.fixture
def sink(local: Settings) -> Iterator[ClickHouseSink]:
    with ClickHouseSink(local) as sink:
        sink.setup()
        sink.start_query_endpoint()
        yield sink


def test_the_endpoint_binds_parameters_limits_time_and_stays_read_only(
    sink: ClickHouseSink, local: Settings
) -> None:
    hostile = "x' OR 1=1; DROP TABLE kpi --"
    request = QueryRequest(PROBE, {"text": hostile, "n": 41}, "system", 2.5)
    [[text, following, db, limit, readonly]] = ask_endpoint(local.query_port, request).rows
    assert (text, following, db) == (hostile, 42, "system")  # a value, never SQL
    assert (float(limit), int(readonly)) == (2.5, 1)
    [[_, _, db, limit, _]] = ask_endpoint(
        local.query_port, QueryRequest(PROBE, {"text": "", "n": 0})
    ).rows
    assert db == local.clickhouse_database and float(limit) == 60.0  # the defaults
    assert ask_endpoint(local.query_port, "SELECT 1 AS one").rows == [[1]]  # plain SQL bodies
    with pytest.raises(QueryError, match=r"READONLY|readonly"):
        ask_endpoint(local.query_port, QueryRequest("SELECT 1 SETTINGS max_execution_time = 100"))


def test_malformed_json_requests_are_400_with_the_reason(
    sink: ClickHouseSink, local: Settings
) -> None:
    for body, reason in (
        (b"{", "JSON body"),
        (b'{"parameters": {}}', '"sql"'),
        (b'{"sql": "SELECT 1", "parameters": [1]}', "parameters must be"),
        (b'{"sql": "SELECT 1", "time_limit_s": 0}', "time_limit_s"),
    ):
        request = urllib.request.Request(
            f"http://127.0.0.1:{local.query_port}/query", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=10)
        assert raised.value.code == 400
        assert reason in orjson.loads(raised.value.read())["error"]


def test_backend_read_goes_through_the_sink_or_opens_the_directory(local: Settings) -> None:
    with ClickHouseSink(local) as sink:
        sink.setup()
        sink.start_query_endpoint()
        served = backend_for(local).read(PROBE, {"text": "a", "n": 1}, time_limit_s=3)
    alone = backend_for(local).read(PROBE, {"text": "a", "n": 1}, time_limit_s=3)  # no sink
    assert served.rows == alone.rows
    assert [float(served.rows[0][3]), int(served.rows[0][4])] == [3.0, 1]
    with pytest.raises(QueryError, match="read-only statements"):
        backend_for(local).read("DROP TABLE kpi", {})
