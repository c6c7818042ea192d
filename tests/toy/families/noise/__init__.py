"""Noise: the equivalent sound level per sensor, district and city."""

from __future__ import annotations

from pathlib import Path

from core.family import Events, Family
from core.kpis import TUMBLING, Kpi
from tests.toy.families.noise.domain import LEQ, Noise
from tests.toy.oracles.noise import recompute

# In the repository the schemas are files of schemas/avro/ and named without a path; the
# toy's live outside it, and an absolute path is taken as it is.
AVRO = Path(__file__).resolve().parents[2] / "schemas" / "avro"

KPIS = (
    Kpi(
        LEQ,
        "dB(A)",
        "10·log10 of the mean of 10^(dB/10) over the accepted readings",
        TUMBLING,
        ("sensor", "district", "city"),
        "city.noise.v1",
        "noise",
    ),
)

FAMILY = Family(
    name="noise",
    kpis=KPIS,
    domain=Noise(),
    events=Events(
        schema=str(AVRO / "noise_reading.avsc"),
        batch_schema=str(AVRO / "noise_reading_batch.avsc"),
        key="sensor_id",
        columns=("sensor_id", "district", "event_time_ms", "decibels"),
        doc="Every noise reading as measured, one per message",
    ),
    oracle=recompute,
)
