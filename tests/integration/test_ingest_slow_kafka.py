"""Backpressure against a really slow Kafka: the HTTP ingest on a Kafka broker of this test's
own (infra/stack functions, free ports, a tmp data dir), which the test freezes with
SIGSTOP and thaws with SIGCONT. Never the shared stack's broker.

While the broker is frozen, requests get 503 with Retry-After and /ready says 503; once
it thaws, the service recovers by itself, and a client retrying what was refused loses
nothing and double counts nothing (the event ids are the same).
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.conftest import free_port
from tests.integration.test_ingest_http import (
    log_tail,
    read_topic,
    start_command,
    stop_command,
)
from tests.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration
KEY = "slow-kafka-key"


def event(minute: int) -> dict[str, Any]:
    return {
        "domain": "parking",
        "car_park_id": "NORREPORT",
        "event_time": f"2016-12-07T11:{minute:02}:00Z",
        "vehicle_count": 10 + minute,
        "total_spaces": 65,
    }


def test_http_ingest_answers_503_while_kafka_is_frozen_and_recovers(
    settings: Settings, private_kafka: PrivateKafka
) -> None:
    s = settings.model_copy(
        update={
            "kafka_bootstrap_servers": private_kafka.cfg.bootstrap_servers,
            "ingest_http_port": free_port(),
            "ingest_api_keys": SecretStr(json.dumps({"tester": KEY})),
            "ingest_request_timeout_s": 3.0,
            "ingest_retry_after_s": 2,
        }
    )
    ensure_topics(s)
    register_schemas(s)
    process = start_command(s, "ingest-slow", "ingest", "http")
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{s.ingest_http_port}", headers={"X-API-Key": KEY}, timeout=30
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_tail(s, "ingest-slow")
            try:
                if client.get("/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_tail(s, "ingest-slow")
            time.sleep(0.2)
        assert client.post("/v1/events", json=[event(1)]).status_code == 202

        private_kafka.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            refused = client.post("/v1/events", json=[event(2)])
            took = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"] == "2"
            assert took < 3.0 + 2.0  # the request timeout, not an unbounded wait
            # not ready once the flush in progress has failed (within its timeout)
            deadline = time.monotonic() + 3.0 + 2.0
            while (ready := client.get("/ready")).status_code != 503:
                assert time.monotonic() < deadline, ready.text
                time.sleep(0.2)
            assert "the last Kafka flush failed" in ready.json()["problems"]
            assert client.get("/health").status_code == 200  # alive, only not ready
        finally:
            private_kafka.signal(signal.SIGCONT)

        # the client retries after Retry-After until it is accepted
        deadline = time.monotonic() + 90
        while True:
            answer = client.post("/v1/events", json=[event(2), event(3)])
            if answer.status_code == 202:
                break
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < deadline, log_tail(s, "ingest-slow")
            time.sleep(int(answer.headers["Retry-After"]))
        assert [i["event_id"] for i in answer.json()["items"]] == [
            "parking:NORREPORT:1481108520000",
            "parking:NORREPORT:1481108580000",
        ]
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, log_tail(s, "ingest-slow")
            time.sleep(0.5)
    finally:
        client.close()
        assert stop_command(process) == 0, log_tail(s, "ingest-slow")

    # the refused request's event may have reached Kafka after all (it was produced before
    # the timeout): then the retry is a second copy with the same key, which the processor
    # de-duplicates; nothing is missing
    records = read_topic(s, "city.parking.v1")
    minutes = sorted({int(r["event_time"].minute) for r in records})
    assert minutes == [1, 2, 3]
    assert len(records) in (3, 4)
