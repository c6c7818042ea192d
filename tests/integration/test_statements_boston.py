"""Signed KPI statements on the real stack: Boston's shipped 311 month replayed through
the service processor and the ClickHouse sink, a statement issued for the Boston
service-level contract and verified by the command a third party runs; then the
statement, one input message and the KPI table are tampered with, and verification
names each."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citystream.cli import city_namespace, main
from citystream.pipeline import Pipeline, wait_settled
from citystream.replay import reconciles
from connectors.sinks.clickhouse.backend import connect
from connectors.sources.city_files import city_replay, publish_reference
from core.city import load_pack
from core.kafka import create_topics
from core.settings import Settings
from families.registry import TOPICS, ensure_topics
from oracles.boston_311 import expected_for_pack
from schemas.registry import SchemaRegistry
from tests.integration.test_simulated_domains import domain_stats
from trust.statements.contract import load_contract
from trust.statements.inputs import Range, read_range
from trust.statements.periods import resolve_period
from trust.statements.signing import sign
from trust.statements.statement import issue, verify

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BOSTON = REPO / "cities" / "boston"
CONTRACT = REPO / "contracts" / "boston-311-service.toml"
BATCHES = "city.service_requests.batches.v1"


def replay_boston_month(settings: Settings) -> None:
    """The shipped month through the service processor into the KPI table; stopped after."""
    ensure_topics(settings)
    pipeline = Pipeline(settings, processors=("service",))
    try:
        pipeline.start()
        pack = load_pack(BOSTON)
        publish_reference(settings, pack)
        source = city_replay(settings, pack, pack.source("requests"))
        source.setup()
        report = source.run()
        assert reconciles(report)
        deadline = time.monotonic() + 300
        while True:
            stats = domain_stats(pipeline, "service")
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= report.published:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.3)
        wait_settled(pipeline, timeout=300)
    finally:
        pipeline.stop()


def pooled_sla(expected: dict[Any, Any], scope: str, entity: str, start: int, end: int) -> float:
    """Σ met / Σ judged from the Boston oracle's windows (oracles/boston_311.py)."""
    rows = [
        v
        for (kpi, s, e, w), v in expected.items()
        if kpi == "service.sla_met_pct" and (s, e) == (scope, entity) and start <= w < end
    ]
    met = sum(round(value * n / 100) for value, n in rows)
    return met * 100 / sum(n for _, n in rows)


def cli_args(settings: Settings) -> list[str]:
    return [
        "--city", str(BOSTON),
        "--topic-prefix", settings.topic_prefix,
        "--bootstrap-servers", settings.kafka_bootstrap_servers,
        "--registry-url", settings.schema_registry_url,
        "--clickhouse-url", settings.resolved_clickhouse_url,
        "--data-dir", str(settings.data_dir),
    ]  # fmt: skip


def test_boston_statement_verifies_and_names_every_tamper(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = city_namespace(settings.model_copy(update={"city": BOSTON}))
    replay_boston_month(settings)

    # issue and verify with the commands a third party is given (docs/statements.md)
    out = tmp_path / "statement.json"
    common = cli_args(settings)
    assert main(["statement", "issue", "--contract", str(CONTRACT), "--period", "2015-01",
                 "--out", str(out), *common]) == 0  # fmt: skip
    assert main(["statement", "public-key", *common]) == 0
    public = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["statement", "verify", str(out), "--public-key", public, *common]) == 0
    printed = capsys.readouterr().out
    assert "VERIFIED" in printed and "NOT VERIFIED" not in printed, printed
    assert out.with_suffix(".md").read_text().startswith("# KPI statement: Boston 311")

    statement = json.loads(out.read_text())
    targets = {t["id"]: t for t in statement["targets"]}
    month = resolve_period("2015-01", "month", "America/New_York")
    oracle = expected_for_pack(BOSTON, window_minutes=settings.window_minutes)
    sla = pooled_sla(oracle, "city", "boston", month.start_ms, month.end_ms)
    assert targets["sla-city"]["value"] == pytest.approx(sla, rel=1e-12)
    windows = [v for (k, s, e, w), v in oracle.items()
               if (k, s, e) == ("service.sla_met_pct", "city", "boston")
               and month.start_ms <= w < month.end_ms]  # fmt: skip
    mean_of_windows = sum(v for v, _ in windows) / len(windows)
    assert abs(mean_of_windows - sla) > 0.01  # the rule matters: not the mean of windows
    assert targets["sla-city"]["rows"]["count"] == len(windows)
    opened = sum(v for (k, s, e, w), (v, _) in oracle.items()
                 if (k, s, e) == ("service.requests_opened", "city", "boston")
                 and month.start_ms <= w < month.end_ms)  # fmt: skip
    assert targets["opened-city"]["value"] == opened > 7000
    assert statement["input"]["ranges"] and statement["signature"]["algorithm"] == "Ed25519"
    tier = targets["sla-city"]["tier"]["name"]
    assert tier == ("full" if sla >= 90 else "reduced" if sla >= 85 else "penalty")

    # the statement is checked with the issuer's key from here on (the library calls)
    key = Ed25519PrivateKey.generate()
    contract = load_contract(CONTRACT)
    signed = issue(settings, contract, "2015-01", "boston", "America/New_York", key)
    assert verify(settings, signed, key.public_key()).ok

    # 1. a value changed after signing (one digit)
    changed = copy.deepcopy(signed)
    text = repr(changed["targets"][0]["value"])
    digit = next(i for i, c in enumerate(text) if c.isdigit() and c != "9")
    changed["targets"][0]["value"] = float(text[:digit] + "9" + text[digit + 1 :])
    problems = verify(settings, changed, key.public_key()).problems
    assert any(p.startswith("signature: does not match") for p in problems), problems
    assert any(p.startswith("target sla-city: value stated") for p in problems), problems

    # 2. the signature changed (one byte), or made with another key
    forged = copy.deepcopy(signed)
    value = forged["signature"]["value"]
    forged["signature"]["value"] = ("B" if value[0] == "A" else "A") + value[1:]
    problems = verify(settings, forged, key.public_key()).problems
    assert problems and all(p.startswith("signature:") for p in problems), problems
    other = Ed25519PrivateKey.generate()
    problems = verify(settings, sign(signed, other), key.public_key()).problems
    assert any("not the trusted key" in p for p in problems), problems

    # 3. one input message: a copy of the input with one close moved past its due time,
    #    published under another prefix, and the statement pointed at it and re-signed
    #    (an issuer holding the key who doctored the input it states)
    doctored, partition = doctor_input(settings, signed)
    problems = verify(settings, sign(doctored, key), key.public_key()).problems
    assert not any(p.startswith("signature") for p in problems), problems
    assert any(
        p.startswith(f"input {settings.topic_prefix}x.{BATCHES}[{partition}]")
        and "SHA-256" in p for p in problems
    ), problems  # fmt: skip
    assert any(p.startswith("target sla-city: KPI table row") for p in problems), problems
    assert (
        f"input: {BATCHES} is read from {settings.topic_prefix}x.{BATCHES}, not the city's "
        f"topic {settings.topic(BATCHES)}" in problems
    )

    # 3b. a partition of the input left out (re-signed): named, and its windows differ
    partial = copy.deepcopy(signed)
    dropped = next(r for r in partial["input"]["ranges"] if r["name"] == BATCHES)
    partial["input"]["ranges"].remove(dropped)
    problems = verify(settings, sign(partial, key), key.public_key()).problems
    every = list(range(settings.partitions))
    covered = f"input: {settings.topic(BATCHES)} has partitions {every}, the statement"
    assert any(p.startswith(covered) for p in problems), problems

    # 4. the KPI table: a revised row for one window of the city's SLA
    revise_one_row(settings, signed)
    problems = verify(settings, signed, key.public_key()).problems
    assert any(p.startswith("target sla-city: the KPI table's") and "Merkle root" in p
               for p in problems), problems  # fmt: skip
    assert any(p.startswith("target sla-city: KPI table row") for p in problems), problems
    assert any(p.startswith("kpi_rows:") for p in problems), problems
    assert not any(p.startswith(("signature", "input")) for p in problems), problems
    assert main(["statement", "verify", str(out), "--public-key", public, *common]) == 1
    assert "NOT VERIFIED" in capsys.readouterr().out


def doctor_input(settings: Settings, statement: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A copy of the statement whose batch topic is a copy with one closed event moved a
    week later; returns it and the partition holding the change."""
    prefix = f"{settings.topic_prefix}x."
    copied = settings.model_copy(update={"topic_prefix": prefix})
    create_topics(copied, [TOPICS[BATCHES]])
    serde = SchemaRegistry(settings.registry_config()).serde(copied.topic(BATCHES), TOPICS[BATCHES])
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True}))
    doctored = copy.deepcopy(statement)
    changed_partition = -1
    for r in doctored["input"]["ranges"]:
        if r["name"] != BATCHES:
            continue
        messages = read_range(settings, Range(r["topic"], r["partition"], r["start"], r["end"]))
        for m in messages:
            value = m.value
            if changed_partition < 0 and value is not None:
                batch = serde.decode(value)
                closes = [i for i, s in enumerate(batch["status"]) if s == "closed"
                          and batch["sla_due_ms"][i] is not None
                          and batch["event_time_ms"][i] <= batch["sla_due_ms"][i]]  # fmt: skip
                if closes:
                    batch["event_time_ms"][closes[0]] = batch["sla_due_ms"][closes[0]] + 60_000
                    value, changed_partition = serde.encode(batch), r["partition"]
            producer.produce(copied.topic(BATCHES), value=value, key=m.key,
                             partition=r["partition"])  # fmt: skip
        r["topic"] = copied.topic(BATCHES)
    assert producer.flush(30) == 0 and changed_partition >= 0
    return doctored, changed_partition


def revise_one_row(settings: Settings, statement: dict[str, Any]) -> None:
    """Insert a revision of one window of the city's SLA with another value."""
    session = connect(settings)
    try:
        start = statement["period"]["start_utc"]
        [(window, end, value, samples, revision)] = session.query(
            "SELECT window_start, window_end, value, samples, revision FROM kpi FINAL "
            "WHERE kpi = 'service.sla_met_pct' AND scope = 'city' AND samples >= 4 "
            f"AND window_start >= parseDateTime64BestEffort('{start}', 3) "
            "ORDER BY window_start LIMIT 1"
        ).result_rows
        session.insert(
            "kpi",
            [
                [
                    "service.sla_met_pct",
                    "city",
                    "boston",
                    window,
                    end,
                    value - 25.0 if value > 50 else value + 25.0,
                    samples,
                    revision + 1,
                    window,
                ]
            ],
            column_names=[
                "kpi",
                "scope",
                "entity_id",
                "window_start",
                "window_end",
                "value",
                "samples",
                "revision",
                "computed_at",
            ],
        )
    finally:
        session.close()
