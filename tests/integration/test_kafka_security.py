"""SASL/SCRAM and TLS to Kafka, from settings, against the local broker's extra listeners.

The stack the tests point at must run with CITYSTREAM_KAFKA_SCRAM_PORT and
CITYSTREAM_KAFKA_TLS_PORT (`make test` sets both): a SCRAM-SHA-512 listener, and SCRAM
over TLS with a CA generated at stack-up. Every client (librdkafka's and Faust's) gets the
user, password and CA from the same Settings, and the password shows up in no log.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from pydantic import SecretStr

from citystream.cli import stack_config
from citystream.pipeline import Pipeline
from citystream.verify import stored_kpis
from connectors.sources.aarhus import AarhusReplaySource
from core.kafka import Publisher
from core.settings import Settings
from core.startup import CredentialsRejected, wait_for_services
from families.registry import ensure_topics, register_schemas
from infra import kafka_security
from oracles.aarhus_traffic import recompute
from oracles.compare import compare
from tests.oracle import METADATA, REPO

pytestmark = pytest.mark.integration
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"


def secured(stack: Settings, settings: Settings, listener: str) -> Settings:
    """``settings`` pointed at the stack's SCRAM or TLS listener, as an operator would set it."""
    cfg = stack_config(stack)
    port = cfg.scram_port if listener == "scram" else cfg.tls_port
    if port is None:
        pytest.fail(
            "the stack has no SCRAM/TLS listener: start it with CITYSTREAM_KAFKA_SCRAM_PORT "
            "and CITYSTREAM_KAFKA_TLS_PORT set (make test does)",
            pytrace=False,
        )
    username, password = kafka_security.credentials(cfg)
    tls = listener == "tls"
    return settings.model_copy(
        update={
            "kafka_bootstrap_servers": f"{cfg.connect_host}:{port}",
            "kafka_security_protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": username,
            "kafka_sasl_password": SecretStr(password),
            "startup_timeout_s": 30.0,
            "kafka_ssl_ca_file": kafka_security.ca_file(cfg) if tls else None,
        }
    )


@pytest.mark.parametrize("listener", ["scram", "tls"])
def test_produce_and_consume_through_the_authenticated_listener(
    stack: Settings, settings: Settings, listener: str
) -> None:
    s = secured(stack, settings, listener)
    wait_for_services(s)
    ensure_topics(s)
    topic = s.topic("city.traffic.v1")
    marker = uuid.uuid4().hex.encode()
    publisher = Publisher.create(s)
    publisher.send(topic, b"k", marker, 0)
    publisher.flush()
    consumer = Consumer(s.kafka_config(**{"group.id": s.group("sec"), "enable.auto.commit": False}))
    consumer.assign([TopicPartition(topic, 0, 0)])
    got = [m.value() for m in consumer.consume(10, timeout=10) if m.error() is None]
    consumer.close()
    assert got == [marker]


def test_wrong_password_is_a_clear_error_without_the_password(
    stack: Settings, settings: Settings
) -> None:
    s = secured(stack, settings, "scram").model_copy(
        update={"kafka_sasl_password": SecretStr("not-the-password-4711")}
    )
    with pytest.raises(CredentialsRejected) as caught:
        wait_for_services(s, registry=False)
    message = str(caught.value)
    assert "refused the SCRAM-SHA-512 login of user 'citystream'" in message
    assert "CITYSTREAM_KAFKA_SASL_PASSWORD" in message
    assert "not-the-password-4711" not in message


@pytest.mark.parametrize("listener", ["scram", "tls"])
def test_whole_pipeline_with_faust_over_the_authenticated_listener(
    stack: Settings, settings: Settings, listener: str
) -> None:
    """Source, Faust processor and sink all log in; KPIs verified; password in no log."""
    s = secured(stack, settings, listener)
    password = s.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
    assert password not in repr(s) and password not in str(s.model_dump())
    ensure_topics(s)
    register_schemas(s)
    pipeline = Pipeline(s, processors=("traffic",))
    try:
        pipeline.start()
        source = AarhusReplaySource(s, FIXTURE, METADATA)
        source.setup()
        report = source.run()
        pipeline.wait_caught_up(report.published, timeout=300)
        result = compare(recompute(FIXTURE, METADATA, s.partitions), stored_kpis(s))
        assert result.ok and result.matched > 10_000, result.summary()
    finally:
        pipeline.stop()
    logs = list((s.data_dir / "logs").glob("*.log"))
    assert logs
    for log in logs:
        assert password not in log.read_text(errors="replace"), log
