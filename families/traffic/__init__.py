"""Traffic: vehicle counts, speed and congestion per road segment, district and city, with
1-hour trends; districts and free-flow speeds come from the road-segment reference data."""

from __future__ import annotations

from core.family import TREND_SUFFIX, Events, Family, Reference
from core.kpis import HOPPING, SEGMENT_SCOPES, TREND_SCOPES, TUMBLING, Kpi
from families.traffic.domain import AVG_SPEED, CONGESTION, VEHICLE_COUNT, Traffic, segment_info
from oracles.aarhus_traffic import recompute

TOPIC = "city.traffic.v1"
# Road segments: also the air sensors (same REPORT_IDs) and the devices' known sensors.
SEGMENTS = Reference(
    "city.road_segments.v1",
    "road_segment.avsc",
    key="segment_id",
    doc="Road segment reference data, latest value per segment",
)
VEHICLES = "Σ vehicle_count of the accepted readings"
SPEED = "Σ(avg_speed × vehicle_count) / Σ vehicle_count; absent when no vehicles"
CONGESTION_FORMULA = (
    "max(0, 1 − avg_speed_kmh / free-flow speed of the segment); segment scope only"
)

KPIS = (
    Kpi(VEHICLE_COUNT, "vehicles", VEHICLES, TUMBLING, SEGMENT_SCOPES, TOPIC, "traffic"),
    Kpi(AVG_SPEED, "km/h", SPEED, TUMBLING, SEGMENT_SCOPES, TOPIC, "traffic"),
    Kpi(CONGESTION, "ratio 0..1", CONGESTION_FORMULA, TUMBLING, ("segment",), TOPIC, "traffic"),
    Kpi(VEHICLE_COUNT + TREND_SUFFIX, "vehicles", VEHICLES, HOPPING, TREND_SCOPES, TOPIC,
        "traffic"),
    Kpi(AVG_SPEED + TREND_SUFFIX, "km/h", SPEED, HOPPING, TREND_SCOPES, TOPIC, "traffic"),
)  # fmt: skip

FAMILY = Family(
    name="traffic",
    kpis=KPIS,
    domain=Traffic(),
    events=Events(
        schema="traffic_reading.avsc",
        batch_schema="traffic_reading_batch.avsc",
        key="segment_id",
        columns=("segment_id", "event_time_ms", "vehicle_count", "avg_speed_kmh"),
        doc="Every traffic reading as observed, one per message",
        batch_doc="Processor input: the same readings, many per message, column-wise",
    ),
    reference=SEGMENTS,
    to_reference=segment_info,
    partials_version=2,
    oracle=recompute,
)
