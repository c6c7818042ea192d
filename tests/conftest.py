"""Shared fixtures. Integration tests run on the real local stack started by `make test`.

If Kafka or the registry cannot be reached the integration tests fail (never skip): a
green run must mean the pipeline was exercised for real.
"""

from __future__ import annotations

import os
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.private_kafka"]  # the private_kafka fixture


def _base_settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack() -> Settings:
    """The running stack, or a loud failure saying what is missing."""
    base = _base_settings()
    host, port = base.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(
            f"Kafka not reachable at {base.kafka_bootstrap_servers} ({exc}); "
            "run the tests with `make test`, which starts the stack",
            pytrace=False,
        )
    try:
        with urllib.request.urlopen(f"{base.schema_registry_url}/subjects", timeout=5) as resp:
            assert resp.status == 200
    except Exception as exc:
        pytest.fail(
            f"schema registry not reachable at {base.schema_registry_url} ({exc}); "
            "run the tests with `make test`",
            pytrace=False,
        )
    return base


def free_port() -> int:
    return free_ports(1)[0]


PORT_BLOCK_START = 20000  # below Linux's ephemeral range (32768+) and the stacks' ports
PORT_BLOCK_SIZE = 1000  # ports per pytest-xdist worker: gw0 20000-20999, gw1 21000-21999...
_next_candidate: dict[str, int] = {}


def _worker_block() -> range:
    """This test process's own ports, so two xdist workers never pick the same one.

    Ports the OS hands out for port 0 are free only at that moment: another worker can
    take the same number before this one's service binds it (a processor's web port once
    answered with another worker's /metrics). Blocks per worker remove that race; the
    bind below still skips a port some other program holds.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker.removeprefix("gw") or 0)
    if index > 8:
        raise RuntimeError(f"port blocks cover 9 pytest-xdist workers, not {worker}")
    start = PORT_BLOCK_START + index * PORT_BLOCK_SIZE
    return range(start, start + PORT_BLOCK_SIZE)


def free_ports(count: int) -> list[int]:
    """``count`` different ports free now, from this worker's block, cycling through it.

    Cycling means a port comes back only after the other 999 were handed out, long
    after the test that used it stopped its services.
    """
    block = _worker_block()
    chosen: list[int] = []
    with ExitStack() as held:
        for _ in range(len(block)):
            offset = _next_candidate.get("offset", 0)
            _next_candidate["offset"] = (offset + 1) % len(block)
            sock = held.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", block[offset]))
            except OSError:
                continue  # held by a program outside this worker's tests
            chosen.append(block[offset])
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"fewer than {count} free ports in {block}")


PORT_SETTINGS = (
    "processor_web_port", "query_port", "processor_metrics_port", "sink_metrics_port",
    "ingest_metrics_port", "source_metrics_port", "alerts_metrics_port", "alerts_web_port",
)  # fmt: skip


@pytest.fixture
def settings(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings isolated per test: own topic/group prefix and own data dir (own chDB)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    yield stack.model_copy(
        update={
            "topic_prefix": prefix,
            "data_dir": tmp_path / "data",
            "processor_id": "traffic",
            "idle_timeout_s": 2.0,
            "sink_batch_seconds": 0.5,
            **dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True)),
        }
    )
    delete_topics_with_prefix(stack, prefix)


def delete_topics_with_prefix(stack: Settings, prefix: str) -> None:
    """Remove a finished test's topics from the shared broker.

    Each test's prefix creates a few hundred partitions; kept until the end of the suite,
    they exhaust the broker's open files (a broker with ~20,000 partition directories
    stopped with "Too many open files"). A deletion that fails is an error of the test.
    """
    admin = AdminClient(stack.kafka_config())
    names = [t for t in admin.list_topics(timeout=30).topics if t.startswith(prefix)]
    if not names:
        return
    for name, future in admin.delete_topics(names, operation_timeout=30).items():
        try:
            future.result(timeout=60)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise RuntimeError(f"could not delete test topic {name}: {exc}") from exc
