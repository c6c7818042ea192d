"""A new KPI family, added by following docs/extending.md ("Add a KPI family") step by step.

The toy family, noise, is in tests/toy/ laid out as the walk-through lays it out in the
repository: its schemas (tests/toy/schemas/avro/), its rules and declaration
(tests/toy/families/noise/), its oracle (tests/toy/oracles/noise.py). The one line that
registers it is the registry below: the test cannot edit families/registry.py, so it hands
the registry to the same worker `citystream process noise` runs. Everything else is the
real path: topics and subjects on the stack, the publishing path every source uses, the
window engine in a Faust worker, the ClickHouse sink, and the oracle's verdict.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from citystream.pipeline import Pipeline, Service, settings_env
from citystream.verify import stored_kpis
from connectors.publishing import EventPublisher
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import FAMILIES, Registry
from oracles.compare import compare
from streams import worker
from tests.toy.families import noise

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Step 4 of the walk-through: the family's line in FAMILIES.
REGISTRY = Registry((*FAMILIES, noise.FAMILY))
T0 = 1_406_872_800_000  # 2014-08-01T06:00Z, a window boundary
MIN = 60_000
READINGS = [  # sensor_id, district, event time, dB(A)
    ("n1", "8000", T0 + 1 * MIN, 60.0),
    ("n1", "8000", T0 + 5 * MIN, 70.0),
    ("n2", "8000", T0 + 3 * MIN, 55.0),
    ("n3", "8200", T0 + 2 * MIN, 65.0),
    ("n1", "8000", T0 + 17 * MIN, 62.0),  # the next window
    ("n3", "8200", T0 + 20 * MIN, 71.0),
    ("n1", "8000", T0 + 5 * MIN, 70.0),  # sent twice: counts once
]


def run_worker() -> None:
    """The worker `citystream process noise` would start, with the toy registered."""
    sys.argv = [sys.argv[0], "worker"]  # Faust parses the command line itself
    worker.run(Settings(), ["noise"], registry=REGISTRY)


def start_processor(pipeline: Pipeline) -> None:
    """This module's run_worker as the pipeline's processor service (its stats page too)."""
    settings = pipeline.settings
    log_path = settings.data_dir / "logs" / "noise-processor.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_toy_family"],
            cwd=REPO,
            env=settings_env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    pipeline.services["processor"] = Service("processor", process, log_path)
    pipeline.wait_ready(("processor",))


def publish(settings: Settings) -> int:
    """The readings through the publishing path every source uses (step 5)."""
    stream = REGISTRY.streams["noise"]
    publisher = EventPublisher(settings, "noise-test", (stream,), catalogue=REGISTRY.topics)
    publisher.setup()
    for line, (sensor, district, ms, db) in enumerate(READINGS, 1):
        record = {"sensor_id": sensor, "district": district, "event_time": ms,
                  "event_time_ms": ms, "decibels": db, "source": "noise-test"}  # fmt: skip
        publisher.event(stream.topic, record, f"readings:{line}")
    publisher.flush()
    return len(READINGS)


def test_a_family_added_by_the_walk_through_lands_its_kpis_in_clickhouse(
    settings: Settings,
) -> None:
    assert "noise.leq_db" in REGISTRY.kpis and "city.noise.partials.v1" in REGISTRY.topics
    REGISTRY.ensure_topics(settings)  # step 6: what `citystream init` does
    REGISTRY.register_schemas(settings)
    pipeline = Pipeline(settings, processors=("noise",))
    try:
        pipeline.start("sink")
        start_processor(pipeline)
        published = publish(settings)
        assert sum(end_offsets(settings, settings.topic("city.noise.v1")).values()) == published
        stats = pipeline.wait_caught_up(published, timeout=300)
        assert (stats["accepted"], stats["duplicates"], stats["late"]) == (6, 1, 0)

        oracle = noise.FAMILY.oracle
        assert oracle is not None
        expected = oracle(READINGS)
        result = compare(expected, stored_kpis(settings, "noise."))
        assert result.ok and result.matched == len(expected) == 11, result.summary()
        assert expected[("noise.leq_db", "sensor", "n1", T0)][0] == pytest.approx(67.403627)
    finally:
        pipeline.stop()


if __name__ == "__main__":
    run_worker()
