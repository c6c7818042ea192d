"""The shipped Prometheus alert rules: valid (promtool), on metrics the app really serves,
and the same rules in the helm chart's PrometheusRule."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from core import telemetry
from tests.conftest import free_port
from tests.deploy.manifests import CHART, FULL_VALUES, REPO, _tool, render, run

RULES = REPO / "infra" / "prometheus" / "citystream-alerts.yaml"
RULES_TEST = REPO / "infra" / "prometheus" / "citystream-alerts.test.yaml"
CHART_RULES = CHART / "files" / "citystream-alerts.yaml"
METRIC = re.compile(r"\b(citystream_[a-z_]+)")


def load_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


@pytest.fixture
def served_metrics() -> Iterator[set[str]]:
    """Every metric name a process serves once each instrument has a value."""
    port = free_port()
    telemetry.setup("citystream-rules-test", metrics_port=port, env={})
    try:
        m = telemetry.metrics()
        for counter in (m.events_in, m.events_out, m.dead_letters, m.insert_errors):
            counter.add(1)
        for histogram in (m.processing, m.emit_delay, m.batch_rows, m.insert_duration):
            histogram.record(1)
        telemetry.observe_consumer_lag(lambda: {("g", "t", 0): 1})
        telemetry.observe_freshness(lambda: {"traffic": 0})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        yield set(METRIC.findall(text))
    finally:
        telemetry.shutdown()


def test_rules_are_well_formed_with_severity_summary_and_slo() -> None:
    groups = load_groups()
    assert groups and all(g["name"] and g["rules"] for g in groups)
    alerts = [r for g in groups for r in g["rules"]]
    assert len({r["alert"] for r in alerts}) == len(alerts)
    for rule in alerts:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["labels"]["slo"] in {"freshness", "completeness", "availability"}
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
    assert {r["labels"]["slo"] for r in alerts} == {"freshness", "completeness", "availability"}


def test_rules_use_only_metrics_the_app_serves(served_metrics: set[str]) -> None:
    used = {name for g in load_groups() for r in g["rules"] for name in METRIC.findall(r["expr"])}
    assert used, "no rule on citystream's own metrics"
    assert used <= served_metrics, used - served_metrics


def test_promtool_accepts_the_rules_and_they_fire_as_specified() -> None:
    """check: syntax and PromQL; test: infra/prometheus/citystream-alerts.test.yaml, where
    each alert fires on series that break its objective and not on ones that meet it."""
    promtool = _tool("PROMTOOL", "promtool-*/promtool", "promtool")
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([promtool, "test", "rules", RULES_TEST.name], cwd=RULES.parent)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_the_chart_ships_the_same_rules() -> None:
    assert CHART_RULES.read_text() == RULES.read_text(), (
        f"copy {RULES.relative_to(REPO)} to {CHART_RULES.relative_to(REPO)}"
    )
    [rule] = [d for d in render("-f", str(FULL_VALUES)) if d["kind"] == "PrometheusRule"]
    rendered = {g["name"]: g for g in rule["spec"]["groups"]}
    for group in load_groups():
        assert rendered[group["name"]] == group
