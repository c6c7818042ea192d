"""A real run exporting over OTLP to a real receiver: Jaeger v2 (an OpenTelemetry Collector
distribution) built by `make otel-receiver` into the tools cache.

The source (`citystream replay`, OTLP/HTTP), the processor and the sink (OTLP/gRPC) are
all child processes configured only by OTEL_* variables. Jaeger's query API must then show
the three services, the source's trace continued by the processor, and the chain of
links from the readings to the sink's insert.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from citystream.pipeline import Pipeline, http_get, launch
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.conftest import free_port
from tests.oracle import METADATA

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
DEFAULT_JAEGER = Path.home() / ".cache/citystream/tools/jaeger-v1.76.0/jaeger"
SERVICES = {"citystream-source", "citystream-processor", "citystream-sink"}

CONFIG = """\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
extensions:
  jaeger_query:
    storage: {{traces: mem}}
    http: {{endpoint: "127.0.0.1:{query}"}}
    grpc: {{endpoint: "127.0.0.1:{query_grpc}"}}
  jaeger_storage:
    backends:
      mem:
        memory: {{max_traces: 100000}}
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc}"}}
      http: {{endpoint: "127.0.0.1:{http}"}}
processors:
  batch: {{timeout: 200ms}}
exporters:
  jaeger_storage_exporter: {{trace_storage: mem}}
"""


class Jaeger:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.ports = {k: free_port() for k in ("query", "query_grpc", "grpc", "http")}
        config = workdir / "jaeger.yaml"
        config.write_text(CONFIG.format(**self.ports))
        self.log = workdir / "jaeger.log"
        env = {**os.environ, "OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(binary), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip

    def api(self, path: str) -> Any:
        return json.loads(http_get(f"http://127.0.0.1:{self.ports['query']}/api/{path}"))

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"jaeger exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.api("services")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"jaeger not ready:\n{self.log.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.kill()  # in-memory storage: nothing to flush
        self.process.wait(10)


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[Jaeger]:
    binary = Path(os.environ.get("JAEGER") or DEFAULT_JAEGER)
    if not binary.is_file():
        pytest.fail(
            f"the OTLP receiver {binary} is missing: build it with `make otel-receiver` "
            "(`make test` does)",
            pytrace=False,
        )
    receiver = Jaeger(binary, tmp_path)
    try:
        receiver.wait_ready()
        yield receiver
    finally:
        receiver.stop()


def small_replay_file(tmp_path: Path, rows: int = 300) -> Path:
    with gzip.open(FIXTURE, "rt") as handle:
        lines = [handle.readline() for _ in range(rows + 1)]
    path = tmp_path / "traffic_small.csv"
    path.write_text("".join(lines))
    return path


def spans_of(traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jaeger's spans, each with its service name and references resolved to id pairs."""
    out = []
    for t in traces:
        for span in t["spans"]:
            out.append(
                {
                    "name": span["operationName"],
                    "service": t["processes"][span["processID"]]["serviceName"],
                    "id": (span["traceID"], span["spanID"]),
                    "parents": {(r["traceID"], r["spanID"]) for r in span["references"]
                                if r["refType"] == "CHILD_OF"},
                    "links": {(r["traceID"], r["spanID"]) for r in span["references"]
                              if r["refType"] == "FOLLOWS_FROM"},
                }
            )  # fmt: skip
    return out


def wait_for_traces(jaeger: Jaeger, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        services = set(jaeger.api("services")["data"] or [])
        if services >= SERVICES:
            traces = []
            for service in sorted(SERVICES):
                traces += jaeger.api(f"traces?service={service}&limit=10000&lookback=1h")["data"]
            spans = spans_of(traces)
            if {"insert kpi", "emit kpi"} <= {s["name"] for s in spans}:
                return traces
        if time.monotonic() > deadline:
            raise AssertionError(f"jaeger has services {services}, wanted {SERVICES}")
        time.sleep(0.5)


def test_a_real_run_exports_connected_spans_to_an_otlp_receiver(
    settings: Settings, tmp_path: Path, jaeger: Jaeger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{jaeger.ports['grpc']}")
    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start()
        # the source speaks OTLP/HTTP, to the same receiver
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{jaeger.ports['http']}"
        )
        replay_log = settings.data_dir / "logs/replay.log"
        replay = launch(
            settings, replay_log, "replay", "aarhus", "--traffic", str(small_replay_file(tmp_path)),
            "--metadata", str(METADATA),
        )  # fmt: skip
        assert replay.wait(120) == 0, replay_log.read_text()[-3000:]
        pipeline.wait_caught_up(300, timeout=120)
        traces = wait_for_traces(jaeger)
    finally:
        pipeline.stop()

    spans = spans_of(traces)
    by_id = {s["id"]: s for s in spans}
    sent = [s for s in spans if s["service"] == "citystream-source"]
    assert sent and all(s["name"].startswith("send ") for s in sent)
    sent_ids = {s["id"] for s in sent}
    processed = [
        s for s in spans if s["name"] == f"process {settings.topic('city.traffic.batches.v1')}"
    ]
    assert processed and all(s["service"] == "citystream-processor" for s in processed)
    # every batch the processor handled continues a source span's trace, as its child
    assert all(s["parents"] <= sent_ids and s["parents"] for s in processed)
    processed_ids = {s["id"] for s in processed}
    emits = [s for s in spans if s["name"] == "emit kpi"]
    assert any(s["links"] & processed_ids for s in emits)
    inserts = [s for s in spans if s["name"] == "insert kpi"]
    assert inserts and all(s["service"] == "citystream-sink" for s in inserts)
    emit_ids = {s["id"] for s in emits}
    assert all(s["links"] and s["links"] <= emit_ids for s in inserts)
    # walk back from one insert to a source span: insert → emit → process → send
    insert = inserts[0]
    frontier = set(insert["links"])
    seen: set[tuple[str, str]] = set()
    while frontier and not frontier & sent_ids:
        seen |= frontier
        frontier = {
            r for i in frontier if i in by_id for r in by_id[i]["links"] | by_id[i]["parents"]
        }
        frontier -= seen
    assert frontier & sent_ids, "the insert does not lead back to a source batch"
    # resource attributes from OTEL_RESOURCE_ATTRIBUTES reach the receiver
    tags = {
        tag["key"]: tag["value"]
        for t in traces
        for p in t["processes"].values()
        for tag in p["tags"]
    }
    assert tags.get("deployment.environment.name") == "test"
    assert tags.get("service.namespace") == "citystream"
