"""Issue and verify signed KPI statements (``citystream statement issue|verify``).

Issue: the contract's targets over one period, each judged from the KPI table's rows by
its KPI's period rule; the input those rows came from (offset ranges, SHA-256 over the raw
messages); a Merkle root over the rows used; the software version; an Ed25519 signature.

Verify, as a third party with read access to the topics and the KPI table: the signature;
the stated input read again and hashed; the KPI rows recomputed from that input by an
oracle that shares no code with the processors (:mod:`oracles.statements`) and compared
row by row with the table; the rows' Merkle roots; each target's value, verdict and tier
recomputed from the oracle's rows. Every difference is named; none means the statement
holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core import __version__
from core.settings import Settings
from oracles.compare import Key, Value
from oracles.statements import ServiceEvent, service_windows, uptime_windows
from trust.statements.contract import Contract, Target, Tier, compares
from trust.statements.inputs import (
    Decoder,
    Message,
    Range,
    combined,
    current_ranges,
    digest,
    read_range,
)
from trust.statements.periods import Period, resolve_period
from trust.statements.rows import read_rows, rows_root
from trust.statements.rules import RULES, Row, rule_for
from trust.statements.signing import Keyring, sign, signature_problems

FORMAT = "citystream-kpi-statement/1"
TOLERANCE = 1e-9  # relative: float sums in another order
Inputs = dict[str, list[tuple[Range, list[Message]]]]  # catalogue name -> ranges read


# --- issue ---------------------------------------------------------------------------


def issue(
    settings: Settings,
    contract: Contract,
    period_label: str,
    city: str,
    timezone: str,
    key: Ed25519PrivateKey,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The signed statement of ``contract`` over ``period_label``; ValueError when the
    contract is for another city or the period is not one of its kind."""
    if contract.city != city:
        raise ValueError(
            f"{contract.file}: contract is for city {contract.city!r}, the settings' city is "
            f"{city!r} (--city cities/{contract.city})"
        )
    period = resolve_period(period_label, contract.period, timezone)
    inputs = _stated_inputs(settings, contract)
    targets, used = [], set()
    for target in contract.targets:
        rule = rule_for(target.kpi, target.scope)
        scope, entity = rule.selects(target.scope, target.entity)
        rows = read_rows(settings, target.kpi, scope, entity, period.start_ms, period.end_ms)
        used.update(rows)
        targets.append(_judged(target, rows))
    document = {
        "format": FORMAT,
        "contract": _contract_part(contract),
        "period": period.as_dict(),
        "targets": targets,
        "input": inputs,
        "kpi_rows": {"count": len(used), "merkle_root": rows_root(sorted(used))},
        "processing": {
            "window_minutes": settings.window_minutes,
            "grace_minutes": settings.grace_minutes,
        },
        "software": {"name": "citystream", "version": __version__},
        "issued_at": (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
    }
    return sign(document, key)


def _contract_part(contract: Contract) -> dict[str, Any]:
    return {
        "id": contract.id,
        "title": contract.title,
        "city": contract.city,
        "period": contract.period,
        "buyer": contract.buyer,
        "supplier": contract.supplier,
        "file": contract.file,
        "sha256": contract.sha256,
    }


def _judged(target: Target, rows: Sequence[Row]) -> dict[str, Any]:
    rule = RULES[target.kpi]
    value = rule.aggregate(rows)
    tier = target.tier(value)
    return {
        "id": target.id,
        "description": target.description,
        "kpi": target.kpi,
        "scope": target.scope,
        "entity": target.entity,
        "comparison": target.comparison,
        "threshold": target.threshold,
        "aggregation": {"rule": rule.name, "text": rule.text},
        "tiers": [_tier_part(t) for t in target.tiers],
        "value": value,
        "met": target.met(value),
        "tier": None if tier is None else {"name": tier.name, "payment": tier.payment},
        "rows": {"count": len(rows), "merkle_root": rows_root(rows)},
    }


def _tier_part(tier: Tier) -> dict[str, Any]:
    return {
        "name": tier.name,
        "payment": tier.payment,
        "comparison": tier.comparison,
        "threshold": tier.threshold,
    }


def _stated_inputs(settings: Settings, contract: Contract) -> dict[str, Any]:
    names: list[str] = []
    for target in contract.targets:
        names += [n for n in RULES[target.kpi].inputs if n not in names]
    ranges: list[dict[str, Any]] = []
    for name in names:
        for r in current_ranges(settings, settings.topic(name)):
            messages = read_range(settings, r)
            ranges.append(
                {
                    "name": name,
                    "topic": r.topic,
                    "partition": r.partition,
                    "start": r.start,
                    "end": r.end,
                    "messages": len(messages),
                    "sha256": digest(messages),
                }
            )
    return {"ranges": ranges, "sha256": combined([str(r["sha256"]) for r in ranges])}


# --- verify --------------------------------------------------------------------------


@dataclass
class Verdict:
    """What verification found: ``problems`` (each names what differs) and what held."""

    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    settings: Settings,
    statement: dict[str, Any],
    trusted: Ed25519PublicKey | Keyring | None,
    progress: Callable[[str], None] = lambda _: None,
) -> Verdict:
    """Every check of the module docstring; ``settings`` only say how to reach Kafka, the
    registry and the KPI table (the topics are the statement's own). ``trusted``: the
    issuer's key, or a keyring holding every key the issuer has used (rotation)."""
    verdict = Verdict()
    progress("checking the signature")
    problems = signature_problems(statement, trusted)
    verdict.problems += problems
    if not problems:
        kid = statement["signature"].get("key_id")
        who = f"the trusted key {kid}" if trusted else "the key it carries (no trusted key given)"
        verdict.checked.append(f"signature: valid, by {who}")
    try:
        period = _period(statement)
        targets = list(statement["targets"])
        stated_ranges = list(statement["input"]["ranges"])
    except (KeyError, TypeError, ValueError) as exc:
        verdict.problems.append(f"statement: not readable ({exc!r})")
        return verdict
    progress(f"re-reading {len(stated_ranges)} input ranges")
    _check_coverage(settings, stated_ranges, {t.get("kpi") for t in targets}, verdict)
    read = _check_input(settings, statement, stated_ranges, verdict)
    progress("recomputing the KPI rows from the input (independent oracle)")
    expected, undecodable = _oracle_rows(settings, statement, read, {t["kpi"] for t in targets})
    verdict.problems += [f"input {u}" for u in undecodable[:5]]
    progress("reading the KPI table")
    used: set[Row] = set()
    for i, target in enumerate(targets):
        try:
            used |= _check_target(settings, target, period, expected, verdict)
        except (KeyError, TypeError, ValueError) as exc:
            verdict.problems.append(f"targets[{i}]: not readable ({exc!r})")
    stated = statement.get("kpi_rows", {})
    if rows_root(sorted(used)) != stated.get("merkle_root") or len(used) != stated.get("count"):
        verdict.problems.append(
            f"kpi_rows: the KPI table's {len(used)} rows have Merkle root "
            f"{rows_root(sorted(used))}, the statement says {stated.get('count')} rows, "
            f"root {stated.get('merkle_root')}"
        )
    return verdict


def _period(statement: dict[str, Any]) -> Period:
    p = statement["period"]
    period = resolve_period(p["label"], p["kind"], p["timezone"])
    if period.as_dict() != p:
        raise ValueError(f"period {p} is not what {p['label']} resolves to")
    return period


def _check_coverage(
    settings: Settings, stated: list[dict[str, Any]], kpis: set[Any], verdict: Verdict
) -> None:
    """The stated ranges are the city's own topics (the verifier's settings name them), every
    partition of each, from the earliest offset the topic still holds: a statement pointed at
    a copy, or leaving out a partition or the start of one, is named."""
    names: list[str] = []
    for kpi in kpis:
        names += [n for n in (RULES[kpi].inputs if kpi in RULES else ()) if n not in names]
    for name in names:
        topic = settings.topic(name)
        ranges = [s for s in stated if s.get("name") == name]
        if not ranges:
            verdict.problems.append(f"input: {name} ({topic}) is not stated")
            continue
        for s in ranges:
            if s.get("topic") != topic:
                verdict.problems.append(
                    f"input: {name} is read from {s.get('topic')}, not the city's topic {topic}"
                )
        try:
            now = {r.partition: r for r in current_ranges(settings, topic)}
        except (RuntimeError, KeyError) as exc:
            verdict.problems.append(f"input: {topic} cannot be read ({exc})")
            continue
        covered = {int(s["partition"]) for s in ranges}
        if covered != set(now):
            verdict.problems.append(
                f"input: {topic} has partitions {sorted(now)}, the statement covers "
                f"{sorted(covered)}"
            )
        for s in ranges:
            held = now.get(int(s["partition"]))
            if held is not None and int(s["start"]) > held.start:
                verdict.problems.append(
                    f"input {topic}[{s['partition']}]: the range starts at offset {s['start']}, "
                    f"the topic holds messages from offset {held.start}"
                )


def _check_input(
    settings: Settings, statement: dict[str, Any], stated: list[dict[str, Any]], verdict: Verdict
) -> Inputs:
    """Each stated range read again and hashed; the messages by catalogue name."""
    out: Inputs = {}
    digests = []
    for s in stated:
        r = Range(str(s["topic"]), int(s["partition"]), int(s["start"]), int(s["end"]))
        try:
            messages = read_range(settings, r)
        except RuntimeError as exc:
            verdict.problems.append(f"input {exc}")
            messages = []
        found = digest(messages)
        digests.append(found)
        if found != s["sha256"] or len(messages) != s["messages"]:
            verdict.problems.append(
                f"input {r.label()}: SHA-256 of the {len(messages)} messages read is {found}, "
                f"the statement says {s['messages']} messages, {s['sha256']}"
            )
        out.setdefault(str(s["name"]), []).append((r, messages))
    if combined(digests) != statement["input"].get("sha256"):
        verdict.problems.append("input: the combined SHA-256 of the ranges differs")
    elif not any(p.startswith("input") for p in verdict.problems):
        total = sum(int(s["messages"]) for s in stated)
        verdict.checked.append(f"input: {len(stated)} ranges, {total:,} messages, SHA-256 equal")
    return out


def _oracle_rows(
    settings: Settings,
    statement: dict[str, Any],
    read: Inputs,
    kpis: Iterable[str],
) -> tuple[dict[Key, Value], list[str]]:
    families = {RULES[k].family for k in kpis if k in RULES}
    decoder = Decoder(settings)
    city = str(statement["contract"]["city"])
    processing = statement["processing"]
    expected: dict[Key, Value] = {}
    if "service" in families:
        expected.update(_service_oracle(decoder, read, city, processing))
    if "devices" in families:
        expected.update(_devices_oracle(decoder, read, city, processing))
    return expected, decoder.failures


def _records(
    decoder: Decoder, read: Inputs, name: str
) -> Iterable[tuple[int, Message, dict[str, Any] | None]]:
    """(partition, message, decoded value) of one input, partition by partition."""
    for r, messages in sorted(read.get(name, []), key=lambda rm: rm[0].partition):
        for m in messages:
            yield (
                r.partition,
                m,
                decoder.decode(r.topic, m.value, f"{r.topic}[{r.partition}]@{m.offset}"),
            )


V = TypeVar("V")


def _latest_by_key(
    decoder: Decoder,
    read: Inputs,
    topic: str,
    key_field: str,
    value_of: Callable[[dict[str, Any]], V],
) -> dict[str, V]:
    """A compacted reference topic as it stands after the stated input: the latest record
    per key, a tombstone (a message with no value) removing its key."""
    latest: dict[str, V] = {}
    for _, m, record in _records(decoder, read, topic):
        if record is None:
            latest.pop((m.key or b"").decode(), None)
        else:
            latest[str(record[key_field])] = value_of(record)
    return latest


def _service_oracle(
    decoder: Decoder,
    read: Inputs,
    city: str,
    processing: dict[str, Any],
) -> dict[Key, Value]:
    sla = _latest_by_key(
        decoder, read, "city.service_categories.v1", "category", lambda r: float(r["sla_minutes"])
    )
    partitions: dict[int, list[ServiceEvent]] = {}
    for partition, _, batch in _records(decoder, read, "city.service_requests.batches.v1"):
        if batch is None:
            continue
        due = batch.get("sla_due_ms") or []
        events = partitions.setdefault(partition, [])
        for i in range(len(batch["request_id"])):
            events.append(
                ServiceEvent(
                    batch["request_id"][i],
                    batch["status"][i],
                    batch["category"][i],
                    batch["district"][i],
                    int(batch["event_time_ms"][i]),
                    int(batch["opened_at_ms"][i]),
                    due[i] if i < len(due) else None,
                )
            )
    return service_windows(
        [partitions[p] for p in sorted(partitions)],
        sla,
        int(processing["window_minutes"]) * 60_000,
        int(processing["grace_minutes"]) * 60_000,
        city,
    )


def _devices_oracle(
    decoder: Decoder,
    read: Inputs,
    city: str,
    processing: dict[str, Any],
) -> dict[Key, Value]:
    districts = _latest_by_key(
        decoder, read, "city.road_segments.v1", "segment_id", lambda r: str(r["district"])
    )
    readings: dict[str, list[tuple[str, int]]] = {}
    partition_count = 1
    for kind, name, column in (("traffic", "city.traffic.batches.v1", "segment_id"),
                               ("air", "city.air.batches.v1", "sensor_id")):  # fmt: skip
        rows = readings.setdefault(kind, [])
        partition_count = max(partition_count, len(read.get(name, [])))
        for _, _, batch in _records(decoder, read, name):
            if batch is not None:
                rows += zip(batch[column], map(int, batch["event_time_ms"]), strict=True)
    return uptime_windows(
        readings, districts, partition_count, int(processing["grace_minutes"]), city
    )


def _check_target(
    settings: Settings,
    target: dict[str, Any],
    period: Period,
    expected: dict[Key, Value],
    verdict: Verdict,
) -> set[Row]:
    name = f"target {target['id']}"
    rule = rule_for(target["kpi"], target["scope"])
    scope, entity = rule.selects(target["scope"], target["entity"])
    rows = read_rows(settings, target["kpi"], scope, entity, period.start_ms, period.end_ms)
    if rows_root(rows) != target["rows"]["merkle_root"] or len(rows) != target["rows"]["count"]:
        verdict.problems.append(
            f"{name}: the KPI table's {len(rows)} rows have Merkle root {rows_root(rows)}, "
            f"the statement says {target['rows']['count']} rows, root "
            f"{target['rows']['merkle_root']}"
        )
    oracle = sorted(
        (k[0], k[1], k[2], k[3], v[0], v[1])
        for k, v in expected.items()
        if k[0] == target["kpi"] and k[1] == scope and (entity is None or k[2] == entity)
        and period.start_ms <= k[3] < period.end_ms
    )  # fmt: skip
    _compare_rows(name, rows, oracle, verdict)
    _check_value(name, target, rule.aggregate(oracle), verdict)
    return set(rows)


def _compare_rows(name: str, table: list[Row], oracle: list[Row], verdict: Verdict) -> None:
    stored = {r[:4]: r[4:] for r in table}
    want = {r[:4]: r[4:] for r in oracle}
    differences = []
    for key in sorted(want.keys() | stored.keys()):
        got, exp = stored.get(key), want.get(key)
        if got is None or exp is None or got[1] != exp[1] or not _close(got[0], exp[0]):
            differences.append(
                f"{name}: KPI table row {_row_name(key)} is {_describe(got)}, the oracle "
                f"recomputes {_describe(exp)} from the input"
            )
    verdict.problems += differences[:5]
    if len(differences) > 5:
        verdict.problems.append(f"{name}: {len(differences) - 5} more rows differ")
    if not differences:
        verdict.checked.append(f"{name}: {len(table):,} KPI rows equal to the oracle's")


def _row_name(key: tuple[Any, ...]) -> str:
    start = datetime.fromtimestamp(key[3] / 1000, UTC).isoformat().replace("+00:00", "Z")
    return f"({key[0]}, {key[1]}, {key[2]}, window {start})"


def _describe(value: tuple[Any, ...] | None) -> str:
    return "absent" if value is None else f"{value[0]!r} ({value[1]} samples)"


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


def _check_value(name: str, target: dict[str, Any], value: float | None, verdict: Verdict) -> None:
    stated = target.get("value")
    if (stated is None) != (value is None) or (
        stated is not None and value is not None and not _close(float(stated), value)
    ):
        verdict.problems.append(
            f"{name}: value stated {stated!r}, recomputed from the input {value!r}"
        )
        return
    met = value is not None and compares(value, target["comparison"], float(target["threshold"]))
    if bool(target.get("met")) != met:
        verdict.problems.append(f"{name}: stated met={target.get('met')}, recomputed met={met}")
    tier = _tier_of(target, value)
    if target.get("tier") != tier:
        verdict.problems.append(f"{name}: stated tier {target.get('tier')}, recomputed {tier}")
    if not any(p.startswith(name + ":") for p in verdict.problems):
        verdict.checked.append(
            f"{name}: value {value!r} recomputed, {'met' if met else 'missed'}, "
            f"tier {tier['name'] if tier else 'none'}"
        )


def _tier_of(target: dict[str, Any], value: float | None) -> dict[str, str] | None:
    for t in target.get("tiers", []):
        tier = Tier(t["name"], t["payment"], t.get("comparison"), t.get("threshold"))
        if (value is None and tier.comparison is None) or (
            value is not None and tier.applies(value)
        ):
            return {"name": tier.name, "payment": tier.payment}
    return None
