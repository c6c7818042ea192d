"""The MQTT source acknowledges a message only after Kafka has what it became."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connectors.publishing import Reading, Rejected
from connectors.sources.ingest_common import load_config
from connectors.sources.mqtt import Message, MqttSource
from core.kafka import DeliveryError
from core.settings import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "infra/examples/ingest.toml"


class FakeEvents:
    """EventPublisher stand-in recording what was published and when it was flushed."""

    def __init__(self, log: list[str], fail: bool = False) -> None:
        self.log = log
        self.fail = fail
        self.readings: list[Reading] = []
        self.rejected: list[Rejected] = []

    def reading(self, r: Reading) -> None:
        self.readings.append(r)
        self.log.append(f"reading {r.segment_id}")

    def reject(self, r: Rejected) -> None:
        self.rejected.append(r)
        self.log.append(f"reject {r.reason}")

    def flush(self) -> None:
        if self.fail:
            raise DeliveryError("broker gone")
        self.log.append("flush")


class FakeClient:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def ack(self, mid: int, qos: int) -> None:
        self.log.append(f"ack {mid}")

    def publish(self, *_a: Any, **_k: Any) -> Any:
        raise AssertionError("not subscribed: no status expected")

    def disconnect(self) -> None:
        self.log.append("disconnect")

    def loop_stop(self) -> None:
        pass


def source(log: list[str], fail: bool = False) -> tuple[MqttSource, FakeEvents]:
    src = MqttSource(Settings(), load_config(EXAMPLE))
    events = FakeEvents(log, fail)
    src.events = events  # type: ignore[assignment]
    src.client = FakeClient(log)  # type: ignore[assignment]
    return src, events


def body(minute: int, count: int = 3) -> bytes:
    return json.dumps(
        {
            "phenomenonTime": f"2014-08-02T06:{minute:02}:00Z",
            "result": {"vehicleCount": count, "avgSpeed": 50.0},
        }
    ).encode()


def run_until(src: MqttSource, log: list[str], line: str) -> threading.Thread:
    thread = threading.Thread(target=src.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while line not in log:
        assert time.monotonic() < deadline, f"no {line!r} in {log}"
        time.sleep(0.01)
    return thread


def test_acks_follow_the_kafka_flush_and_duplicates_are_acked_too() -> None:
    log: list[str] = []
    src, events = source(log)
    topic = "v1.1/Datastreams(1)/Observations"
    for mid, payload in ((1, body(5)), (2, body(5)), (3, b"{bad"), (4, body(10))):
        src._inbox.put(Message(topic, payload, mid, 1))
    thread = run_until(src, log, "ack 4")
    src.stop()
    thread.join(5)
    assert log.index("flush") < log.index("ack 1")
    assert {"ack 1", "ack 2", "ack 3", "ack 4"} <= set(log)
    assert [r.segment_id for r in events.readings] == ["158895", "158895"]
    assert [r.reason for r in events.rejected] == ["invalid_json"]
    counters = src.counters.as_dict()
    assert counters["accepted"] == 2 and counters["duplicates"] == 1
    assert counters["rejected_by_reason"] == {"invalid_json": 1}
    report = src.report()
    assert (report.rows_read, report.published, report.duplicates) == (4, 2, 1)
    assert report.dead_lettered == {"invalid_json": 1}
    assert log[-1] == "disconnect"


def test_nothing_is_acknowledged_when_kafka_does_not_confirm() -> None:
    log: list[str] = []
    src, _events = source(log, fail=True)
    src._inbox.put(Message("v1.1/Datastreams(1)/Observations", body(5), 1, 1))
    with pytest.raises(DeliveryError):
        src.run()
    assert not [line for line in log if line.startswith("ack")]
    assert log[-1] == "disconnect"
