"""Every KPI family's formulas on hand-computed values, through the real window engine."""

from __future__ import annotations

from typing import Any

import pytest

from core.kafka import partition_for
from families.air.domain import Air
from families.devices.domain import Uptime
from families.energy.domain import Energy
from families.parking.domain import Parking
from families.registry import KPIS
from families.service.domain import Service, nearest_rank
from families.traffic.domain import SegmentInfo, Traffic
from families.waste.domain import Waste
from streams.engine.windows import HOUR_MS, Domain, MergeWindows, PartitionWindows

MIN = 60_000
SIZE = GRACE = 15 * MIN
T0 = 1_406_872_800_000  # 2014-08-01T06:00:00Z, an hour boundary
SEGMENTS = {"a": SegmentInfo("8000", 50.0), "b": SegmentInfo("8200", 50.0)}
POLLUTANTS = ("ozone", "particulate_matter", "carbon_monoxide", "sulfure_dioxide",
              "nitrogen_dioxide")  # fmt: skip


def columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {name: [r[name] for r in rows] for name in rows[0]}


def run(domain: Domain[Any], rows: list[dict[str, Any]], reference: dict[str, Any]) -> dict:
    """All KPIs of one partition after its input ends: entity rows and merged group rows."""
    stage1 = PartitionWindows(domain, 0, 1, SIZE, GRACE)
    merge = MergeWindows(domain, GRACE, idle_ms=0, size_ms=SIZE)
    emitted = [stage1.add(columns(rows), reference, 0), stage1.flush(reference, 0)]
    kpis = [k for e in emitted for k in e.kpis]
    for e in emitted:
        if e.partial:
            kpis += merge.add(e.partial, now_ms=1)
    kpis += merge.emit_due(now_ms=10)
    latest: dict[tuple[str, str, str, int], Any] = {}
    for k in kpis:  # a later revision replaces an earlier one, as in ClickHouse
        latest[(k["kpi"], k["scope"], k["entity_id"], k["window_start"])] = k
    assert {k[0] for k in latest} <= KPIS.keys(), "every emitted KPI is in the catalogue"
    return {key: (k["value"], k["samples"]) for key, k in latest.items()}


def air(sensor: str, minute: int, *values: float) -> dict[str, Any]:
    return {"sensor_id": sensor, "event_time_ms": T0 + minute * MIN,
            **dict(zip(POLLUTANTS, values, strict=True))}  # fmt: skip


def test_air_means_and_aqi() -> None:
    rows = [air("a", 1, 10, 20, 30, 40, 50), air("a", 6, 60, 10, 10, 10, 10),
            air("zzz", 2, 1, 2, 3, 4, 5)]  # fmt: skip
    kpis = run(Air(), rows, SEGMENTS)
    assert kpis[("air.ozone_mean", "segment", "a", T0)] == (35.0, 2)
    assert kpis[("air.nitrogen_dioxide_mean", "segment", "a", T0)] == (30.0, 2)
    assert kpis[("air.aqi", "segment", "a", T0)] == (55.0, 2)  # mean of max(50), max(60)
    assert kpis[("air.aqi", "district", "unknown", T0)] == (5.0, 1)
    assert kpis[("air.aqi", "city", "aarhus", T0)][0] == pytest.approx(115 / 3)
    assert kpis[("air.ozone_mean", "city", "aarhus", T0)][0] == pytest.approx(71 / 3)
    # the hourly trend windows holding T0's quarter all see the same three readings
    assert kpis[("air.aqi_1h", "district", "8000", T0 - 45 * MIN)] == (55.0, 2)
    assert ("air.aqi_1h", "segment", "a", T0) not in kpis  # trends: districts and the city


def test_traffic_trend_covers_four_windows() -> None:
    rows = [
        {"segment_id": "a", "event_time_ms": T0 + m * MIN, "vehicle_count": n, "avg_speed_kmh": v}
        for m, n, v in ((1, 10, 40.0), (20, 30, 60.0), (50, 0, 0.0))
    ]
    kpis = run(Traffic(), rows, SEGMENTS)
    assert kpis[("traffic.vehicle_count_1h", "district", "8000", T0)] == (40.0, 3)
    assert kpis[("traffic.avg_speed_kmh_1h", "city", "aarhus", T0)] == (55.0, 3)
    assert kpis[("traffic.vehicle_count_1h", "city", "aarhus", T0 + 15 * MIN)] == (30.0, 2)
    assert kpis[("traffic.vehicle_count", "segment", "a", T0 + 15 * MIN)] == (30.0, 1)
    assert not any(k[0].endswith("_1h") and k[1] == "segment" for k in kpis)


def park(car_park: str, minute: int, count: int, total: int) -> dict[str, Any]:
    return {"car_park_id": car_park, "event_time_ms": T0 + minute * MIN,
            "vehicle_count": count, "total_spaces": total}  # fmt: skip


def test_parking_uses_the_last_observation_in_the_window() -> None:
    rows = [park("P1", 1, 100, 200), park("P1", 10, 150, 200), park("P1", 5, 120, 200),
            park("P2", 3, 50, 100)]  # fmt: skip
    kpis = run(Parking(), rows, {"P1": "8000", "P2": "8000"})
    assert kpis[("parking.occupancy_pct", "car_park", "P1", T0)] == (75.0, 3)
    assert kpis[("parking.occupancy_pct", "car_park", "P2", T0)] == (50.0, 1)
    assert kpis[("parking.occupancy_pct", "district", "8000", T0)][0] == pytest.approx(200 / 3)
    assert kpis[("parking.occupancy_pct", "city", "aarhus", T0)] == (pytest.approx(200 / 3), 4)


def meter(meter_id: str, district: str, minute: int, kwh: float) -> dict[str, Any]:
    return {"meter_id": meter_id, "district": district, "event_time_ms": T0 + minute * MIN,
            "kwh": kwh}  # fmt: skip


def test_energy_and_co2e_from_the_district_factor() -> None:
    rows = [meter("m1", "8000", 1, 1.5), meter("m1", "8000", 6, 2.5), meter("m2", "9999", 2, 1.0)]
    kpis = run(Energy(), rows, {"8000": 0.2})
    assert kpis[("energy.kwh", "meter", "m1", T0)] == (4.0, 2)
    assert kpis[("energy.co2e_kg", "meter", "m1", T0)][0] == pytest.approx(0.8)
    assert kpis[("energy.co2e_kg", "district", "8000", T0)][0] == pytest.approx(0.8)
    assert ("energy.co2e_kg", "meter", "m2", T0) not in kpis  # no factor for 9999
    assert kpis[("energy.kwh", "city", "aarhus", T0)] == (5.0, 3)
    assert ("energy.co2e_kg", "city", "aarhus", T0) not in kpis  # would be a partial sum


def fill(bin_id: str, district: str, minute: int, pct: float) -> dict[str, Any]:
    return {"bin_id": bin_id, "district": district, "event_time_ms": T0 + minute * MIN,
            "fill_pct": pct}  # fmt: skip


def test_bins_over_80_use_each_bins_last_level() -> None:
    rows = [
        fill("b1", "8000", 1, 70),
        fill("b1", "8000", 9, 85),
        fill("b2", "8000", 8, 50),
        fill("b2", "8000", 2, 90),
        fill("b3", "8200", 4, 81),
        fill("b4", "8200", 4, 80),
    ]
    kpis = run(Waste(), rows, {})
    assert kpis[("waste.bins_over_80pct", "district", "8000", T0)] == (1.0, 4)
    assert kpis[("waste.bins_over_80pct", "district", "8200", T0)] == (1.0, 2)  # 80 is not over
    assert kpis[("waste.bins_over_80pct", "city", "aarhus", T0)] == (2.0, 6)


def request(rid: str, status: str, minute: int, opened_minute: int) -> dict[str, Any]:
    return {
        "request_id": rid,
        "status": status,
        "category": "pothole",
        "district": "8000",
        "event_time_ms": T0 + minute * MIN,
        "opened_at_ms": T0 + opened_minute * MIN,
    }


def test_service_requests_response_percentiles_and_sla() -> None:
    rows = [request("r1", "opened", 1, 1), request("r2", "closed", 5, -100),
            request("r3", "closed", 6, -30), request("r4", "closed", 7, -10),
            request("r4", "closed", 7, -10)]  # fmt: skip
    kpis = run(Service(), rows, {"pothole": 60})
    for scope, entity in (("category", "pothole"), ("district", "8000"), ("city", "aarhus")):
        assert kpis[("service.requests_opened", scope, entity, T0)] == (1.0, 1)
        assert kpis[("service.response_minutes_p50", scope, entity, T0)] == (36.0, 3)
        assert kpis[("service.response_minutes_p90", scope, entity, T0)] == (105.0, 3)
        assert kpis[("service.sla_met_pct", scope, entity, T0)][0] == pytest.approx(200 / 3)


def test_nearest_rank_percentile() -> None:
    assert nearest_rank([5, 1, 3, 2, 4], 50) == 3
    assert nearest_rank([5, 1, 3, 2, 4], 90) == 5
    assert nearest_rank([7], 90) == 7


def test_uptime_counts_readings_and_reports_silent_hours_as_zero() -> None:
    a_hour0 = [{"segment_id": "a", "event_time_ms": T0 + m * MIN} for m in range(0, 60, 5)]
    b_hour0 = [{"segment_id": "b", "event_time_ms": T0 + m * MIN} for m in (0, 5, 10)]
    after = [{"segment_id": "a", "event_time_ms": T0 + 2 * HOUR_MS + MIN}]
    kpis = run(Uptime("traffic", "segment_id"), a_hour0 + b_hour0 + after, SEGMENTS)
    assert kpis[("devices.uptime_pct", "sensor", "traffic:a", T0)] == (100.0, 12)
    assert kpis[("devices.uptime_pct", "sensor", "traffic:b", T0)] == (25.0, 3)
    hour1 = T0 + HOUR_MS  # nothing at all arrived in this hour
    assert kpis[("devices.uptime_pct", "sensor", "traffic:a", hour1)] == (0.0, 0)
    assert kpis[("devices.uptime_pct", "sensor", "traffic:b", hour1)] == (0.0, 0)
    assert kpis[("devices.uptime_pct", "city", "aarhus", T0)] == (62.5, 15)
    assert kpis[("devices.uptime_pct", "district", "8200", hour1)] == (0.0, 0)


def test_uptime_expects_only_the_sensors_of_its_partition() -> None:
    uptime = Uptime("air", "sensor_id")
    reference = {str(n): SegmentInfo("8000", 1.0) for n in range(100)}
    mine = set(uptime.expected(2, 6, reference))
    assert mine and all(partition_for(s.encode(), 6) == 2 for s in mine)
    assert set().union(*(uptime.expected(p, 6, reference) for p in range(6))) == reference.keys()


def test_expected_sensors_follow_a_reference_change_of_the_same_size() -> None:
    """A retired sensor and a new one in one update keep the count: the silence detection
    must still see the new mapping (the reference follower swaps in a new dict)."""
    uptime = Uptime("traffic", "segment_id")
    before = {"a": None, "b": None}
    after = {"a": None, "c": None}
    assert set(uptime.expected(0, 1, before)) == {"a", "b"}
    assert set(uptime.expected(0, 1, after)) == {"a", "c"}


# --- the city scope follows the city pack (CITYSTREAM_CITY) ----------------------------------

CASES: dict[str, tuple[Any, list[dict[str, Any]], dict[str, Any]]] = {
    "air": (Air(), [air("a", 1, 10, 20, 30, 40, 50), air("zzz", 2, 1, 2, 3, 4, 5)], SEGMENTS),
    "traffic": (
        Traffic(),
        [{"segment_id": "a", "event_time_ms": T0 + MIN, "vehicle_count": 10,
          "avg_speed_kmh": 40.0}],
        SEGMENTS,
    ),
    "parking": (Parking(), [park("P1", 1, 100, 200), park("P2", 3, 50, 100)], {"P1": "8000"}),
    "energy": (Energy(), [meter("m1", "8000", 1, 1.5), meter("m2", "9999", 2, 1.0)],
               {"8000": 0.2}),
    "waste": (Waste(), [fill("b1", "8000", 1, 85), fill("b3", "8200", 4, 81)], {}),
    "service": (Service(), [request("r1", "opened", 1, 1), request("r2", "closed", 5, -100)],
                {"pothole": 60}),
    "devices": (
        Uptime("traffic", "segment_id"),
        [{"segment_id": s, "event_time_ms": T0 + m * MIN} for s in "ab" for m in (0, 5)],
        SEGMENTS,
    ),
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_domain_for_a_city_pack_names_the_city_scope_after_it(family: str) -> None:
    domain, rows, reference = CASES[family]
    springfield = domain.for_city("springfield")
    default = run(domain, rows, reference)
    followed = run(springfield, rows, reference)
    assert {k[2] for k in default if k[1] == "city"} == {"aarhus"}
    assert {k[2] for k in followed if k[1] == "city"} == {"springfield"}
    # the same rows and values, only the city scope's entity_id differs
    renamed = {(k, s, "springfield" if s == "city" else e, w): v
               for (k, s, e, w), v in default.items()}  # fmt: skip
    assert followed == renamed
    assert domain.city == "aarhus", "for_city copies: the rules it was called on are unchanged"
    assert type(springfield) is type(domain) and springfield.name == domain.name


def test_every_registered_family_follows_the_city_pack() -> None:
    from families.registry import REGISTRY
    from streams.engine.processor import ProcessorSpec

    for family in REGISTRY.families:
        spec = ProcessorSpec.of(family, REGISTRY.topics, "springfield")
        assert {i.domain.city for i in spec.inputs} == {"springfield"}, family.name
        plain = ProcessorSpec.of(family, REGISTRY.topics)
        assert {i.domain.city for i in plain.inputs} == {"aarhus"}, family.name
