"""Parking: occupancy per car park, district and city; districts come from the car parks'
reference data."""

from __future__ import annotations

from core.family import Events, Family, Reference
from core.kpis import TUMBLING, Kpi
from families.parking.domain import OCCUPANCY, Parking, car_park_district
from oracles.aarhus_air_parking import recompute_parking

OCCUPANCY_FORMULA = (
    "car park: last observed vehiclecount / totalspaces × 100 in the window; district and "
    "city: Σ last vehiclecount / Σ totalspaces × 100"
)

KPIS = (
    Kpi(OCCUPANCY, "%", OCCUPANCY_FORMULA, TUMBLING, ("car_park", "district", "city"),
        "city.parking.v1", "parking"),
)  # fmt: skip

FAMILY = Family(
    name="parking",
    kpis=KPIS,
    domain=Parking(),
    events=Events(
        schema="parking_reading.avsc",
        batch_schema="parking_reading_batch.avsc",
        key="car_park_id",
        columns=("car_park_id", "event_time_ms", "vehicle_count", "total_spaces"),
        doc="Every car park occupancy reading as observed, one per message",
        batch_doc="Parking processor input: the same readings, many per message, column-wise",
    ),
    reference=Reference(
        "city.car_parks.v1",
        "car_park.avsc",
        key="car_park_id",
        doc="Car park reference data, latest value per car park",
    ),
    to_reference=car_park_district,
    oracle=recompute_parking,
)
