"""NGSI-LD parameter rules (api/ngsi_ld.py) that need no store: ids, durations, timerel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.ngsi_ld import (
    MAX_PERIODS,
    NgsiError,
    SeriesId,
    aggregation_plan,
    parse_duration,
    parse_id,
    time_range,
)


@pytest.mark.parametrize(
    "series",
    [
        SeriesId("aarhus", "traffic.vehicle_count", "segment", "158324"),
        SeriesId("aarhus", "air.aqi", "district", "Aarhus C"),
        SeriesId("boston", "service.requests_opened", "category", "Street Lights: Out/Repair"),
    ],
)
def test_id_round_trips_with_spaces_and_colons(series):
    urn = series.urn
    assert urn.startswith("urn:ngsi-ld:KeyPerformanceIndicator:")
    assert " " not in urn and urn.count(":") == 6
    assert parse_id(urn) == series


@pytest.mark.parametrize(
    "text",
    ["urn:ngsi-ld:Other:a:b:c:d", "urn:ngsi-ld:KeyPerformanceIndicator:a:b:c", "x"],
)
def test_foreign_id_is_bad_request_data(text):
    with pytest.raises(NgsiError) as caught:
        parse_id(text)
    assert caught.value.status == 400 and caught.value.kind == "BadRequestData"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PT15M", timedelta(minutes=15)),
        ("PT1H", timedelta(hours=1)),
        ("P1D", timedelta(days=1)),
        ("P1W", timedelta(weeks=1)),
        ("P1DT12H", timedelta(days=1, hours=12)),
        ("PT0S", timedelta(0)),
        ("PT1.5S", timedelta(seconds=1.5)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["P", "PT", "15M", "P1M", "P1Y", "PT1X", "P1DT", "1 hour", ""])
def test_bad_durations_name_the_parameter(text):
    with pytest.raises(NgsiError) as caught:
        parse_duration(text)
    assert caught.value.parameter == "aggrPeriodDuration"
    assert caught.value.body()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


T0 = datetime(2014, 8, 2, tzinfo=UTC)


def test_timerel():
    assert time_range({}).start is None
    between = time_range(
        {"timerel": "between", "timeAt": "2014-08-02T00:00:00Z", "endTimeAt": "2014-08-03T00:00Z"}
    )
    assert (between.start, between.end) == (T0, T0 + timedelta(days=1))
    before = time_range({"timerel": "before", "timeAt": "2014-08-02T02:00:00+02:00"})
    assert (before.start, before.end) == (None, T0)
    after = time_range({"timerel": "after", "timeAt": "2014-08-02T00:00:00Z"})
    assert (after.start, after.end) == (T0, None)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"timerel": "during", "timeAt": "2014-08-02T00:00:00Z"}, "timerel"),
        ({"timerel": "after"}, "timeAt"),
        ({"timerel": "after", "timeAt": "yesterday"}, "timeAt"),
        ({"timerel": "after", "timeAt": "2014-08-02T00:00:00"}, "timeAt"),  # no zone
        ({"timerel": "between", "timeAt": "2014-08-02T00:00:00Z"}, "endTimeAt"),
        (
            {"timerel": "between", "timeAt": "2014-08-02T00:00:00Z", "endTimeAt": "2014-08-01Z"},
            "endTimeAt",
        ),
        ({"timeAt": "2014-08-02T00:00:00Z"}, "timerel"),
    ],
)
def test_bad_timerel(params, parameter):
    with pytest.raises(NgsiError) as caught:
        time_range(params)
    assert caught.value.status == 400 and caught.value.parameter == parameter


def _between(days: float) -> dict[str, str]:
    end = T0 + timedelta(days=days)
    return {"timerel": "between", "timeAt": T0.isoformat(), "endTimeAt": end.isoformat()}


def test_aggregation_plan():
    params = {**_between(1), "aggrMethods": "avg,max,avg", "aggrPeriodDuration": "PT1H"}
    methods, period, start, end = aggregation_plan(params, time_range(params))
    assert methods == ["avg", "max"] and period == timedelta(hours=1)
    assert (start, end) == (T0, T0 + timedelta(days=1))
    whole = {**_between(1), "aggrMethods": "sum"}  # no duration: PT0S, the whole interval
    assert aggregation_plan(whole, time_range(whole))[1] == timedelta(days=1)


@pytest.mark.parametrize(
    ("params", "status", "parameter"),
    [
        ({**_between(1)}, 400, "aggrMethods"),
        ({**_between(1), "aggrMethods": "median"}, 400, "aggrMethods"),
        ({"timerel": "after", "timeAt": T0.isoformat(), "aggrMethods": "sum"}, 400, "timerel"),
        ({"aggrMethods": "sum"}, 400, "timerel"),  # unbounded: refused, never run
        ({**_between(400), "aggrMethods": "sum"}, 403, "endTimeAt"),
        (
            {**_between(30), "aggrMethods": "sum", "aggrPeriodDuration": "PT15M"},
            403,
            "aggrPeriodDuration",
        ),
    ],
)
def test_aggregation_refusals(params, status, parameter):
    with pytest.raises(NgsiError) as caught:
        aggregation_plan(params, time_range(params))
    assert (caught.value.status, caught.value.parameter) == (status, parameter)
    assert MAX_PERIODS < 30 * 96  # the PT15M case is over the limit
