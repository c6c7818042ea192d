"""The oracles name the city scope after a city pack's id when given one (default aarhus)."""

from __future__ import annotations

from pathlib import Path

from oracles.aarhus_air_parking import recompute_air, recompute_parking
from oracles.aarhus_traffic import recompute
from oracles.compare import Key, Value
from oracles.devices import recompute_devices
from oracles.simulated import ENERGY_TOPIC, SERVICE_TOPIC, WASTE_TOPIC, Event
from oracles.simulated import recompute as recompute_simulated

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
TRAFFIC = FIXTURES / "traffic_2014-08-02_0600-0900.csv.gz"
AIR = FIXTURES / "pollution_2014-08-02_0600-0700.csv.gz"
PARKING = FIXTURES / "parking_2014-08-01_03.csv.gz"
METADATA = ROOT / "data" / "aarhus" / "traffic_metadata.csv"
CAR_PARKS = ROOT / "data" / "aarhus" / "car_parks.csv"
W0 = 1_407_110_400_000


def renamed(kpis: dict[Key, Value], city: str) -> dict[Key, Value]:
    return {(k, s, city if s == "city" else e, w): v for (k, s, e, w), v in kpis.items()}


def cities(kpis: dict[Key, Value]) -> set[str]:
    return {e for _, s, e, _ in kpis if s == "city"}


def check(default: dict[Key, Value], followed: dict[Key, Value]) -> None:
    assert cities(default) == {"aarhus"}
    assert cities(followed) == {"springfield"}
    assert followed == renamed(default, "springfield")


def test_the_aarhus_oracles_take_the_city_id() -> None:
    check(recompute(TRAFFIC, METADATA, 4), recompute(TRAFFIC, METADATA, 4, city="springfield"))
    check(recompute_air(AIR, METADATA, 4), recompute_air(AIR, METADATA, 4, city="springfield"))
    check(
        recompute_parking(PARKING, CAR_PARKS, 4),
        recompute_parking(PARKING, CAR_PARKS, 4, city="springfield"),
    )
    check(
        recompute_devices(TRAFFIC, AIR, METADATA, 4),
        recompute_devices(TRAFFIC, AIR, METADATA, 4, city="springfield"),
    )


def test_the_simulated_oracle_takes_the_city_id() -> None:
    events = [
        Event(ENERGY_TOPIC, {"event_id": "e1", "meter_id": "m1", "district": "8000",
                             "event_time": W0, "kwh": 1.5}),
        Event(WASTE_TOPIC, {"event_id": "w1", "bin_id": "b1", "district": "8000",
                            "event_time": W0, "fill_pct": 90.0}),
        Event(SERVICE_TOPIC, {"event_id": "s1", "request_id": "r1", "status": "opened",
                              "category": "noise", "district": "8000", "event_time": W0,
                              "opened_at": W0}),
    ]  # fmt: skip
    default = recompute_simulated(events, {"8000": 0.1}, {"noise": 120})
    followed = recompute_simulated(events, {"8000": 0.1}, {"noise": 120}, city="springfield")
    check(default, followed)
    assert {k for k, s, _, _ in followed if s == "city"} == {
        "energy.kwh", "energy.co2e_kg", "waste.bins_over_80pct", "service.requests_opened"
    }  # fmt: skip
