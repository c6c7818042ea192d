"""Energy: consumption and its CO2e per meter, district and city; grid emission factors per
district come from the districts' reference data."""

from __future__ import annotations

from core.family import Events, Family, Reference
from core.kpis import TUMBLING, Kpi
from families.energy.domain import CO2E, KWH, Energy, emission_factor
from oracles.simulated import energy_kpis

TOPIC = "city.energy.v1"
SCOPES = ("meter", "district", "city")

KPIS = (
    Kpi(KWH, "kWh", "Σ kWh consumed in the window", TUMBLING, SCOPES, TOPIC, "energy"),
    Kpi(CO2E, "kg CO2e",
        "Σ kWh × the district's grid emission factor (kg CO2e/kWh, reference data)",
        TUMBLING, SCOPES, TOPIC, "energy"),
)  # fmt: skip

FAMILY = Family(
    name="energy",
    kpis=KPIS,
    domain=Energy(),
    events=Events(
        schema="energy_reading.avsc",
        batch_schema="energy_reading_batch.avsc",
        key="meter_id",
        columns=("meter_id", "district", "event_time_ms", "kwh"),
        doc="Every energy meter reading, one per message",
        batch_doc="Processor input: the same energy readings, many per message, column-wise",
        restricted=True,  # personal data (schemas/avro contract): the city's services only
    ),
    reference=Reference(
        "city.districts.v1",
        "district.avsc",
        key="district",
        doc="District reference data (name, grid emission factor), latest per district",
    ),
    to_reference=emission_factor,
    oracle=energy_kpis,
)
