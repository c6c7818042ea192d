"""A Kafka broker of a test's own (free ports, a tmp data dir), started with the same code
`citystream stack up` uses: for tests that freeze, fill or restart a broker, never the
shared one."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import _proc, kafka_service
from infra.config import StackConfig
from tests.conftest import free_ports


class PrivateKafka:
    """A Kafka broker started with the same code `citystream stack up` uses."""

    def __init__(self, data_dir: Path) -> None:
        kafka, controller, registry = free_ports(3)
        self.cfg = StackConfig(
            data_dir=data_dir,
            kafka_port=kafka,
            controller_port=controller,
            registry_port=registry,
            kafka_heap="384m",
        )
        self.svc = kafka_service.service(self.cfg)
        self.pid: int | None = None

    def start(self) -> None:
        cmd = self.svc.prepare(print)
        self.pid = _proc.spawn(cmd, self.svc.workdir, self.svc.stdout_log)
        deadline = time.monotonic() + 180
        while not self.svc.is_ready():
            assert _proc.is_alive(self.pid), self.svc.log_tail()
            assert time.monotonic() < deadline, self.svc.log_tail()
            time.sleep(0.5)

    def signal(self, sig: signal.Signals) -> None:
        assert self.pid is not None
        os.kill(self.pid, sig)

    def stop(self) -> None:
        if self.pid is not None:
            self.signal(signal.SIGCONT)  # a frozen JVM cannot stop
            _proc.stop(self.pid, 30)
            self.pid = None


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    """A running broker of this test's own, stopped (thawed first) at the end."""
    broker = PrivateKafka(tmp_path / "private-kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
