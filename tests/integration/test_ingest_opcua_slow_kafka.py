"""OPC UA backpressure: while a Kafka broker of the test's own is frozen (SIGSTOP), the
source stops taking data changes (its queue is bounded and the subscription waits, so
the server keeps them), and once it thaws every reading arrives, each exactly once.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from connectors.sources.opcua import OpcUaSource, load_config
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.conftest import free_port
from tests.integration.test_ingest_http import read_topic
from tests.integration.test_ingest_opcua import (
    STEP,
    T0,
    PlantServer,
    Write,
    meter_node,
    published,
    wait_until,
)
from tests.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration
METERS = 100
ROUNDS = 10  # written while Kafka is frozen; the server keeps 50 per node
FLUSH_EVERY = 50


def writes(r: int) -> list[Write]:
    return [Write(meter_node(i), float(r + i % 3), T0 + r * STEP) for i in range(METERS)]


def test_a_frozen_kafka_holds_the_subscription_back_and_loses_nothing(
    settings: Settings, private_kafka: PrivateKafka, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"kafka_bootstrap_servers": private_kafka.cfg.bootstrap_servers})
    ensure_topics(s)
    register_schemas(s)
    server = PlantServer(free_port(), meters=METERS)
    server.start(writes(0))
    config = tmp_path / "opcua.toml"
    nodes = "".join(
        f'[[nodes]]\nnode_id = "{meter_node(i)}"\ndomain = "energy"\nsensor = "m{i}"\n'
        f'field = "kwh"\nconstants = {{ district = "8000" }}\n\n'
        for i in range(METERS)
    )
    config.write_text(
        f'[opcua]\nendpoint = "{server.endpoint}"\nsecurity = "None"\n'
        f"publishing_interval_ms = 100\nqueue_size = 50\nmax_pending = 20\n"
        f"flush_every = {FLUSH_EVERY}\nflush_interval_ms = 100\n\n{nodes}",
        encoding="utf-8",
    )
    source = OpcUaSource(s, load_config(config))
    source.setup()
    thread = threading.Thread(target=source.run)
    thread.start()
    try:
        wait_until(lambda: published(s, "city.energy.v1") == METERS, lambda: "no first round")
        private_kafka.signal(signal.SIGSTOP)
        try:
            for r in range(1, ROUNDS + 1):
                server.write(writes(r))
            time.sleep(3)  # every change the source would take, it has taken by now
            handled = source.changes
            time.sleep(2)
            # bounded: a flush's worth was handled, the rest waits (queue, then server)
            assert source.changes == handled
            assert handled - METERS <= FLUSH_EVERY + METERS, handled
            assert handled < METERS * (ROUNDS + 1)
        finally:
            private_kafka.signal(signal.SIGCONT)
        total = METERS * (ROUNDS + 1)
        wait_until(lambda: published(s, "city.energy.v1") >= total, lambda: "readings missing")
    finally:
        source.stop()
        thread.join(60)
        server.stop()
    records = read_topic(s, "city.energy.v1")
    keys = sorted((r["meter_id"], r["event_time"]) for r in records)
    assert len(keys) == len(set(keys)) == METERS * (ROUNDS + 1)
    assert {r["event_time"] for r in records} == {T0 + r * STEP for r in range(ROUNDS + 1)}
    assert source.counters.accepted == METERS * (ROUNDS + 1)
