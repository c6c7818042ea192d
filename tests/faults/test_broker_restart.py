"""The Kafka broker stopped and restarted mid-stream, on the same data.

Every client rides it out without a restart of its own: the replay's idempotent producer
retries (nothing duplicated), the processor's and the sink's consumers reconnect and the
group re-forms. The broker is this test's own (tests/private_kafka.py, started with the
code `citystream stack up` uses), so no other test loses its broker meanwhile.
"""

from __future__ import annotations

import random
import time

import pytest

from core.settings import Settings
from tests.faults.harness import FIXTURE_ROWS, paced_replay, wait_until_accepted
from tests.private_kafka import PrivateKafka

pytestmark = pytest.mark.integration
SEED = 20140804


def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    settings: Settings, private_kafka: PrivateKafka
) -> None:
    rng = random.Random(SEED)
    s = settings.model_copy(update={"kafka_bootstrap_servers": private_kafka.cfg.bootstrap_servers})
    with paced_replay(s, speed=360.0) as run:  # ~30 s
        wait_until_accepted(run.pipeline, int(FIXTURE_ROWS * rng.uniform(0.2, 0.4)))
        private_kafka.stop()
        time.sleep(rng.uniform(3.0, 8.0))  # an outage the clients must ride out
        private_kafka.start()  # on its old data
        run.pipeline.check_alive()  # nobody crashed through the outage
        matched = run.finish_and_verify(s)
        print(f"broker restart: {matched} KPI rows match; {run.reconcile()}")
