"""Faults 5 and 7 on a live, paced stream.

5. Poison messages (garbage bytes, an unknown schema id) land on the processor's input
   topic at seeded random points mid-stream: each is dead-lettered with its reason and
   the processor carries on.
7. The same input replayed a second time: every reading is a duplicate or late, and no
   KPI changes.
Both end with `citystream verify` and the exact reconciliation.
"""

from __future__ import annotations

import random

import pytest

from citystream.pipeline import wait_settled
from citystream.verify import stored_kpis
from connectors.sources.aarhus import AarhusReplaySource
from core.kafka import Publisher
from core.settings import Settings
from tests.faults.harness import FIXTURE, FIXTURE_ROWS, METADATA, paced_replay, wait_until_accepted
from tests.integration.test_traffic_pipeline import read_dead_letters

pytestmark = pytest.mark.integration
SEED = 20140805
POISON = {
    b"\x00\xff\xff\xff\xfe unknown schema id": "unknown_schema",
    b"\xde\xad\xbe\xef garbage": "undecodable",
}


def test_poison_mid_stream_then_replay_twice_changes_nothing(settings: Settings) -> None:
    rng = random.Random(SEED)
    batches = settings.topic("city.traffic.batches.v1")
    with paced_replay(settings, speed=540.0) as run:  # ~20 s
        poison = Publisher.create(settings)
        for payload in POISON:
            wait_until_accepted(run.pipeline, int(FIXTURE_ROWS * rng.uniform(0.1, 0.6)))
            partition = rng.randrange(settings.partitions)
            poison.send(batches, str(partition).encode(), payload, partition)
            poison.flush()
        matched = run.finish_and_verify(settings)
        first = run.reconcile()
        letters = [d for d in read_dead_letters(settings) if d["component"] == "traffic-processor"]
        assert {d["payload"]: d["reason"] for d in letters} == POISON
        print(f"poison: {len(POISON)} dead-lettered, {matched} KPI rows match; {first}")

        before = stored_kpis(settings)
        again = AarhusReplaySource(settings, FIXTURE, METADATA)
        again.setup()
        second = again.run()
        stats = run.pipeline.wait_processed(run.reports[0].published + second.published)
        wait_settled(run.pipeline, timeout=300)
        assert stats["accepted"] == first["accepted"]
        assert stats["duplicates"] + stats["late"] == (
            first["duplicates"] + first["late"] + second.published
        )
        assert stored_kpis(settings) == before
        run.finish_and_verify(settings)
        print(
            f"replay twice: {len(before)} KPI rows unchanged, second run {second.published} "
            f"readings: all duplicates or late"
        )
