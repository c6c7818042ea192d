"""The soak's looped source: each pass is the recording shifted by whole days."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from citystream.soak import DAY_MS, AarhusLoop
from connectors.publishing import Reading

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
ROWS = 16_164  # every row of the fixture is valid


def test_second_pass_is_the_first_shifted_by_one_day() -> None:
    loop = AarhusLoop(FIXTURE, REPO / "data/aarhus/traffic_metadata.csv")
    events = list(islice(loop.events(), 2 * ROWS + 1))
    assert all(isinstance(e, Reading) for e in events)
    first, second, third = events[:ROWS], events[ROWS : 2 * ROWS], events[2 * ROWS]
    for a, b in zip(first, second, strict=True):
        assert b.event_time_ms - a.event_time_ms == DAY_MS  # 3 hours of data: a 1-day shift
        assert (b.segment_id, b.vehicle_count) == (a.segment_id, a.vehicle_count)
    assert first[0].origin.startswith("lap0:") and second[0].origin.startswith("lap1:")
    assert third.event_time_ms - first[0].event_time_ms == 2 * DAY_MS
