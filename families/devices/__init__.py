"""Device health: uptime per sensor and hour, district and city, from the traffic and air
readings (their batches: devices has no events of its own), with silence detection: every
known road-segment sensor is expected, so one that stops reporting shows as 0 %."""

from __future__ import annotations

from core.family import Family, Input
from core.kpis import HOURLY, Kpi
from families import air, traffic
from families.devices.domain import UPTIME, Uptime
from families.traffic import SEGMENTS
from families.traffic.domain import segment_info
from oracles.devices import recompute_devices

UPTIME_FORMULA = (
    "readings received / readings expected × 100 per sensor and hour (traffic and air: one "
    "per 5 min); an hour without any reading is 0; district and city: mean over their sensors"
)

KPIS = (
    Kpi(UPTIME, "%", UPTIME_FORMULA, HOURLY, ("sensor", "district", "city"),
        f"{traffic.FAMILY.topic}, {air.FAMILY.topic}", "devices"),
)  # fmt: skip

FAMILY = Family(
    name="devices",
    kpis=KPIS,
    inputs=(
        Input(Uptime("traffic", "segment_id"), traffic.FAMILY.batch_topic),
        Input(Uptime("air", "sensor_id"), air.FAMILY.batch_topic),
    ),
    reference=SEGMENTS,
    to_reference=segment_info,
    oracle=recompute_devices,
)
