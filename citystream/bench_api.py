"""The read API's numbers for `citystream bench` (stage ``api``): request latency and SSE delay.

The bench's traffic file (the Aarhus week when ``CITYSTREAM_AARHUS_DIR`` has it, else the
shipped day) goes through the real traffic processor and the chDB sink; then
``citystream serve``'s app runs under uvicorn on a free port and is asked over HTTP:

- a one-day 15-minute series (the city, then a district), the district map, and the
  NGSI-LD entity listing (a page of 100 KeyPerformanceIndicator entities with their
  count, first and a later page), each ``requests`` times one after the other: p50 and
  p99 of the wall time per answer (target p99 <= 100 ms on chDB);
- the SSE delay: KPI records published to ``city.kpi.v1`` while a client listens on
  ``/v1/stream``, from the producer's delivery report to the event at the client.

Numbers are printed, never asserted.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from citystream.pipeline import Pipeline
from connectors.sources.aarhus import AarhusReplaySource
from core.settings import Settings
from families.registry import ensure_topics, register_schemas


def run_api_bench(
    settings: Settings, traffic: Path, metadata: Path, requests: int = 200
) -> dict[str, str]:
    """Results by name, for the bench's table."""
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start("processor", "sink")
        source = AarhusReplaySource(settings, traffic, metadata)
        source.setup()
        report = source.run()
        pipeline.wait_caught_up(report.published)
        return _measure(settings, requests)
    finally:
        pipeline.stop()


def _measure(settings: Settings, requests: int) -> dict[str, str]:
    import uvicorn

    from api.app import create_app
    from api.config import build_context

    app = create_app(build_context(settings))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="bench-api", daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            newest = client.get("/v1/kpis/traffic.avg_speed_kmh/series").json()["to"]
            day = {"to": newest, "from": _day_before(newest)}
            district = client.get("/v1/map/districts").json()["features"][0]["id"]
            results = {
                "API one-day 15-min series (city)": _latency(
                    client, "/v1/kpis/traffic.avg_speed_kmh/series", day, requests
                ),
                "API one-day 15-min series (district)": _latency(
                    client,
                    "/v1/kpis/traffic.avg_speed_kmh/series",
                    {**day, "scope": "district", "entity": district},
                    requests,
                ),
                "API district map": _latency(client, "/v1/map/districts", {}, requests),
                **_listing_latency(client, requests),
            }
        results["SSE delay, publish -> event"] = _sse_delay(settings, url)
        return results
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _latency(client: httpx.Client, path: str, params: dict[str, Any], n: int) -> str:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        answer = client.get(path, params=params)
        times.append((time.perf_counter() - start) * 1000)
        answer.raise_for_status()
    p50, p99 = _percentiles(times)
    return f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  ({n} requests, {len(answer.content):,} B)"


NGSI_LISTING = "/ngsi-ld/v1/entities"
LISTING_PAGE = 100


def _listing_latency(client: httpx.Client, requests: int) -> dict[str, str]:
    """The NGSI-LD listing: its first page and one further in, with the count."""
    page: dict[str, Any] = {
        "type": "KeyPerformanceIndicator",
        "limit": LISTING_PAGE,
        "count": "true",
    }
    first = client.get(NGSI_LISTING, params=page)
    first.raise_for_status()
    total = int(first.headers["NGSILD-Results-Count"])
    later = {**page, "offset": max(0, total // 2 - total // 2 % LISTING_PAGE)}
    return {
        f"NGSI-LD listing, first {LISTING_PAGE} of {total:,}": _latency(
            client, NGSI_LISTING, page, requests
        ),
        f"NGSI-LD listing, {LISTING_PAGE} from offset {later['offset']:,}": _latency(
            client, NGSI_LISTING, later, requests
        ),
    }


def _sse_delay(settings: Settings, url: str, events: int = 50) -> str:
    """Publish KPI records one by one while a client listens; delivery -> event, in ms."""
    from confluent_kafka import Producer

    from schemas.registry import SchemaRegistry

    topic = settings.topic("city.kpi.v1")
    serde = SchemaRegistry(settings.registry_config()).serde(topic, "city.kpi.v1")
    received: dict[str, float] = {}
    sent: dict[str, float] = {}
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{url}/v1/stream?types=kpi", timeout=60) as response:
            for line in response.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    received[orjson.loads(line[6:])["entity_id"]] = time.perf_counter()
                    if len(received) >= events:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(30)
    time.sleep(1.0)  # the feed's consumer has its assignment by now
    producer = Producer(settings.kafka_config())
    for n in range(events):
        entity = f"bench-{n}"
        record = {"kpi": "traffic.vehicle_count", "scope": "segment", "entity_id": entity,
                  "window_start": 0, "window_end": 900_000, "value": float(n), "samples": 10,
                  "revision": 0, "computed_at": 0}  # fmt: skip

        def delivered(err: Any, _msg: Any, entity: str = entity) -> None:
            if err is None:
                sent[entity] = time.perf_counter()

        producer.produce(topic, serde.encode(record), on_delivery=delivered)
        producer.flush(10)
        time.sleep(0.02)
    listener.join(timeout=30)
    delays = [(received[e] - sent[e]) * 1000 for e in sent if e in received]
    if not delays:
        return "no events received"
    p50, p99 = _percentiles(delays)
    return f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  ({len(delays)} of {events} events)"


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def _day_before(iso: str) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) - timedelta(days=1)).isoformat()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
