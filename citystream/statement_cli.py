"""`citystream statement issue|verify|public-key`: signed KPI statements for contracts.

The work is in ``trust/statements/``; this module reads the settings (the one place they
are read), the signing or trusted key, and the files, and prints what it found.
docs/statements.md walks through the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.settings import Settings

DEFAULT_KEY = Path("keys") / "statements-ed25519.pem"  # under data_dir


def add_statement_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    statement = sub.add_parser(
        "statement", help="signed, independently verifiable KPI statements for contracts"
    )
    what = statement.add_subparsers(dest="statement_command", required=True)
    issue = what.add_parser("issue", help="judge a contract over a period and sign the result")
    issue.add_argument("--contract", type=Path, required=True, help="contracts/<name>.toml")
    issue.add_argument("--period", required=True, help="a month (2015-01) or ISO week (2014-W31)")
    issue.add_argument(
        "--out", type=Path, help="the statement's JSON (default: <contract id>-<period>.json); "
        "its Markdown rendering is written beside it (.md)"
    )  # fmt: skip
    add_common(issue)
    verify = what.add_parser(
        "verify", help="check a statement against the topics and the KPI table (exit 1: not)"
    )
    verify.add_argument("file", type=Path, help="the statement's JSON")
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="KEY",
        help="a public key of the issuer to trust (PEM, base64 or hex), or a keyring file "
        "(one key a line, or PEM blocks) or directory of them; repeat for several (after a "
        "key rotation); the statement's key id picks the key. Default: the "
        "statement_public_key setting (the same forms)",
    )
    add_common(verify)
    public = what.add_parser("public-key", help="print the signing key's public key (base64)")
    add_common(public)


def cmd_statement(args: argparse.Namespace) -> int:
    from citystream.cli import build_settings
    from connectors.sinks.clickhouse.endpoint import QueryError
    from trust.statements.contract import ContractError

    settings = build_settings(args)
    try:
        if args.statement_command == "issue":
            return issue_command(settings, args.contract, args.period, args.out)
        if args.statement_command == "verify":
            return verify_command(settings, args.file, args.public_key)
        from trust.statements.signing import public_key_text

        print(public_key_text(signing_key(settings).public_key()))
        return 0
    except (ContractError, ValueError, OSError, RuntimeError, QueryError) as exc:
        print(f"citystream statement {args.statement_command}: {exc}", file=sys.stderr)
        return 2


def signing_key(settings: Settings) -> Any:
    """The statements' signing key: the secret setting, else the key file (created the
    first time when it is the default one under data_dir)."""
    from trust.statements.signing import load_private_key
    from trust.statements.signing import signing_key as key_in

    if settings.statement_signing_key is not None:
        pem = settings.statement_signing_key.get_secret_value().encode()
        return load_private_key(pem, "CITYSTREAM_STATEMENT_SIGNING_KEY")
    if settings.statement_key_file is not None:
        return key_in(settings.statement_key_file, create=False)
    return key_in(settings.data_dir / DEFAULT_KEY, create=True)


def city_and_zone(settings: Settings) -> tuple[str, str]:
    """The city id and time zone of the settings' city pack (none: aarhus and the timezone
    setting)."""
    if settings.city is not None:
        from core.city import read_spec

        spec = read_spec(settings.city)[0]
        return spec.id, spec.timezone
    return "aarhus", settings.timezone


def issue_command(settings: Settings, contract_file: Path, period: str, out: Path | None) -> int:
    from trust.statements.contract import load_contract
    from trust.statements.render import markdown
    from trust.statements.statement import issue

    contract = load_contract(contract_file)
    city, zone = city_and_zone(settings)
    statement = issue(settings, contract, period, city, zone, signing_key(settings))
    path = out or Path(f"{contract.id}-{period}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(statement, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(statement), encoding="utf-8")
    for t in statement["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        tier = t["tier"]["name"] if t["tier"] else "no tier"
        print(f"{t['id']:<14} {_value(t['value'])} {t['comparison']} {t['threshold']:g}  "
              f"{verdict}  ({tier})")  # fmt: skip
    print(
        f"statement {path} (and {path.with_suffix('.md')}), key {statement['signature']['key_id']}"
    )
    return 0


def _value(value: float | None) -> str:
    return "no data" if value is None else f"{value:,.2f}"


def verify_command(settings: Settings, file: Path, public_keys: list[str] | None) -> int:
    from trust.statements.signing import load_keyring
    from trust.statements.statement import verify

    statement = json.loads(file.read_text(encoding="utf-8"))
    sources = public_keys or (
        [settings.statement_public_key] if settings.statement_public_key else []
    )
    trusted = load_keyring(sources) if sources else None
    verdict = verify(
        settings, statement, trusted, progress=lambda s: print(f"... {s}", file=sys.stderr)
    )
    for line in verdict.checked:
        print(f"ok        {line}")
    for line in verdict.problems:
        print(f"DIFFERENT {line}")
    if trusted is None:
        print("note: no trusted public key given (--public-key): the signature proves the "
              "statement is intact, not who issued it")  # fmt: skip
    print(f"statement {file}: {'VERIFIED' if verdict.ok else 'NOT VERIFIED'}")
    return 0 if verdict.ok else 1


CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"


def demo_statement(settings: Settings, contract_name: str, period: str) -> list[str]:
    """`make demo`: issue the shipped contract's statement for ``period`` with the data
    directory's key, verify it as a third party would (trusting that key's public half) and
    print the verdict; returns [contract id] when it does not verify."""
    from trust.statements.contract import load_contract
    from trust.statements.render import markdown
    from trust.statements.statement import issue, verify

    contract = load_contract(CONTRACTS / f"{contract_name}.toml")
    city, zone = city_and_zone(settings)
    key = signing_key(settings)
    statement = issue(settings, contract, period, city, zone, key)
    path = settings.data_dir / "statements" / f"{settings.topic_prefix}{contract.id}-{period}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(statement, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(statement), encoding="utf-8")
    print(f"statement {contract.id} {period} ({zone}), signed by key "
          f"{statement['signature']['key_id']}: {path}")  # fmt: skip
    for t in statement["targets"]:
        tier = f"{t['tier']['name']}: {t['tier']['payment']}" if t["tier"] else "no tier"
        print(f"  {t['id']:<18} {_value(t['value']):>10} {t['comparison']} {t['threshold']:g}"
              f"  {'met' if t['met'] else 'missed'}  [{tier}]  ({t['aggregation']['rule']},"
              f" {t['rows']['count']:,} rows)")  # fmt: skip
    verdict = verify(settings, statement, key.public_key())
    for line in verdict.problems:
        print(f"  DIFFERENT {line}")
    ranges = statement["input"]["ranges"]
    messages = sum(r["messages"] for r in ranges)
    outcome = "VERIFIED" if verdict.ok else "NOT VERIFIED"
    print(f"  verify: signature, {len(ranges)} input ranges ({messages:,} messages) re-read, "
          f"every target recomputed by the oracle, KPI rows' Merkle root: {outcome}")  # fmt: skip
    return [] if verdict.ok else [contract.id]
