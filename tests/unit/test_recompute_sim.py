"""The simulated domains' KPI recomputation on hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from citystream.verify import simulated_events
from connectors.sources.simulator import SimulationConfig, load_reference
from core.kafka import partition_for
from oracles.simulated import (
    ENERGY_TOPIC,
    SERVICE_TOPIC,
    WASTE_TOPIC,
    Event,
    drop_late,
    nearest_rank,
    recompute,
    window_of,
)

W0 = 1_407_110_400_000  # 2014-08-04T00:00Z, a window start
MIN = 60_000
FACTORS = {"8000": 0.1, "8200": 0.2}
SLA = {"noise": 120, "pothole": 2880}


def energy(eid: str, meter: str, district: str, t: int, kwh: float) -> Event:
    return Event(ENERGY_TOPIC, {"event_id": eid, "meter_id": meter, "district": district,
                                "event_time": t, "kwh": kwh})  # fmt: skip


def waste(eid: str, bin_id: str, district: str, t: int, fill: float) -> Event:
    return Event(WASTE_TOPIC, {"event_id": eid, "bin_id": bin_id, "district": district,
                               "event_time": t, "fill_pct": fill})  # fmt: skip


def service(eid: str, rid: str, status: str, cat: str, district: str, t: int, opened: int) -> Event:
    return Event(SERVICE_TOPIC, {"event_id": eid, "request_id": rid, "status": status,
                                 "category": cat, "district": district, "event_time": t,
                                 "opened_at": opened})  # fmt: skip


def test_windows_are_15_minutes_aligned_to_the_epoch() -> None:
    assert window_of(W0) == W0
    assert window_of(W0 + 15 * MIN - 1) == W0
    assert window_of(W0 + 15 * MIN) == W0 + 15 * MIN


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0], 50, 1.0),  # rank ceil(1.0) = 1
        ([3.0, 1.0, 2.0], 50, 2.0),  # rank ceil(1.5) = 2
        ([4.0, 1.0, 3.0, 2.0], 50, 2.0),  # rank 2
        ([float(v) for v in range(1, 11)], 90, 9.0),  # rank ceil(9.0) = 9
        ([float(v) for v in range(1, 12)], 90, 10.0),  # rank ceil(9.9) = 10
        ([7.0, 1.0, 3.0], 90, 7.0),  # rank ceil(2.7) = 3
    ],
)
def test_nearest_rank_percentile(values: list[float], p: int, expected: float) -> None:
    assert nearest_rank(values, p) == expected


def test_energy_sums_kwh_and_weights_co2e_by_the_district_factor() -> None:
    kpis = recompute(
        [
            energy("a", "m1", "8000", W0 + 1 * MIN, 1.5),
            energy("b", "m1", "8000", W0 + 5 * MIN, 2.5),
            energy("b", "m1", "8000", W0 + 5 * MIN, 2.5),  # duplicate event id
            energy("c", "m2", "8200", W0 + 14 * MIN, 1.0),
            energy("d", "m2", "8200", W0 + 15 * MIN, 4.0),  # next window
            energy("e", "m3", "9999", W0 + 2 * MIN, 2.0),  # no emission factor
        ],
        FACTORS,
        SLA,
    )
    assert kpis[("energy.kwh", "meter", "m1", W0)] == (4.0, 2)
    assert kpis[("energy.kwh", "district", "8200", W0)] == (1.0, 1)
    assert kpis[("energy.kwh", "city", "aarhus", W0)] == (7.0, 4)
    assert kpis[("energy.kwh", "city", "aarhus", W0 + 15 * MIN)] == (4.0, 1)
    assert kpis[("energy.co2e_kg", "meter", "m1", W0)] == pytest.approx((0.4, 2))
    assert kpis[("energy.co2e_kg", "district", "8200", W0 + 15 * MIN)] == pytest.approx((0.8, 1))
    # the reading of 9999 has kWh but no factor: no CO2e where it counts, not a partial one
    assert ("energy.co2e_kg", "meter", "m3", W0) not in kpis
    assert ("energy.co2e_kg", "city", "aarhus", W0) not in kpis
    assert kpis[("energy.kwh", "district", "9999", W0)] == (2.0, 1)
    # without it the city's CO2e is 4.0 × 0.1 + 1.0 × 0.2
    known = recompute([energy("a", "m1", "8000", W0, 4.0), energy("c", "m2", "8200", W0, 1.0)],
                      FACTORS, SLA)  # fmt: skip
    assert known[("energy.co2e_kg", "city", "aarhus", W0)] == pytest.approx((0.6, 2))


def test_waste_counts_bins_whose_last_level_in_the_window_is_above_80() -> None:
    kpis = recompute(
        [
            waste("a", "b1", "8000", W0 + 1 * MIN, 85.0),
            waste("b", "b1", "8000", W0 + 9 * MIN, 10.0),  # emptied: last level 10
            waste("c", "b2", "8000", W0 + 2 * MIN, 70.0),
            waste("d", "b2", "8000", W0 + 12 * MIN, 80.5),  # last level 80.5 > 80
            waste("e", "b3", "8200", W0 + 3 * MIN, 80.0),  # exactly 80 is not above
            waste("f", "b4", "8200", W0 + 20 * MIN, 95.0),  # next window
            waste("g", "b5", "8200", W0 + 7 * MIN, 99.0),
            waste("g", "b5", "8200", W0 + 7 * MIN, 99.0),  # duplicate
        ],
        FACTORS,
        SLA,
    )
    # samples: the fill reports counted (b1 and b2 twice, b3 and b5 once)
    assert kpis[("waste.bins_over_80pct", "district", "8000", W0)] == (1.0, 4)
    assert kpis[("waste.bins_over_80pct", "district", "8200", W0)] == (1.0, 2)
    assert kpis[("waste.bins_over_80pct", "city", "aarhus", W0)] == (2.0, 6)
    assert kpis[("waste.bins_over_80pct", "city", "aarhus", W0 + 15 * MIN)] == (1.0, 1)


def test_waste_last_level_is_by_event_time_not_arrival() -> None:
    kpis = recompute(
        [waste("b", "b1", "8000", W0 + 9 * MIN, 90.0), waste("a", "b1", "8000", W0 + MIN, 5.0)],
        FACTORS,
        SLA,
    )
    assert kpis[("waste.bins_over_80pct", "city", "aarhus", W0)] == (1.0, 2)


def test_service_requests_opened_by_category_district_and_city() -> None:
    kpis = recompute(
        [
            service("o1", "r1", "opened", "noise", "8000", W0 + MIN, W0 + MIN),
            service("o2", "r2", "opened", "noise", "8200", W0 + 2 * MIN, W0 + 2 * MIN),
            service("o2", "r2", "opened", "noise", "8200", W0 + 2 * MIN, W0 + 2 * MIN),
            service("o3", "r3", "opened", "pothole", "8000", W0 + 3 * MIN, W0 + 3 * MIN),
            service("a1", "r1", "assigned", "noise", "8000", W0 + 4 * MIN, W0 + MIN),
        ],
        FACTORS,
        SLA,
    )
    assert kpis[("service.requests_opened", "category", "noise", W0)] == (2.0, 2)
    assert kpis[("service.requests_opened", "category", "pothole", W0)] == (1.0, 1)
    assert kpis[("service.requests_opened", "district", "8000", W0)] == (2.0, 2)
    assert kpis[("service.requests_opened", "city", "aarhus", W0)] == (3.0, 3)
    assert not any(k[0].startswith("service.response") for k in kpis)  # nothing closed


def test_response_percentiles_and_sla_over_requests_closed_in_the_window() -> None:
    closed_at = W0 + 10 * 60 * MIN  # 10:00Z, window start
    responses = {"r1": 30, "r2": 90, "r3": 150, "r4": 100}  # minutes, all noise (SLA 120)
    events = [
        service(f"c-{rid}", rid, "closed", "noise", "8000", closed_at + i * MIN,
                closed_at + i * MIN - minutes * MIN)
        for i, (rid, minutes) in enumerate(responses.items())
    ]  # fmt: skip
    events.append(
        service("c-r5", "r5", "closed", "pothole", "8200", closed_at + 5 * MIN,
                closed_at + 5 * MIN - 3000 * MIN)  # 3000 min > SLA 2880
    )  # fmt: skip
    events.append(events[0])  # a duplicate close counts once
    kpis = recompute(events, FACTORS, SLA)
    # noise: sorted [30, 90, 100, 150]; p50 rank 2 = 90, p90 rank ceil(3.6) = 4 = 150
    assert kpis[("service.response_minutes_p50", "category", "noise", closed_at)] == (90.0, 4)
    assert kpis[("service.response_minutes_p90", "category", "noise", closed_at)] == (150.0, 4)
    assert kpis[("service.sla_met_pct", "category", "noise", closed_at)] == (75.0, 4)
    assert kpis[("service.sla_met_pct", "category", "pothole", closed_at)] == (0.0, 1)
    # city: [30, 90, 100, 150, 3000]; p50 rank ceil(2.5) = 3 = 100; p90 rank 5; SLA 3 of 5
    assert kpis[("service.response_minutes_p50", "city", "aarhus", closed_at)] == (100.0, 5)
    assert kpis[("service.response_minutes_p90", "city", "aarhus", closed_at)] == (3000.0, 5)
    assert kpis[("service.sla_met_pct", "city", "aarhus", closed_at)] == (60.0, 5)
    assert kpis[("service.sla_met_pct", "district", "8000", closed_at)] == (75.0, 4)
    assert ("service.requests_opened", "city", "aarhus", closed_at) not in kpis


def test_closing_exactly_at_the_sla_meets_it() -> None:
    t = W0 + 120 * MIN
    kpis = recompute([service("c", "r", "closed", "noise", "8000", t, W0)], FACTORS, SLA)
    assert kpis[("service.sla_met_pct", "city", "aarhus", t)] == (100.0, 1)
    assert kpis[("service.response_minutes_p50", "city", "aarhus", t)] == (120.0, 1)


def test_decoded_timestamps_count_like_epoch_millis() -> None:
    as_datetime = datetime.fromtimestamp((W0 + MIN) / 1000, UTC)
    kpis = recompute([energy("a", "m1", "8000", as_datetime, 1.0)], FACTORS, SLA)  # type: ignore[arg-type]
    assert kpis[("energy.kwh", "city", "aarhus", W0)] == (1.0, 1)


def test_drop_late_applies_window_end_plus_grace_per_partition() -> None:
    partitions = 6
    same = [m for m in (f"m{i}" for i in range(100)) if partition_for(m.encode(), 6) == 0][:2]
    other = next(m for m in (f"m{i}" for i in range(100)) if partition_for(m.encode(), 6) != 0)
    events = [
        energy("a", same[0], "8000", W0 + 61 * MIN, 1.0),  # stream time of partition 0: +61
        energy("b", same[1], "8000", W0 + 16 * MIN, 1.0),  # window end + grace = +45 < +61: late
        energy("c", same[1], "8000", W0 + 31 * MIN, 1.0),  # end + grace = +60 < +61: late
        energy("d", same[1], "8000", W0 + 46 * MIN, 1.0),  # end + grace = +75: on time
        energy("e", other, "8000", W0 + 60 * MIN, 1.0),  # another partition, stream time +60
        energy("f", other, "8000", W0 + 1 * MIN, 1.0),  # end + grace = +30 < +60: late
        energy("g", other, "8000", W0 + 31 * MIN, 1.0),  # end + grace = +60, not before: kept
    ]
    kept = [e.record["event_id"] for e in drop_late(events, partitions)]
    assert kept == ["a", "d", "e", "g"]


def test_simulated_events_leave_out_the_dead_lettered_malformed_copies() -> None:
    cfg = SimulationConfig(seed=1, start_ms=W0, hours=2, meters=10, bins=10,
                           requests_per_hour=30, malformed_fraction=0.2)  # fmt: skip
    clean = SimulationConfig(seed=1, start_ms=W0, hours=2, meters=10, bins=10,
                             requests_per_hour=30)  # fmt: skip
    reference = load_reference()
    with_bad = simulated_events(cfg, reference)
    assert [e.record for e in with_bad] == [e.record for e in simulated_events(clean, reference)]
