"""oneM2M ingest end to end: a real ACME CSE (`acmecse`, started here headless on free
ports with its own ini), an AE with a container per energy meter and a subscription per
container whose notification URI is `citystream ingest http`'s `/onem2m/notify`; content
instances created in the CSE arrive as KPIs equal to verify's recomputation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from citystream.pipeline import Pipeline, wait_settled
from citystream.verify import stored_kpis
from core.settings import Settings
from oracles.compare import compare
from oracles.simulated import energy_kpis
from tests.conftest import free_port
from tests.integration.test_ingest_http import (
    log_tail,
    prepare_namespace,
    read_topic,
    start_command,
    stop_command,
)
from tests.integration.test_ingest_opcua import published, wait_until

pytestmark = pytest.mark.integration
API_KEY = "cse-key"
AE = "Cplant"  # the AE's originator (C: the CSE assigns nothing, we name it)
METERS = {"meter-a": "8000", "meter-b": "8200", "meter-c": "8210"}
ACME = Path(sys.executable).parent / "acmecse"


class Cse:
    """An ACME CSE of this test's own, spoken to over oneM2M's HTTP binding."""

    def __init__(self, directory: Path) -> None:
        if not ACME.exists():
            pytest.fail(f"{ACME} is missing: pip install acmecse (make test installs it)")
        self.port = free_port()
        self.directory = directory
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.rid = 0

    def start(self, attempts: int = 3) -> None:
        """Start; ACME exits at once (status 0, nothing logged) when its port was taken
        meanwhile: then again on another free port."""
        for _ in range(attempts - 1):
            if self._start():
                return
            self.port = free_port()
            self.base = f"http://127.0.0.1:{self.port}"
        assert self._start(), self.log()

    def _start(self) -> bool:
        (self.directory / "acme.ini").write_text(
            f"""
[basic.config]
cseType=IN
cseID=id-in
cseName=cse-in
adminID=CAdmin
networkInterface=127.0.0.1
cseHost=127.0.0.1
httpPort={self.port}
logLevel=info
databaseType=memory

[textui]
startWithTUI=false
""",
            encoding="utf-8",
        )
        log = (self.directory / "acme.log").open("wb")
        self.process = subprocess.Popen(
            [str(ACME), "--config", "acme.ini", "--base-directory", str(self.directory),
             "--headless", "--http", "--no-coap", "--no-mqtt", "--no-ws", "--db-type", "memory"],
            cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                return False
            try:
                if self.request("GET", "/cse-in", "CAdmin").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.3)

    def log(self) -> str:
        return (self.directory / "acme.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def request(
        self, method: str, path: str, origin: str, ty: int | None = None, body: Any = None
    ) -> httpx.Response:
        self.rid += 1
        headers = {
            "X-M2M-Origin": origin,
            "X-M2M-RI": f"req-{self.rid}",
            "X-M2M-RVI": "3",
            "Accept": "application/json",
        }
        if ty is not None:
            headers["Content-Type"] = f"application/json;ty={ty}"
        return httpx.request(method, self.base + path, headers=headers, json=body, timeout=30)

    def create(self, parent: str, ty: int, body: dict[str, Any], origin: str = AE) -> None:
        answer = self.request("POST", parent, origin, ty, body)
        assert answer.status_code == 201, (answer.status_code, answer.text, self.log())
        assert answer.headers["X-M2M-RSC"] == "2001"


@pytest.fixture
def cse(tmp_path: Path) -> Iterator[Cse]:
    c = Cse(tmp_path / "acme")
    c.directory.mkdir()
    c.start()
    try:
        yield c
    finally:
        c.stop()


def cin(content: dict[str, Any]) -> dict[str, Any]:
    """A content instance whose con is JSON text, as devices commonly send it."""
    return {"m2m:cin": {"con": json.dumps(content), "cnf": "application/json:0"}}


def write_config(path: Path) -> None:
    lines = ["[onem2m.containers]"]
    for meter, district in METERS.items():
        lines.append(
            f'"plant/{meter}" = {{ domain = "energy", sensor = "{meter}", '
            f'members = {{ energy = "kwh" }}, units = {{ kwh = "Wh" }}, time = "time", '
            f'constants = {{ district = "{district}" }} }}'
        )
    lines.append(  # a scalar container: con is the number, the time is the instance's ct
        '"pump" = { domain = "energy", sensor = "pump-1", field = "kwh", '
        'constants = { district = "8000" } }'
    )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_onem2m_content_instances_become_kpis(settings: Settings, cse: Cse, tmp_path: Path) -> None:
    config = tmp_path / "ingest.toml"
    write_config(config)
    s = settings.model_copy(
        update={
            "ingest_http_port": free_port(),
            "ingest_config": config,
            "ingest_api_keys": SecretStr(json.dumps({"acme": API_KEY})),
        }
    )
    prepare_namespace(s)
    process = start_command(s, "ingest-http", "ingest", "http")
    base = f"http://127.0.0.1:{s.ingest_http_port}"
    wait_until(
        lambda: _ready(base), lambda: log_tail(s, "ingest-http"), process=process, timeout=60
    )
    notify = f"{base}/onem2m/notify/plant/{{}}?api_key={API_KEY}"  # the container in nu
    expected: list[dict[str, Any]] = []
    bad_reasons: list[str] = []
    try:
        cse.create("/cse-in", 2, {"m2m:ae": {"rn": "plant", "api": "Nplant", "rr": True,
                                              "srv": ["3"]}})  # fmt: skip
        for container in [*METERS, "pump", "boiler"]:  # boiler: not in the mapping
            parent = "/cse-in/plant"
            cse.create(parent, 3, {"m2m:cnt": {"rn": container}})
            # the CSE checks the notification URI with a verification request first
            sub = {"m2m:sub": {"rn": "to-citystream", "nu": [notify.format(container)], "nct": 1,
                               "enc": {"net": [3]}}}  # fmt: skip
            cse.create(f"{parent}/{container}", 23, sub)

        for minute in (0, 5, 10, 20, 35):
            for i, (meter, district) in enumerate(METERS.items()):
                wh = 250.0 * (i + 1) + minute
                when = f"2024-03-04T06:{minute:02}:00Z"
                cse.create(f"/cse-in/plant/{meter}", 4, cin({"energy": wh, "time": when}))
                expected.append(
                    {"meter_id": meter, "district": district,
                     "event_time": int(_ms(when)), "kwh": wh * 0.001}
                )  # fmt: skip
        cse.create("/cse-in/plant/pump", 4, {"m2m:cin": {"con": "1.75"}})  # ct: now
        pump_now = time.time()

        # bad input: unknown container, content of the wrong type, a bad time
        cse.create("/cse-in/plant/boiler", 4, {"m2m:cin": {"con": "3.0"}})
        bad_reasons.append("unknown_container")
        later = "2024-03-04T07:00:00Z"
        cse.create("/cse-in/plant/meter-a", 4, cin({"energy": "lots", "time": later}))
        bad_reasons.append("invalid_event")
        cse.create("/cse-in/plant/meter-b", 4, cin({"energy": 5.0, "time": "yesterday"}))
        bad_reasons.append("invalid_timestamp")
        cse.create("/cse-in/plant/pump", 4, {"m2m:cin": {"con": "not a number"}})
        bad_reasons.append("invalid_event")

        total = len(expected) + 1  # and the pump's
        wait_until(
            lambda: published(s, "city.energy.v1") == total,
            lambda: f"{published(s, 'city.energy.v1')} of {total}: {log_tail(s, 'ingest-http')}",
            process=process,
        )
        wait_until(
            lambda: published(s, "city.dlq.v1") == len(bad_reasons),
            lambda: log_tail(s, "ingest-http"),
            process=process,
        )
        stats = httpx.get(f"{base}/stats").json()["onem2m"]
        assert stats["accepted"] == total, stats
    finally:
        assert stop_command(process) == 0, log_tail(s, "ingest-http")

    records = read_topic(s, "city.energy.v1")
    pump = next(r for r in records if r["meter_id"] == "pump-1")
    assert abs(pump["event_time"].timestamp() - pump_now) < 120  # the CSE's ct, UTC
    expected.append({**pump, "event_time": int(pump["event_time"].timestamp() * 1000)})
    assert sorted((r["meter_id"], r["kwh"]) for r in records) == sorted(
        (e["meter_id"], e["kwh"]) for e in expected
    )
    letters = read_topic(s, "city.dlq.v1")
    assert sorted(d["reason"] for d in letters) == sorted(bad_reasons)
    assert {d["component"] for d in letters} == {"http-ingest"}
    unknown = next(d for d in letters if d["reason"] == "unknown_container")
    assert b'"m2m:sgn"' in unknown["payload"] and "boiler" in unknown["detail"]
    assert unknown["origin"].startswith("onem2m:")

    pipeline = Pipeline(s, processors=("energy",))
    try:
        pipeline.start()
        deadline = time.monotonic() + 300
        while True:
            st = pipeline.processor_stats(domain="energy")
            if st["accepted"] + st["duplicates"] + st["late"] >= len(records):
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.3)
        wait_settled(pipeline, timeout=300)
        window_ms = s.window_minutes * 60_000
        want = energy_kpis(expected, {}, window_ms)
        result = compare(want, stored_kpis(s, "energy."))
        assert result.ok and result.matched == len(want), result.summary()
    finally:
        pipeline.stop()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def _ms(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp() * 1000


def test_the_http_binding_answers_with_status_codes_and_echoes(
    settings: Settings, tmp_path: Path
) -> None:
    """TS-0009 without a CSE: missing headers, a verification request, bad JSON."""
    config = tmp_path / "ingest.toml"
    write_config(config)
    s = settings.model_copy(
        update={
            "ingest_http_port": free_port(),
            "ingest_config": config,
            "ingest_api_keys": SecretStr(json.dumps({"acme": API_KEY})),
        }
    )
    prepare_namespace(s)
    process = start_command(s, "ingest-http", "ingest", "http")
    base = f"http://127.0.0.1:{s.ingest_http_port}"
    try:
        wait_until(lambda: _ready(base), lambda: log_tail(s, "ingest-http"), process=process)
        url = f"{base}/onem2m/notify"
        m2m = {"X-M2M-Origin": "/id-in", "X-M2M-RI": "r-1", "X-M2M-RVI": "3",
               "X-API-Key": API_KEY}  # fmt: skip
        vrq = {"m2m:sgn": {"vrq": True, "sur": "/id-in/cse-in/plant/meter-a/sub"}}
        answer = httpx.post(url, json=vrq, headers=m2m)
        assert answer.status_code == 200
        assert answer.headers["X-M2M-RSC"] == "2000"
        assert (answer.headers["X-M2M-RI"], answer.headers["X-M2M-RVI"]) == ("r-1", "3")
        no_origin = {k: v for k, v in m2m.items() if k != "X-M2M-Origin"}
        answer = httpx.post(url, json=vrq, headers=no_origin)
        assert answer.status_code == 400 and answer.headers["X-M2M-RSC"] == "4000"
        answer = httpx.post(url, content=b"{nope", headers=m2m)
        assert answer.status_code == 400 and answer.headers["X-M2M-RSC"] == "4000"
        assert answer.json()["error"] == "invalid_json"
        assert httpx.post(url, json=vrq, headers={**m2m, "X-API-Key": "x"}).status_code == 401
        wait_until(lambda: published(s, "city.dlq.v1") == 1, lambda: log_tail(s, "ingest-http"))
    finally:
        assert stop_command(process) == 0, log_tail(s, "ingest-http")
