"""The alerts processor's watermark and ack order, without Kafka (no setup() needed)."""

from __future__ import annotations

from collections import deque

from core.settings import Settings
from streams.alerts.processor import RETAIN_MS, AlertsProcessor, release

M15 = 15 * 60_000


def processor() -> AlertsProcessor:
    return AlertsProcessor(Settings(idle_timeout_s=5.0))


def test_watermark_waits_for_the_slowest_delivering_partition() -> None:
    p = processor()
    p.saw_kpis(0, 3 * M15, now=100.0)
    p.saw_kpis(1, 1 * M15, now=100.0)
    # partition 2 has not delivered yet, within the idle timeout of the first KPI: hold
    assert p._watermark({0, 1, 2}, now=101.0) == 0
    p.saw_kpis(0, 4 * M15, now=104.0)
    p.saw_kpis(1, 2 * M15, now=104.0)
    assert p._watermark({0, 1, 2}, now=104.5) == 0
    # ...after it, partition 2 no longer holds the others back
    assert p._watermark({0, 1, 2}, now=105.5) == 2 * M15
    p.saw_kpis(0, 5 * M15, now=108.0)  # partition 1 silent since 104
    assert p._watermark({0, 1, 2}, now=109.5) == 5 * M15


def test_watermark_judges_everything_when_all_partitions_are_idle_and_never_goes_back() -> None:
    p = processor()
    p.saw_kpis(0, 3 * M15, now=100.0)
    p.saw_kpis(1, 1 * M15, now=100.0)
    p.kpi_watermark = p._watermark({0, 1}, now=106.0)
    assert p.kpi_watermark == 3 * M15 == p.kpi_stream_time
    p.saw_kpis(1, 2 * M15, now=107.0)  # a late partition
    assert p._watermark({0, 1}, now=107.5) == 3 * M15


def test_an_undecodable_message_does_not_hold_the_watermark() -> None:
    p = processor()
    p.saw_kpis(0, 3 * M15, now=100.0)
    p.saw_kpis(1, 0, now=100.0)
    assert p._watermark({0, 1}, now=106.0) == 3 * M15


def test_kpi_input_is_acked_in_offset_order_once_the_watermark_is_two_hours_past() -> None:
    p = processor()
    pending: deque[tuple[str, int]] = deque([("a", 2 * M15), ("b", M15), ("c", 9 * M15)])
    p.kpi_watermark = M15 + RETAIN_MS
    assert p._release_kpis(pending) == []  # "a" is still needed, "b" waits behind it
    p.kpi_watermark = 2 * M15 + RETAIN_MS
    assert p._release_kpis(pending) == ["a", "b"]
    assert list(pending) == [("c", 9 * M15)]


def test_release_stops_at_the_first_pinned_event() -> None:
    pending = deque([(1, False), (2, True), (3, False)])
    assert release(pending, lambda pinned: not pinned) == [1]
    assert len(pending) == 2
