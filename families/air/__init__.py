"""Air quality: the five pollutant means and the AQI per sensor (a road segment's REPORT_ID),
district and city, with a 1-hour AQI trend; districts come from the road segments."""

from __future__ import annotations

from core.family import TREND_SUFFIX, Events, Family
from core.kpis import HOPPING, SEGMENT_SCOPES, TREND_SCOPES, TUMBLING, Kpi
from families.air.domain import AQI, POLLUTANTS, Air
from families.traffic import SEGMENTS
from families.traffic.domain import segment_info
from oracles.aarhus_air_parking import recompute_air

TOPIC = "city.air.v1"
AQI_FORMULA = f"mean over readings of max({', '.join(POLLUTANTS)})"

KPIS = (
    *(
        Kpi(f"air.{p}_mean", "index", f"mean of the {p} index over the accepted readings",
            TUMBLING, SEGMENT_SCOPES, TOPIC, "air")
        for p in POLLUTANTS
    ),
    Kpi(AQI, "index", AQI_FORMULA, TUMBLING, SEGMENT_SCOPES, TOPIC, "air"),
    Kpi(AQI + TREND_SUFFIX, "index", AQI_FORMULA, HOPPING, TREND_SCOPES, TOPIC, "air"),
)  # fmt: skip

FAMILY = Family(
    name="air",
    kpis=KPIS,
    domain=Air(),
    events=Events(
        schema="air_reading.avsc",
        batch_schema="air_reading_batch.avsc",
        key="sensor_id",
        columns=("sensor_id", "event_time_ms", *POLLUTANTS),
        doc="Every air-quality reading as observed, one per message",
        batch_doc="Air processor input: the same readings, many per message, column-wise",
    ),
    reference=SEGMENTS,
    to_reference=segment_info,
    oracle=recompute_air,
)
