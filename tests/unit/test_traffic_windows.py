from __future__ import annotations

import pytest

from families.traffic.domain import (
    AVG_SPEED,
    CONGESTION,
    VEHICLE_COUNT,
    SegmentInfo,
    Sums,
    Traffic,
    kpi_values,
)
from streams.engine.windows import MergeWindows, PartitionWindows, window_start

MIN = 60_000
SIZE, GRACE = 15 * MIN, 15 * MIN
T0 = 1_406_872_800_000  # 2014-08-01T06:00:00Z, a window boundary
REF = {"a": SegmentInfo("8000", 100.0), "b": SegmentInfo("8200", 60.0)}


def add(pw: PartitionWindows, *readings: tuple[str, int, int, float], now: int = 0):
    batch = {
        "segment_id": [r[0] for r in readings],
        "event_time_ms": [r[1] for r in readings],
        "vehicle_count": [r[2] for r in readings],
        "avg_speed_kmh": [r[3] for r in readings],
    }
    return pw.add(batch, REF, now)


def windows() -> PartitionWindows:
    return PartitionWindows(Traffic(), 0, 1, SIZE, GRACE)


def merge(idle_ms: int, **kwargs: int) -> MergeWindows:
    return MergeWindows(Traffic(), GRACE, idle_ms, size_ms=SIZE, **kwargs)


def kpi_dict(sums: Sums, free_flow_kmh: float) -> dict[str, float]:
    return {kpi: value for kpi, value, _ in kpi_values(sums, free_flow_kmh)}


def by_key(kpis):
    return {(k["kpi"], k["scope"], k["entity_id"], k["window_start"]): k for k in kpis}


def test_windows_are_aligned_to_the_epoch() -> None:
    assert window_start(T0 + 14 * MIN + 59_999, SIZE) == T0
    assert window_start(T0 + 15 * MIN, SIZE) == T0 + SIZE


def test_kpi_formulas_on_hand_computed_values() -> None:
    sums = Sums()
    for vehicles, speed in [(10, 50.0), (30, 70.0), (0, 99.0)]:
        sums.add(vehicles, speed)
    values = kpi_dict(sums, 100.0)
    assert values[VEHICLE_COUNT] == 40
    assert values[AVG_SPEED] == pytest.approx((10 * 50 + 30 * 70) / 40)  # 65
    assert values[CONGESTION] == pytest.approx(0.35)
    assert kpi_dict(sums, 60.0)[CONGESTION] == 0.0  # faster than free flow


def test_no_speed_rows_when_no_vehicles() -> None:
    sums = Sums()
    sums.add(0, 50.0)
    assert kpi_values(sums, 100.0) == [(VEHICLE_COUNT, 0.0, 1)]


def test_segment_kpis_are_emitted_when_stream_time_passes_the_window_end() -> None:
    pw = windows()
    e = add(pw, ("a", T0 + 5 * MIN, 10, 50.0), ("a", T0 + 10 * MIN, 30, 70.0))
    assert e.kpis == []
    e = add(pw, ("a", T0 + 15 * MIN, 1, 10.0))  # first reading of the next window
    kpis = by_key(e.kpis)
    assert kpis[(VEHICLE_COUNT, "segment", "a", T0)]["value"] == 40
    assert kpis[(AVG_SPEED, "segment", "a", T0)]["value"] == pytest.approx(65.0)
    assert kpis[(CONGESTION, "segment", "a", T0)]["value"] == pytest.approx(0.35)
    assert {k["samples"] for k in e.kpis} == {2}
    assert {k["revision"] for k in e.kpis} == {0}
    assert {k["window_end"] for k in e.kpis} == {T0 + SIZE}


def test_duplicate_reading_counts_once() -> None:
    pw = windows()
    add(pw, ("a", T0 + 5 * MIN, 10, 50.0), ("a", T0 + 5 * MIN, 10, 50.0))
    e = add(pw, ("a", T0 + 5 * MIN, 10, 50.0), ("b", T0 + 20 * MIN, 0, 0.0))
    assert pw.counters.duplicates == 2 and pw.counters.accepted == 2
    assert by_key(e.kpis)[(VEHICLE_COUNT, "segment", "a", T0)]["value"] == 10


def test_reading_within_grace_revises_the_window() -> None:
    pw = windows()
    add(pw, ("a", T0 + 5 * MIN, 10, 50.0), ("a", T0 + 20 * MIN, 1, 50.0))
    e = add(pw, ("a", T0 + 10 * MIN, 5, 50.0))  # stream time 20 min: within end + grace
    rows = by_key(e.kpis)
    assert rows[(VEHICLE_COUNT, "segment", "a", T0)]["value"] == 15
    assert rows[(VEHICLE_COUNT, "segment", "a", T0)]["revision"] == 1
    assert pw.counters.late == 0


def test_reading_after_end_plus_grace_is_late() -> None:
    pw = windows()
    add(pw, ("a", T0 + 5 * MIN, 10, 50.0), ("a", T0 + 30 * MIN + 1, 1, 50.0))
    e = add(pw, ("a", T0 + 10 * MIN, 5, 50.0), ("b", T0 + 31 * MIN, 2, 40.0))
    assert pw.counters.late == 1 and pw.counters.accepted == 3
    assert [(late.position, late.event_ms) for late in e.late] == [(0, T0 + 10 * MIN)]
    assert all(k["window_start"] != T0 or k["revision"] == 0 for k in e.kpis)


def test_stream_time_exactly_at_end_plus_grace_is_not_late() -> None:
    pw = windows()
    add(pw, ("a", T0 + 30 * MIN, 1, 50.0))
    add(pw, ("a", T0 + 1 * MIN, 1, 50.0))
    assert pw.counters.late == 0


def test_unknown_segment_counts_for_city_and_unknown_district() -> None:
    pw = windows()
    e = add(pw, ("zzz", T0, 4, 30.0), ("a", T0, 6, 60.0), ("a", T0 + 15 * MIN, 0, 0.0))
    assert pw.counters.unknown_reference == 1
    seg = by_key(e.kpis)
    assert seg[(VEHICLE_COUNT, "segment", "zzz", T0)]["value"] == 4
    assert (CONGESTION, "segment", "zzz", T0) not in seg  # no free-flow speed known
    assert e.partial is not None
    (tumbling,) = [
        w for w in e.partial["windows"] if w["window_end_ms"] - w["window_start_ms"] == SIZE
    ]
    groups = {(g["scope"], g["entity_id"]): g["sums"] for g in tumbling["groups"]}
    assert groups[("district", "unknown")]["vehicles"] == 4
    assert groups[("district", "8000")]["vehicles"] == 6
    assert groups[("city", "aarhus")]["vehicles"] == 10


def test_flush_emits_open_windows_without_new_input() -> None:
    pw = windows()
    add(pw, ("a", T0, 4, 30.0))
    e = pw.flush(REF, 0)
    assert by_key(e.kpis)[(VEHICLE_COUNT, "segment", "a", T0)]["value"] == 4
    assert pw.flush(REF, 0).kpis == []  # nothing new: nothing emitted twice


def partial(partition: int, watermark: int, groups: list[tuple[str, str, int, int, float]]):
    return {
        "source_partition": partition,
        "partition_count": 2,
        "watermark_ms": watermark,
        "windows": [
            {
                "window_start_ms": T0,
                "window_end_ms": T0 + SIZE,
                "groups": [
                    {
                        "scope": s,
                        "entity_id": e,
                        "samples": n,
                        "values": {},
                        "sums": {"vehicles": v, "speed_weighted": w},
                    }
                    for s, e, n, v, w in groups
                ],
            }
        ],
    }


def test_city_stage_waits_for_every_partition_then_merges() -> None:
    city = merge(60_000)
    out = city.add(partial(0, T0 + SIZE, [("city", "aarhus", 2, 10, 500.0)]), now_ms=0)
    assert out == []  # partition 1 has not reported yet
    out = city.add(partial(1, T0 + SIZE, [("city", "aarhus", 3, 30, 2100.0)]), now_ms=1)
    rows = by_key(out)
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["value"] == 40
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["samples"] == 5
    assert rows[(AVG_SPEED, "city", "aarhus", T0)]["value"] == pytest.approx(65.0)
    assert (CONGESTION, "city", "aarhus", T0) not in rows  # segment scope only


def test_city_stage_emits_after_idle_time_and_revises_later() -> None:
    city = merge(1_000)
    assert city.add(partial(0, T0 + SIZE, [("city", "aarhus", 1, 10, 100.0)]), now_ms=0) == []
    early = by_key(city.emit_due(now_ms=1_000))
    assert early[(VEHICLE_COUNT, "city", "aarhus", T0)]["revision"] == 0
    late = by_key(city.add(partial(1, T0 + SIZE, [("city", "aarhus", 1, 5, 50.0)]), now_ms=2_000))
    assert late[(VEHICLE_COUNT, "city", "aarhus", T0)]["value"] == 15
    assert late[(VEHICLE_COUNT, "city", "aarhus", T0)]["revision"] == 1


def test_city_stage_keeps_a_window_until_every_partition_passed_its_grace() -> None:
    city = merge(1_000)
    far = T0 + 10 * SIZE  # partition 0 races ahead before partition 1 reports at all
    city.add(partial(0, far, [("city", "aarhus", 1, 10, 100.0)]), now_ms=0)
    city.emit_due(now_ms=5_000)  # idle: emitted early with partition 0 only
    rows = by_key(city.add(partial(1, T0 + SIZE, [("city", "aarhus", 1, 5, 50.0)]), now_ms=6_000))
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["value"] == 15  # merged, not replaced
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["revision"] == 1


def test_city_stage_ignores_partials_for_forgotten_windows() -> None:
    city = merge(1_000)
    city.add(partial(0, T0 + 6 * SIZE, [("city", "aarhus", 1, 10, 100.0)]), now_ms=0)
    city.add({**partial(1, T0 + 6 * SIZE, []), "windows": []}, now_ms=0)
    assert (T0, T0 + SIZE) not in city.windows  # all passed end + grace of its last trend window
    assert city.add(partial(1, T0 + 6 * SIZE, [("city", "aarhus", 1, 1, 1.0)]), now_ms=1) == []
    assert city.ignored_partials == 1


def test_city_stage_keeps_the_fuller_part_when_a_stale_one_arrives_late() -> None:
    """After a rebalance the old owner may still send a partial with fewer readings."""
    city = merge(60_000)
    city.add(partial(0, T0 + SIZE, [("city", "aarhus", 3, 30, 900.0)]), now_ms=0)
    city.add(partial(0, T0 + SIZE, [("city", "aarhus", 1, 10, 300.0)]), now_ms=1)  # stale
    rows = by_key(city.add(partial(1, T0 + SIZE, [("city", "aarhus", 1, 5, 50.0)]), now_ms=2))
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["value"] == 35
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["samples"] == 4


def test_city_stage_waits_for_a_lagging_partition_however_far_the_others_are() -> None:
    city = merge(1_000, retain_ms=4 * SIZE)
    city.add(partial(0, T0 + 100 * SIZE, [("city", "aarhus", 1, 10, 100.0)]), now_ms=0)
    city.add({**partial(1, T0 + SIZE // 2, []), "windows": []}, now_ms=0)  # far behind
    city.emit_due(now_ms=5_000)
    rows = by_key(city.add(partial(1, T0 + SIZE, [("city", "aarhus", 1, 5, 50.0)]), now_ms=6_000))
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["value"] == 15  # not dropped


def test_city_stage_keeps_a_window_for_a_partition_that_starts_late_in_a_fast_replay() -> None:
    """Partition 2 has no data at all; partition 0 races a day ahead before 1 reports."""
    city = MergeWindows(Traffic(), GRACE, 1_000, size_ms=SIZE, hold_ms=60_000)
    day_later = T0 + 120 * SIZE  # past end + trend keep + 24 h retain
    city.add({**partial(0, day_later, [("city", "aarhus", 1, 10, 100.0)]), "partition_count": 3}, 0)
    city.emit_due(now_ms=5_000)  # idle: emitted early with partition 0 only
    part = {**partial(1, T0 + SIZE, [("city", "aarhus", 1, 5, 50.0)]), "partition_count": 3}
    rows = by_key(city.add(part, now_ms=6_000))
    assert rows[(VEHICLE_COUNT, "city", "aarhus", T0)]["value"] == 15  # not ignored
    city.add({**part, "watermark_ms": day_later, "windows": []}, now_ms=61_000)
    assert (T0, T0 + SIZE) not in city.windows  # memory bound once held a minute
