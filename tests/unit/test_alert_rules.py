"""Alert rules on hand-made KPI sequences and request lifecycles (streams/alerts/rules.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from streams.alerts.rules import (
    CLEARED,
    RAISED,
    Alert,
    InvalidEvent,
    KpiAlerts,
    KpiWindow,
    ReorderBuffer,
    SlaAlerts,
    default_rules,
    district_of,
)

T0 = 1406959200000  # 2014-08-02T06:00:00Z
M15 = 15 * 60_000
H1 = 60 * 60_000


def w(kpi: str, entity: str, i: int, value: float, *, scope: str = "segment", samples: int = 3,
      revision: int = 0, size: int = M15) -> KpiWindow:  # fmt: skip
    start = T0 + i * size
    return KpiWindow(kpi, scope, entity, start, start + size, value, samples, revision)


def cong(i: int, value: float, **kw: int) -> KpiWindow:
    return w("traffic.congestion_index", "158895", i, value, **kw)  # type: ignore[arg-type]


def engine(aqi: float = 100.0) -> KpiAlerts:
    districts = {"158895": "8000", "s1": "8200"}
    return KpiAlerts(
        default_rules(aqi), lambda scope, e: e if scope == "district" else districts.get(e)
    )


def feed(alerts: KpiAlerts, *windows: KpiWindow) -> list[Alert]:
    out: list[Alert] = []
    for window in windows:
        out += alerts.add(window)
    return out


def states(alerts: list[Alert]) -> list[tuple[str, str, int]]:
    return [(a.type, a.state, a.window_start or 0) for a in alerts]


# --- congestion: two consecutive windows -------------------------------------------------


def test_congestion_raises_on_the_second_consecutive_window_only() -> None:
    a = engine()
    assert feed(a, cong(0, 0.6)) == []
    (raised,) = feed(a, cong(1, 0.62))
    assert raised.state == RAISED and raised.type == "congestion"
    assert raised.alert_id == f"congestion|158895|{T0}"
    assert raised.key == "congestion|158895"
    assert (raised.since, raised.at, raised.window_start) == (T0, T0 + 2 * M15, T0 + M15)
    assert raised.district == "8000" and raised.scope == "segment"
    assert raised.kpi_values == {
        "traffic.congestion_index@2014-08-02T06:00:00Z": 0.6,
        "traffic.congestion_index@2014-08-02T06:15:00Z": 0.62,
    }
    assert "segment 158895 (district 8000)" in raised.message
    assert "since 2014-08-02T06:00:00Z" in raised.message


def test_congestion_is_not_raised_again_while_it_lasts_and_clears_once() -> None:
    a = engine()
    out = feed(
        a, cong(0, 0.6), cong(1, 0.7), cong(2, 0.8), cong(3, 0.9), cong(4, 0.4), cong(5, 0.3)
    )
    assert states(out) == [("congestion", RAISED, T0 + M15), ("congestion", CLEARED, T0 + 4 * M15)]
    cleared = out[1]
    assert cleared.alert_id == out[0].alert_id and cleared.since == T0
    assert cleared.at == T0 + 5 * M15
    assert cleared.kpi_values == {"traffic.congestion_index@2014-08-02T07:00:00Z": 0.4}


def test_exactly_the_threshold_is_not_congestion() -> None:
    assert feed(engine(), cong(0, 0.5), cong(1, 0.5), cong(2, 0.5)) == []


def test_a_gap_breaks_consecutive_windows() -> None:
    a = engine()
    assert feed(a, cong(0, 0.6), cong(2, 0.7)) == []  # window 1 missing
    (raised,) = feed(a, cong(3, 0.7))
    assert raised.since == T0 + 2 * M15


def test_a_window_below_in_between_breaks_the_run() -> None:
    assert feed(engine(), cong(0, 0.6), cong(1, 0.2), cong(2, 0.7)) == []


def test_a_new_congestion_after_a_clear_is_a_new_alert() -> None:
    a = engine()
    out = feed(a, cong(0, 0.6), cong(1, 0.6), cong(2, 0.1), cong(3, 0.6), cong(4, 0.6))
    assert [x.state for x in out] == [RAISED, CLEARED, RAISED]
    assert out[2].alert_id == f"congestion|158895|{T0 + 3 * M15}" != out[0].alert_id


def test_out_of_order_windows_of_one_entity_raise_once() -> None:
    a = engine()
    assert feed(a, cong(1, 0.7)) == []  # window 0 not there yet
    (raised,) = feed(a, cong(0, 0.6))  # fills the gap behind the frontier
    assert raised.since == T0 and raised.window_start == T0 + M15
    assert feed(a, cong(2, 0.8)) == []


def test_an_old_window_arriving_after_the_clear_changes_nothing() -> None:
    a = engine()
    feed(a, cong(1, 0.7), cong(2, 0.7), cong(3, 0.1))
    assert feed(a, cong(0, 0.9)) == []


def test_entities_are_independent_and_may_interleave() -> None:
    a = engine()
    other = lambda i, v: w("traffic.congestion_index", "s1", i, v)  # noqa: E731
    out = feed(a, other(1, 0.9), cong(0, 0.6), other(0, 0.9), cong(1, 0.6), other(2, 0.1))
    assert [(x.entity_id, x.state) for x in out] == [
        ("s1", RAISED), ("158895", RAISED), ("s1", CLEARED),
    ]  # fmt: skip


# --- revisions -----------------------------------------------------------------------------


def test_a_revision_of_a_raising_window_does_not_raise_again() -> None:
    a = engine()
    feed(a, cong(0, 0.6), cong(1, 0.7))
    assert feed(a, cong(1, 0.75, samples=4, revision=1)) == []
    assert feed(a, cong(0, 0.65, samples=4, revision=1)) == []


def test_a_redelivered_or_stale_revision_is_ignored() -> None:
    a = engine()
    feed(a, cong(0, 0.6), cong(1, 0.7, samples=4, revision=1))
    assert feed(a, cong(1, 0.2, samples=3, revision=0)) == []  # older, less complete
    assert feed(a, cong(1, 0.2, samples=4, revision=1)) == []  # redelivery
    assert a.counters.ignored_versions == 2
    assert len(a.active()) == 1


def test_a_revision_below_the_threshold_clears_once_and_its_redelivery_does_not() -> None:
    a = engine()
    feed(a, cong(0, 0.6), cong(1, 0.7))
    (cleared,) = feed(a, cong(1, 0.45, samples=5, revision=1))
    assert cleared.state == CLEARED
    assert feed(a, cong(1, 0.45, samples=5, revision=1)) == []
    assert feed(a, cong(1, 0.40, samples=6, revision=2)) == []  # still cleared: no second clear


def test_a_revision_of_a_cleared_window_above_again_after_a_newer_window_does_not_reraise() -> None:
    a = engine()
    feed(a, cong(0, 0.6), cong(1, 0.7), cong(2, 0.3), cong(3, 0.3))
    assert feed(a, cong(2, 0.9, samples=5, revision=1)) == []  # frontier is window 3


def test_a_revision_that_completes_the_run_raises() -> None:
    a = engine()
    assert feed(a, cong(0, 0.6), cong(1, 0.4)) == []
    (raised,) = feed(a, cong(1, 0.55, samples=4, revision=1))
    assert raised.since == T0


# --- air quality, parking, silent sensors ---------------------------------------------------


def test_aqi_above_the_configured_threshold_per_segment_and_district() -> None:
    a = engine(aqi=80.0)
    seg = lambda i, v: w("air.aqi", "158895", i, v)  # noqa: E731
    dist = lambda i, v: w("air.aqi", "8000", i, v, scope="district")  # noqa: E731
    out = feed(
        a,
        seg(0, 80.0),
        seg(1, 81.5),
        dist(1, 90.0),
        seg(2, 85.0),
        w("air.aqi", "aarhus", 1, 99.0, scope="city"),
        seg(3, 79.0),
        dist(2, 10.0),
    )
    assert [(x.scope, x.entity_id, x.state, x.window_start) for x in out] == [
        ("segment", "158895", RAISED, T0 + M15),
        ("district", "8000", RAISED, T0 + M15),
        ("segment", "158895", CLEARED, T0 + 3 * M15),
        ("district", "8000", CLEARED, T0 + 2 * M15),
    ]
    assert out[0].kpi_values == {"air.aqi@2014-08-02T06:15:00Z": 81.5}
    assert out[1].district == "8000" and "district 8000:" in out[1].message
    assert feed(engine(aqi=100.0), seg(0, 99.0)) == []


def test_car_park_above_95_percent() -> None:
    a = engine()
    park = lambda i, v: w("parking.occupancy_pct", "BRUUNS", i, v, scope="car_park")  # noqa: E731
    out = feed(a, park(0, 95.0), park(1, 96.0), park(2, 99.0), park(3, 95.0))
    assert [(x.state, x.since, x.at) for x in out] == [
        (RAISED, T0 + M15, T0 + 2 * M15),
        (CLEARED, T0 + M15, T0 + 4 * M15),
    ]
    assert out[0].district is None and "car park BRUUNS:" in out[0].message
    # city scope is not a car park
    assert feed(engine(), w("parking.occupancy_pct", "aarhus", 0, 99.0, scope="city")) == []


def test_a_sensor_silent_for_an_hour_and_back() -> None:
    a = engine()
    up = lambda i, v, **kw: w("devices.uptime_pct", "s1", i, v, scope="sensor", size=H1, **kw)  # noqa: E731
    out = feed(a, up(0, 100.0), up(1, 0.0, samples=0), up(2, 0.0, samples=0), up(3, 8.33))
    assert [(x.type, x.state, x.since, x.at) for x in out] == [
        ("sensor_silent", RAISED, T0 + H1, T0 + 2 * H1),
        ("sensor_silent", CLEARED, T0 + H1, T0 + 4 * H1),
    ]
    assert out[0].district == "8200"
    assert "uptime % ≤ 0" in out[0].message


def test_non_finite_kpi_values_are_refused() -> None:
    with pytest.raises(InvalidEvent):
        engine().add(cong(0, float("nan")))


# --- restore after a restart -----------------------------------------------------------------


def test_restored_active_alert_is_not_raised_again_on_re_read_windows() -> None:
    first = engine()
    (raised,) = feed(first, cong(0, 0.6), cong(1, 0.7))
    restarted = engine()
    restarted.restore(Alert.from_record(raised.record()))
    assert feed(restarted, cong(0, 0.6), cong(1, 0.7), cong(2, 0.8)) == []
    (cleared,) = feed(restarted, cong(3, 0.1))
    assert cleared.alert_id == raised.alert_id and cleared.state == CLEARED


def test_restored_cleared_alert_is_not_raised_or_cleared_again_on_re_read_windows() -> None:
    first = engine()
    out = feed(first, cong(0, 0.6), cong(1, 0.7), cong(2, 0.3))
    restarted = engine()
    restarted.restore(out[-1])
    assert feed(restarted, cong(0, 0.6), cong(1, 0.7), cong(2, 0.3)) == []
    assert [x.state for x in feed(restarted, cong(3, 0.6), cong(4, 0.6))] == [RAISED]


def test_alert_records_round_trip_with_avro_datetimes() -> None:
    (raised,) = feed(engine(), cong(0, 0.6), cong(1, 0.7))
    record = raised.record() | {
        "since": datetime.fromtimestamp(raised.since / 1000, UTC),
        "at": datetime.fromtimestamp(raised.at / 1000, UTC),
        "window_start": datetime.fromtimestamp(T0 / 1000 + 900, UTC),
    }
    assert Alert.from_record(record) == raised


# --- service request SLA ----------------------------------------------------------------------

SLA = {"pothole": 120, "graffiti": 60}


def ev(rid: str, status: str, minute: int, *, opened: int = 0, category: str = "pothole") -> dict:
    return {
        "event_id": f"{rid}:{status}", "request_id": rid, "status": status,
        "category": category, "district": "8000", "event_time": T0 + minute * 60_000,
        "opened_at": T0 + opened * 60_000, "source": "test",
    }  # fmt: skip


def run_sla(
    s: SlaAlerts, *events: dict, partition: int = 0, sla: dict[str, int] = SLA
) -> list[Alert]:
    out: list[Alert] = []
    for offset, event in enumerate(events):
        out += s.add(partition, offset, event, sla)
    return out


def test_request_past_its_sla_by_stream_time_raises_once_then_clears_on_close() -> None:
    s = SlaAlerts()
    out = run_sla(
        s,
        ev("r1", "opened", 0),
        ev("r2", "opened", 100, opened=100),
        ev("r2", "assigned", 120, opened=100),  # stream time = deadline of r1: not past yet
        ev("r2", "assigned", 121, opened=100),  # past: r1 raised
        ev("r2", "assigned", 150, opened=100),  # still past: nothing new
        ev("r1", "assigned", 160),
        ev("r1", "closed", 200),
    )
    assert [(x.entity_id, x.state, x.since, x.at) for x in out] == [
        ("r1", RAISED, T0 + 120 * 60_000, T0 + 121 * 60_000),
        ("r1", CLEARED, T0 + 120 * 60_000, T0 + 200 * 60_000),
    ]
    raised, cleared = out
    assert raised.alert_id == cleared.alert_id == f"service_sla|r1|{T0 + 120 * 60_000}"
    assert raised.kpi_values == {"service.sla_minutes": 120.0, "service.open_minutes": 121.0}
    assert cleared.kpi_values == {"service.sla_minutes": 120.0, "service.open_minutes": 200.0}
    assert raised.district == "8000" and raised.scope == "request"
    assert "past its 120-minute SLA since 2014-08-02T08:00:00Z" in raised.message
    assert "r2" not in {x.entity_id for x in out}


def test_a_request_closed_within_its_sla_never_alerts() -> None:
    s = SlaAlerts()
    assert (
        run_sla(
            s, ev("r1", "opened", 0), ev("r1", "closed", 119), ev("r9", "opened", 500, opened=500)
        )
        == []
    )
    assert s.open.keys() == {"r9"}


def test_the_close_that_advances_stream_time_past_the_deadline_does_not_raise() -> None:
    assert run_sla(SlaAlerts(), ev("r1", "opened", 0), ev("r1", "closed", 300)) == []


def test_stream_time_is_per_partition() -> None:
    s = SlaAlerts()
    run_sla(s, ev("r1", "opened", 0), partition=0)
    assert run_sla(s, ev("r2", "opened", 500, opened=500), partition=1) == []
    (raised,) = run_sla(s, ev("r3", "opened", 130, opened=130), partition=0)
    assert raised.entity_id == "r1"


def test_unknown_category_waits_for_the_reference_data() -> None:
    s = SlaAlerts()
    assert (
        run_sla(s, ev("r1", "opened", 0, category="trees"), ev("r2", "opened", 90, opened=90)) == []
    )
    assert s.counters.unknown_category == 1 and s.waiting == {"r1"}
    (raised,) = s.recheck({**SLA, "trees": 60})
    assert (
        raised.entity_id == "r1"
        and raised.since == T0 + 60 * 60_000
        and raised.at == T0 + 90 * 60_000
    )


def test_closed_request_alerted_before_a_restart_is_not_raised_again_on_re_read() -> None:
    first = SlaAlerts()
    out = run_sla(first, ev("r1", "opened", 0), ev("r1", "assigned", 130), ev("r1", "closed", 140))
    restarted = SlaAlerts()
    restarted.restore(out[-1])
    # the restart re-reads from the assigned event on: the opened event was committed
    assert run_sla(restarted, ev("r1", "assigned", 130), ev("r1", "closed", 140)) == []


def test_raised_request_is_not_raised_again_after_a_restart_but_clears() -> None:
    first = SlaAlerts()
    (raised,) = run_sla(first, ev("r1", "opened", 0), ev("r1", "assigned", 130))
    restarted = SlaAlerts()
    restarted.restore(raised)
    out = run_sla(
        restarted, ev("r1", "opened", 0), ev("r1", "assigned", 130), ev("r1", "closed", 150)
    )
    assert [(x.state, x.alert_id) for x in out] == [(CLEARED, raised.alert_id)]


def test_only_the_latest_event_of_an_open_request_pins_its_input() -> None:
    s = SlaAlerts()
    run_sla(
        s,
        ev("r1", "opened", 0),
        ev("r1", "assigned", 5),
        ev("r2", "opened", 6, opened=6),
        ev("r2", "closed", 7),
    )
    assert not s.pins(0, 0, "r1") and s.pins(0, 1, "r1")
    assert not s.pins(0, 2, "r2") and not s.pins(0, 3, "r2")


def test_unknown_status_is_refused() -> None:
    with pytest.raises(InvalidEvent):
        run_sla(SlaAlerts(), ev("r1", "reopened", 0))


# --- reordering across input partitions ------------------------------------------------------


def test_reorder_buffer_judges_a_backlog_read_unevenly_as_if_it_came_in_order() -> None:
    windows = [cong(0, 0.6), cong(1, 0.7), cong(2, 0.8), cong(3, 0.3), cong(4, 0.9), cong(5, 0.9)]
    in_order = feed(engine(), *windows)
    # partition A delivered windows 3..5 before partition B delivered 0..2
    buffer, a = ReorderBuffer(), engine()
    for window in windows[3:] + windows[:3]:
        buffer.push(window)
    assert len(buffer) == 6
    held = buffer.pop_until(T0 + 4 * M15)  # windows 0..3 end by then
    assert [x.window_start for x in held] == [T0 + i * M15 for i in range(4)]
    out = feed(a, *held, *buffer.pop_until(T0 + 6 * M15))
    assert (
        states(out)
        == states(in_order)
        == [
            ("congestion", RAISED, T0 + M15),
            ("congestion", CLEARED, T0 + 3 * M15),
            ("congestion", RAISED, T0 + 5 * M15),
        ]
    )
    # without the buffer, the same arrival order loses the first alert
    assert len(feed(engine(), *windows[3:], *windows[:3])) == 1


def test_reorder_buffer_puts_a_revision_after_the_window_it_revises() -> None:
    buffer = ReorderBuffer()
    buffer.push(cong(1, 0.75, samples=4, revision=1))
    buffer.push(cong(1, 0.7))
    assert [x.revision for x in buffer.pop_until(T0 + 2 * M15)] == [0, 1]


def test_every_rule_watches_a_catalogued_kpi_at_one_of_its_scopes() -> None:
    from families.registry import KPIS

    for rule in default_rules(100.0):
        assert rule.kpi in KPIS, rule.kpi
        assert set(rule.scopes) <= set(KPIS[rule.kpi].scopes), (rule.type, rule.scopes)


def test_districts_of_segments_sensors_and_districts() -> None:
    segments = {"158895": "8000"}
    assert district_of("segment", "158895", segments) == "8000"
    assert district_of("sensor", "traffic:158895", segments) == "8000"
    assert district_of("sensor", "158895", segments) == "8000"
    assert district_of("district", "8200", segments) == "8200"
    assert district_of("segment", "999999", segments) is None
    assert district_of("car_park", "BRUUNS", segments) is None


# --- every KPI rule: raise once, revisions, redeliveries, clear once ------------------------

RULE_CASES = [
    # type, kpi, scope, size, (value that meets the rule, one that does not), windows to raise
    ("congestion", "traffic.congestion_index", "segment", M15, (0.7, 0.2), 2),
    ("air_quality", "air.aqi", "segment", M15, (120.0, 40.0), 1),
    ("air_quality", "air.aqi", "district", M15, (120.0, 40.0), 1),
    ("parking_full", "parking.occupancy_pct", "car_park", M15, (99.0, 50.0), 1),
    ("sensor_silent", "devices.uptime_pct", "sensor", H1, (0.0, 50.0), 1),
]


@pytest.mark.parametrize(("kind", "kpi", "scope", "size", "values", "needed"), RULE_CASES)
def test_every_rule_raises_once_ignores_redeliveries_and_clears_once(
    kind: str, kpi: str, scope: str, size: int, values: tuple[float, float], needed: int
) -> None:
    bad, good = values
    a = engine()

    def win(i: int, v: float, rev: int = 0) -> KpiWindow:
        return w(kpi, "e1", i, v, scope=scope, size=size, samples=3 + rev, revision=rev)

    raising = [win(i, bad) for i in range(needed)]
    assert feed(a, *raising[:-1]) == []
    (raised,) = feed(a, raising[-1])
    assert (raised.type, raised.state, raised.since) == (kind, RAISED, T0)
    assert feed(a, raising[-1]) == []  # redelivered
    assert feed(a, win(needed - 1, bad, rev=1)) == []  # revised, still meets the rule
    assert feed(a, win(needed, bad)) == []  # the condition goes on
    (cleared,) = feed(a, win(needed, good, rev=1))  # a revision ends it
    assert (cleared.state, cleared.alert_id) == (CLEARED, raised.alert_id)
    assert feed(a, win(needed, good, rev=1), win(needed + 1, good)) == []  # no second clear


def test_redelivered_request_events_neither_raise_nor_clear_twice() -> None:
    s = SlaAlerts()
    events = [ev("r1", "opened", 0), ev("r2", "opened", 125, opened=125), ev("r1", "closed", 130)]
    out = run_sla(s, *events, *events)  # the whole sequence delivered twice
    assert [(x.entity_id, x.state) for x in out] == [("r1", RAISED), ("r1", CLEARED)]
