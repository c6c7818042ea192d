"""A statement rendered for people: Markdown, from the signed JSON (which alone counts)."""

from __future__ import annotations

from typing import Any


def _value(value: float | None) -> str:
    return "no data" if value is None else f"{value:,.4f}".rstrip("0").rstrip(".")


def markdown(statement: dict[str, Any]) -> str:
    c, p = statement["contract"], statement["period"]
    lines = [
        f"# KPI statement: {c['title']}",
        "",
        f"Contract `{c['id']}` ({c['file']}, SHA-256 `{c['sha256']}`), city **{c['city']}**"
        + (f", buyer {c['buyer']}" if c.get("buyer") else "")
        + (f", supplier {c['supplier']}" if c.get("supplier") else "")
        + ".",
        "",
        f"Period **{p['label']}** ({p['kind']}, {p['timezone']}): {p['start']} to {p['end']}"
        f" (UTC {p['start_utc']} to {p['end_utc']}).",
        "",
        "| target | KPI | scope / entity | value | target | verdict | tier | rule | rows |",
        "|---|---|---|---:|---|---|---|---|---:|",
    ]
    for t in statement["targets"]:
        tier = f"{t['tier']['name']}: {t['tier']['payment']}" if t["tier"] else "none"
        lines.append(
            f"| {t['id']} | `{t['kpi']}` | {t['scope']} / {t['entity']} | {_value(t['value'])}"
            f" | {t['comparison']} {t['threshold']:g} | {'met' if t['met'] else '**missed**'}"
            f" | {tier} | {t['aggregation']['rule']} | {t['rows']['count']:,} |"
        )
    lines += ["", "## How each value is computed", ""]
    lines += [f"- **{t['id']}** ({t['aggregation']['rule']}): {t['aggregation']['text']}."
              for t in statement["targets"]]  # fmt: skip
    lines += [
        "",
        "## Input",
        "",
        f"{len(statement['input']['ranges'])} offset ranges, combined SHA-256 "
        f"`{statement['input']['sha256']}`.",
        "",
        "| topic | partition | offsets | messages | SHA-256 |",
        "|---|---:|---|---:|---|",
    ]
    lines += [f"| {r['topic']} | {r['partition']} | {r['start']}..{r['end']} | "
              f"{r['messages']:,} | `{r['sha256'][:16]}…` |"
              for r in statement["input"]["ranges"]]  # fmt: skip
    sig, rows, sw = statement["signature"], statement["kpi_rows"], statement["software"]
    lines += [
        "",
        f"KPI rows used: {rows['count']:,}, Merkle root (RFC 9162) `{rows['merkle_root']}`.",
        "",
        f"Issued {statement['issued_at']} by {sw['name']} {sw['version']}; signed "
        f"{sig['algorithm']}, key id `{sig['key_id']}`.",
        "",
        "Check it: `citystream statement verify <this statement's JSON> --public-key <the "
        "issuer's public key>` (docs/statements.md). This rendering is not signed; the JSON is.",
        "",
    ]
    return "\n".join(lines)
