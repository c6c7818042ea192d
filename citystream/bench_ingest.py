"""Ingest throughput: events/s through HTTP (batched) and MQTT into Kafka, durable.

Both connectors run as the commands a user runs (`citystream ingest http|mqtt`), in an
empty topic namespace. HTTP: concurrent clients POST batches of canonical events and a
batch counts once its 202 (= acknowledged by Kafka) arrives. MQTT: one paho client
publishes SensorThings observations with QoS 1 to a private Mosquitto; the clock stops
when the source's retained status reports every event accepted (after its Kafka flush).
"""

from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from citystream.pipeline import launch
from core.settings import Settings
from families.registry import ensure_topics, register_schemas

METADATA = Path(__file__).resolve().parent.parent / "data" / "aarhus" / "traffic_metadata.csv"
BASE_MS = 1_481_108_400_000  # 2016-12-07T11:00:00Z
API_KEY = "bench-key"


def _segments() -> list[str]:
    with METADATA.open(encoding="utf-8") as handle:
        return [row["REPORT_ID"] for row in csv.DictReader(handle)]


def _time(i: int) -> str:
    ms = BASE_MS + i * 300_000
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return launch(settings, log, *args)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


# --- HTTP ---------------------------------------------------------------------------------


def _http_bodies(total: int, batch: int) -> list[bytes]:
    segments = _segments()
    events = [
        {
            "domain": "traffic",
            "segment_id": segments[i % len(segments)],
            "event_time": _time(i // len(segments)),
            "vehicle_count": i % 37,
            "avg_speed_kmh": 20.0 + i % 60,
        }
        for i in range(total)
    ]
    return [json.dumps(events[i : i + batch]).encode() for i in range(0, total, batch)]


async def _post_all(port: int, bodies: list[bytes], clients: int) -> float:
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                resp = await client.post("/v1/events", content=body, headers=headers)
                if resp.status_code == 202:
                    break
                if resp.status_code not in (429, 503):
                    raise RuntimeError(f"HTTP ingest answered {resp.status_code}: {resp.text}")
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))

    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await client.get("/health")
        started = time.monotonic()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return time.monotonic() - started


def _wait_http(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"HTTP ingest exited; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"HTTP ingest not ready in 60 s; see {log}") from None
            time.sleep(0.2)


def bench_http(settings: Settings, total: int, batch: int, clients: int = 4) -> float:
    """Events/s of `citystream ingest http` for batched JSON arrays."""
    from pydantic import SecretStr

    port = _free_port()
    s = settings.model_copy(
        update={
            "ingest_http_port": port,
            "ingest_api_keys": SecretStr(json.dumps({"bench": API_KEY})),
            "ingest_rate_limit_rps": 1e6,
            "ingest_rate_burst": 1_000_000,
            "ingest_max_body_bytes": 16 * 1024 * 1024,
        }
    )
    bodies = _http_bodies(total, batch)
    log = s.data_dir / "logs" / "bench-ingest-http.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    process = _start(s, log, "ingest", "http")
    try:
        _wait_http(port, process, log)
        seconds = asyncio.run(_post_all(port, bodies, clients))
    finally:
        _stop(process)
    return total / seconds


# --- MQTT ---------------------------------------------------------------------------------


def _mqtt_config(path: Path, port: int, segments: list[str]) -> None:
    rows = "".join(
        f'[[datastreams]]\nid = "{i}"\ndomain = "traffic"\nsensor = "{seg}"\n'
        'result = { vehicleCount = "vehicle_count", avgSpeed = "avg_speed_kmh" }\n\n'
        for i, seg in enumerate(segments)
    )
    path.write_text(
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nclient_id = "citystream-bench"\n'
        "status_interval_s = 0.1\n\n" + rows,
        encoding="utf-8",
    )


class _Status:
    """The source's retained status, as the publishing client sees it."""

    def __init__(self) -> None:
        self.accepted = 0
        self.online = threading.Event()

    def on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        self.accepted = int(body.get("accepted", 0))
        if body.get("state") == "online":
            self.online.set()


def bench_mqtt(settings: Settings, total: int) -> float:
    """Events/s of `citystream ingest mqtt` for QoS 1 SensorThings observations."""
    import paho.mqtt.client as mqtt

    from infra import _proc, mosquitto_service
    from infra.config import StackConfig

    if mosquitto_service.binary() is None:
        raise RuntimeError(f"mosquitto is not installed: {mosquitto_service.INSTALL_HINT}")
    segments = _segments()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        port = _free_port()
        svc = mosquitto_service.service(StackConfig(data_dir=Path(tmp), mosquitto_port=port), port)
        broker = _proc.spawn(svc.prepare(print), svc.workdir, svc.stdout_log)
        config = Path(tmp) / "ingest.toml"
        _mqtt_config(config, port, segments)
        log = settings.data_dir / "logs" / "bench-ingest-mqtt.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        source: subprocess.Popen[bytes] | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
        try:
            deadline = time.monotonic() + 20
            while not svc.is_ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto not ready: {svc.log_tail()}")
                time.sleep(0.1)
            source = _start(settings, log, "ingest", "mqtt", "--config", str(config))
            status = _Status()
            client.on_message = status.on_message
            client.max_inflight_messages_set(1000)
            client.max_queued_messages_set(0)
            client.connect("127.0.0.1", port)
            client.loop_start()
            client.subscribe("citystream/ingest/citystream-bench/status", qos=1)
            if not status.online.wait(60):
                raise RuntimeError(f"MQTT ingest did not come online; see {log}")
            started = time.monotonic()
            _publish(client, port, segments, total)
            deadline = time.monotonic() + 300
            total = total // PUBLISHERS * PUBLISHERS
            while status.accepted < total:
                if time.monotonic() > deadline or source.poll() is not None:
                    raise RuntimeError(f"MQTT ingest accepted {status.accepted}/{total}; see {log}")
                time.sleep(0.02)
            return (total // PUBLISHERS * PUBLISHERS) / (time.monotonic() - started)
        finally:
            client.disconnect()
            client.loop_stop()
            if source is not None:
                _stop(source)
            _proc.stop(broker, 10)


PUBLISHERS = 8  # concurrent publishing connections, one Datastream each


def _observations(stream: int, count: int, segments: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "phenomenonTime": _time(i),
                "result": {"vehicleCount": (i + stream) % 37, "avgSpeed": 20.0 + i % 60},
            }
        ).encode()
        for i in range(count)
    ]


def _publish(client: Any, port: int, segments: list[str], total: int) -> None:
    """QoS 1, with Debian's mosquitto_pub (C) when installed: paho's publishing side tops
    out near 5,000 messages/s, below what the source takes."""
    per = total // PUBLISHERS
    streams = [_observations(k, per, len(segments)) for k in range(PUBLISHERS)]
    exe = shutil.which("mosquitto_pub")
    if exe is None:
        infos = [
            client.publish(f"v1.1/Datastreams({k})/Observations", body, qos=1)
            for k, bodies in enumerate(streams)
            for body in bodies
        ]
        for info in infos:
            info.wait_for_publish(300)
        return
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-pub-") as tmp:
        files = []
        for k, bodies in enumerate(streams):
            path = Path(tmp) / f"{k}.ndjson"
            path.write_bytes(b"\n".join(bodies) + b"\n")
            files.append(path.open("rb"))
        procs = [
            subprocess.Popen(
                [
                    exe,
                    "-p",
                    str(port),
                    "-q",
                    "1",
                    "-t",
                    f"v1.1/Datastreams({k})/Observations",
                    "-l",
                ],
                stdin=handle,
            )
            for k, handle in enumerate(files)
        ]
        for handle in files:
            handle.close()
        for proc in procs:
            if proc.wait(300) != 0:
                raise RuntimeError(f"mosquitto_pub exited with {proc.returncode}")


# --- entry ------------------------------------------------------------------------------


def run_ingest_bench(
    settings: Settings,
    http_events: int = 200_000,
    batch: int = 1000,
    mqtt_events: int = 50_000,
) -> dict[str, str]:
    """Measure both connectors into a fresh topic namespace; print and return the figures."""
    s = settings.model_copy(
        update={"topic_prefix": f"{settings.topic_prefix}bench-ingest-{time.strftime('%H%M%S')}."}
    )
    ensure_topics(s)
    register_schemas(s)
    http = bench_http(s, http_events, batch)
    print(f"ingest HTTP: {http_events:,} events in batches of {batch}: {http:,.0f} events/s")
    mqtt = bench_mqtt(s, mqtt_events)
    print(f"ingest MQTT: {mqtt_events:,} QoS 1 observations: {mqtt:,.0f} events/s")
    return {
        "ingest_http_events_per_s": f"{http:,.0f}",
        "ingest_mqtt_events_per_s": f"{mqtt:,.0f}",
    }


if __name__ == "__main__":
    run_ingest_bench(Settings.model_validate({}))
