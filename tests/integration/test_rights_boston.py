"""Resident rights and minimisation on the real stack, on Boston's shipped 311 month (#16).

One replay of the month (plus one unusable row) through the service processor and the
ClickHouse sink, with one case opted out beforehand (`citystream rights opt-out`):

- the replay drops the opted-out case as ``opted_out`` and reconciles; the KPIs match the
  independent oracle run on the file without that case, row for row;
- every message of every topic under the test's prefix (dead letters and the processor's
  internal topics included) and every ClickHouse table holds no raw case id, address,
  free text, photo URL or exact coordinate;
- `citystream rights access` exports a case's events (read back to its id), where they sit
  in the processor's input, its dead letters and the KPI rows it counted in;
- `citystream rights erase` destroys its key: its events no longer read back to the case,
  another case's still do, and the KPIs still match the oracle;
- every request is recorded, without the raw case id.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from citystream.cli import main
from citystream.pipeline import Pipeline, wait_settled
from citystream.query import run_query
from citystream.replay import reconciles
from citystream.verify import read_topic as read_records
from citystream.verify import stored_kpis
from connectors.sources.city_files import city_replay, publish_reference
from core.city import load_pack
from core.kafka import read_topic
from core.privacy.edge import pseudonymiser, subject_key_store
from core.privacy.subject_keys import KeyDestroyed
from core.settings import Settings
from families.registry import ensure_topics
from families.service.domain import OPENED, P50
from oracles.boston_311 import expected_for_pack
from oracles.compare import compare
from tests.integration.test_simulated_domains import domain_stats

pytestmark = pytest.mark.integration
BOSTON = Path(__file__).resolve().parents[2] / "cities" / "boston"
MONTH = BOSTON / "boston_311_2015-01.csv.gz"
BAD_CASE = "101009999999"  # an appended row with an impossible open time: a dead letter

# What must never be in a topic or a table (the month's values match these shapes).
FORBIDDEN = {
    "address": re.compile(rb"  Boston  MA  |\b\d+[A-Z]? [A-Z][A-Za-z]+ (St|Ave|Rd|Pl|Sq|Ter)\b"),
    "intersection": re.compile(rb"INTERSECTION", re.IGNORECASE),
    "free text": re.compile(rb"Case (Closed|Resolved|Noted|Invalid)|Duplicate of Existing"),
    "photo URL": re.compile(rb"https?://"),
    # The file's coordinates have 4 decimals; no KPI value has exactly 4 (times are whole
    # seconds, so minutes have at most 2; percentages of a window's few requests, fewer).
    "coordinate": re.compile(rb"(?<![\d.])-?(4[12]|7[01])\.\d{4}(?![\d])"),
}
PERSONAL_COLUMN = re.compile(r"lat|lon|address|location|photo|case|reporter|description")
CASE_WINDOW = re.compile(rb"(?=(\d{12}))")


def month_rows() -> tuple[list[str], list[list[str]]]:
    with gzip.open(MONTH, "rt", newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return path


def cli(settings: Settings, *args: str) -> int:
    return main(
        [*args, "--city", str(BOSTON), "--topic-prefix", settings.topic_prefix,
         "--data-dir", str(settings.data_dir)]
    )  # fmt: skip


def leaks(data: bytes, case_ids: set[bytes]) -> list[str]:
    """What of the forbidden kinds ``data`` holds (empty: nothing)."""
    found = [kind for kind, pattern in FORBIDDEN.items() if pattern.search(data)]
    if any(m.group(1) in case_ids for m in CASE_WINDOW.finditer(data)):
        found.append("raw case id")
    return found


def scan_topics(settings: Settings, case_ids: set[bytes]) -> dict[str, int]:
    """Every message of every topic under the prefix: messages read per topic; fails on a leak."""
    admin = AdminClient(settings.kafka_config())
    topics = sorted(
        t for t in admin.list_topics(timeout=10).topics if t.startswith(settings.topic_prefix)
    )
    read: dict[str, int] = {}
    for topic in topics:
        read[topic] = 0
        for value in read_topic(settings, topic, timeout=60):
            read[topic] += 1
            found = leaks(value, case_ids)
            assert not found, f"{topic}: {found} in {value[:300]!r}"
    return read


def scan_tables(settings: Settings, case_ids: set[bytes]) -> dict[str, int]:
    """Every table of the database: rows per table; fails on a personal column or a leak.

    Aggregate-function states (the daily rollup's argMax of KPI values) are numbers whose
    serialised form a query cannot return: their columns are named and skipped.
    """
    _, columns = run_query(
        settings,
        "SELECT c.table, c.name, c.type FROM system.columns AS c JOIN system.tables AS t "
        "ON c.database = t.database AND c.table = t.name WHERE c.database = currentDatabase() "
        "AND t.engine NOT LIKE '%View%'",
    )
    by_table: dict[str, list[str]] = {}
    for table, name, kind in columns:
        assert not PERSONAL_COLUMN.search(name.lower()), (table, name)
        if not kind.startswith("AggregateFunction"):
            by_table.setdefault(table, []).append(f"`{name}`")
    rows_per_table = {}
    for table, names in sorted(by_table.items()):
        _, rows = run_query(settings, f"SELECT {', '.join(names)} FROM {table}")
        rows_per_table[table] = len(rows)
        text = "\n".join("\t".join(map(str, r)) for r in rows).encode()
        found = leaks(text, case_ids)
        assert not found, f"table {table}: {found}"
    return rows_per_table


def test_opt_out_access_erase_and_minimisation_on_the_boston_month(
    settings: Settings, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"city": BOSTON})
    header, rows = month_rows()
    col = {name: i for i, name in enumerate(header)}
    closed = [r for r in rows if r[col["CLOSED_DT"]]]
    opted, erased, kept = (r[col["CASE_ENQUIRY_ID"]] for r in closed[:3])
    bad = list(rows[0])
    bad[col["CASE_ENQUIRY_ID"]], bad[col["OPEN_DT"]], bad[col["CLOSED_DT"]] = (
        BAD_CASE, "13/45/2015 09:00:00 AM", "")  # fmt: skip
    replayed = write_csv(tmp_path / "replayed.csv", header, [*rows, bad])
    without_opted = write_csv(
        tmp_path / "oracle.csv", header, [r for r in rows if r[col["CASE_ENQUIRY_ID"]] != opted]
    )
    case_ids = {r[col["CASE_ENQUIRY_ID"]].encode() for r in rows} | {BAD_CASE.encode()}
    assert len(case_ids) == len(rows) + 1

    ensure_topics(settings)
    assert cli(settings, "rights", "opt-out", "--case", opted) == 0
    pipeline = Pipeline(settings, processors=("service",))
    try:
        pipeline.start()
        pack = load_pack(BOSTON)
        publish_reference(settings, pack)
        source = city_replay(settings, pack, pack.source("requests"), replayed)
        source.setup()
        report = source.run()
        assert report.opted_out == 2  # its opened and closed events: dropped, kept nowhere
        assert dict(report.dead_lettered) == {"invalid_timestamp": 1}
        assert reconciles(report) and report.published == 7528 + 6078 - 2
        deadline = time.monotonic() + 300
        while True:
            stats = domain_stats(pipeline, "service")
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= report.published:
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.3)
        wait_settled(pipeline, timeout=300)

        expected = expected_for_pack(BOSTON, without_opted, settings.window_minutes)
        result = compare(expected, stored_kpis(settings, "service."))
        assert result.ok and result.matched == len(expected), result.summary()

        read = scan_topics(settings, case_ids)
        assert read[settings.topic("city.service_requests.v1")] == report.published
        assert read[settings.topic("city.dlq.v1")] >= 1
        assert read[settings.topic("city.privacy.optouts.v1")] == 1
        tables = scan_tables(settings, case_ids)
        assert tables["kpi"] > 0

        pseudonyms = pseudonymiser(settings)
        opted_p = pseudonyms.pseudonym("request_id", opted).encode()
        registers = {settings.topic(t) for t in ("city.privacy.optouts.v1", "city.audit.v1")}
        for topic in read:  # the opt-out and its audit record name the pseudonym; no event
            if topic not in registers:
                assert not any(opted_p in v for v in read_topic(settings, topic)), topic

        # access: the case's events read back to it, its batches, its KPI rows
        out = tmp_path / "access.json"
        assert cli(settings, "rights", "access", "--case", erased, "--out", str(out)) == 0
        export = json.loads(out.read_text())
        assert [e["record"]["status"] for e in export["events"]] == ["opened", "closed"]
        assert {e["identity"] for e in export["events"]} == {erased}
        assert export["key"] == "present" and export["opted_out"] is False
        assert len(export["batches"]) == 2 and export["dead_letters"] == []
        stored = stored_kpis(settings, "service.")
        windows = {
            (a["kpi"], a["scope"], a["entity_id"], a["window_start"]) for a in export["aggregates"]
        }
        opened_rows = [w for w in windows if w[0] == OPENED]
        assert len(opened_rows) == 3 and any(w[0] == P50 for w in windows)
        for kpi, scope, entity, start in windows:
            if kpi in (OPENED, P50):
                assert (kpi, scope, entity, _ms(start)) in stored, (kpi, scope, entity, start)

        bad_export = tmp_path / "bad.json"
        assert cli(settings, "rights", "access", "--case", BAD_CASE, "--out", str(bad_export)) == 0
        letters = json.loads(bad_export.read_text())["dead_letters"]
        assert [d["letter"]["reason"] for d in letters] == ["invalid_timestamp"]
        assert BAD_CASE not in json.dumps(letters) and "Boston  MA" not in json.dumps(letters)

        opted_export = tmp_path / "opted.json"
        assert cli(settings, "rights", "access", "--case", opted, "--out", str(opted_export)) == 0
        held = json.loads(opted_export.read_text())
        assert held["opted_out"] is True and held["events"] == held["dead_letters"] == []

        # erase: the key is destroyed, the events stay but no longer read back to the case
        tokens = [(e["record"]["request_id"], e["record"]["subject"]) for e in export["events"]]
        assert cli(settings, "rights", "erase", "--case", erased) == 0
        store = subject_key_store(settings)
        for subject, token in tokens:
            with pytest.raises(KeyDestroyed):
                store.decrypt(subject, token)
        after = tmp_path / "after.json"
        assert cli(settings, "rights", "access", "--case", erased, "--out", str(after)) == 0
        erased_export = json.loads(after.read_text())
        assert len(erased_export["events"]) == 2
        assert {e["identity"] for e in erased_export["events"]} == {None}
        assert erased_export["key"] == "absent or erased"
        assert cli(settings, "rights", "access", "--case", kept, "--out", str(out)) == 0
        assert {e["identity"] for e in json.loads(out.read_text())["events"]} == {kept}

        result = compare(expected, stored_kpis(settings, "service."))
        assert result.ok and result.matched == len(expected), result.summary()
    finally:
        pipeline.stop()

    audit = [r for r in read_records(settings, "city.audit.v1") if r["action"] == "rights"]
    requests = [json.loads(r["parameters"])["request"] for r in audit]
    assert {r["endpoint"] for r in audit} == {f"citystream rights {k}" for k in requests}
    log = json.dumps(audit, default=str)
    assert requests == ["opt-out", "access", "access", "access", "erase", "access", "access"]
    assert not any(case in log for case in (opted, erased, kept, BAD_CASE))


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp() * 1000)
