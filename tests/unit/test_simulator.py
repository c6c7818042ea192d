from __future__ import annotations

import io
import math
from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import fastavro
import pytest

from citystream.cli import main, parser
from connectors.publishing import ENERGY, SERVICE, WASTE
from connectors.sources.simulator import (
    LOCAL_TZ,
    CitySimulatorSource,
    SimulationConfig,
    SimulationConfigError,
    load_reference,
    simulate,
    validate_event,
)
from core.settings import Settings
from families.registry import TOPICS
from schemas.catalog import load_schema

MONDAY = int(datetime(2014, 8, 4, tzinfo=UTC).timestamp() * 1000)
REFERENCE = load_reference()


def config(**overrides: object) -> SimulationConfig:
    base = {"seed": 7, "start_ms": MONDAY, "hours": 24, "meters": 40, "bins": 40}
    return SimulationConfig(**{**base, **overrides})  # type: ignore[arg-type]


def encoded(cfg: SimulationConfig) -> bytes:
    """The whole sequence as the source would write it to the per-event topics."""
    out = io.BytesIO()
    schemas = {t: fastavro.parse_schema(load_schema(TOPICS[t].schema_file)) for t in TOPICS}
    for event in simulate(cfg, REFERENCE):
        out.write(event.topic.encode() + event.origin.encode())
        if event.fault != "malformed":
            fastavro.schemaless_writer(out, schemas[event.topic], event.record)
    return out.getvalue()


def test_same_seed_gives_byte_identical_events() -> None:
    cfg = config(duplicate_fraction=0.05, late_fraction=0.05, malformed_fraction=0.05)
    first, second = encoded(cfg), encoded(cfg)
    assert len(first) > 100_000
    assert first == second


def test_another_seed_gives_other_events() -> None:
    assert encoded(config()) != encoded(config(seed=8))


def test_without_faults_events_are_in_event_time_order_and_inside_the_span() -> None:
    cfg = config()
    times = [e.time_ms for e in simulate(cfg, REFERENCE)]
    assert times == sorted(times)
    assert cfg.start_ms <= times[0] and times[-1] < cfg.end_ms


def test_every_meter_and_bin_reads_once_per_interval() -> None:
    events = list(simulate(config(hours=2, interval_minutes=15), REFERENCE))
    energy = [e for e in events if e.topic == ENERGY.topic]
    waste = [e for e in events if e.topic == WASTE.topic]
    assert len(energy) == 40 * 8 and len(waste) == 40 * 8
    assert len({e.record["event_id"] for e in events}) == len(events)


def test_energy_peaks_in_the_evening_and_is_low_at_night() -> None:
    by_hour: dict[int, float] = defaultdict(float)
    for e in simulate(config(hours=24 * 7, bins=0, requests_per_hour=0), REFERENCE):
        local = datetime.fromtimestamp(e.time_ms / 1000, LOCAL_TZ)
        by_hour[local.hour] += e.record["kwh"]
    night = sum(by_hour[h] for h in (1, 2, 3, 4)) / 4
    morning = sum(by_hour[h] for h in (7, 8, 9)) / 3
    evening = sum(by_hour[h] for h in (17, 18, 19)) / 3
    assert evening > 1.6 * night and morning > 1.3 * night


def test_energy_differs_between_weekdays_and_weekends() -> None:
    morning: dict[bool, float] = defaultdict(float)
    for e in simulate(config(hours=24 * 7, bins=0, requests_per_hour=0), REFERENCE):
        local = datetime.fromtimestamp(e.time_ms / 1000, LOCAL_TZ)
        if local.hour == 7:
            morning[local.weekday() >= 5] += e.record["kwh"] / (2 if local.weekday() >= 5 else 5)
    assert morning[False] > 1.3 * morning[True]  # weekday mornings start earlier


def test_bins_fill_up_and_are_emptied_by_the_collection_round() -> None:
    levels: dict[str, list[float]] = defaultdict(list)
    for e in simulate(config(hours=24 * 7, meters=0, requests_per_hour=0), REFERENCE):
        levels[e.record["bin_id"]].append(e.record["fill_pct"])
    assert all(0 <= x <= 100 for xs in levels.values() for x in xs)
    emptied = [b for b, xs in levels.items() if any(a - b > 10 for a, b in pairwise(xs))]
    assert len(emptied) == len(levels)  # every bin was collected at least once in a week
    assert any(x > 80 for xs in levels.values() for x in xs)


def test_service_requests_follow_their_lifecycle_and_some_breach_the_sla() -> None:
    sla = REFERENCE.sla_minutes()
    requests: dict[str, list[dict[str, object]]] = defaultdict(list)
    for e in simulate(config(hours=48, meters=0, bins=0, requests_per_hour=40), REFERENCE):
        requests[e.record["request_id"]].append(e.record)
    assert len(requests) > 500
    breaches = still_open = 0
    for events in requests.values():
        statuses = [e["status"] for e in events]
        assert statuses == ["opened", "assigned", "closed"][: len(statuses)]
        times = [e["event_time"] for e in events]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert all(e["opened_at"] == times[0] for e in events)
        if statuses[-1] == "closed":
            minutes = (times[-1] - times[0]) / 60_000  # type: ignore[operator]
            breaches += minutes > sla[str(events[0]["category"])]
        else:
            still_open += 1
    assert breaches > 20 and still_open > 20


def test_requests_peak_in_the_daytime() -> None:
    hours = [
        datetime.fromtimestamp(e.time_ms / 1000, LOCAL_TZ).hour
        for e in simulate(config(hours=24 * 7, meters=0, bins=0, requests_per_hour=60), REFERENCE)
        if e.record["status"] == "opened"
    ]
    day = sum(1 for h in hours if 9 <= h < 17)
    night = sum(1 for h in hours if h < 6)
    assert day > 5 * night


def test_faults_are_injected_in_the_configured_proportions() -> None:
    cfg = config(duplicate_fraction=0.1, late_fraction=0.1, malformed_fraction=0.1)
    events = list(simulate(cfg, REFERENCE))
    clean = [e for e in events if e.fault in ("", "late")]
    for fault in ("duplicate", "late", "malformed"):
        share = sum(e.fault == fault for e in events) / len(clean)
        assert 0.08 < share < 0.12, fault
    for i, e in enumerate(events):
        if e.fault == "duplicate":
            assert events[i - 1].record == e.record and events[i - 1].fault == ""
        if e.fault == "late":  # sent just before the first event an hour later, or at the end
            after = next((x for x in events[i + 1 :] if x.fault != "late"), None)
            assert after is None or after.time_ms >= e.time_ms + 60 * 60_000
    assert {e.record["event_id"] for e in events if e.fault == "late"}.isdisjoint(
        e.record["event_id"] for e in events if e.fault == ""
    )


def test_malformed_copies_fail_validation_and_good_events_pass() -> None:
    events = list(simulate(config(malformed_fraction=0.2), REFERENCE))
    for e in events:
        problem = validate_event(e.topic, e.record)
        assert (problem is not None) == (e.fault == "malformed"), (e, problem)


@pytest.mark.parametrize(
    ("topic", "change", "reason"),
    [
        (ENERGY.topic, {"kwh": -0.1}, "kwh must be finite and >= 0"),
        (ENERGY.topic, {"kwh": math.inf}, "kwh must be finite and >= 0"),
        (WASTE.topic, {"fill_pct": 100.5}, "fill_pct must be within 0..100"),
        (WASTE.topic, {"district": ""}, "district is empty"),
        (SERVICE.topic, {"status": "done"}, "status must be one of opened, assigned, closed"),
        (SERVICE.topic, {"opened_at": 2}, "opened_at is after event_time"),
        (SERVICE.topic, {"opened_at": 0}, "an opened event's event_time must equal opened_at"),
    ],
)
def test_validation_names_the_defect(topic: str, change: dict[str, object], reason: str) -> None:
    good = {
        ENERGY.topic: {"meter_id": "m", "kwh": 0.0},
        WASTE.topic: {"bin_id": "b", "fill_pct": 100.0},
        SERVICE.topic: {"request_id": "r", "status": "opened", "category": "noise",
                        "opened_at": 1},
    }[topic]  # fmt: skip
    record = {"event_id": "e", "district": "8000", "event_time": 1, **good}
    assert validate_event(topic, record) is None
    assert (validate_event(topic, {**record, **change}) or "").startswith(reason)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hours": 0}, "hours must be > 0"),
        ({"meters": -1}, "meters and bins must be >= 0"),
        ({"requests_per_hour": -2.0}, "requests_per_hour must be >= 0"),
        ({"meters": 0, "bins": 0, "requests_per_hour": 0}, "nothing to simulate"),
        ({"interval_minutes": 0}, "interval_minutes must be 1..1440"),
        ({"duplicate_fraction": 0.6, "late_fraction": 0.6}, "fault fractions"),
        ({"malformed_fraction": -0.1}, "fault fractions"),
        ({"late_delay_minutes": 0}, "late_delay_minutes"),
    ],
)
def test_invalid_configuration_is_refused_with_the_reason(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(SimulationConfigError, match=message):
        config(**change)


def test_pacing_options_are_validated() -> None:
    with pytest.raises(SimulationConfigError, match="either speed or max_rate"):
        CitySimulatorSource(Settings(), config(), speed=10, max_rate=100)
    with pytest.raises(SimulationConfigError, match="must be > 0"):
        CitySimulatorSource(Settings(), config(), max_rate=0)


def test_bad_reference_rows_are_errors_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "districts.csv").write_text(
        "district,name,grid_emission_kg_per_kwh,population\n8000,Aarhus C,0.1,5\n8200,N,x,1\n"
    )
    (tmp_path / "service_categories.csv").write_text("category,name,sla_minutes\nnoise,N,60\n")
    with pytest.raises(ValueError, match=r"districts.csv:3: bad reference row"):
        load_reference(tmp_path)


def test_reference_data_covers_the_aarhus_districts_and_categories() -> None:
    assert [d.district for d in REFERENCE.districts] == [
        "8000", "8200", "8210", "8220", "8230", "8240", "8250", "8260", "8270"
    ]  # fmt: skip
    assert set(REFERENCE.sla_minutes()) == {
        "pothole", "streetlight", "graffiti", "waste_overflow", "noise"
    }  # fmt: skip
    assert all(0.05 < f < 0.3 for f in REFERENCE.emission_factors().values())


def test_cli_flags_override_settings_and_bad_values_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parser().parse_args(
        ["simulate", "--seed", "3", "--start", "2014-08-04T06:00", "--hours", "2", "--meters",
         "5", "--max-rate", "1000", "--duplicates", "0.1"]
    )  # fmt: skip
    assert args.simulator_seed == 3 and args.simulator_meters == 5 and args.max_rate == 1000
    assert args.start_ms == MONDAY + 6 * 3_600_000
    with pytest.raises(SystemExit):
        parser().parse_args(["simulate", "--speed", "2", "--max-rate", "5"])
    assert main(["simulate", "--hours", "-1"]) == 2
    assert "hours must be > 0" in capsys.readouterr().err


def test_records_carry_their_batch_columns() -> None:
    streams = {s.topic: s for s in (ENERGY, WASTE, SERVICE)}
    for e in simulate(config(hours=3, requests_per_hour=60), REFERENCE):
        assert set(streams[e.topic].columns) <= set(e.record)
        assert e.record["event_time_ms"] == e.record["event_time"] == e.time_ms
        if e.topic == SERVICE.topic:
            assert e.record["opened_at_ms"] == e.record["opened_at"]


def test_rate_cap_spaces_events_at_the_rate() -> None:
    import time

    from connectors.sources.pacing import RateCap

    cap = RateCap(per_second=200.0)
    start = time.monotonic()
    assert not cap.wait_needed()  # the first event starts the clock
    waits = [cap.wait_needed() for _ in range(99)]
    assert waits[-1]  # 100 events are due over 0.5 s, not at once
    cap.sleep()
    assert 0.45 <= time.monotonic() - start < 1.0
