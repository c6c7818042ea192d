"""Contracts, periods, period rules and signatures of KPI statements (no stack needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oracles.statements import ServiceEvent, service_windows
from trust.statements.contract import ContractError, load_contract, parse_contract
from trust.statements.periods import resolve_period
from trust.statements.rules import RULES, pooled_ratio, pooled_readings, rule_for, worst_window
from trust.statements.signing import (
    canonical,
    key_id,
    load_public_key,
    public_key_text,
    sign,
    signature_problems,
    signing_key,
)

REPO = Path(__file__).resolve().parents[2]
GOOD = """
id = "c"
title = "t"
city = "boston"
period = "month"

[[targets]]
id = "sla"
kpi = "service.sla_met_pct"
scope = "city"
entity = "boston"
comparison = ">="
threshold = 85

  [[targets.tiers]]
  name = "full"
  comparison = ">="
  threshold = 90
  payment = "100 %"

  [[targets.tiers]]
  name = "penalty"
  payment = "75 %"
"""


def test_the_shipped_contracts_load() -> None:
    boston = load_contract(REPO / "contracts" / "boston-311-service.toml")
    aarhus = load_contract(REPO / "contracts" / "aarhus-sensor-uptime.toml")
    assert (boston.city, boston.period, aarhus.city, aarhus.period) == (
        "boston", "month", "aarhus", "week",
    )  # fmt: skip
    assert {t.kpi for t in boston.targets} >= {"service.sla_met_pct"}
    assert [t.kpi for t in aarhus.targets] == ["devices.uptime_pct"]


def test_tiers_apply_in_order_and_the_unconditional_one_last() -> None:
    [target] = parse_contract(GOOD.encode()).targets
    assert target.tier(95.0).name == "full"  # type: ignore[union-attr]
    assert target.tier(80.0).name == "penalty"  # type: ignore[union-attr]
    assert target.tier(None).name == "penalty"  # type: ignore[union-attr]
    assert target.met(85.0) and not target.met(84.99) and not target.met(None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('comparison = ">="\nthreshold = 85', 'comparison = "=>"\nthreshold = 85'),
         "targets[0].comparison: must be one of"),
        (('kpi = "service.sla_met_pct"', 'kpi = "service.sla_met"'),
         "targets[0].kpi: 'service.sla_met' has no period rule"),
        (('scope = "city"', 'scope = "request"'), "targets[0].scope: service.sla_met_pct"),
        (("threshold = 85", 'threshold = "85"'), "targets[0].threshold: must be a number"),
        (('period = "month"', 'period = "quarter"'), "period: must be one of month, week"),
        (('entity = "boston"', 'entity = "boston"\nthreshhold = 1'),
         "targets[0].threshhold: unknown key"),
        (('payment = "75 %"', 'payment = "75 %"\ncomparison = ">="'),
         "targets[0].tiers[1].threshold: is required"),
        (('id = "c"', ""), "c.toml: id: is required"),
        (("[[targets]]", "[[targetz]]"), "targets: at least one"),
    ],
)  # fmt: skip
def test_a_bad_contract_names_the_key(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ContractError) as caught:
        parse_contract(GOOD.replace(*change, 1).encode(), "c.toml")
    assert message in str(caught.value)


def test_devices_uptime_refuses_the_district_scope() -> None:
    with pytest.raises(ValueError, match="scope sensor or city"):
        rule_for("devices.uptime_pct", "district")
    assert rule_for("devices.uptime_pct", "city").selects("city", "aarhus") == ("sensor", None)
    assert RULES["service.sla_met_pct"].selects("city", "boston") == ("city", "boston")


def test_periods_are_local_months_and_iso_weeks() -> None:
    january = resolve_period("2015-01", "month", "America/New_York")
    assert january.as_dict()["start_utc"] == "2015-01-01T05:00:00Z"
    assert (january.end_ms - january.start_ms) == 31 * 24 * 3_600_000
    march = resolve_period("2015-03", "month", "America/New_York")  # clocks go forward
    assert march.end_ms - march.start_ms == (31 * 24 - 1) * 3_600_000
    december = resolve_period("2014-12", "month", "UTC")
    assert december.end.isoformat() == "2015-01-01T00:00:00+00:00"
    week = resolve_period("2014-W31", "week", "Europe/Copenhagen")
    assert week.as_dict()["start_utc"] == "2014-07-27T22:00:00Z"
    assert week.end_ms - week.start_ms == 7 * 24 * 3_600_000
    for label, kind in (("2015-13", "month"), ("2015-01", "week"), ("2014-W54", "week")):
        with pytest.raises(ValueError, match=f"period {label!r}"):
            resolve_period(label, kind, "UTC")


def test_sla_pools_met_and_judged_never_the_mean_of_windows() -> None:
    # window 1: 1 of 1 met (100 %); window 2: 1 of 3 met (33.3 %)
    rows = [("service.sla_met_pct", "city", "b", 0, 100.0, 1),
            ("service.sla_met_pct", "city", "b", 900_000, 100 / 3, 3)]  # fmt: skip
    assert pooled_ratio(rows) == 50.0  # 2 of 4; the mean of windows would say 66.7
    assert pooled_ratio([]) is None
    assert worst_window(rows) == 100.0
    uptime = [("devices.uptime_pct", "sensor", "traffic:1", 0, 100.0, 12),
              ("devices.uptime_pct", "sensor", "traffic:2", 0, 0.0, 0)]  # fmt: skip
    assert pooled_readings(uptime) == 50.0


def test_the_oracle_pools_what_the_rule_pools() -> None:
    hour = 3_600_000
    events = [
        ServiceEvent("r1", "opened", "c", "d", 0, 0, hour),
        ServiceEvent("r1", "closed", "c", "d", 60_000, 0, hour),  # met
        ServiceEvent("r1", "closed", "c", "d", 60_000, 0, hour),  # duplicate
        ServiceEvent("r2", "closed", "c", "d", 2 * hour, 0, hour),  # missed
        ServiceEvent("r3", "closed", "x", "d", 2 * hour, 0, None),  # no due, no SLA: not judged
        ServiceEvent("r4", "closed", "c", "d", 0, 0, hour),  # late: its window has closed
    ]
    rows = service_windows([events], {}, 900_000, 900_000, "b")
    assert rows[("service.sla_met_pct", "city", "b", 0)] == (100.0, 1)
    assert rows[("service.sla_met_pct", "city", "b", 2 * hour)] == (0.0, 1)
    assert rows[("service.response_minutes_p50", "city", "b", 2 * hour)] == (120.0, 2)
    assert rows[("service.requests_opened", "city", "b", 0)] == (1.0, 1)


def test_signatures_hold_and_name_what_broke(tmp_path: Path) -> None:
    key = signing_key(tmp_path / "keys" / "k.pem", create=True)
    assert (tmp_path / "keys" / "k.pem").stat().st_mode & 0o777 == 0o600
    assert key_id(signing_key(tmp_path / "keys" / "k.pem", create=False).public_key()) == key_id(
        key.public_key()
    )
    document = sign({"a": 1.5, "b": ["é", None]}, key)
    trusted = load_public_key(public_key_text(key.public_key()))
    assert signature_problems(document, trusted) == []
    assert signature_problems(document, None) == []
    changed = copy.deepcopy(document)
    changed["a"] = 1.25
    assert signature_problems(changed, trusted)[0].startswith("signature: does not match")
    other = Ed25519PrivateKey.generate()
    problems = signature_problems(sign(document, other), trusted)
    assert any("not the trusted key" in p for p in problems)
    assert signature_problems({"a": 1}, trusted) == ["signature: missing"]
    assert canonical({"b": 1, "a": [1.0, "x"]}) == b'{"a":[1.0,"x"],"b":1}'
    with pytest.raises(ValueError, match="raw 32 bytes"):
        load_public_key("not a key")


def test_the_catalogue_shows_every_period_rule() -> None:
    from citystream.catalog import BLOCKS, CATALOGUE_FILE

    block = BLOCKS["period-rules"]
    page = CATALOGUE_FILE.read_text()
    assert block.expected(page) == page, "run `make docs` (citystream catalog period-rules)"
    for kpi, rule in RULES.items():
        assert f"| `{kpi}` | {rule.name} |" in page


def test_issue_refuses_a_bad_contract_period_or_city_before_reading_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('comparison = ">="', 'comparison = "=>"', 1))
    common = ["--data-dir", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1"]
    boston = REPO / "contracts" / "boston-311-service.toml"
    cases = [
        ([str(bad), "2015-01", "--city", str(REPO / "cities" / "boston")],
         "bad.toml: targets[0].comparison: must be one of"),
        ([str(boston), "2015-01"], "contract is for city 'boston', the settings' city is 'aarhus'"),
        ([str(boston), "2015-W03", "--city", str(REPO / "cities" / "boston")],
         "period '2015-W03': this contract's periods are months"),
    ]  # fmt: skip
    for (contract, period, *more), message in cases:
        argv = ["statement", "issue", "--contract", contract, "--period", period, *more]
        assert main([*argv, *common]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))
