"""MQTT over TLS: a real Mosquitto with a TLS listener (its certificate and CA generated
now by infra/kafka_security.py), `citystream ingest mqtt` connecting with
CITYSTREAM_MQTT_CA_FILE, and a paho-mqtt client publishing over TLS. The observation
must arrive in Kafka as an AirReading; clients that do not trust the CA get nowhere."""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from infra import kafka_security, mosquitto_service
from infra.config import StackConfig
from tests.conftest import free_port
from tests.integration.test_ingest_http import (
    log_tail,
    read_topic,
    start_command,
    stop_command,
)
from tests.integration.test_ingest_mqtt import Broker

pytestmark = pytest.mark.integration
TOPIC = "v1.1/MultiDatastreams(air-tls)/Observations"


class TlsBroker(Broker):
    """The module broker of test_ingest_mqtt, plus a TLS listener."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.tls_port = free_port()
        self.cfg = StackConfig(
            data_dir=data_dir, mosquitto_port=self.port, mosquitto_tls_port=self.tls_port
        )
        self.svc = mosquitto_service.service(self.cfg, self.port)

    @property
    def ca(self) -> Path:
        return kafka_security.ca_file(self.cfg)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()


def tls_client(port: int, ca: Path | None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}")
    client.tls_set(ca_certs=str(ca) if ca else None)
    client.connect("127.0.0.1", port)
    return client


def test_mqtt_ingest_over_tls(settings: Settings, tls_broker: TlsBroker, tmp_path: Path) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    config = tmp_path / "ingest.toml"
    config.write_text(
        f"""
[mqtt]
host = "127.0.0.1"
port = {tls_broker.tls_port}
client_id = "citystream-tls-{uuid.uuid4().hex[:6]}"
subscriptions = [{{ filter = "v1.1/+/Observations", format = "sensorthings" }}]

[[datastreams]]
id = "air-tls"
domain = "air"
sensor = "158895"
components = [
  "ozone", "particulate_matter", "carbon_monoxide", "sulfure_dioxide", "nitrogen_dioxide"
]
""",
        encoding="utf-8",
    )

    # without the CA, the broker's certificate is not trusted: no connection
    with pytest.raises(ssl.SSLError):
        tls_client(tls_broker.tls_port, None)

    s = settings.model_copy(update={"mqtt_ca_file": tls_broker.ca})
    process = start_command(s, "ingest-mqtt-tls", "ingest", "mqtt", "--config", str(config))
    sensor = tls_client(tls_broker.tls_port, tls_broker.ca)
    sensor.loop_start()
    try:
        body = {"phenomenonTime": "2016-12-07T11:05:00Z", "result": [40, 55, 30.5, 20, 100]}
        deadline = time.monotonic() + 60
        records: list[dict[str, object]] = []
        while not records:
            # published until the ingest has subscribed (QoS 1 without a session is lost)
            assert process.poll() is None, log_tail(s, "ingest-mqtt-tls")
            assert time.monotonic() < deadline, log_tail(s, "ingest-mqtt-tls")
            sensor.publish(TOPIC, json.dumps(body), qos=1).wait_for_publish(10)
            time.sleep(1.0)
            records = read_topic(s, "city.air.v1")
    finally:
        sensor.loop_stop()
        sensor.disconnect()
        assert stop_command(process) == 0, log_tail(s, "ingest-mqtt-tls")
    first = records[0]
    assert first["sensor_id"] == "158895" and first["source"] == "mqtt-ingest"
    assert (first["ozone"], first["nitrogen_dioxide"]) == (40.0, 100.0)
