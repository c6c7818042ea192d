"""The Kafka broker stopped and restarted mid-stream, on the same data.

Every client rides it out without a restart of its own: the replay's idempotent producer
retries (nothing duplicated), the processor's and the sink's consumers reconnect and the
group re-forms. Runs against the stack the test settings point at (`make test`: the CI
stack), stopping its broker with infra.stack and starting it again whatever happens.
"""

from __future__ import annotations

import random
import time

import pytest

from citystream.cli import stack_config
from core.settings import Settings
from infra.stack import status, stop_service, up
from tests.faults.harness import FIXTURE_ROWS, paced_replay, wait_until_accepted

pytestmark = pytest.mark.integration
SEED = 20140804


def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    stack: Settings, settings: Settings
) -> None:
    rng = random.Random(SEED)
    cfg = stack_config(stack)
    assert status(cfg)["kafka"].ready, f"no broker of ours at {cfg.data_dir}"
    with paced_replay(settings, speed=360.0) as run:  # ~30 s
        wait_until_accepted(run.pipeline, int(FIXTURE_ROWS * rng.uniform(0.2, 0.4)))
        try:
            assert stop_service(cfg, "kafka")
            time.sleep(rng.uniform(3.0, 8.0))  # an outage the clients must ride out
        finally:
            up(cfg)  # starts only what is not running: the broker, on its old data
        run.pipeline.check_alive()  # nobody crashed through the outage
        matched = run.finish_and_verify(settings)
        print(f"broker restart: {matched} KPI rows match; {run.reconcile()}")
