"""`infra.stack` for real: a private Kafka + Apicurio stack on free ports in a tmp dir.

Independent of the shared stack `make test` starts (own data dir, own ports); only the
download cache is shared, so nothing is fetched again. One stack is started for the
module and always stopped in the fixture's teardown, whatever happens in the tests.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from infra import _java, _proc
from infra.stack import (
    REGISTRY_FALLBACK_VERSION,
    StackConfig,
    StackError,
    down,
    registry_version_for,
    status,
    up,
)
from tests.conftest import free_ports

pytestmark = pytest.mark.integration

UP_TIMEOUT_S = 120.0
READ_TIMEOUT_S = 30.0
# SchemaRegistryClient waits forever by default. With a timeout, a lost answer is
# retried (Apicurio 3.3.3 very rarely drops a 404; see infra/registry_service.py).
SR_TIMEOUT_S = 5

V1: dict[str, Any] = {
    "type": "record",
    "name": "Reading",
    "namespace": "citystream.test",
    "fields": [
        {"name": "sensor", "type": "string"},
        {"name": "count", "type": "int"},
    ],
}
# BACKWARD-compatible: a v2 reader fills the new field from its default.
V2_OPTIONAL: dict[str, Any] = {
    **V1,
    "fields": [*V1["fields"], {"name": "lane", "type": ["null", "int"], "default": None}],
}
# Not BACKWARD-compatible: a v2 reader cannot read v1 data (no value, no default).
V2_REQUIRED: dict[str, Any] = {**V1, "fields": [*V1["fields"], {"name": "speed", "type": "double"}]}


def _avro(schema: dict[str, Any]) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


def _config(data_dir: Path, **overrides: object) -> StackConfig:
    """A stack config of its own: ``data_dir``, fresh free ports, the default cache."""
    kafka, controller, registry = free_ports(3)
    settings: dict[str, object] = {
        "data_dir": data_dir,
        "kafka_port": kafka,
        "controller_port": controller,
        "registry_port": registry,
        "registry_version": registry_version_for(None),
    }
    settings.update(overrides)
    return StackConfig(**settings)  # type: ignore[arg-type]


def _registry(cfg: StackConfig) -> SchemaRegistryClient:
    """A new client each time: the client caches ids, and the tests want the server's word."""
    return SchemaRegistryClient({"url": cfg.registry_url, "timeout": SR_TIMEOUT_S})


def _schema_by_id(cfg: StackConfig, schema_id: int) -> Any:
    """The parsed Avro schema the registry holds under ``schema_id``."""
    return json.loads(_registry(cfg).get_schema(schema_id).schema_str or "null")


def _create_topic(cfg: StackConfig, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(
        timeout=30
    )


def _produce(cfg: StackConfig, topic: str, key: bytes, value: bytes) -> None:
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    producer = Producer({"bootstrap.servers": cfg.bootstrap_servers, "acks": "all"})
    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    assert producer.flush(30) == 0, "message not delivered within 30 s"
    assert not errors, errors


def _read_first(cfg: StackConfig, topic: str) -> Message:
    """The first record of partition 0 (assign, no group: no coordinator to wait for)."""
    consumer = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": f"test-stack-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TP(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            return msg
        pytest.fail(f"no record read from {topic} within {READ_TIMEOUT_S:.0f} s")
    finally:
        consumer.close()


def _assert_stopped(cfg: StackConfig) -> None:
    states = status(cfg)
    assert {"kafka", "registry"} <= set(states)
    for st in states.values():
        assert not st.running and not st.ready and st.pid is None, st
    assert not list(cfg.data_dir.glob("*.pid")), "pid files left behind"
    for port in (cfg.kafka_port, cfg.controller_port, cfg.registry_port):
        assert not _proc.port_open(cfg.connect_host, port), f"port {port} still answers"


# ------------------------------------------------------------------ failures, no JVM started


@pytest.mark.parametrize("taken", ["kafka", "kafka controller", "registry"])
def test_up_refuses_a_taken_port_and_starts_nothing(tmp_path: Path, taken: str) -> None:
    cfg = _config(tmp_path / "data")
    port = {
        "kafka": cfg.kafka_port,
        "kafka controller": cfg.controller_port,
        "registry": cfg.registry_port,
    }[taken]
    try:
        with socket.socket() as squatter:
            squatter.bind((cfg.bind_host, port))
            squatter.listen()
            with pytest.raises(StackError, match=rf"{taken} port 127\.0\.0\.1:{port} is already"):
                up(cfg, timeout_s=UP_TIMEOUT_S)
        _assert_stopped(cfg)
        assert not (cfg.data_dir / "kafka" / "data").exists(), "storage formatted anyway"
    finally:
        down(cfg)


# ------------------------------------------------------------------ Java 17 fallback


def _fake_jdk(root: Path, version: str) -> Path:
    """A JDK home that only has a ``release`` file (all `_java` reads when it exists)."""
    (root / "bin").mkdir(parents=True)
    (root / "release").write_text(f'JAVA_VERSION="{version}"\n', encoding="utf-8")
    return root


def test_registry_version_for_an_explicit_java_home(tmp_path: Path) -> None:
    """An explicit java_home is the only JDK considered (no /usr/lib/jvm scan)."""
    jdk17 = _fake_jdk(tmp_path / "jdk17", "17.0.15")
    jdk21 = _fake_jdk(tmp_path / "jdk21", "21.0.5")

    assert registry_version_for(jdk17) == REGISTRY_FALLBACK_VERSION == "3.0.9"
    assert registry_version_for(jdk21) == StackConfig.registry_version
    assert registry_version_for(jdk17, "3.2.1") == "3.2.1"  # an explicit choice stays


def _java17_home() -> Path | None:
    """Home of a Java 17-20 JDK on this machine, if there is one."""
    for java in _java._candidates(None):
        if 17 <= (_java.java_major(java) or 0) < 21:
            return Path(java).resolve().parent.parent
    return None


def test_fallback_registry_runs_on_java_17(tmp_path: Path) -> None:
    java_home = _java17_home()
    if java_home is None:
        pytest.skip("no Java 17-20 JDK on this machine")
    cfg = _config(
        tmp_path / "data", registry_version=REGISTRY_FALLBACK_VERSION, java_home=java_home
    )
    try:
        up(cfg, timeout_s=UP_TIMEOUT_S)
        pid = status(cfg)["registry"].pid
        assert pid is not None
        java = _proc._command_line(pid).split(" ", 1)[0]
        assert Path(java).resolve().is_relative_to(java_home), java

        subject = f"test-stack-{uuid.uuid4().hex[:8]}-value"
        schema_id = _registry(cfg).register_schema(subject, _avro(V1))
        assert _registry(cfg).register_schema(subject, _avro(V1)) == schema_id
        with pytest.raises(SchemaRegistryError):  # the global BACKWARD rule, on 3.0.x too
            _registry(cfg).register_schema(subject, _avro(V2_REQUIRED))
    finally:
        down(cfg)
    assert list((cfg.data_dir / "registry" / "h2").glob("registry.*.db")), "not file storage"


# ------------------------------------------------------------------ running stack
# Last in the file, so the fallback stack above is gone before this one starts.


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackConfig]:
    """A running private stack; stopped at the end of the module, even after failures."""
    cfg = _config(tmp_path_factory.mktemp("stack"))
    try:
        up(cfg, timeout_s=UP_TIMEOUT_S)
        yield cfg
    finally:
        down(cfg)


def test_status_reports_both_ready_and_up_is_idempotent(own_stack: StackConfig) -> None:
    states = status(own_stack)
    assert states["kafka"].ready and states["kafka"].running
    assert states["registry"].ready and states["registry"].running
    assert states["kafka"].endpoint == own_stack.bootstrap_servers
    assert states["registry"].endpoint == own_stack.registry_url
    pids = {name: st.pid for name, st in states.items()}
    assert all(pids.values())

    up(own_stack, timeout_s=UP_TIMEOUT_S)  # already running: nothing restarted

    assert {name: st.pid for name, st in status(own_stack).items()} == pids


def test_produce_and_consume(own_stack: StackConfig) -> None:
    topic = f"test-stack-{uuid.uuid4().hex[:8]}"
    _create_topic(own_stack, topic)

    _produce(own_stack, topic, b"k1", b"hello citystream")

    msg = _read_first(own_stack, topic)
    assert (msg.key(), msg.value()) == (b"k1", b"hello citystream")


def test_registering_again_gives_the_same_id(own_stack: StackConfig) -> None:
    subject = f"test-stack-{uuid.uuid4().hex[:8]}-value"

    schema_id = _registry(own_stack).register_schema(subject, _avro(V1))

    assert _registry(own_stack).register_schema(subject, _avro(V1)) == schema_id
    found = _registry(own_stack).lookup_schema(subject, _avro(V1))
    assert (found.schema_id, found.version) == (schema_id, 1)
    assert _schema_by_id(own_stack, schema_id) == V1


def test_backward_compatibility_on_the_subject(own_stack: StackConfig) -> None:
    subject = f"test-stack-{uuid.uuid4().hex[:8]}-value"
    v1_id = _registry(own_stack).register_schema(subject, _avro(V1))
    _registry(own_stack).set_compatibility(subject, "BACKWARD")
    assert _registry(own_stack).get_compatibility(subject) == "BACKWARD"

    assert _registry(own_stack).test_compatibility(subject, _avro(V2_REQUIRED)) is False
    with pytest.raises(SchemaRegistryError) as refused:
        _registry(own_stack).register_schema(subject, _avro(V2_REQUIRED))
    assert refused.value.http_status_code == 409

    assert _registry(own_stack).test_compatibility(subject, _avro(V2_OPTIONAL)) is True
    v2_id = _registry(own_stack).register_schema(subject, _avro(V2_OPTIONAL))
    assert v2_id != v1_id
    assert _registry(own_stack).get_versions(subject) == [1, 2]


def test_registry_wide_default_is_backward(own_stack: StackConfig) -> None:
    """No subject config at all: the stack's global BACKWARD rule still refuses."""
    subject = f"test-stack-{uuid.uuid4().hex[:8]}-value"
    _registry(own_stack).register_schema(subject, _avro(V1))

    with pytest.raises(SchemaRegistryError):
        _registry(own_stack).register_schema(subject, _avro(V2_REQUIRED))
    _registry(own_stack).register_schema(subject, _avro(V2_OPTIONAL))


def test_down_then_up_keeps_records_and_schema_ids(own_stack: StackConfig) -> None:
    """Kafka keeps the record and the registry (file storage) still knows its schema id."""
    cfg = own_stack
    topic = f"test-stack-{uuid.uuid4().hex[:8]}"
    ctx = SerializationContext(topic, MessageField.VALUE)
    record = {"sensor": "158324", "count": 7}
    _create_topic(cfg, topic)
    schema_id = _registry(cfg).register_schema(f"{topic}-value", _avro(V1))
    value = AvroSerializer(_registry(cfg), json.dumps(V1))(record, ctx)
    assert value is not None
    _produce(cfg, topic, b"k", value)

    down(cfg)
    _assert_stopped(cfg)
    up(cfg, timeout_s=UP_TIMEOUT_S)
    assert all(st.ready for st in status(cfg).values())

    raw = _read_first(cfg, topic).value()
    assert raw is not None
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == schema_id
    assert AvroDeserializer(_registry(cfg))(raw, ctx) == record
    assert _schema_by_id(cfg, schema_id) == V1
    assert _registry(cfg).lookup_schema(f"{topic}-value", _avro(V1)).schema_id == schema_id
    assert (cfg.data_dir / "registry" / "h2").is_dir()
