"""A processor starts against a broker that holds thousands of partitions and a topic
created a moment before: it waits for the topic (bounded, said in the log) instead of
failing on the first UNKNOWN_TOPIC_OR_PART, as `make demo` after `make test` once did.

The broker is this test's own: filled with a few thousand partitions, restarted so that
it loads them all at start, and used at once.
"""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from streams.engine.processor import WindowedProcessor
from streams.worker import PROCESSORS
from tests.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration
FILLER_TOPICS, FILLER_PARTITIONS = 60, 50  # 3,000 partitions, as a test run leaves behind


def _fill(bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [
        NewTopic(f"filler.{i}", num_partitions=FILLER_PARTITIONS, replication_factor=1)
        for i in range(FILLER_TOPICS)
    ]
    for future in admin.create_topics(topics, operation_timeout=120).values():
        future.result()


def test_processor_starts_on_a_busy_broker_right_after_its_topics_are_created(
    settings: Settings, private_kafka: PrivateKafka
) -> None:
    s = settings.model_copy(update={"kafka_bootstrap_servers": private_kafka.cfg.bootstrap_servers})
    _fill(s.kafka_bootstrap_servers)
    private_kafka.stop()
    private_kafka.start()  # loads the 3,000 partitions again, as a restarted stack does
    created = ensure_topics(s)  # and at once: the topics of a fresh namespace
    assert s.topic("city.road_segments.v1") in created
    register_schemas(s)
    processor = WindowedProcessor(s, PROCESSORS["traffic"])
    processor.setup()  # reference table and partition counts: waits, never fails
    try:
        assert processor.partition_counts == [s.partitions]
        assert processor.reference.data == {}  # an empty reference topic, read to its end
    finally:
        processor.close()
