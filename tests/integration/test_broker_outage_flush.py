"""A producer flush during a broker outage waits (with log lines) instead of failing.

On a broker of this test's own, frozen with SIGSTOP for longer than one flush wait: the
processor's flush (``Publisher.flush_until_delivered``) logs and waits again, returns
once the broker thaws, and every message is delivered exactly once.
"""

from __future__ import annotations

import logging
import signal
import threading

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from core.kafka import Publisher, end_offsets, wait_for_topic
from core.settings import Settings
from tests.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration


def test_flush_waits_through_a_frozen_broker_and_delivers_everything(
    settings: Settings, private_kafka: PrivateKafka, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings.model_copy(update={"kafka_bootstrap_servers": private_kafka.cfg.bootstrap_servers})
    topic = s.topic("outage")
    admin = AdminClient(s.kafka_config())
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    publisher = Publisher.create(s)
    wait_for_topic(publisher.producer, topic)
    private_kafka.signal(signal.SIGSTOP)
    try:
        for i in range(100):
            publisher.send(topic, None, str(i).encode())
        done = threading.Event()
        failure: list[BaseException] = []

        def flush() -> None:
            try:
                publisher.flush_until_delivered(first_wait=0.5, longest_wait=1.0)
            except BaseException as exc:  # reported to the test below
                failure.append(exc)
            done.set()

        with caplog.at_level(logging.WARNING, logger="core.kafka"):
            thread = threading.Thread(target=flush)
            thread.start()
            # frozen: the flush must still be waiting after several of its waits
            assert not done.wait(4.0), f"flush returned during the outage: {failure}"
            private_kafka.signal(signal.SIGCONT)
            assert done.wait(120), "flush did not return after the broker thawed"
            thread.join()
    finally:
        private_kafka.signal(signal.SIGCONT)
    assert failure == []
    waits = [r for r in caplog.records if "not yet acknowledged by Kafka" in r.getMessage()]
    assert len(waits) >= 2, "each wait of the outage is said in the log"
    assert sum(end_offsets(s, topic).values()) == 100
