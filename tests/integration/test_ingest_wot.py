"""WoT end to end: the Aarhus pack's Thing Descriptions (cities/aarhus/things) are the whole
MQTT mapping. `citystream ingest mqtt --city cities/aarhus` with a config file that maps
no Datastream, a private Mosquitto, SensorThings observations on the topics the TDs'
forms name, Kafka, the traffic processor and ClickHouse: KPIs equal to verify's
recomputation.
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from citystream.pipeline import Pipeline
from core.settings import Settings
from tests.integration.test_ingest_http import (
    assert_kpis,
    expected_kpis,
    iso_ms,
    log_tail,
    prepare_namespace,
    read_topic,
    start_command,
    stop_command,
)
from tests.integration.test_ingest_mqtt import Broker, Client, at, topic
from tests.integration.test_ingest_mqtt import broker as broker  # the module's fixture

pytestmark = pytest.mark.integration
AARHUS = Path(__file__).resolve().parents[2] / "cities/aarhus"


def test_the_packs_thing_descriptions_are_the_mapping(
    settings: Settings, broker: Broker, tmp_path: Path
) -> None:
    prepare_namespace(settings)
    client_id = f"citystream-wot-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "ingest.toml"
    config.write_text(  # no [[datastreams]]: the TDs give 101, 102 (traffic) and 103
        f"""
[mqtt]
host = "127.0.0.1"
port = {broker.port}
client_id = "{client_id}"
join_timeout_s = 2
status_interval_s = 0.3
subscriptions = [{{ filter = "v1.1/+/Observations", format = "sensorthings" }}]
""",
        encoding="utf-8",
    )
    status_topic = f"citystream/ingest/{client_id}/status"
    rng = random.Random(18)
    sent: list[tuple[str, int, int, float]] = []
    s = settings.model_copy(update={"city": AARHUS})
    sensor = Client(broker.port, f"sensor-{client_id}")
    sensor.watch(status_topic)
    process = start_command(s, "ingest-wot", "ingest", "mqtt", "--config", str(config))
    try:
        sensor.wait_status(status_topic, state="online")
        for minute in (2, 7, 12, 17, 31):
            count, speed_ms = rng.randint(1, 40), rng.choice([6.5, 9.0, 13.5])
            sensor.publish(topic("101"), {"phenomenonTime": at(minute), "result": count})
            sensor.publish(topic("102"), {"phenomenonTime": at(minute), "result": speed_ms})
            sent.append(("190744", iso_ms(at(minute)), count, speed_ms * 3.6))
        parked = {"phenomenonTime": at(5), "result": {"occupied": 40, "capacity": 65}}
        sensor.publish(topic("103"), parked)
        sensor.publish(topic("104"), parked)  # described by no TD
        sensor.wait_status(status_topic, accepted=len(sent) + 1, rejected=1, timeout=60)
    finally:
        sensor.close()
        assert stop_command(process) == 0, log_tail(s, "ingest-wot")

    parking = read_topic(settings, "city.parking.v1")
    assert [(p["car_park_id"], p["vehicle_count"]) for p in parking] == [("SKOLEBAKKEN", 40)]
    letters = read_topic(settings, "city.dlq.v1")
    assert [d["reason"] for d in letters] == ["unknown_datastream"]
    pipeline = Pipeline(settings, processors=("traffic",))
    try:
        pipeline.start()
        stats = pipeline.wait_caught_up(len(sent), timeout=300)
        assert stats["duplicates"] == 0 and stats["late"] == 0
        assert_kpis(settings, expected_kpis(sent))
    finally:
        pipeline.stop()
