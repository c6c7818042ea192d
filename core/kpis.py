"""The KPI catalogue: every KPI citystream emits, defined once.

Processors take their KPI names from here, ``citystream catalog`` renders the KPI table of
the docs from it, and a unit test checks that every name a processor emits is defined
here, so the published catalogue cannot drift from what is computed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kpi:
    name: str
    unit: str
    formula: str
    window: str  # "tumbling 15 min", "hopping 1 h every 15 min", "tumbling 1 h"
    scopes: tuple[str, ...]
    source_topic: str
    processor: str

    @property
    def domain(self) -> str:
        return self.name.split(".", 1)[0]


TUMBLING = "tumbling 15 min"
HOPPING = "hopping 1 h every 15 min"
HOURLY = "tumbling 1 h"
SEGMENT_SCOPES = ("segment", "district", "city")
TREND_SCOPES = ("district", "city")  # per segment: sum the four tumbling rows in a query
POLLUTANTS = (
    "ozone",
    "particulate_matter",
    "carbon_monoxide",
    "sulfure_dioxide",
    "nitrogen_dioxide",
)


def _traffic() -> list[Kpi]:
    topic, proc = "city.traffic.v1", "streams.traffic"
    base = [
        ("vehicle_count", "vehicles", "Σ vehicle_count of the accepted readings"),
        ("avg_speed_kmh", "km/h", "Σ(avg_speed × vehicle_count) / Σ vehicle_count; "
         "absent when no vehicles"),
        ("congestion_index", "ratio 0..1", "max(0, 1 − avg_speed_kmh / free-flow speed of the "
         "segment); segment scope only"),
    ]  # fmt: skip
    out = [
        Kpi(f"traffic.{n}", u, f, TUMBLING,
            ("segment",) if n == "congestion_index" else SEGMENT_SCOPES, topic, proc)
        for n, u, f in base
    ]  # fmt: skip
    out += [
        Kpi(f"traffic.{n}_1h", u, f, HOPPING, TREND_SCOPES, topic, proc) for n, u, f in base[:2]
    ]
    return out


def _air() -> list[Kpi]:
    topic, proc = "city.air.v1", "streams.air"
    out = [
        Kpi(f"air.{p}_mean", "index", f"mean of the {p} index over the accepted readings",
            TUMBLING, SEGMENT_SCOPES, topic, proc)
        for p in POLLUTANTS
    ]  # fmt: skip
    aqi = "mean over readings of max(ozone, particulate_matter, carbon_monoxide, "
    aqi += "sulfure_dioxide, nitrogen_dioxide)"
    out.append(Kpi("air.aqi", "index", aqi, TUMBLING, SEGMENT_SCOPES, topic, proc))
    out.append(Kpi("air.aqi_1h", "index", aqi, HOPPING, TREND_SCOPES, topic, proc))
    return out


def _others() -> list[Kpi]:
    return [
        Kpi("parking.occupancy_pct", "%",
            "car park: last observed vehiclecount / totalspaces × 100 in the window; district "
            "and city: Σ last vehiclecount / Σ totalspaces × 100",
            TUMBLING, ("car_park", "district", "city"), "city.parking.v1", "streams.parking"),
        Kpi("devices.uptime_pct", "%",
            "readings received / readings expected × 100 per sensor and hour (traffic and air: "
            "one per 5 min); an hour without any reading is 0; district and city: mean over "
            "their sensors", HOURLY, ("sensor", "district", "city"),
            "city.traffic.v1, city.air.v1", "streams.devices"),
        Kpi("energy.kwh", "kWh", "Σ kWh consumed in the window",
            TUMBLING, ("meter", "district", "city"), "city.energy.v1", "streams.energy"),
        Kpi("energy.co2e_kg", "kg CO2e",
            "Σ kWh × the district's grid emission factor (kg CO2e/kWh, reference data)",
            TUMBLING, ("meter", "district", "city"), "city.energy.v1", "streams.energy"),
        Kpi("waste.bins_over_80pct", "bins",
            "bins whose last fill level in the window is above 80 %",
            TUMBLING, ("district", "city"), "city.waste.v1", "streams.waste"),
        Kpi("service.requests_opened", "requests", "requests opened in the window",
            TUMBLING, ("category", "district", "city"), "city.service_requests.v1",
            "streams.service"),
        Kpi("service.response_minutes_p50", "min",
            "median of closed − opened over requests closed in the window",
            TUMBLING, ("category", "district", "city"), "city.service_requests.v1",
            "streams.service"),
        Kpi("service.response_minutes_p90", "min",
            "90th percentile (nearest rank) of closed − opened over requests closed in the window",
            TUMBLING, ("category", "district", "city"), "city.service_requests.v1",
            "streams.service"),
        Kpi("service.sla_met_pct", "%",
            "requests closed in the window within their category's SLA / requests closed × 100",
            TUMBLING, ("category", "district", "city"), "city.service_requests.v1",
            "streams.service"),
    ]  # fmt: skip


KPIS: dict[str, Kpi] = {k.name: k for k in (*_traffic(), *_air(), *_others())}
