"""Processor SIGKILLed mid-replay, several times: the KPIs still match the recount exactly.

Open windows live in memory; the processor acks an input message only once every window
it fed is final, so after a crash the worker re-reads from the oldest open window and
rebuilds it, resuming stream time from the watermark it last published. A fifth of a
percent of the readings come from segments without a reference record (as in a real city):
they count in district ``unknown`` across the restarts too.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from citystream.dirty_input import UNKNOWN_ONLY, make_dirty
from core.settings import Settings
from tests.faults.harness import FIXTURE, FIXTURE_ROWS, paced_replay, wait_until_accepted

pytestmark = pytest.mark.integration
SEED = 20141026


def test_processor_killed_mid_replay_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    source = tmp_path / "with_unknown_segments.csv.gz"
    assert make_dirty(FIXTURE, source, UNKNOWN_ONLY).unknown_segments > 0
    # ~30 s: windows outlive commits
    with paced_replay(settings, speed=360.0, source=source) as run:
        # Two kills at seeded points in the stream, each while a worker is mid-window.
        for low, high in ((0.15, 0.35), (0.20, 0.35)):
            wait_until_accepted(run.pipeline, int(FIXTURE_ROWS * rng.uniform(low, high)))
            time.sleep(rng.uniform(0.0, 1.5))  # land anywhere inside a window
            run.pipeline.kill("processor")
            run.pipeline.start("processor")
        run.finish_and_verify(settings, source)
