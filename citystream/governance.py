"""The contract checks and `citystream governance report` (docs/privacy.md, docs/governance.md).

The data contracts (schemas/contracts.py) say what each field is; this module says where
fields go and checks that no personal field reaches a place its contract does not allow:

- a public topic (:attr:`TopicSpec.public`: neither internal plumbing nor restricted);
- a ClickHouse table or view: :data:`CLICKHOUSE_TABLES` says whose fields its columns are,
  and names the columns it derives (aggregates, hashes, trace ids), none personal; the test
  reads the real columns of a migrated database, so a new column must be declared here;
- the public API: schemas/exposure.py declares each path's audience and what it serves.

The report is generated from the same declarations, the topic catalogue, the API's roles,
the ClickHouse grants (infra/clickhouse/users.sql) and the settings' defaults, so that the
published summary cannot say something the code does not do: a test regenerates it and
fails when docs/governance.md differs.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from core.settings import Settings
from schemas.catalog import TopicSpec
from schemas.contracts import (
    PROTECTIONS,
    PURPOSES,
    FieldContract,
    SchemaContract,
    load_contracts,
    topic_retention,
)
from schemas.exposure import NOT_PUBLIC_API, PUBLIC_API

REPO = Path(__file__).resolve().parent.parent
GOVERNANCE_FILE = REPO / "docs" / "governance.md"
USERS_SQL = REPO / "infra" / "clickhouse" / "users.sql"


@dataclass(frozen=True)
class TableContract:
    """A ClickHouse table or view: its columns are fields of ``rows`` (a schema file) by
    name, or one of ``derived`` (name -> what it is; never personal data)."""

    rows: str | None
    purpose: str
    derived: Mapping[str, str] = field(default_factory=dict)


_KPI_KEY = {"district": "the district of a district-scope KPI row (entity_id)"}
CLICKHOUSE_TABLES: dict[str, TableContract] = {
    "kpi": TableContract(
        "kpi_record.avsc",
        "KPI values per window, for the API and analysts",
        {"version": "samples and revision, packed: which duplicate row wins"},
    ),
    "kpi_latest": TableContract("kpi_record.avsc", "view: the winning row per KPI window"),
    "kpi_window_state": TableContract(
        "kpi_record.avsc", "the daily rollup's state: one value per window"
    ),
    "kpi_window_state_mv": TableContract(
        "kpi_record.avsc", "materialised view feeding kpi_window_state"
    ),
    "kpi_series_latest": TableContract(
        "kpi_record.avsc",
        "each KPI series' latest window: NGSI-LD listing and the map",
        {"version": "window start above samples and revision, packed: which row wins"},
    ),
    "kpi_series_latest_mv": TableContract(
        "kpi_record.avsc", "materialised view feeding kpi_series_latest"
    ),
    "kpi_daily": TableContract(
        "kpi_record.avsc",
        "view: KPI values per local day",
        {
            "day": "the city's local day",
            "windows": "windows in the day",
            "sum_value": "aggregate of values",
            "avg_value": "aggregate of values",
            "min_value": "aggregate of values",
            "max_value": "aggregate of values",
        },
    ),
    "kpi_equity": TableContract(
        "kpi_record.avsc",
        "view: each district's KPI beside the city median",
        {
            **_KPI_KEY,
            "city_median": "median over districts",
            "gap": "value minus city median",
            "relative_gap": "gap over city median",
            "districts": "districts in the median",
        },
    ),
    "kpi_trace_links": TableContract(
        "kpi_record.avsc",
        "telemetry: which traces produced a KPI row (30 days)",
        {
            "kpi_trace_id": "trace id",
            "kpi_span_id": "span id",
            "input_trace_ids": "trace ids of the input",
            "insert_trace_id": "trace id of the insert",
            "written_at": "when the link was written",
        },
    ),
    "audit_log": TableContract(
        "audit_record.avsc",
        "the audit log, for auditors' queries (docs/audit.md)",
        {
            "leaf_index": "position in the audit log",
            "at": "at_ms as a time",
            "leaf_hash": "RFC 9162 leaf hash of the record",
        },
    ),
    "schema_migrations": TableContract(
        None,
        "which migrations ran",
        {"version": "migration number", "name": "migration name", "applied_at": "when"},
    ),
}


def _personal_leak(
    where: str, destination: str, contract: SchemaContract, fields: Iterable[FieldContract]
) -> list[str]:
    return [
        f"{where}: personal field {contract.schema_file}:{f.path} ({f.classification}) may not "
        f"reach {destination} (its contract allows {sorted(f.allowed) or 'internal topics only'})"
        for f in fields
        if not f.may_reach(destination)
    ]


def topic_problems(
    contracts: Mapping[str, SchemaContract], topics: Iterable[TopicSpec]
) -> list[str]:
    """Every topic has a contract; a public topic carries no personal field its contract
    keeps off public topics."""
    problems: list[str] = []
    for spec in topics:
        found = contracts.get(Path(spec.schema_file).name)
        if found is None:
            problems.append(f"topic {spec.name}: schema {spec.schema_file!r} has no contract")
        elif spec.public:
            problems += _personal_leak(
                f"public topic {spec.name}", "public-topic", found, found.fields
            )
    return problems


def clickhouse_problems(
    contracts: Mapping[str, SchemaContract],
    columns: Mapping[str, Iterable[str]],
    tables: Mapping[str, TableContract] = CLICKHOUSE_TABLES,
) -> list[str]:
    """``columns`` (table -> column names, as the database has them) against the declared
    :data:`CLICKHOUSE_TABLES`: an undeclared table or column, or a personal field whose
    contract keeps it out of ClickHouse, is a problem."""
    problems: list[str] = []
    for table, names in columns.items():
        declared = tables.get(table)
        if declared is None:
            problems.append(f"ClickHouse table {table}: not declared (citystream/governance.py)")
            continue
        found = contracts.get(declared.rows) if declared.rows else None
        for column in names:
            if column in declared.derived:
                continue
            if found is None:
                problems.append(f"ClickHouse column {table}.{column}: no contract")
                continue
            try:
                contract_field = found.field(column)
            except KeyError:
                problems.append(
                    f"ClickHouse column {table}.{column}: neither a field of "
                    f"{found.schema_file} nor a declared derived column"
                )
                continue
            problems += _personal_leak(
                f"ClickHouse table {table}", "clickhouse", found, [contract_field]
            )
    return problems


def api_problems(
    contracts: Mapping[str, SchemaContract],
    paths: Iterable[str],
    public: Mapping[str, tuple[str, ...]] = PUBLIC_API,
    not_public: Mapping[str, str] = NOT_PUBLIC_API,
) -> list[str]:
    """Every API path (``paths``, from the OpenAPI document) is declared public or not; a
    public one serves no personal field its contract keeps from the public API."""
    problems: list[str] = []
    for path in paths:
        if path not in public and path not in not_public:
            problems.append(f"API path {path}: not declared public or not (schemas/exposure.py)")
    for path, schema_files in public.items():
        for schema_file in schema_files:
            found = contracts.get(schema_file)
            if found is None:
                problems.append(f"API path {path}: serves {schema_file}, which has no contract")
            else:
                problems += _personal_leak(f"public API {path}", "public-api", found, found.fields)
    return problems


def api_paths() -> list[str]:
    """The paths of the read API's OpenAPI document (no context: no I/O)."""
    from fastapi import FastAPI

    from api.app import _include_routers

    app = FastAPI()
    _include_routers(app)
    return sorted(app.openapi()["paths"])


# --- the report ---------------------------------------------------------------------------


def _span(span: timedelta | None) -> str:
    if span is None:
        return "kept (no expiry)"
    if span.total_seconds() % 86_400 == 0:
        days = span.days
        return f"{days} day" if days == 1 else f"{days} days"
    return str(span)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _grants(users_sql: str) -> dict[str, list[str]]:
    """ClickHouse role -> tables it may SELECT, from infra/clickhouse/users.sql."""
    grants: dict[str, list[str]] = {}
    for line in users_sql.splitlines():
        found = re.match(r"GRANT SELECT(?:, INSERT)? ON citystream\.(\w+) TO (\w+);", line.strip())
        if found and "INSERT" not in found.group(0):
            grants.setdefault(found.group(2), []).append(found.group(1))
    for line in users_sql.splitlines():  # role inherits role
        inherits = re.match(r"GRANT (citystream_\w+_role) TO (citystream_\w+_role);", line.strip())
        if inherits:
            grants.setdefault(inherits.group(2), [])[:0] = grants.get(inherits.group(1), [])
    return grants


def _default(name: str) -> object:
    return Settings.model_fields[name].default


def report(
    contracts: Mapping[str, SchemaContract] | None = None,
    topics: Iterable[TopicSpec] | None = None,
    users_sql: str | None = None,
) -> str:
    """The public privacy summary as Markdown (docs/governance.md)."""
    if contracts is None:
        contracts = load_contracts()
    if topics is None:
        from families.registry import TOPICS

        topics = TOPICS.values()
    specs = sorted(topics, key=lambda s: s.name)
    grants = _grants(USERS_SQL.read_text() if users_sql is None else users_sql)
    out: list[str] = [
        "# governance",
        "",
        "<!-- Generated by `citystream governance report --write` from the data contracts "
        "(schemas/avro/*.avsc), the topic catalogue, the ClickHouse tables, the API's paths "
        "and roles and the settings' defaults; do not edit. -->",
        "",
        "What personal data citystream holds, why, where, for how long, who may read it and "
        "how it is protected. Every line comes from the code: the classification, purpose and "
        "retention of each field are in its Avro schema ([Privacy](privacy.md#data-contracts)), "
        "and a test fails when this page and the code disagree.",
        "",
    ]
    out += _collected(contracts)
    out += _where(contracts, specs)
    out += _how_long(contracts, specs)
    out += _who(grants)
    out += _protected(contracts)
    return "\n".join(out).rstrip() + "\n"


def _collected(contracts: Mapping[str, SchemaContract]) -> list[str]:
    out = [
        "## What personal data is collected, and why",
        "",
        "Fields classified *direct* identify a person (or a person's request) on their own; "
        "*indirect* ones could with other data. Every other field of every schema is "
        "classified *none* (not personal).",
        "",
        "| Schema | Field | Class | Purpose | Protected | Kept |",
        "|---|---|---|---|---|---|",
    ]
    for name, found in contracts.items():
        for f in found.personal_fields:
            out.append(
                f"| {found.name} (`{name}`) | `{f.path}` | {f.classification} | "
                f"{f.purpose}: {PURPOSES[f.purpose]} | {f.protection or 'no'} | "
                f"{_span(f.retention)} |"
            )
    total = sum(len(c.fields) for c in contracts.values())
    personal = sum(len(c.personal_fields) for c in contracts.values())
    out += ["", f"{personal} of {total} fields in {len(contracts)} schemas are personal.", ""]
    out += ["Why each kind of data is collected (the schema's purpose):", ""]
    for name, found in contracts.items():
        flag = " (holds personal data)" if found.personal_fields else ""
        out.append(f"- {found.name} (`{name}`){flag}: {found.purpose}.")
    return [*out, ""]


def _where(contracts: Mapping[str, SchemaContract], specs: list[TopicSpec]) -> list[str]:
    out = [
        "## Where it lives",
        "",
        "### Kafka topics",
        "",
        "*Public*: anyone with access to the broker may subscribe (the AsyncAPI document "
        "lists them); *restricted*: personal data, for the city's own services; *internal*: "
        "processor and sink plumbing.",
        "",
        "| Topic | Audience | Schema | Personal fields | Kept |",
        "|---|---|---|---|---|",
    ]
    for spec in specs:
        found = contracts[Path(spec.schema_file).name]
        audience = "public" if spec.public else "internal" if spec.internal else "restricted"
        personal = ", ".join(f"`{f.path}`" for f in found.personal_fields) or "none"
        kept = "latest per key (compacted)" if spec.compacted else _span(topic_retention(spec))
        out.append(f"| `{spec.name}` | {audience} | `{found.schema_file}` | {personal} | {kept} |")
    out += ["", "### ClickHouse tables", "", "| Table | Rows | Personal columns | What for |"]
    out.append("|---|---|---|---|")
    for table, declared in CLICKHOUSE_TABLES.items():
        source = contracts.get(declared.rows) if declared.rows else None
        columns = ", ".join(f"`{f.path}`" for f in source.personal_fields) if source else ""
        rows = f"`{declared.rows}`" if declared.rows else "bookkeeping"
        out.append(f"| `{table}` | {rows} | {columns or 'none'} | {_cell(declared.purpose)} |")
    out += ["", "### The read API", "", "| Path | Who | Serves | Personal fields |"]
    out.append("|---|---|---|---|")
    for path, schema_files in PUBLIC_API.items():
        shown = [
            f"`{f.path}` ({f.protection or 'as is'})"
            for s in schema_files
            for f in contracts[s].personal_fields
        ]
        served = ", ".join(f"`{s}`" for s in schema_files) or "no data"
        out.append(f"| `{path}` | anyone | {served} | {', '.join(shown) or 'none'} |")
    for path, least in NOT_PUBLIC_API.items():
        out.append(f"| `{path}` | {least} and above | | |")
    return [*out, ""]


def _how_long(contracts: Mapping[str, SchemaContract], specs: list[TopicSpec]) -> list[str]:
    kpi = contracts["kpi_record.avsc"]
    return [
        "## How long",
        "",
        "Each schema's contract states how long its data may be kept (the *Kept* columns "
        "above). `citystream init` sets each topic's `retention.ms` from it (a topic may keep "
        "less, never more) and a `segment.ms` of at most a day, so the broker deletes expired "
        "data within a day of its retention; existing topics are aligned on every `init`. "
        "Compacted topics keep the latest value per key.",
        "",
        f"ClickHouse KPI rows: {_span(kpi.storage_retention)}, by the KPI contract; "
        "`clickhouse_kpi_ttl_days` and `clickhouse_rollup_ttl_days` (defaults "
        f"{_default('clickhouse_kpi_ttl_days')} and {_default('clickhouse_rollup_ttl_days')}: "
        "the contract's) may shorten that, never lengthen it; `citystream migrate` sets the "
        "TTLs. Trace links are kept 30 days.",
        "",
    ]


_ROLE_READS = {
    "public": "KPIs, maps, equity, alerts, status, NGSI-LD and the catalogue, small cells "
    "suppressed",
    "analyst": "the same, every value in full",
    "auditor": "the analyst's, plus the audit log and its proofs",
    "operator": "the auditor's, plus operational detail",
}


def _who(grants: Mapping[str, list[str]]) -> list[str]:
    from api.context import Role

    out = [
        "## Who may read it",
        "",
        "API roles (an API key's role; no key is the public), least privilege first:",
        "",
    ]
    for role in Role:
        out.append(f"- **{role.value}**: {_ROLE_READS.get(role.value, 'see docs/api.md')}.")
    out += [
        "",
        "ClickHouse users (infra/clickhouse/users.sql) may read:",
        "",
    ]
    for user_role, tables in sorted(grants.items()):
        out.append(f"- `{user_role}`: {', '.join(f'`{t}`' for t in tables)}.")
    out += [
        "",
        "Restricted and internal topics are read by citystream's own processors, sink and the "
        "rights commands; the per-subject keys and the pseudonym keys are kept apart from "
        "Kafka and ClickHouse and are never logged.",
        "",
    ]
    return out


def _protected(contracts: Mapping[str, SchemaContract]) -> list[str]:
    out = ["## What is pseudonymised, encrypted, coarsened or suppressed", ""]
    for protection, meaning in PROTECTIONS.items():
        fields = [
            f"`{c.schema_file}:{f.path}`"
            for c in contracts.values()
            for f in c.personal_fields
            if f.protection == protection
        ]
        out.append(f"- **{protection}** ({meaning}): {', '.join(fields) or 'none'}.")
    out += [
        "",
        f"Small-cell suppression: a KPI value computed from fewer than "
        f"{_default('api_suppression_k')} contributions (`api_suppression_k`; per KPI: "
        "`api_suppression_k_per_kpi`) is shown to the public as suppressed, never dropped; "
        "analysts and above see it.",
        "",
    ]
    return out


def write_report(path: Path = GOVERNANCE_FILE) -> Path:
    path.write_text(report())
    return path


def add_governance_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    governance = sub.add_parser(
        "governance", help="the public privacy summary, generated from the data contracts"
    )
    what = governance.add_subparsers(dest="governance_command", required=True)
    rep = what.add_parser(
        "report",
        help="what personal data is held, why, where, how long, who reads it, how protected",
    )
    rep.add_argument(
        "--write", action="store_true", help="update docs/governance.md instead of printing"
    )
    what.add_parser(
        "check",
        help="check the contracts against the topics and the API (exit 1 naming each problem)",
    )


def cmd_governance(args: argparse.Namespace) -> int:
    if args.governance_command == "check":
        from families.registry import TOPICS

        contracts = load_contracts()
        problems = topic_problems(contracts, TOPICS.values()) + api_problems(contracts, api_paths())
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(problems)} problem(s) in {len(contracts)} contracts")
        return 1 if problems else 0
    if args.write:
        print(write_report())
    else:
        sys.stdout.write(report())
    return 0
