"""`make bench`, stage ``statements``: the time to verify a month of KPI statements.

Boston's shipped month (January 2015, 311 requests) goes through the service processor
and the ClickHouse sink into a namespace of its own; the Boston service-level contract's
statement is issued once and then verified as a third party would, timing each part:
re-reading and hashing the stated input, recomputing every KPI window with the
independent oracle, reading the KPI table and its Merkle roots. Nothing is asserted here;
the tests check the verdicts.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citystream.pipeline import Pipeline, wait_settled
from connectors.sources.city_files import city_replay, publish_reference
from core.city import load_pack
from core.settings import Settings
from families.registry import ensure_topics, register_schemas

REPO = Path(__file__).resolve().parent.parent
BOSTON = REPO / "cities" / "boston"
CONTRACT = REPO / "contracts" / "boston-311-service.toml"
PERIOD = "2015-01"


def boston_month(settings: Settings) -> None:
    """The shipped month through the service processor into the KPI table."""
    ensure_topics(settings)
    register_schemas(settings)
    pipeline = Pipeline(settings, processors=("service",))
    try:
        pipeline.start("processor", "sink")
        pack = load_pack(BOSTON)
        publish_reference(settings, pack)
        source = city_replay(settings, pack, pack.source("requests"))
        source.setup()
        source.run()
        wait_settled(pipeline, timeout=600)
    finally:
        pipeline.stop()


def run_statements_bench(settings: Settings, rounds: int = 3) -> dict[str, str]:
    """Issue Boston's month once, verify it ``rounds`` times; the figures by name.
    ``settings``: a fresh namespace (topic prefix and chDB directory of its own)."""
    from trust.statements import statement as st
    from trust.statements.contract import load_contract

    s = settings.model_copy(update={"city": BOSTON})
    print("== statements: a month of Boston 311 through the service processor and the sink")
    boston_month(s)
    key = Ed25519PrivateKey.generate()
    started = time.perf_counter()
    issued = st.issue(s, load_contract(CONTRACT), PERIOD, "boston", "America/New_York", key)
    issue_s = time.perf_counter() - started
    messages = sum(r["messages"] for r in issued["input"]["ranges"])
    rows = issued["kpi_rows"]["count"]
    timings: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        verdict = st.verify(s, issued, key.public_key())
        timings.append(time.perf_counter() - started)
    best = min(timings)
    state = "VERIFIED" if verdict.ok else f"NOT VERIFIED: {verdict.problems[:2]}"
    return {
        "statement issue (a month, Boston)": f"{issue_s:>10.2f} s  ({messages:,} input messages "
        f"(batches of events), {rows:,} KPI rows, {len(issued['targets'])} targets)",
        "statement verify (a month, Boston)": f"{best:>10.2f} s  best of {rounds} "
        f"({rows / best:,.0f} KPI rows checked/s; {state})",
    }
